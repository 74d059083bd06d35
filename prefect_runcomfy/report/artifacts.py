"""What a run shows in the Prefect UI: a progress artifact, a table and a markdown summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import numpy as np
import pandas as pd
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.logging import get_run_logger

from prefect_runcomfy.engine.outputs.manifest import outcome_from_manifest_row
from prefect_runcomfy.engine.record.outcome import RowOutcome, is_missing
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.report.summary import attention_rank, summarize

ProgressListener = Callable[[int, int, dict[str, int]], None]
"""Called in-process with (rows done, rows in all, count per status) as each row finishes."""

progress_listeners: list[ProgressListener] = []
"""Listeners of every run in this process (the command line's progress bar is one)."""


class Progress:
    """A progress artifact kept current as rows finish, updated at most every `every_s` seconds.

    In-process listeners (`progress_listeners`) hear about every row at once.
    """

    def __init__(self, total: int, *, every_s: float = 10.0, key: str | None = None) -> None:
        self.total = max(0, total)
        self.done = 0
        self.every_s = every_s
        self.key = key
        self._artifact: UUID | None = None
        self._last = 0.0
        self.counts: dict[str, int] = {}

    def _description(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return f"{self.done} of {self.total} rows done" + (f" ({parts})" if parts else "")

    async def start(self) -> None:
        """Create the artifact at 0 %."""
        try:
            self._artifact = await acreate_progress_artifact(
                progress=0.0 if self.total else 100.0, key=self.key, description=self._description()
            )
        except Exception as exc:  # the UI is a convenience; a run must not fail for it
            get_run_logger().debug("No progress artifact: %s", exc)
        self._last = time.monotonic()

    async def row_done(self, status: str) -> None:
        """Count a finished row; update the artifact if the last update is old enough."""
        self.done += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        for listener in list(progress_listeners):
            listener(self.done, self.total, dict(self.counts))
        if time.monotonic() - self._last >= self.every_s:
            await self._update()

    async def finish(self) -> None:
        """The final update, whatever the throttle says."""
        await self._update()

    async def _update(self) -> None:
        self._last = time.monotonic()
        if self._artifact is None:
            return
        progress = 100.0 * self.done / self.total if self.total else 100.0
        try:
            await aupdate_progress_artifact(
                self._artifact, progress=progress, description=self._description()
            )
        except Exception as exc:
            get_run_logger().debug("Progress artifact not updated: %s", exc)


def artifact_row(outcome: RowOutcome) -> dict[str, Any]:
    """The row in the run's table artifact: id, status, request id, seconds, video, error."""
    first = outcome.files[0].uri if outcome.files else None
    return {
        "id": outcome.id,
        "status": outcome.status.value if outcome.status else "",
        "request_id": outcome.request_id or "",
        "queue_s": "" if outcome.queue_seconds is None else round(outcome.queue_seconds, 1),
        "run_s": "" if outcome.run_seconds is None else round(outcome.run_seconds, 1),
        "video": first or "",
        "error": outcome.error or "",
    }


TABLE_MAX_ROWS = 500
"""The table artifact lists at most this many rows (those that need a person first); the
manifest holds them all."""


def summary_table(manifest: pd.DataFrame, *, limit: int = TABLE_MAX_ROWS) -> list[dict[str, Any]]:
    """The rows of the final table artifact (each an `artifact_row`): the rows that need a
    person first (failed, invalid, timed out, outcome unknown; see `attention_rank`), then the
    others, each group in the manifest's order; at most `limit` rows."""
    if manifest.empty:
        return []
    statuses = manifest["status"] if "status" in manifest.columns else [None] * len(manifest)
    ranks = np.array([attention_rank(s) for s in statuses])
    first = np.argsort(ranks, kind="stable")[: max(0, limit)]
    return [
        artifact_row(outcome_from_manifest_row(record))
        for record in manifest.iloc[first].to_dict(orient="records")
    ]


def table_description(manifest: pd.DataFrame, manifest_uri: str, shown: int) -> str:
    """The table artifact's description (markdown): which rows it lists, and where all are."""
    if shown >= len(manifest):
        return f"One row per input row, those that need a person first. All rows: `{manifest_uri}`"
    return (
        f"The first {shown:,} of {len(manifest):,} rows, those that need a person first "
        f"(failed, invalid, timed out, outcome unknown). Every row is in `{manifest_uri}`."
    )


def summary_markdown(
    manifest: pd.DataFrame,
    *,
    output_uri: str,
    manifest_uri: str,
    page_uri: str | None = None,
    title: str = "Talking videos",
) -> str:
    """A short markdown report: counts per status, where the outputs are, what it cost."""
    summary = summarize(manifest)
    lines = [f"# {title}", "", f"**{summary.succeeded} of {summary.total} rows succeeded.**", ""]
    lines += ["| status | rows |", "|---|---:|"]
    lines += [f"| {status} | {n} |" for status, n in summary.nonzero_counts.items()]
    lines += [
        "",
        f"- Review page: [{page_uri}]({_link(page_uri)})"
        if page_uri
        else "- Review page: not written",
        f"- Outputs: `{output_uri}`",
        f"- Manifest: `{manifest_uri}`",
        f"- Video produced: {summary.video_seconds or 0.0:.1f} s",
        *(f"- {sentence}" for sentence in summary.spending),
    ]
    problems = manifest[manifest["status"] != RowStatus.SUCCEEDED] if summary.total else manifest
    if len(problems):
        lines += [
            "",
            "## Rows that did not succeed",
            "",
            "| id | status | error |",
            "|---|---|---|",
        ]
        for record in problems.head(50).to_dict(orient="records"):
            error = (
                str("" if is_missing(record.get("error")) else record.get("error"))
                .replace("|", "\\|")
                .replace("\n", " ")[:300]
            )
            lines.append(f"| {record.get('id')} | {record.get('status')} | {error} |")
        if len(problems) > 50:
            lines.append(f"| … | | {len(problems) - 50} more in the manifest |")
    return "\n".join(lines) + "\n"


def spending(manifest: pd.DataFrame) -> list[str]:
    """What the run spent, in sentences: the jobs it submitted and their cost as RunComfy
    reported it, then (if any) the cost of rows it only skipped or collected, paid by earlier
    runs. A nightly report must not count last week's videos again.

    The sentences of `summarize(manifest).spending`.

    Example:
        ```python
        spending(manifest)
        # ['Jobs this run submitted: 3, cost reported by RunComfy $0.4200',
        #  'Rows submitted by earlier runs (stored or collected now): 17, cost $2.3800 (not spent by this run)']
        ```
    """
    return summarize(manifest).spending


def _link(uri: str) -> str:
    # A local path becomes a file:// link; URLs stay as they are (s3:// is shown, not clickable).
    if "://" in uri:
        return uri
    return "file://" + uri.replace(" ", "%20")


async def publish_summary(
    manifest: pd.DataFrame,
    *,
    output_uri: str,
    manifest_uri: str,
    page_uri: str | None = None,
    key_prefix: str | None = None,
    table: bool = True,
) -> None:
    """Create the final artifacts of a run: the table (`summary_table`: at most
    `TABLE_MAX_ROWS` rows, those that need a person first; skipped when `table` is False, as
    for a shard, whose rows its parent's table lists) and the markdown summary."""
    table_key = f"{key_prefix}-rows" if key_prefix else None
    summary_key = f"{key_prefix}-summary" if key_prefix else None
    try:
        if table:
            rows = summary_table(manifest)
            await acreate_table_artifact(
                table=rows,
                key=table_key,
                description=table_description(manifest, manifest_uri, len(rows)),
            )
        await acreate_markdown_artifact(
            markdown=summary_markdown(
                manifest, output_uri=output_uri, manifest_uri=manifest_uri, page_uri=page_uri
            ),
            key=summary_key,
            description="Counts, where the outputs are, and cost",
        )
    except Exception as exc:
        get_run_logger().warning("Could not publish the summary artifacts: %s", exc)
