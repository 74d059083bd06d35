"""What Prefect's event system hears about rows: one event per row's outcome, and an asset
materialization per stored video.

Every row that ends emits `runcomfy.row.<status>` (`succeeded`, `failed`, `cancelled`,
`invalid`, `timed_out`, `outcome_unknown`), or `runcomfy.row.skipped` when an earlier run had
already stored it. The event's resource is the row at its output location
(`runcomfy.row.<output_uri>/<id>`), so automations can follow one row across nightly runs; the
payload is `event_payload`. Prefect adds the flow run, flow, deployment and tags as
related resources by itself.

Each video this run stored is reported the way Prefect reports a materializing task's assets
(`prefect.asset.materialization.succeeded`, resource id = the video's URI, the input table as
upstream asset when it is a URI), with `asset_metadata` as payload. A URI Prefect
will not take as an asset key (a space, `%`, quotes, over 512 characters) is left out of the
assets with one warning per run; the row's event still names the video.

Emitting never fails a row: Prefect's events client sends in the background, and any error
here is logged.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.logging import get_logger

from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile
from prefect_runcomfy.engine.record.status import RowStatus

EVENT_PREFIX = "runcomfy.row"
"""Row events are named `runcomfy.row.<status>`."""

MATERIALIZED_BY = "prefect-runcomfy"
"""The tool named as the materializer of every video asset."""

EVENT_ERROR_CHARS = 2000
"""A row event carries at most this much of the row's error (events are capped at 1.5 MB)."""

SKIPPED = "skipped"
"""The event word of a row that was already stored by an earlier run (`runcomfy.row.skipped`)."""

logger = get_logger("prefect_runcomfy.events")


def asset_key(uri: str) -> str | None:
    """The Prefect asset key of a stored file's URI, or None when Prefect refuses it.

    A local path becomes `file://` + its absolute path (not percent-encoded: Prefect refuses
    `%`); other URIs are kept as they are.

    Example:
        >>> asset_key("s3://bucket/videos/ada.mp4")
        's3://bucket/videos/ada.mp4'
        >>> asset_key("s3://bucket/my videos/ada.mp4") is None
        True
    """
    from prefect.assets import Asset
    from pydantic import ValidationError

    key = uri if "://" in uri else "file://" + _resolved_path(uri)
    try:
        return Asset(key=key).key
    except ValidationError:
        return None


def _resolved_path(path: str) -> str:
    """`path` made absolute with its folder's links resolved (once per folder: a run asks for
    thousands of files in one folder, and each resolve is a system call per path part)."""
    folder, name = os.path.split(os.path.abspath(path))
    return (Path(_resolved_folder(folder)) / name).as_posix()


@functools.lru_cache(maxsize=64)
def _resolved_folder(folder: str) -> str:
    return str(Path(folder).resolve())


def event_word(outcome: RowOutcome) -> str:
    """The last word of the row's Prefect event: its status, or `skipped` when an earlier
    run had already stored it (`runcomfy.row.succeeded`, `runcomfy.row.skipped`, ...)."""
    if outcome.already_stored:
        return SKIPPED
    return outcome.status.value if outcome.status else RowStatus.FAILED.value


def event_payload(outcome: RowOutcome) -> dict[str, Any]:
    """What the row's Prefect event carries: enough to act on without opening the manifest."""
    first = outcome.files[0] if outcome.files else None
    error = outcome.error
    if error is not None and len(error) > EVENT_ERROR_CHARS:
        error = error[:EVENT_ERROR_CHARS] + "…"
    return {
        "id": outcome.id,
        "row": outcome.row,
        "status": outcome.status.value if outcome.status else None,
        "request_id": outcome.request_id,
        "video_uri": first.uri if first else None,
        "video_uris": outcome.video_uris,
        "metadata_uri": outcome.metadata_uri,
        "error": error,
        "cost_usd": outcome.cost_usd,
        "duration_s": ((first.video if first else None) or {}).get("duration_s"),
        "submitted_by_this_run": outcome.submitted_by_this_run,
        "already_stored": outcome.already_stored,
    }


def asset_metadata(outcome: RowOutcome, stored: StoredFile) -> dict[str, Any]:
    """The small metadata of one stored video's asset materialization."""
    video = stored.video or {}
    return {
        "row_id": outcome.id,
        "request_id": outcome.request_id,
        "duration_s": video.get("duration_s"),
        "width": video.get("width"),
        "height": video.get("height"),
        "size_bytes": stored.size,
        "sha256": stored.sha256,
        "cost_usd": outcome.cost_usd,
        "metadata_uri": outcome.metadata_uri,
    }


@dataclass
class RowEvents:
    """Says each finished row to Prefect's event system (see the module's docstring).

    Args:
        store: The run's output location (names each row's resource).
        table_uri: The input table's URI when it was given as one: the videos' upstream asset.
    """

    store: OutputStore
    table_uri: str | None = None
    _refused: list[str] = field(default_factory=list)

    def resource(self, outcome: RowOutcome) -> dict[str, str]:
        """The row at its output location, as an event resource."""
        return {
            "prefect.resource.id": f"{EVENT_PREFIX}.{self.store.uri(outcome.id)}",
            "prefect.resource.name": outcome.id,
            "runcomfy.row.id": outcome.id,
            "runcomfy.output-uri": self.store.uri(),
        }

    async def row_done(self, outcome: RowOutcome) -> None:
        """Emit the row's event, and an asset materialization for each video it stored now."""
        try:
            self._emit(outcome)
        except Exception as exc:  # an event is not worth a paid row
            logger.warning("Could not emit the event of row %s: %s", outcome.id, exc)

    def _emit(self, outcome: RowOutcome) -> None:
        from prefect.events import emit_event

        videos = (
            [(f, asset_key(f.uri)) for f in outcome.files]
            if outcome.status is RowStatus.SUCCEEDED and not outcome.already_stored
            else []
        )
        related = [
            {"prefect.resource.id": k, "prefect.resource.role": "video"} for _, k in videos if k
        ]
        emit_event(
            f"{EVENT_PREFIX}.{event_word(outcome)}",
            resource=self.resource(outcome),
            related=related,
            payload=event_payload(outcome),
        )
        for stored, key in videos:
            if key is None:
                self._refuse(stored.uri)
                continue
            self._materialize(key, asset_metadata(outcome, stored))

    def _materialize(self, key: str, metadata: dict[str, Any]) -> None:
        # Prefect's own format, as a task declared with `assets=[...]` would emit it.
        from prefect.assets import Asset
        from prefect.context import AssetContext
        from prefect.states import Completed

        upstream = asset_key(self.table_uri) if self.table_uri else None
        context = AssetContext(
            downstream_assets={Asset(key=key)},
            upstream_assets={Asset(key=upstream)} if upstream else set(),
            materialized_by=MATERIALIZED_BY,
            materialization_metadata={key: metadata},
        )
        context.emit_events(Completed())

    def _refuse(self, uri: str) -> None:
        if not self._refused:
            logger.warning(
                "Prefect does not take %s as an asset key (spaces, %%, quotes or over 512 "
                "characters); its video is not reported as an asset, but its row event names "
                "it. Later such videos of this run are left out silently.",
                uri,
            )
        self._refused.append(uri)


__all__ = [
    "EVENT_ERROR_CHARS",
    "EVENT_PREFIX",
    "MATERIALIZED_BY",
    "SKIPPED",
    "RowEvents",
    "asset_key",
    "asset_metadata",
    "event_payload",
    "event_word",
]
