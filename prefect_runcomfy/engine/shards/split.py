"""Splitting a very large table into shards that run as separate flow runs, and merging back.

The parent flow (`generate_talking_videos_sharded` in `flows.py`) checks the whole table first
(so an id can never be in two shards, which would pay twice), writes each shard as a Parquet
file under the output location, starts one deployment run per shard (`engine.shards.runs`),
and merges the shards' manifests at the end.

A shard's identity (`ShardSpec.key`) is derived from the output location, the shard's index
and its rows' ids, never from the parent's flow run: the same table run again into the same
output finds the same shards, their files and their flow runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prefect_runcomfy.engine.inputs.table import ID_COLUMN, PreparedRow
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.models.base import ModelSpec

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
    rows: list[PreparedRow],
    df: pd.DataFrame,
    shard_size: int,
    *,
    base_dir: str | None,
    model: ModelSpec,
) -> list[pd.DataFrame]:
    """The valid rows of `df`, in table order, cut into DataFrames of at most `shard_size`.

    Each keeps the user's columns plus `id` (the row's id, derived ones written out, so every
    shard names rows exactly as the whole table did); local paths in `model`'s media columns
    are made absolute.
    """
    size = max(1, int(shard_size))
    picked = df.iloc[[r.row for r in rows]].copy()
    picked[ID_COLUMN] = [r.id for r in rows]
    for column in (*model.media, *(model.api_keys[c] for c in model.media)):
        if column in picked.columns:
            picked[column] = [absolute_media(v, base_dir) for v in picked[column]]
    picked = picked.reset_index(drop=True)
    return [picked.iloc[i : i + size].reset_index(drop=True) for i in range(0, len(picked), size)]


def shard_key(location: str, index: int, ids: list[str]) -> str:
    """A shard's identity: 16 hex digits of the sha256 of its output location, index and ids.

    The ids and not the rows' other values: a re-run whose table edited a prompt still finds
    the live shard run of those ids (the ledger, not the shard, decides what a row needs).
    """
    digest = hashlib.sha256(f"{location}\n{index}\n".encode())
    for row_id in ids:
        digest.update(row_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a table: its place, identity, rows' ids and rows."""

    index: int
    key: str
    ids: tuple[str, ...]
    frame: pd.DataFrame

    @property
    def run_name(self) -> str:
        """The name of its flow runs in Prefect (every attempt of this shard has it)."""
        return f"shard-{self.index:04d}-{self.key[:8]}"

    def files(self, attempt: int) -> ShardFiles:
        """The names of attempt `attempt`'s files under the output location."""
        stem = f"{SHARDS_DIR}/{self.key}/a{attempt:04d}"
        return ShardFiles(
            rows=f"{stem}.parquet",
            manifest=f"{stem}.manifest.parquet",
            heartbeat=f"{stem}.alive.json",
        )


@dataclass(frozen=True)
class ShardFiles:
    """What one attempt of a shard keeps under the output location: its rows (the shard run's
    `inputs`), its manifest and its heartbeat. One set per attempt, so a new attempt never
    reads an earlier attempt's manifest as its own."""

    rows: str
    manifest: str
    heartbeat: str


def plan_shards(
    location: str,
    rows: list[PreparedRow],
    df: pd.DataFrame,
    shard_size: int,
    *,
    base_dir: str | None,
    model: ModelSpec,
) -> list[ShardSpec]:
    """The table's valid rows (jobs of `model`) cut into shards (`shard_frames`), each with
    its identity."""
    specs = []
    frames = shard_frames(rows, df, shard_size, base_dir=base_dir, model=model)
    for index, frame in enumerate(frames):
        ids = tuple(str(i) for i in frame[ID_COLUMN])
        specs.append(ShardSpec(index, shard_key(location, index, list(ids)), ids, frame))
    return specs


def write_shard(store: OutputStore, frame: pd.DataFrame, name: str) -> str:
    """Write one shard's rows as Parquet under the output location; return its URI."""
    from prefect_runcomfy.engine.outputs.manifest import parquet_safe

    return store.write_manifest(parquet_safe(frame), name)
