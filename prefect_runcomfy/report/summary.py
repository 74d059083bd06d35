"""One summary of a manifest: rows per status, what the run spent, how much video it made.

The markdown artifact, the review page's tiles and the command line's closing lines all read
this one `RunSummary`, so they cannot disagree about a run.

```python
summary = summarize(manifest)
summary.succeeded, summary.total   # (3, 4)
summary.spending                   # ['Jobs this run submitted: 3, cost reported by ...']
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pandas as pd

from prefect_runcomfy.engine.outputs.manifest import RowStatus, status_counts


@dataclass(frozen=True)
class RunSummary:
    """What a manifest says about a run, as numbers; `spending` says it in sentences.

    Costs are as RunComfy reported them; None means no row in that group reported one.
    """

    counts: Mapping[str, int]
    """Rows per status: every `RowStatus` (zeros included), then any other status found in
    the data, in order of first appearance."""
    total: int
    """Rows in the manifest."""
    jobs_this_run: int
    """Rows whose job this run submitted (`submitted_by_this_run`): what it paid for."""
    cost_this_run: float | None
    """The summed cost of those jobs."""
    estimate_this_run: float | None
    """What those jobs were estimated to cost before they were submitted (the catalog's
    price); None when no estimate was made."""
    rows_earlier: int
    """Rows with a known cost that earlier runs submitted (skipped or collected now)."""
    cost_earlier: float | None
    """Their summed cost: not spent by this run."""
    total_cost: float | None
    """Every known cost, this run's and earlier runs'."""
    unknown_cost: int
    """Rows that may have cost something but report no cost (invalid rows cost nothing)."""
    video_seconds: float | None
    """Seconds of video of the succeeded rows."""
    run_seconds: float | None
    """Run time of every row that reports one, summed."""

    @property
    def succeeded(self) -> int:
        """Rows that succeeded."""
        return self.counts.get(RowStatus.SUCCEEDED.value, 0)

    @property
    def nonzero_counts(self) -> dict[str, int]:
        """`counts` without the statuses no row has."""
        return {status: n for status, n in self.counts.items() if n}

    @property
    def spending(self) -> list[str]:
        """What the run spent, in sentences: its own jobs first, then (if any) what the rows
        paid for by earlier runs cost, so a nightly report never counts last week's videos."""
        estimated = (
            f", estimated ${self.estimate_this_run:.4f} before submitting"
            if self.estimate_this_run is not None
            else ""
        )
        if not self.jobs_this_run:
            lines = ["Jobs this run submitted: 0"]
        elif self.cost_this_run is None:
            lines = [f"Jobs this run submitted: {self.jobs_this_run}{estimated}, cost not reported"]
        else:
            lines = [
                f"Jobs this run submitted: {self.jobs_this_run}{estimated}, cost reported by "
                f"RunComfy ${self.cost_this_run:.4f}"
            ]
        if self.rows_earlier:
            lines.append(
                f"Rows submitted by earlier runs (stored or collected now): "
                f"{self.rows_earlier}, cost ${self.cost_earlier or 0.0:.4f} "
                "(not spent by this run)"
            )
        return lines


def _column(manifest: pd.DataFrame, name: str) -> pd.Series:
    # Older manifests lack newer columns: a missing column reads as all missing values.
    if name in manifest:
        return manifest[name]
    return pd.Series(None, index=manifest.index, dtype=object)


def _sum(values: pd.Series) -> float | None:
    known = pd.to_numeric(values, errors="coerce").dropna()
    return float(known.sum()) if len(known) else None


def _counts(statuses: pd.Series) -> Mapping[str, int]:
    counts = status_counts(pd.DataFrame({"status": statuses}))
    for status in statuses.dropna().astype(str):
        if status not in counts:
            counts[status] = int((statuses == status).sum())
    return MappingProxyType(counts)  # read-only, as the frozen summary around it


_ATTENTION_ORDER = {
    status: rank
    for rank, status in enumerate(s for s in RowStatus if s.needs_attention)  # declared order
}


def attention_rank(status: object) -> int:
    """Where a row of `status` is listed when the rows that need a person come first: failed,
    invalid, timed out, outcome unknown; then any word that is none of ours; then cancelled
    (on purpose); succeeded last. Sort by it with a stable sort to keep the manifest's order
    within a status.

    Example:
        ```python
        sorted(["succeeded", "cancelled", "invalid", "failed"], key=attention_rank)
        # ['failed', 'invalid', 'cancelled', 'succeeded']
        ```
    """
    parsed = RowStatus.parse(status)
    if parsed is None:
        return len(_ATTENTION_ORDER)
    if parsed in _ATTENTION_ORDER:
        return _ATTENTION_ORDER[parsed]
    return len(_ATTENTION_ORDER) + (1 if parsed is RowStatus.CANCELLED else 2)


def summarize(manifest: pd.DataFrame) -> RunSummary:
    """The summary of `manifest` (any subset of its columns; an empty one gives zeros).

    Example:
        ```python
        summarize(store.read_manifest()).spending
        ```
    """
    statuses = _column(manifest, "status")
    costs = pd.to_numeric(_column(manifest, "cost_usd"), errors="coerce")
    durations = pd.to_numeric(_column(manifest, "duration_s"), errors="coerce")
    new = _column(manifest, "submitted_by_this_run").eq(True)
    succeeded = statuses.eq(RowStatus.SUCCEEDED.value)
    earlier = costs[~new]
    return RunSummary(
        counts=_counts(statuses),
        total=len(manifest),
        jobs_this_run=int(new.sum()),
        cost_this_run=_sum(costs[new]),
        estimate_this_run=_sum(_column(manifest, "estimated_cost_usd")[new]),
        rows_earlier=int(earlier.notna().sum()),
        cost_earlier=_sum(earlier),
        total_cost=_sum(costs),
        unknown_cost=int((costs.isna() & statuses.ne(RowStatus.INVALID.value)).sum()),
        video_seconds=_sum(durations[succeeded]),
        run_seconds=_sum(_column(manifest, "run_seconds")),
    )


__all__ = ["RunSummary", "attention_rank", "summarize"]
