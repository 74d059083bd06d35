"""The review page's rows: each manifest row read into a `ReviewRow`, what its card shows.

A row is read by the readers everything else uses: the manifest row by
`outcome_from_manifest_row`, its sidecar (when there is one) by `with_sidecar`. The manifest
speaks first; the sidecar fills what it lacks (the settings as sent, the probed video, the
facts of a manifest an older version wrote). Reading rows needs no page, so a page of some
rows can be drawn from them.

```python
rows = read_rows(manifest, read_review_sidecars(store, ids), model)
rows[0].status, rows[0].videos        # ('succeeded', ['alice.mp4'])
```
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prefect_runcomfy.engine.inputs.ids import id_problem
from prefect_runcomfy.engine.outputs.manifest import outcome_from_manifest_row
from prefect_runcomfy.engine.outputs.sidecar import read_sidecars, sidecar_name, with_sidecar
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import (
    RowOutcome,
    StoredFile,
    as_number,
    as_text,
    is_blank,
    is_missing,
)
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.models.base import ModelSpec

logger = logging.getLogger(__name__)

_FILLED = (
    "status",
    "error",
    "request_id",
    "queue_seconds",
    "run_seconds",
    "total_seconds",
    "cost_usd",
    "finished_at",
    "sent",
    "sources",
)
"""The facts a sidecar gives a row whose manifest row lacks them."""


@dataclass
class ReviewRow:
    """One row as its card shows it: plain text and numbers, None where nothing is known."""

    id: str
    status: str
    """The row's status, or the manifest's own word when it is none of ours."""
    prompt: str | None = None
    error: str | None = None
    note: str | None = None
    request_id: str | None = None
    queue_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None
    cost: float | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    size: float | None = None
    finished_at: str | None = None
    videos: list[str] = field(default_factory=list)
    """The row's videos by file name, first one first (the page links files beside it)."""
    metadata: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    video_facts: str | None = None
    image: str | None = None
    """The input portrait as given (to make a thumbnail from; never shown)."""

    @property
    def file_id(self) -> str | None:
        """The id when files may be named by it (previews), else None."""
        return None if id_problem(self.id) else self.id


_LOOPBACK = re.compile(
    r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\]|0\.0\.0\.0)(:\d+)?(/|$)", re.IGNORECASE
)


def file_name(uri: Any) -> str | None:
    """The last path part of a local path or URL: links stay relative to the page's folder."""
    text = as_text(uri)
    if not text:
        return None
    name = text.replace("\\", "/").split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name or None


def short_source(value: Any, limit: int = 90) -> str | None:
    """A media source for display: no query string (pre-signed ones hold credentials), no
    inline bytes, not longer than `limit` characters."""
    text = None if is_blank(value) else as_text(value)
    if not text:
        return None
    if text.startswith("data:"):
        return text.split(",", 1)[0] + ",…"
    text = text.split("?", 1)[0].split("#", 1)[0]
    text = re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", text)  # no user:password@
    if _LOOPBACK.match(text):
        # A server on the machine that ran the job (the demo's sandbox): its port is gone
        # with it, so the card names the file and says so instead of showing a dead address.
        name = text.rstrip("/").rsplit("/", 1)[-1] or "a file"
        text = f"{name} (served on this machine during the run; not kept)"
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2) :]


def file_ids(manifest: pd.DataFrame) -> list[str]:
    """The manifest's row ids that files may be named by (sidecars, previews)."""
    ids = manifest["id"] if "id" in manifest.columns else []
    return [i for i in (as_text(v) for v in ids) if i and not id_problem(i)]


def read_review_sidecars(store: OutputStore, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The sidecars of rows `ids` by row id; none when the store cannot be read (the page
    is drawn from the manifest alone then)."""
    try:
        return read_sidecars(store, ids)
    except Exception as exc:
        logger.warning("Review page: cannot read the sidecars: %s", exc)
        return {}


def read_rows(
    manifest: pd.DataFrame | None, sidecars: Mapping[str, Mapping[str, Any]], model: ModelSpec
) -> list[ReviewRow]:
    """Every manifest row (jobs of `model`) as a `ReviewRow`; `sidecars` by row id (or by
    `<id>.json`)."""
    records = manifest.to_dict(orient="records") if manifest is not None else []
    return [read_row(number, record, sidecars, model) for number, record in enumerate(records)]


def read_row(
    number: int,
    record: Mapping[str, Any],
    sidecars: Mapping[str, Mapping[str, Any]],
    model: ModelSpec,
) -> ReviewRow:
    """Manifest row `record` (the `number`th) as its card shows it, its sidecar filling in."""
    listed = outcome_from_manifest_row(record, model.input_names)
    row_id = listed.id or f"row {number}"
    sidecar = sidecars.get(row_id)
    if sidecar is None:
        sidecar = sidecars.get(sidecar_name(row_id))
    if not isinstance(sidecar, Mapping) or not sidecar:
        sidecar = None
    stored = with_sidecar(RowOutcome(id=row_id), sidecar) if sidecar is not None else None
    if not listed.files and not (stored and any(f.uri for f in stored.files)):
        # Neither names the video: it is `<id>.mp4` beside the page, with the manifest's facts.
        beside = {**record, "video_uri": f"{row_id}{model.output_suffix}"}
        listed = outcome_from_manifest_row(beside, model.input_names)
    outcome = _filled(listed, stored) if stored is not None else listed
    status = outcome.status or (_shown(record.get("status")) or "unknown").strip()
    return _review_row(row_id, status, outcome, model, has_sidecar=sidecar is not None)


def _review_row(
    row_id: str, status: str, outcome: RowOutcome, model: ModelSpec, *, has_sidecar: bool
) -> ReviewRow:
    first = outcome.files[0] if outcome.files else None
    probed = (first.video if first else None) or {}
    width, height = as_number(probed.get("width")), as_number(probed.get("height"))
    succeeded = status == RowStatus.SUCCEEDED
    return ReviewRow(
        id=row_id,
        status=str(status),
        prompt=_input(outcome, model, model.prompt),
        error=_shown(outcome.error),
        note=_shown(outcome.note),
        request_id=_shown(outcome.request_id),
        queue_s=outcome.queue_seconds,
        run_s=outcome.run_seconds,
        total_s=outcome.total_seconds,
        cost=outcome.cost_usd,
        duration=as_number(probed.get("duration_s")),
        width=int(width) if width else None,
        height=int(height) if height else None,
        size=(first.size or None) if first else None,
        finished_at=_shown(outcome.finished_at),
        videos=_videos(outcome, f"{row_id}{model.output_suffix}") if succeeded else [],
        metadata=file_name(outcome.metadata_uri) or (sidecar_name(row_id) if has_sidecar else None),
        parameters=_parameters(outcome, model),
        sources=_sources(outcome, model),
        video_facts=_video_facts(probed),
        image=_input(outcome, model, model.first_media("image")),
    )


def _input(outcome: RowOutcome, model: ModelSpec, name: str | None) -> str | None:
    """Input `name` as given, else as it was sent (None when the model has no such input)."""
    if name is None:
        return None
    sent = outcome.sent or {}
    return _shown(outcome.inputs.get(name), sent.get(model.api_keys.get(name, name)))


def _filled(listed: RowOutcome, stored: RowOutcome) -> RowOutcome:
    """`listed` (the manifest's record) with what it lacks taken from `stored` (the sidecar's)."""
    gaps = {name: getattr(stored, name) for name in _FILLED if is_blank(getattr(listed, name))}
    return listed.evolve(**gaps, files=_filled_files(listed.files, stored.files))


def _filled_files(
    listed: tuple[StoredFile, ...], stored: tuple[StoredFile, ...]
) -> tuple[StoredFile, ...]:
    """The manifest's files, the first one's size and probe filled from the sidecar's."""
    if not listed or not stored:
        return listed or stored
    first, facts = listed[0], stored[0]
    known = {k: v for k, v in (first.video or {}).items() if not is_missing(v)}
    filled = first.model_copy(
        update={"size": first.size or facts.size, "video": {**(facts.video or {}), **known}}
    )
    return (filled, *listed[1:])


def _shown(*values: Any) -> str | None:
    """The first of `values` that holds something, as text."""
    return next((as_text(v) for v in values if not is_blank(v)), None)


def _videos(outcome: RowOutcome, beside: str) -> list[str]:
    return [n for n in (file_name(uri) for uri in outcome.video_uris) if n] or [beside]


def _parameters(outcome: RowOutcome, model: ModelSpec) -> list[tuple[str, str]]:
    shown = ((name, _input(outcome, model, name)) for name in model.settings)
    return [(name, value) for name, value in shown if value is not None]


def _sources(outcome: RowOutcome, model: ModelSpec) -> list[tuple[str, str]]:
    """Each media input as given, else as the sidecar shows it, else as it was sent."""
    given, sent = outcome.sources or {}, outcome.sent or {}
    sources = []
    for name in model.media:
        sent_value = sent.get(model.api_keys.get(name, name))
        value = _shown(outcome.inputs.get(name), given.get(name), sent_value)
        shown = short_source(value)
        if shown:
            sources.append((name, shown))
    return sources


def _video_facts(probed: Mapping[str, Any]) -> str | None:
    facts = []
    if probed.get("video_codec"):
        facts.append(str(probed["video_codec"]))
    fps = as_number(probed.get("fps"))
    if fps:
        facts.append(f"{fps:g} fps")
    if probed.get("audio_codec"):
        facts.append(f"audio {probed['audio_codec']}")
    return " · ".join(facts) or None


__all__ = [
    "ReviewRow",
    "file_ids",
    "file_name",
    "read_review_sidecars",
    "read_row",
    "read_rows",
    "short_source",
]
