"""What a run shows in the Prefect UI: a progress artifact, a table and a markdown summary."""

from __future__ import annotations

import asyncio
import posixpath
import re
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
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome, is_missing
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.report.links import FileLinks
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


def artifact_row(outcome: RowOutcome, links: FileLinks | None = None) -> dict[str, Any]:
    """The row in the run's table artifact: id, status, request id, seconds, the video (a
    pre-signed link, or a path to copy; see `video_cell`), error and note, each whole.

    The Prefect UI renders each cell as markdown, so text from the data is escaped
    (`markdown_text`). A timing a row lacks reads `unknown`; its note says why."""
    succeeded = outcome.status is RowStatus.SUCCEEDED
    return {
        "id": markdown_text(outcome.id),
        "status": outcome.status.value if outcome.status else "",
        "request_id": markdown_text(outcome.request_id or ""),
        "queue_s": _seconds(outcome.queue_seconds, succeeded),
        "run_s": _seconds(outcome.run_seconds, succeeded),
        "video": video_cell(outcome, links),
        "error": markdown_text(outcome.error or ""),
        "note": markdown_text(outcome.note or ""),
    }


def _seconds(value: float | None, expected: bool) -> float | str:
    if value is not None:
        return round(value, 1)
    return "unknown" if expected else ""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def markdown_text(text: str) -> str:
    """`text` as markdown that shows it as it is, whole: markdown's characters escaped, line
    breaks as spaces (a table row is one line)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\r\n", " ").replace("\n", " ")


def video_cell(outcome: RowOutcome, links: FileLinks | None) -> str:
    """The table's video cell: `[alice.mp4](<pre-signed URL>)` where the store signs, else
    the path or URI as code to copy (never a `file://` link a browser would refuse)."""
    if not outcome.files:
        return ""
    uri = outcome.files[0].uri
    name = links.name_of(uri) if links else None
    url = links.url(name) if links and name else None
    if url:
        return f"[{markdown_text(posixpath.basename(name or uri))}]({url})"
    return _code(uri)


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


TABLE_MAX_ROWS = 500
"""The table artifact lists at most this many rows (those that need a person first); the
manifest holds them all."""


def summary_outcomes(manifest: pd.DataFrame, *, limit: int = TABLE_MAX_ROWS) -> list[RowOutcome]:
    """The records of the rows the table artifact lists: the rows that need a person first
    (failed, invalid, timed out, outcome unknown; see `attention_rank`), then the others,
    each group in the manifest's order; at most `limit` rows."""
    if manifest.empty:
        return []
    statuses = manifest["status"] if "status" in manifest.columns else [None] * len(manifest)
    ranks = np.array([attention_rank(s) for s in statuses])
    first = np.argsort(ranks, kind="stable")[: max(0, limit)]
    return [
        outcome_from_manifest_row(record)
        for record in manifest.iloc[first].to_dict(orient="records")
    ]


def summary_table(
    manifest: pd.DataFrame, *, limit: int = TABLE_MAX_ROWS, links: FileLinks | None = None
) -> list[dict[str, Any]]:
    """The rows of the final table artifact (each an `artifact_row`, its video linked by
    `links`) for `summary_outcomes`."""
    return [artifact_row(o, links) for o in summary_outcomes(manifest, limit=limit)]


def table_description(
    manifest: pd.DataFrame, manifest_uri: str, shown: int, links: FileLinks | None = None
) -> str:
    """The table artifact's description (markdown): which rows it lists, where all are, and
    how long its links live."""
    said = f" {links.explained}" if links else ""
    if shown >= len(manifest):
        return (
            "One row per input row, those that need a person first. All rows: "
            f"{_code(manifest_uri)}.{said}"
        )
    return (
        f"The first {shown:,} of {len(manifest):,} rows, those that need a person first "
        f"(failed, invalid, timed out, outcome unknown). Every row is in {_code(manifest_uri)}."
        f"{said}"
    )


def summary_markdown(
    manifest: pd.DataFrame,
    *,
    output_uri: str,
    manifest_uri: str,
    page_uri: str | None = None,
    title: str = "Talking videos",
    links: FileLinks | None = None,
    review_url: str | None = None,
) -> str:
    """A short markdown report: counts per status, where the outputs are (the review page by
    its pre-signed `review_url` when there is one, else its path or URI to copy), what it
    cost, how long the links live, and each row that did not succeed with its whole error."""
    summary = summarize(manifest)
    lines = [f"# {title}", "", f"**{summary.succeeded} of {summary.total} rows succeeded.**", ""]
    lines += ["| status | rows |", "|---|---:|"]
    lines += [f"| {status} | {n} |" for status, n in summary.nonzero_counts.items()]
    manifest_name = links.name_of(manifest_uri) if links else None
    manifest_url = links.url(manifest_name) if links and manifest_name else None
    lines += [
        "",
        _review_line(page_uri, review_url, links),
        f"- Outputs: {_code(output_uri)}",
        f"- Manifest: {_code(manifest_uri)}"
        + (f" ([download]({manifest_url}))" if manifest_url else ""),
        f"- Video produced: {summary.video_seconds or 0.0:.1f} s",
        *(f"- {sentence}" for sentence in summary.spending),
    ]
    if links:
        lines.append(f"- {links.explained}")
    return "\n".join(lines + _problems(manifest, summary.total)) + "\n"


def _review_line(page_uri: str | None, review_url: str | None, links: FileLinks | None) -> str:
    if review_url:
        lifetime = f"; its {links.lifetime}" if links and links.lifetime else ""
        lasting = f"; the lasting copy is {_code(page_uri)}" if page_uri else ""
        return f"- Review page: [open the review]({review_url}) (a shared copy{lifetime}{lasting})"
    if page_uri:
        return f"- Review page: {_code(page_uri)}"
    return "- Review page: not written"


def _problems(manifest: pd.DataFrame, total: int) -> list[str]:
    """The rows that did not succeed, each with its whole error (the first 50 rows)."""
    problems = manifest[manifest["status"] != RowStatus.SUCCEEDED] if total else manifest
    if not len(problems):
        return []
    lines = ["", "## Rows that did not succeed", "", "| id | status | error |", "|---|---|---|"]
    for record in problems.head(50).to_dict(orient="records"):
        error = str("" if is_missing(record.get("error")) else record.get("error"))
        row_id = markdown_text(str(record.get("id")))
        lines.append(f"| {row_id} | {record.get('status')} | {markdown_text(error)} |")
    if len(problems) > 50:
        lines.append(f"| … | | {len(problems) - 50} more in the manifest |")
    return lines


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


async def publish_summary(
    manifest: pd.DataFrame,
    *,
    output_uri: str,
    manifest_uri: str,
    page_uri: str | None = None,
    key_prefix: str | None = None,
    table: bool = True,
    store: OutputStore | None = None,
    review_url: str | None = None,
) -> None:
    """Create the final artifacts of a run: the table (`summary_table`: at most
    `TABLE_MAX_ROWS` rows, those that need a person first; skipped when `table` is False, as
    for a shard, whose rows its parent's table lists) and the markdown summary. With `store`
    (the output location), their videos and the manifest are linked by pre-signed URLs where
    it signs (`FileLinks`), and `review_url` is the review's signed copy."""
    table_key = f"{key_prefix}-rows" if key_prefix else None
    summary_key = f"{key_prefix}-summary" if key_prefix else None
    try:
        outcomes = summary_outcomes(manifest) if table else []
        links = await asyncio.to_thread(_links, store, outcomes, manifest_uri)
        if table:
            await acreate_table_artifact(
                table=[artifact_row(o, links) for o in outcomes],
                key=table_key,
                description=table_description(manifest, manifest_uri, len(outcomes), links),
            )
        await acreate_markdown_artifact(
            markdown=summary_markdown(
                manifest,
                output_uri=output_uri,
                manifest_uri=manifest_uri,
                page_uri=page_uri,
                links=links,
                review_url=review_url,
            ),
            key=summary_key,
            description="Counts, where the outputs are, and cost",
        )
    except Exception as exc:
        get_run_logger().warning("Could not publish the summary artifacts: %s", exc)


def _links(
    store: OutputStore | None, outcomes: list[RowOutcome], manifest_uri: str
) -> FileLinks | None:
    """The links of the artifacts: each listed row's video and the manifest, signed at once."""
    if store is None:
        return None
    unsigned = FileLinks(store, 0)
    uris = [manifest_uri, *(o.files[0].uri for o in outcomes if o.files)]
    names = [n for n in (unsigned.name_of(u) for u in uris) if n]
    return FileLinks.make(store, names)
