"""A row's facts in one typed record, `RowOutcome`, that each step of the row returns anew.

Everything stored or shown about a row is derived from its record by one function each:
`manifest_record` (the manifest row), `sidecar` (`<id>.json`), `ledger_fields` (what the
ledger keeps to finish the row without the table), `artifact_row` (the run's table
artifact). Rows a run did not touch are read back into records (`from_manifest_row`,
`from_sidecar`), so reports of old and new rows speak the same shape.

```python
outcome = RowOutcome.start(row)                      # before anything happens
outcome = outcome.evolve(request_id="req-1", submitted_by_this_run=True)
outcome = outcome.ended(RowStatus.FAILED, "face not found")
outcome.manifest_record()["status"]                  # 'failed'
```
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.downloads import short_url
from prefect_runcomfy.engine.record.status import RowStatus

PREVIEW_CHARS = 300
"""A rejected row's inputs are kept this short: it may hold a megabyte prompt or inline file."""

EVENT_ERROR_CHARS = 2000
"""A row event carries at most this much of the row's error (events are capped at 1.5 MB)."""

SKIPPED = "skipped"
"""The event word of a row that was already stored by an earlier run (`runcomfy.row.skipped`)."""


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

    def manifest_record(self) -> dict[str, Any]:
        """The row as `build_manifest` takes it: flat facts, the inputs, `extras` apart."""
        first = self.files[0] if self.files else None
        video = (first.video if first else None) or {}
        return {
            "id": self.id,
            "row": self.row,
            "extras": dict(self.extras),
            **self.inputs,
            "status": self.status.value if self.status else RowStatus.FAILED.value,
            "error": self.error,
            "note": self.note,
            "request_id": self.request_id,
            "attempts": self.attempts,
            "submitted_by_this_run": self.submitted_by_this_run,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "queue_seconds": self.queue_seconds,
            "run_seconds": self.run_seconds,
            "total_seconds": self.total_seconds,
            "cost_usd": self.cost_usd,
            "estimated_cost_usd": self.estimated_cost_usd,
            "metadata_uri": self.metadata_uri,
            "video_uri": first.uri if first else None,
            "video_uris": self.video_uris or None,
            "size_bytes": first.size if first else None,
            "sha256": first.sha256 if first else None,
            "duration_s": video.get("duration_s"),
            "width": video.get("width"),
            "height": video.get("height"),
        }

    def sidecar(self) -> dict[str, Any]:
        """The row's `<id>.json`: what was asked, what RunComfy answered, what was stored."""
        data: dict[str, Any] = {
            "id": self.id,
            "model_id": self.model_id,
            "request_id": self.request_id,
            "inputs": self.sent,
            "submitted_at": self.submitted_at,
            "flow_run_id": self.flow_run_id,
            "prefect_runcomfy_version": __version__,
        }
        if self.sources is not None:
            data["sources"] = self.sources
        data.update(
            status=self.status.value if self.status else None,
            error=self.error,
            queue_seconds=self.queue_seconds,
            run_seconds=self.run_seconds,
            total_seconds=self.total_seconds,
            cost_usd=self.cost_usd,
            finished_at=self.finished_at,
        )
        if self.status is RowStatus.SUCCEEDED:
            data.update(
                created_at=self.created_at,
                api_finished_at=self.api_finished_at,
                output_urls=list(self.output_urls),
                files=[f.model_dump(mode="json") for f in self.files],
                stored_at=self.stored_at,
            )
        else:
            data.update(api_error=self.api_error, api_result=self.api_result)
        return data

    def ledger_fields(self) -> dict[str, Any]:
        """What the ledger keeps of a submitted row, so collecting it needs no table."""
        return {
            "request_id": self.request_id,
            "submitted_at": self.submitted_at,
            "inputs": self.sent,
            "row": self.row,
            "friendly_inputs": dict(self.inputs),
            "extras": {k: _jsonable(v) for k, v in self.extras.items()},
        }

    def artifact_row(self) -> dict[str, Any]:
        """The row in the run's table artifact: id, status, request id, seconds, video, error."""
        first = self.files[0].uri if self.files else None
        return {
            "id": self.id,
            "status": self.status.value if self.status else "",
            "request_id": self.request_id or "",
            "queue_s": "" if self.queue_seconds is None else round(self.queue_seconds, 1),
            "run_s": "" if self.run_seconds is None else round(self.run_seconds, 1),
            "video": first or "",
            "error": self.error or "",
        }

    @property
    def event_word(self) -> str:
        """The last word of the row's Prefect event: its status, or `skipped` when an earlier
        run had already stored it (`runcomfy.row.succeeded`, `runcomfy.row.skipped`, ...)."""
        if self.already_stored:
            return SKIPPED
        return self.status.value if self.status else RowStatus.FAILED.value

    def event_payload(self) -> dict[str, Any]:
        """What the row's Prefect event carries: enough to act on without opening the manifest."""
        first = self.files[0] if self.files else None
        error = self.error
        if error is not None and len(error) > EVENT_ERROR_CHARS:
            error = error[:EVENT_ERROR_CHARS] + "…"
        return {
            "id": self.id,
            "row": self.row,
            "status": self.status.value if self.status else None,
            "request_id": self.request_id,
            "video_uri": first.uri if first else None,
            "video_uris": self.video_uris,
            "metadata_uri": self.metadata_uri,
            "error": error,
            "cost_usd": self.cost_usd,
            "duration_s": ((first.video if first else None) or {}).get("duration_s"),
            "submitted_by_this_run": self.submitted_by_this_run,
            "already_stored": self.already_stored,
        }

    def asset_metadata(self, stored: StoredFile) -> dict[str, Any]:
        """The small metadata of one stored video's asset materialization."""
        video = stored.video or {}
        return {
            "row_id": self.id,
            "request_id": self.request_id,
            "duration_s": video.get("duration_s"),
            "width": video.get("width"),
            "height": video.get("height"),
            "size_bytes": stored.size,
            "sha256": stored.sha256,
            "cost_usd": self.cost_usd,
            "metadata_uri": self.metadata_uri,
        }

    # -- records read back ------------------------------------------------------------------

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

    @classmethod
    def from_ledger_entry(cls, entry: Any, **facts: Any) -> RowOutcome:
        """The record of a row known only from its ledger entry (what `collect` works from)."""
        extra = entry.model_extra or {}
        return cls(
            id=entry.id,
            row=extra.get("row"),
            inputs=extra.get("friendly_inputs") or {},
            extras=extra.get("extras") or {},
            request_id=entry.request_id,
            submitted_at=entry.submitted_at,
            attempts=entry.attempts,
            sent=extra.get("inputs"),
            **facts,
        )

    def with_sidecar(self, sidecar: Mapping[str, Any]) -> RowOutcome:
        """This record with a stored row's facts read from its sidecar (a row stored earlier)."""
        files = tuple(
            f for f in (_stored_file(d) for d in sidecar.get("files") or []) if f is not None
        )
        return self.evolve(
            status=_status(sidecar.get("status")) or self.status,
            error=sidecar.get("error") or self.error,
            request_id=sidecar.get("request_id") or self.request_id,
            queue_seconds=_number(sidecar.get("queue_seconds")),
            run_seconds=_number(sidecar.get("run_seconds")),
            total_seconds=_number(sidecar.get("total_seconds")),
            cost_usd=_number(sidecar.get("cost_usd")),
            submitted_at=sidecar.get("submitted_at"),
            finished_at=sidecar.get("finished_at"),
            sent=sidecar.get("inputs") if isinstance(sidecar.get("inputs"), dict) else self.sent,
            sources=sidecar.get("sources") if isinstance(sidecar.get("sources"), dict) else None,
            api_error=sidecar.get("api_error"),
            files=files or self.files,
        )

    @classmethod
    def from_manifest_row(cls, record: Mapping[str, Any]) -> RowOutcome:
        """The record of a manifest row (a row of an earlier run, or of a shard)."""
        from prefect_runcomfy.engine.outputs.manifest import INPUT_COLUMNS, RESULT_COLUMNS

        clean = {k: (None if is_missing(v) else v) for k, v in record.items() if k != "extras"}
        uris = clean.get("video_uris")
        uris = [u for u in uris if isinstance(u, str)] if uris is not None else []
        first = clean.get("video_uri")
        if isinstance(first, str) and first not in uris:
            uris.insert(0, first)
        video = {k: clean.get(k) for k in ("duration_s", "width", "height")}
        files = tuple(
            StoredFile(
                uri=uri,
                source_url="",
                size=int(clean.get("size_bytes") or 0) if n == 0 else 0,
                sha256=str(clean.get("sha256") or "") if n == 0 else "",
                video=video if n == 0 else None,
            )
            for n, uri in enumerate(uris)
        )
        known = set(RESULT_COLUMNS) | set(INPUT_COLUMNS)
        row = clean.get("row")
        return cls(
            id=str(clean.get("id") or ""),
            row=int(row) if row is not None else None,
            inputs={k: clean[k] for k in INPUT_COLUMNS if k in clean},
            extras={k: v for k, v in record.items() if k not in known},
            status=_status(clean.get("status")),
            error=clean.get("error"),
            notes=(str(clean["note"]),) if clean.get("note") else (),
            request_id=clean.get("request_id"),
            attempts=int(clean.get("attempts") or 0),
            submitted_by_this_run=bool(clean.get("submitted_by_this_run") or False),
            submitted_at=clean.get("submitted_at"),
            finished_at=clean.get("finished_at"),
            queue_seconds=_number(clean.get("queue_seconds")),
            run_seconds=_number(clean.get("run_seconds")),
            total_seconds=_number(clean.get("total_seconds")),
            cost_usd=_number(clean.get("cost_usd")),
            estimated_cost_usd=_number(clean.get("estimated_cost_usd")),
            metadata_uri=clean.get("metadata_uri"),
            files=files,
        )


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


def _status(value: Any) -> RowStatus | None:
    try:
        return RowStatus(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _stored_file(data: Any) -> StoredFile | None:
    """A sidecar's file entry, or None when it is not one (an older or hand-edited sidecar
    must not fail a row that is stored)."""
    if not isinstance(data, Mapping):
        return None
    try:
        return StoredFile.model_validate({"source_url": "", **data})
    except ValueError:
        return None


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


__all__ = [
    "RowOutcome",
    "StoredFile",
    "is_missing",
    "media_source",
    "sanitize_payload",
    "utc_now",
]
