"""What Prefect's event system hears about rows: one event per row's outcome, and one asset
materialization per run for the output location it stored videos in.

Every row that ends emits `runcomfy.row.<status>` (`succeeded`, `failed`, `cancelled`,
`invalid`, `timed_out`, `outcome_unknown`), or `runcomfy.row.skipped` when an earlier run had
already stored it. The event's resource is the row at its output location
(`runcomfy.row.<output_uri>/<id>`), so automations can follow one row across nightly runs; the
payload is `event_payload` (with each stored video's size, sha256, duration and frame size),
and each video this run stored is a related resource (role `video`). Prefect adds the flow
run, flow, deployment and tags as related resources by itself.

The output location is the asset (its URI: `s3://bucket/videos`, `file:///abs/out`): a run
that stored videos reports it once, at its end, the way Prefect reports a materializing task's
assets (`prefect.asset.materialization.succeeded`, the input table as upstream asset when it
is a URI, `location_metadata` as payload). One event per run, not one per video: a night of
20,000 rows would otherwise cost the server 40,000 asset events and 20,000 assets. A location
Prefect will not take as an asset key (a space, `%`, quotes, over 512 characters) is not
reported as an asset, with one warning; the row events still name every video.

Emitting never fails a row: Prefect's events client sends in the background, and any error
here is logged.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.logging import get_logger

from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile
from prefect_runcomfy.engine.record.status import RowStatus

EVENT_PREFIX = "runcomfy.row"
"""Row events are named `runcomfy.row.<status>`."""

MATERIALIZED_BY = "prefect-runcomfy"
"""The tool named as the materializer of the output locations' assets."""

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
        "videos": [video_metadata(stored) for stored in outcome.files],
        "submitted_by_this_run": outcome.submitted_by_this_run,
        "already_stored": outcome.already_stored,
    }


def video_metadata(stored: StoredFile) -> dict[str, Any]:
    """The small metadata of one stored video, as the row's event carries it."""
    video = stored.video or {}
    return {
        "uri": stored.uri,
        "duration_s": video.get("duration_s"),
        "width": video.get("width"),
        "height": video.get("height"),
        "size_bytes": stored.size,
        "sha256": stored.sha256,
    }


@dataclass
class RowEvents:
    """Says each finished row to Prefect's event system, and the run's stored videos once at
    its end (see the module's docstring).

    Args:
        store: The run's output location (names each row's resource; the asset).
        table_uri: The input table's URI when it was given as one: the upstream asset.
    """

    store: OutputStore
    table_uri: str | None = None
    videos_stored: int = 0
    bytes_stored: int = 0
    cost_usd: float = 0.0

    def resource(self, outcome: RowOutcome) -> dict[str, str]:
        """The row at its output location, as an event resource."""
        return {
            "prefect.resource.id": f"{EVENT_PREFIX}.{self.store.uri(outcome.id)}",
            "prefect.resource.name": outcome.id,
            "runcomfy.row.id": outcome.id,
            "runcomfy.output-uri": self.store.uri(),
        }

    async def row_done(self, outcome: RowOutcome) -> None:
        """Emit the row's event, and count the videos it stored now."""
        try:
            self._emit(outcome)
        except Exception as exc:  # an event is not worth a paid row
            logger.warning("Could not emit the event of row %s: %s", outcome.id, exc)

    def _emit(self, outcome: RowOutcome) -> None:
        from prefect.events import emit_event

        stored_now = outcome.status is RowStatus.SUCCEEDED and not outcome.already_stored
        videos = outcome.files if stored_now else []
        self.videos_stored += len(videos)
        self.bytes_stored += sum(f.size or 0 for f in videos)
        self.cost_usd += (outcome.cost_usd or 0.0) if videos else 0.0
        related = [
            {"prefect.resource.id": key, "prefect.resource.role": "video"}
            for key in (asset_key(f.uri) for f in videos)
            if key
        ]
        emit_event(
            f"{EVENT_PREFIX}.{event_word(outcome)}",
            resource=self.resource(outcome),
            related=related,
            payload=event_payload(outcome),
        )

    def location_metadata(self) -> dict[str, Any]:
        """What the run's materialization of its output location carries."""
        return {
            "videos_stored": self.videos_stored,
            "bytes_stored": self.bytes_stored,
            "cost_usd": round(self.cost_usd, 6),
            "output_uri": self.store.uri(),
        }

    def run_done(self) -> None:
        """Report the output location as materialized, when this run stored any video."""
        if not self.videos_stored:
            return
        key = asset_key(self.store.uri())
        if key is None:
            logger.warning(
                "Prefect does not take %s as an asset key (spaces, %%, quotes or over 512 "
                "characters); the run's videos are not reported as an asset, but every row "
                "event names its video.",
                self.store.uri(),
            )
            return
        try:
            self._materialize(key, self.location_metadata())
        except Exception as exc:
            logger.warning("Could not report the run's videos as an asset: %s", exc)

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


__all__ = [
    "EVENT_ERROR_CHARS",
    "EVENT_PREFIX",
    "MATERIALIZED_BY",
    "SKIPPED",
    "RowEvents",
    "asset_key",
    "event_payload",
    "event_word",
    "video_metadata",
]
