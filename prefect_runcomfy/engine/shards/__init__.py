"""Shards: one table split over several flow runs that work in parallel on a work pool.

Entry points: `shards.split` (which rows each shard takes), `shards.runs` (start, watch and
merge shard runs), `shards.heartbeat` (a shard says it is alive; a dead one is found).
"""
