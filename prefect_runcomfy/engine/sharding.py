"""Splitting a very large table into shards that run as separate flow runs, and merging back.

The parent flow (`generate_talking_videos_sharded` in `flows.py`) checks the whole table first
(so an id can never be in two shards, which would pay twice), writes each shard as a Parquet
file under the output location, starts one deployment run per shard, and merges the shards'
manifests at the end.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from prefect_runcomfy.api.models import API_KEYS, MEDIA_COLUMNS
from prefect_runcomfy.engine.storage import OutputStore
from prefect_runcomfy.engine.table import ID_COLUMN, PreparedRow

SHARDS_DIR = "_shards"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def absolute_media(value: Any, base_dir: str | None) -> Any:
    """A relative local media path made absolute against the table's folder, so it still
    names the same file once the row sits in a shard file somewhere else."""
    if not isinstance(value, str) or not base_dir or value.startswith(("data:", "/")):
        return value
    if _URL.match(value):
        return value
    if _URL.match(base_dir):
        return f"{base_dir.rstrip('/')}/{value}"
    return str(Path(base_dir, value).resolve())


def shard_frames(
    rows: list[PreparedRow], df: pd.DataFrame, shard_size: int, *, base_dir: str | None
) -> list[pd.DataFrame]:
    """The valid rows of `df`, in table order, cut into DataFrames of at most `shard_size`.

    Each keeps the user's columns plus `id` (the row's id, derived ones written out, so every
    shard names rows exactly as the whole table did).
    """
    size = max(1, int(shard_size))
    picked = df.iloc[[r.row for r in rows]].copy()
    picked[ID_COLUMN] = [r.id for r in rows]
    for column in (*MEDIA_COLUMNS, *(API_KEYS[c] for c in MEDIA_COLUMNS)):
        if column in picked.columns:
            picked[column] = [absolute_media(v, base_dir) for v in picked[column]]
    picked = picked.reset_index(drop=True)
    return [picked.iloc[i : i + size].reset_index(drop=True) for i in range(0, len(picked), size)]


def shard_names(run_key: str, count: int) -> list[tuple[str, str]]:
    """(shard table, shard manifest) names under the output location for `count` shards."""
    return [
        (
            f"{SHARDS_DIR}/{run_key}/shard-{i:04d}.parquet",
            f"{SHARDS_DIR}/{run_key}/shard-{i:04d}.manifest.parquet",
        )
        for i in range(count)
    ]


def write_shard(store: OutputStore, frame: pd.DataFrame, name: str) -> str:
    """Write one shard's rows as Parquet under the output location; return its URI."""
    from prefect_runcomfy.engine.manifest import parquet_safe

    return store.write_manifest(parquet_safe(frame), name)
