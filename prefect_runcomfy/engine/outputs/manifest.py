"""The manifest: one row per input row, joinable back to the user's table.

Columns that other code relies on come first (`id, status, request_id, video_uri,
metadata_uri, error`); then timing, cost and file facts; then the inputs as the user gave them;
then the user's own extra columns, untouched.

A row's record becomes its manifest row by `manifest_row`, and a manifest row (of an earlier
run, or of a shard) is read back into a record by `outcome_from_manifest_row`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from prefect_runcomfy.engine.record.outcome import (
    RowOutcome,
    StoredFile,
    as_number,
    as_text,
    is_missing,
)
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.models.base import ModelSpec

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

RESULT_COLUMNS = CONTRACT_COLUMNS + DETAIL_COLUMNS

_VIDEO_COLUMNS = ("duration_s", "width", "height")
"""The first video's probed facts that the manifest keeps."""


def manifest_row(outcome: RowOutcome) -> dict[str, Any]:
    """The row as `build_manifest` takes it: flat facts, the inputs, `extras` apart."""
    first = outcome.files[0] if outcome.files else None
    video = (first.video if first else None) or {}
    return {
        "id": outcome.id,
        "row": outcome.row,
        "extras": dict(outcome.extras),
        **outcome.inputs,
        "status": outcome.status.value if outcome.status else RowStatus.FAILED.value,
        "error": outcome.error,
        "note": outcome.note,
        "request_id": outcome.request_id,
        "attempts": outcome.attempts,
        "submitted_by_this_run": outcome.submitted_by_this_run,
        "submitted_at": outcome.submitted_at,
        "finished_at": outcome.finished_at,
        "queue_seconds": outcome.queue_seconds,
        "run_seconds": outcome.run_seconds,
        "total_seconds": outcome.total_seconds,
        "cost_usd": outcome.cost_usd,
        "estimated_cost_usd": outcome.estimated_cost_usd,
        "metadata_uri": outcome.metadata_uri,
        "video_uri": first.uri if first else None,
        "video_uris": outcome.video_uris or None,
        "size_bytes": first.size if first else None,
        "sha256": first.sha256 if first else None,
        **{column: video.get(column) for column in _VIDEO_COLUMNS},
    }


def outcome_from_manifest_row(record: Mapping[str, Any], inputs: Iterable[str] = ()) -> RowOutcome:
    """The record of a manifest row (a row of an earlier run, or of a shard).

    `inputs` names the model's input columns (`ModelSpec.input_names`): those become the
    record's inputs; every other column that is not one of ours is an extra. A reader that
    needs no inputs (the summary table) may leave them among the extras.

    Tolerant: a manifest written by an older version, or edited by hand, reads back with
    what it has; a value of the wrong kind is read as unknown.
    """
    clean = {k: (None if is_missing(v) else v) for k, v in record.items() if k != "extras"}
    input_columns = list(inputs)
    known = set(RESULT_COLUMNS) | set(input_columns)
    row = as_number(clean.get("row"))
    return RowOutcome(
        id=as_text(clean.get("id")) or "",
        row=int(row) if row is not None else None,
        inputs={k: clean[k] for k in input_columns if k in clean},
        extras={k: v for k, v in record.items() if k not in known},
        status=RowStatus.parse(clean.get("status")),
        error=as_text(clean.get("error")),
        notes=(str(clean["note"]),) if clean.get("note") else (),
        request_id=as_text(clean.get("request_id")),
        attempts=int(as_number(clean.get("attempts")) or 0),
        submitted_by_this_run=bool(clean.get("submitted_by_this_run") or False),
        submitted_at=as_text(clean.get("submitted_at")),
        finished_at=as_text(clean.get("finished_at")),
        queue_seconds=as_number(clean.get("queue_seconds")),
        run_seconds=as_number(clean.get("run_seconds")),
        total_seconds=as_number(clean.get("total_seconds")),
        cost_usd=as_number(clean.get("cost_usd")),
        estimated_cost_usd=as_number(clean.get("estimated_cost_usd")),
        metadata_uri=as_text(clean.get("metadata_uri")),
        files=_manifest_files(clean),
    )


def _manifest_files(clean: Mapping[str, Any]) -> tuple[StoredFile, ...]:
    """The stored files a manifest row names; only the first one's facts are in the manifest."""
    uris = [u for u in _uri_list(clean.get("video_uris")) if isinstance(u, str)]
    first = clean.get("video_uri")
    if isinstance(first, str) and first not in uris:
        uris.insert(0, first)
    size = as_number(clean.get("size_bytes"))
    return tuple(
        StoredFile(
            uri=uri,
            source_url="",
            size=int(size or 0) if n == 0 else 0,
            sha256=str(clean.get("sha256") or "") if n == 0 else "",
            video={k: clean.get(k) for k in _VIDEO_COLUMNS} if n == 0 else None,
        )
        for n, uri in enumerate(uris)
    )


def _uri_list(value: Any) -> list[Any]:
    """A `video_uris` cell as a list: Parquet gives an array, a CSV copy the list as JSON text."""
    if value is None:
        return []
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(value)
            if isinstance(parsed, list):
                return parsed
        return [value]
    try:
        return list(value)
    except TypeError:
        return []


def build_manifest(
    records: Iterable[RowOutcome | dict[str, Any]], model: ModelSpec
) -> pd.DataFrame:
    """Turn rows' records (`RowOutcome`, or their `manifest_row` dicts) into the manifest
    DataFrame, columns in a fixed order: ours, then `model`'s inputs in its schema's order,
    then the user's.

    A user column whose name collides with one of ours is kept as `input_<name>`.
    """
    rows = []
    for given in records:
        record = manifest_row(given) if isinstance(given, RowOutcome) else given
        row = {k: v for k, v in record.items() if k != "extras"}
        for name, value in (record.get("extras") or {}).items():
            key = name if name not in row and name not in RESULT_COLUMNS else f"input_{name}"
            row[key] = value
        rows.append(row)
    df = pd.DataFrame.from_records(rows)
    for column in RESULT_COLUMNS:
        if column not in df.columns:
            df[column] = None
    ordered = RESULT_COLUMNS + [c for c in model.input_names if c in df.columns]
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
