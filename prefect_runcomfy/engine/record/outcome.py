"""A row's facts in one typed record, `RowOutcome`, that each step of the row returns anew.

The record is data: it knows its facts and how to make a new version of itself (`evolve`,
`noted`, `ended`), not the formats it is stored or shown in. Each format lives with the code
that uses it, and reads and writes it from and to a record: the manifest row
(`engine.outputs.manifest`), the sidecar `<id>.json` (`engine.outputs.sidecar`), the ledger
entry's facts (`engine.plan.ledger`), the table artifact's row (`report.artifacts`), the row
event and asset metadata (`report.events`).

```python
outcome = RowOutcome.start(row)                      # before anything happens
outcome = outcome.evolve(request_id="req-1", submitted_by_this_run=True)
outcome = outcome.ended(RowStatus.FAILED, "face not found")
outcome.status                                       # <RowStatus.FAILED: 'failed'>
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy.api.downloads import short_url
from prefect_runcomfy.engine.record.status import RowStatus

PREVIEW_CHARS = 300
"""A rejected row's inputs are kept this short: it may hold a megabyte prompt or inline file."""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string, e.g. `2026-01-31T12:00:00.123+00:00`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def epoch_of(iso: str | None) -> float | None:
    """Seconds since the epoch of an ISO-8601 time (`utc_now`'s), or None when absent or not
    a time."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pandas' NA: what a manifest cell holds when nothing is
    known. Text, lists and other containers are values, even when empty."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple, dict, set)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array, or something pandas cannot judge
        return False


def is_blank(value: Any) -> bool:
    """True for a missing value (`is_missing`) and for text that is empty or only spaces: a
    cell a person left empty."""
    if isinstance(value, str):
        return not value.strip()
    return is_missing(value)


def as_number(value: Any) -> float | None:
    """`value` as a finite number, or None when it is missing, a bool or not a number (a
    stored file read back may hold anything)."""
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str | None:
    """`value` as text, or None when it is missing. A whole float is said without its `.0`:
    a column of ids or seeds with a gap in it comes back from pandas as floats."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class StoredFile(BaseModel):
    """One stored output: where it is, and what was checked about it."""

    uri: str
    source_url: str
    size: int
    sha256: str
    content_type: str | None = None
    video: dict[str, Any] | None = Field(default=None, description="Probed properties (PyAV).")


class RowOutcome(BaseModel):
    """Where one row stands: its inputs, what RunComfy did with it, and what was stored.

    Frozen: a step returns a new version (`evolve`, `noted`, `ended`) instead of changing
    this one. `status` is None until the row ends.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    row: int | None = None
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="The inputs by friendly name, as the user gave them."
    )
    extras: dict[str, Any] = Field(
        default_factory=dict, description="The table's other columns, carried through untouched."
    )
    status: RowStatus | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    request_id: str | None = None
    attempts: int = 0
    submitted_by_this_run: bool = False
    submitted_at: str | None = None
    finished_at: str | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    total_seconds: float | None = None
    cost_usd: float | None = None
    estimated_cost_usd: float | None = Field(
        default=None,
        description="What the job was estimated to cost before it was submitted (the catalog's price).",
    )
    sent: dict[str, Any] | None = Field(
        default=None, description="The API payload as sent, safe to store (`sanitize_payload`)."
    )
    sources: dict[str, str] | None = None
    model_id: str | None = None
    flow_run_id: str | None = None
    created_at: str | None = None
    api_finished_at: str | None = None
    api_error: Any = None
    api_result: dict[str, Any] | None = None
    output_urls: tuple[str, ...] = ()
    files: tuple[StoredFile, ...] = ()
    metadata_uri: str | None = None
    stored_at: str | None = None
    already_stored: bool = False
    """True when an earlier run stored the row and this run only reported it."""

    # -- new versions ---------------------------------------------------------------------

    def evolve(self, **changes: Any) -> RowOutcome:
        """A copy with `changes` applied (this record is left as it is)."""
        return self.model_copy(update=changes)

    def noted(self, note: str) -> RowOutcome:
        """A copy with `note` added to the row's notes."""
        return self.evolve(notes=(*self.notes, note))

    def ended(self, status: RowStatus, error: str | None = None, **changes: Any) -> RowOutcome:
        """A copy that ends the row in `status` with `error` (None clears it)."""
        return self.evolve(status=status, error=error, **changes)

    # -- what it says -----------------------------------------------------------------------

    @property
    def note(self) -> str | None:
        """The notes as one sentence, or None."""
        return "; ".join(self.notes) or None

    @property
    def video_uris(self) -> list[str]:
        """Where the row's outputs were stored, first one first."""
        return [f.uri for f in self.files]

    # -- the first version ------------------------------------------------------------------

    @classmethod
    def start(cls, row: Any, **facts: Any) -> RowOutcome:
        """The record of a table row (`PreparedRow` or `RowProblem`) before anything happens."""
        job = getattr(row, "job", None)
        if job is not None:
            inputs = job.model_dump()
        else:  # a rejected row: as given, but short
            inputs = {
                k: v[:PREVIEW_CHARS] + "…" if isinstance(v, str) and len(v) > PREVIEW_CHARS else v
                for k, v in (getattr(row, "inputs", None) or {}).items()
            }
        return cls(id=row.id or "", row=row.row, inputs=inputs, extras=dict(row.extras), **facts)


def sanitize_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as sent, safe to store: no pre-signed queries, no inline media bytes."""
    clean: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and value.startswith("data:"):
            head = value.split(",", 1)[0]
            clean[key] = f"{head},<{len(value)} characters inline>"
        elif isinstance(value, str) and "://" in value:
            clean[key] = short_url(value)
        else:
            clean[key] = value
    return clean


def media_source(value: str) -> str:
    """How a media input is shown in a sidecar: inline bytes and signed queries left out."""
    if value.startswith("data:"):
        return value.split(",", 1)[0] + ",<inline>"
    return short_url(value)


__all__ = [
    "RowOutcome",
    "StoredFile",
    "as_number",
    "as_text",
    "epoch_of",
    "is_blank",
    "is_missing",
    "media_source",
    "sanitize_payload",
    "utc_now",
]
