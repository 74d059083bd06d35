"""The manifest: one row per input row, joinable back to the user's table.

Columns that other code relies on come first (`id, status, request_id, video_uri,
metadata_uri, error`); then timing, cost and file facts; then the inputs as the user gave them;
then the user's own extra columns, untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from prefect_runcomfy.engine.record.outcome import RowOutcome, is_missing
from prefect_runcomfy.engine.record.status import RowStatus

CONTRACT_COLUMNS = ["id", "status", "request_id", "video_uri", "metadata_uri", "error"]
"""Columns every manifest has, in this order."""

DETAIL_COLUMNS = [
    "row",
    "note",
    "video_uris",
    "queue_seconds",
    "run_seconds",
    "total_seconds",
    "cost_usd",
    "estimated_cost_usd",
    "size_bytes",
    "sha256",
    "duration_s",
    "width",
    "height",
    "submitted_at",
    "finished_at",
    "attempts",
    "submitted_by_this_run",
]
"""Columns that follow the contract columns: timing, cost and facts about the stored video."""

INPUT_COLUMNS = [
    "prompt",
    "image",
    "audio",
    "resolution",
    "frames",
    "seed",
    "steps",
    "shift",
    "cfg",
]
"""The inputs, by their friendly names, as the user gave them (not the signed URLs)."""

RESULT_COLUMNS = CONTRACT_COLUMNS + DETAIL_COLUMNS


def build_manifest(records: Iterable[RowOutcome | dict[str, Any]]) -> pd.DataFrame:
    """Turn rows' records (`RowOutcome`, or their `manifest_record()` dicts) into the manifest
    DataFrame, columns in a fixed order.

    A user column whose name collides with one of ours is kept as `input_<name>`.
    """
    rows = []
    for given in records:
        record = given.manifest_record() if isinstance(given, RowOutcome) else given
        row = {k: v for k, v in record.items() if k != "extras"}
        for name, value in (record.get("extras") or {}).items():
            key = name if name not in row and name not in RESULT_COLUMNS else f"input_{name}"
            row[key] = value
        rows.append(row)
    df = pd.DataFrame.from_records(rows)
    for column in RESULT_COLUMNS:
        if column not in df.columns:
            df[column] = None
    ordered = RESULT_COLUMNS + [c for c in INPUT_COLUMNS if c in df.columns]
    ordered += [c for c in df.columns if c not in ordered]
    df = df[ordered]
    numbers = ("queue_seconds", "run_seconds", "total_seconds", "cost_usd", "estimated_cost_usd")
    for column in (*numbers, "duration_s"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    for column in ("row", "size_bytes", "width", "height", "attempts"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    # True only where this run sent the row's POST: its cost is this run's spending
    df["submitted_by_this_run"] = df["submitted_by_this_run"].eq(True)
    return df.reset_index(drop=True)


def merge_manifests(previous: pd.DataFrame | None, current: pd.DataFrame) -> pd.DataFrame:
    """Rows of `current` replace rows of `previous` with the same id; other rows are kept.

    The output location's `manifest.parquet` thus describes everything stored there, while a
    run returns only its own rows.
    """
    if previous is None or previous.empty:
        return current
    kept = previous[~previous["id"].isin(set(current["id"]))]
    if kept.empty:
        return current
    merged = pd.concat([kept, current], ignore_index=True)
    return merged[[*current.columns, *[c for c in merged.columns if c not in current.columns]]]


def status_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """How many rows ended in each status (every status listed, zeros included)."""
    counts = manifest["status"].value_counts().to_dict() if len(manifest) else {}
    return {s.value: int(counts.get(s.value, 0)) for s in RowStatus}


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose object columns Parquet can store: a column mixing kinds of values (a user's
    column with numbers in one run and text in another) becomes text, missing values kept."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        # Parquet reads lists back as arrays: one kind for lists, whichever run wrote them.
        out[column] = out[column].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
        values = out[column].dropna()
        kinds = {type(v) for v in values}
        if len(kinds) > 1 and not kinds <= {list, tuple}:
            out[column] = out[column].map(lambda v: v if is_missing(v) else str(v))
    return out
