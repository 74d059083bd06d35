"""A sharded parent's run: start (or find) every shard's flow run, watch them until each has
ended or is taken as dead, and merge their rows into one table-ordered list of records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect_runcomfy.engine.inputs.table import invalid_outcome
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.planning import TablePlan
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.shards.runs import (
    ShardRun,
    ShardWatch,
    record_parent,
    shard_outcomes,
    start_shards,
)
from prefect_runcomfy.engine.shards.split import ShardFiles, ShardSpec

SHARD_POLL_S = 5.0
"""How often a sharded parent looks at its shard runs at most (one Prefect call each time)."""


async def run_shards(
    store: OutputStore,
    deployment: str,
    specs: list[ShardSpec],
    parameters: Callable[[ShardFiles], dict[str, Any]],
    *,
    heartbeat_s: float,
    stale_after_s: float,
    parent_flow_run_id: str | None,
) -> list[ShardRun]:
    """Start (or find still under way) every shard's run with its `parameters`, and wait
    until each has ended or is taken as dead; stopped while waiting, cancel them."""
    runs = await start_shards(store, deployment, specs, parameters)
    if parent_flow_run_id is not None:
        await record_parent(store, parent_flow_run_id, runs)
    await ShardWatch(
        store,
        runs,
        # state changes are worth seeing sooner than the heartbeat changes
        poll_s=min(SHARD_POLL_S, heartbeat_s),
        stale_after_s=stale_after_s,
        parent_flow_run_id=parent_flow_run_id,
    ).until_ended()
    return runs


async def merged_outcomes(
    planned: TablePlan, store: OutputStore, runs: list[ShardRun], output_uri: str
) -> list[RowOutcome]:
    """Every row's record in table order: the table's invalid rows, then each shard's."""
    outcomes = [invalid_outcome(p) for p in planned.invalid]
    for run in runs:
        outcomes += await shard_outcomes(store, run, output_uri, planned.model)
    positions = {row.id: row.row for row in planned.rows}
    outcomes = [o.evolve(row=positions.get(o.id, o.row)) for o in outcomes]
    outcomes.sort(key=lambda o: o.row if o.row is not None else -1)
    return outcomes


__all__ = ["SHARD_POLL_S", "merged_outcomes", "run_shards"]
