"""The last phase of every flow: the manifest merged and written, the review page, the
summary artifacts, one closing log line, and the run's verdict (`judge_run`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from prefect.logging import get_run_logger

from prefect_runcomfy.api.exceptions import ConfigurationError, RowsNeedAttentionError
from prefect_runcomfy.engine.outputs.manifest import merge_manifests, parquet_safe, status_counts
from prefect_runcomfy.engine.outputs.sidecar import sidecar_of
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.models.base import ModelSpec
from prefect_runcomfy.report.artifacts import publish_summary, spending

if TYPE_CHECKING:
    from prefect_runcomfy.report.review import WrittenReview


async def finish_run(
    store: OutputStore,
    manifest: pd.DataFrame,
    output_uri: str,
    *,
    model: ModelSpec,
    name: str = MANIFEST_NAME,
    input_storage_options: dict[str, object] | None = None,
    outcomes: Sequence[RowOutcome] = (),
    artifact_key: str | None = None,
    allow_failed_rows: bool | int = False,
) -> pd.DataFrame:
    """Merge this run's rows (jobs of `model`) into the manifest at `name`, write it, draw the
    review page and publish the table artifact (both for the output location's own manifest
    only: a shard's parent draws one page and one table for all its shards), publish the
    summary (under `artifact_key`, when given), and return this run's rows (`attrs` holds
    `manifest_uri` and `review_page`).

    Last, the verdict: raises `RowsNeedAttentionError` (carrying the manifest) when the run
    must end Failed (see `judge_run`), after everything is written.

    `outcomes`, the records behind `manifest` when the run holds them, draw their rows of the
    page without reading their sidecars back."""
    logger = get_run_logger()
    previous = await asyncio.to_thread(store.read_manifest, name)
    merged = parquet_safe(merge_manifests(previous, manifest))
    manifest_uri = await asyncio.to_thread(store.write_manifest, merged, name)
    whole = name == MANIFEST_NAME  # not a shard's own manifest
    review = (
        await _review_page(store, merged, model, input_storage_options, outcomes) if whole else None
    )
    page_uri = review.uri if review else None
    counts = {k: v for k, v in status_counts(manifest).items() if v}
    logger.info(
        "Done: %s. %s. Manifest: %s%s",
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        spending(manifest)[0],
        manifest_uri,
        f". Review page: {page_uri}" if page_uri else "",
    )
    await publish_summary(
        manifest,
        output_uri=output_uri,
        manifest_uri=manifest_uri,
        page_uri=page_uri,
        key_prefix=artifact_key,
        table=whole,
        store=store,
        review_url=review.signed_url if review else None,
    )
    manifest.attrs["review_page"] = page_uri
    manifest.attrs["manifest_uri"] = manifest_uri
    verdict = judge_run(manifest, allow_failed_rows)
    if verdict:
        logger.warning("%s", verdict)
    return manifest


async def _review_page(
    store: OutputStore,
    merged: pd.DataFrame,
    model: ModelSpec,
    input_storage_options: dict[str, object] | None,
    outcomes: Sequence[RowOutcome],
) -> WrittenReview | None:
    """Write the review of `merged` (and its signed copy where the store signs); where it
    is, or None (logged) when it could not be written."""
    from prefect_runcomfy.report.review import write_review

    try:
        return await asyncio.to_thread(
            write_review,
            store,
            merged,
            model,
            input_storage_options=input_storage_options,
            known={o.id: sidecar_of(o) for o in outcomes if o.metadata_uri},
        )
    except Exception as exc:  # the page is a view; the run's outputs are what count
        get_run_logger().warning("Could not write the review page: %s", exc)
        return None


def check_allow_failed_rows(allow_failed_rows: bool | int) -> None:
    """Refuse a tolerance that is neither a bool nor a count ≥ 0 (before anything is paid)."""
    if isinstance(allow_failed_rows, bool):
        return
    if not isinstance(allow_failed_rows, int) or allow_failed_rows < 0:
        raise ConfigurationError(
            f"allow_failed_rows={allow_failed_rows!r}: give True (tolerate any number of rows "
            "that need attention), False (none) or a count of rows to tolerate (0 or more)"
        )


def judge_run(manifest: pd.DataFrame, allow_failed_rows: bool | int = False) -> str | None:
    """The run's verdict from this run's rows: raise when it must end Failed, else say what a
    tolerated run left to look at (None for a clean run).

    - Rows that need a person are `failed`, `invalid`, `timed_out` and `outcome_unknown`;
      cancelled rows were cancelled on purpose and do not count.
    - More of them than `allow_failed_rows` tolerates (False: none; True: any number; a count)
      → `RowsNeedAttentionError`.
    - No row produced a video although some were due (every row but cancelled ones) →
      `RowsNeedAttentionError`, whatever the tolerance.
    """
    counts = {s: n for s, n in status_counts(manifest).items() if n}
    total = len(manifest)
    attention = sum(n for s, n in counts.items() if RowStatus(s).needs_attention)
    due = total - counts.get(RowStatus.CANCELLED.value, 0)
    described = ", ".join(f"{n} {s}" for s, n in counts.items())
    where = manifest.attrs.get("manifest_uri")
    look = f"; the manifest is at {where}" if where else ""
    if due and not counts.get(RowStatus.SUCCEEDED.value):
        raise RowsNeedAttentionError(
            f"No row produced a video: {described} of {total} rows{look}",
            manifest=manifest,
            counts=counts,
        )
    if not attention:
        return None
    tolerated = (
        total
        if allow_failed_rows is True
        else 0
        if allow_failed_rows is False
        else allow_failed_rows
    )
    if attention > tolerated:
        raise RowsNeedAttentionError(
            f"{attention} of {total} rows need attention ({described}); "
            f"allow_failed_rows={allow_failed_rows!r} tolerates {tolerated}{look}",
            manifest=manifest,
            counts=counts,
        )
    return (
        f"{attention} of {total} rows need attention ({described}), "
        f"tolerated by allow_failed_rows={allow_failed_rows!r}{look}"
    )


__all__ = ["check_allow_failed_rows", "finish_run", "judge_run"]
