"""The review page: `<output_uri>/index.html`, one card per manifest row, rewritten every run.

The page is a single self-contained HTML file: inline CSS, an inline SVG chart and a few lines
of inline JavaScript (status filters; everything is readable without it). It loads nothing
from the network and links only file names in its own folder (`alice.mp4`,
`alice.poster.jpg`, `alice.json`, `manifest.parquet`), so it works opened from a local folder,
downloaded from a bucket, or served by any static host.

The markup is the Jinja2 template `templates/review.html.j2` (with `review.css` and
`review.js` beside it), rendered with autoescaping on: every value from the data (prompts are
user text) is HTML-escaped, and ids in links are percent-encoded as well. This module only
reads the rows and prepares what the template shows, as plain strings and numbers.

Beside the videos it relies on two previews per row (see `prefect_runcomfy.engine.outputs.previews`):
`<id>.poster.jpg` (the video's poster frame) and `<id>.portrait.jpg` (the input portrait).
`write_review_page` creates the ones that are missing.

```python
store = OutputStore("s3://bucket/videos")
manifest = store.read_manifest()
write_review_page(store, manifest)   # 's3://bucket/videos/index.html'
```
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import math
import os
import posixpath
import re
import shlex
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
import pandas as pd

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.downloads import shared_ssl_context
from prefect_runcomfy.engine.outputs.previews import (
    MAX_IMAGE_BYTES,
    portrait_name,
    poster_name,
    store_poster,
    thumbnail,
)
from prefect_runcomfy.engine.outputs.scratch import staging_file, staging_folder
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.report.summary import RunSummary, summarize

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
"""The review page's file name under the output location."""

CHART_MAX_ROWS = 200
"""The chart shows at most this many rows (the first ones, scrolling); the cards show them all."""

_TEMPLATE = "review.html.j2"
_STATUS_LABELS = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "invalid": "invalid",
    "timed_out": "timed out",
    "outcome_unknown": "outcome unknown",
}
# Friendly names of the generation settings, and the raw API keys the sidecar stores them under.
_PARAMETERS = [
    ("resolution", "245_valuex246_value"),
    ("frames", "270_value"),
    ("seed", "128_seed"),
    ("steps", "128_steps"),
    ("shift", "128_shift"),
    ("cfg", "128_cfg"),
]

# -- what to do, per status ------------------------------------------------------------------


def advice_for(status: str, *, output_uri: str | None = None) -> str | None:
    """What the user should do about a row in `status` (plain text), or None when nothing.

    Example:
        ```python
        advice_for("invalid")  # 'Fix this row in the input table ... and run again. ...'
        ```
    """
    target = shlex.quote(output_uri) if output_uri else "OUTPUT"
    advice = {
        "invalid": (
            "Fix this row in the input table (the error names the column) and run again. "
            "Nothing was submitted or billed for it."
        ),
        "failed": (
            "RunComfy did not deliver a video. Check the error; if the input is fine, run again "
            "with retry_failed=True (CLI: --retry-failed) to pay for another try."
        ),
        "cancelled": (
            "The job was cancelled before it produced a video. To submit it anew, run again "
            "with retry_failed=True (CLI: --retry-failed)."
        ),
        "timed_out": (
            "The wait ended before the job finished, or its video's download passed its "
            "deadline; the job may still be running (and billed) on RunComfy, or be done and "
            f"waiting there. Collect it without paying again: prefect-runcomfy collect {target} "
            "(or run the same table again). If the error says it was cancelled while still "
            "queued, nothing was billed: run again with retry_failed=True."
        ),
        "outcome_unknown": (
            "A submit was sent but its answer was lost, so a job may have run and been billed. "
            "Check your RunComfy dashboard for it first; then, to submit it anew, run again "
            "with resubmit_unknown=True (CLI: --resubmit-unknown)."
        ),
    }
    return advice.get(status)


# -- reading rows tolerantly -----------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _number(value: Any) -> float | None:
    if _missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _list(value: Any) -> list[Any]:
    if value is None or isinstance(value, float):  # None or NaN: no list at all
        return []
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(value)
            if isinstance(parsed, list):
                return parsed
        return [value]
    try:
        return [v for v in list(value) if not _missing(v)]
    except TypeError:
        return []


def _file_name(uri: Any) -> str | None:
    """The last path part of a local path or URL: links stay relative to the page's folder."""
    text = _text(uri)
    if not text:
        return None
    name = text.replace("\\", "/").split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name or None


def _file_url(name: Any) -> str:
    # Percent-encode every reserved character (':' included), so an id can never become a
    # scheme (`javascript:`), a path or a query; autoescaping then makes it attribute-safe.
    return urllib.parse.quote(str(name), safe="-_.~")


def _short_source(value: Any, limit: int = 90) -> str | None:
    """A media source for display: no query string (pre-signed ones hold credentials), no
    inline bytes, not longer than `limit` characters."""
    text = _text(value)
    if not text:
        return None
    if text.startswith("data:"):
        return text.split(",", 1)[0] + ",…"
    text = text.split("?", 1)[0].split("#", 1)[0]
    text = re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", text)  # no user:password@
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2) :]


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _money(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.2f}" if value >= 100 else f"${value:,.4f}".rstrip("0").rstrip(".")


def _size(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "—"  # pragma: no cover


@dataclass
class _Row:
    """One manifest row with the sidecar's facts filled in where the manifest lacks them."""

    id: str
    status: str
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
    metadata: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    video_facts: str | None = None


def _sidecar_for(sidecars: Mapping[str, Any], row_id: str) -> dict[str, Any]:
    found = sidecars.get(row_id)
    if found is None:
        found = sidecars.get(f"{row_id}.json")
    return found if isinstance(found, dict) else {}


def _pick(record: Mapping[str, Any], column: str, *fallbacks: Any) -> Any:
    """The manifest's value of `column`, else the first of `fallbacks` that is not missing."""
    value = record.get(column)
    if not _missing(value):
        return value
    return next((candidate for candidate in fallbacks if not _missing(candidate)), None)


def _videos(
    record: Mapping[str, Any], files: list[dict[str, Any]], row_id: str, status: str
) -> list[str]:
    if status != "succeeded":
        return []
    videos = [n for n in (_file_name(v) for v in _list(record.get("video_uris"))) if n]
    first = _file_name(_pick(record, "video_uri", files[0].get("uri") if files else None))
    if first and first not in videos:
        videos.insert(0, first)
    if not videos and files:
        videos = [n for n in (_file_name(f.get("uri")) for f in files) if n]
    return videos or [f"{row_id}.mp4"]


def _parameters(record: Mapping[str, Any], inputs: dict[str, Any]) -> list[tuple[str, str]]:
    shown = ((name, _text(_pick(record, name, inputs.get(key)))) for name, key in _PARAMETERS)
    return [(name, value) for name, value in shown if value is not None]


def _sources(
    record: Mapping[str, Any], sidecar: dict[str, Any], inputs: dict[str, Any]
) -> list[tuple[str, str]]:
    given = sidecar.get("sources")
    given = given if isinstance(given, dict) else {}
    sources = []
    for kind, raw_key in (("image", "284_image"), ("audio", "125_audio")):
        shown = _short_source(_pick(record, kind, given.get(kind), inputs.get(raw_key)))
        if shown:
            sources.append((kind, shown))
    return sources


def _video_facts(probed: dict[str, Any]) -> str | None:
    facts = []
    if probed.get("video_codec"):
        facts.append(str(probed["video_codec"]))
    fps = _number(probed.get("fps"))
    if fps:
        facts.append(f"{fps:g} fps")
    if probed.get("audio_codec"):
        facts.append(f"audio {probed['audio_codec']}")
    return " · ".join(facts) or None


def _row(number: int, record: Mapping[str, Any], sidecars: Mapping[str, Any]) -> _Row:
    row_id = _text(record.get("id")) or f"row {number}"
    sidecar = _sidecar_for(sidecars, row_id)
    inputs = sidecar.get("inputs") or {}
    inputs = inputs if isinstance(inputs, dict) else {}
    files = [f for f in (sidecar.get("files") or []) if isinstance(f, dict)]
    probed = (files[0].get("video") if files else None) or {}
    probed = probed if isinstance(probed, dict) else {}
    status = (_text(_pick(record, "status", sidecar.get("status"))) or "unknown").strip()
    width = _number(_pick(record, "width", probed.get("width")))
    height = _number(_pick(record, "height", probed.get("height")))
    size = _pick(record, "size_bytes", files[0].get("size") if files else None)
    metadata = _file_name(record.get("metadata_uri")) or (f"{row_id}.json" if sidecar else None)
    return _Row(
        id=row_id,
        status=status,
        prompt=_text(_pick(record, "prompt", inputs.get("241_positive_prompt"))),
        error=_text(_pick(record, "error", sidecar.get("error"))),
        note=_text(record.get("note")),
        request_id=_text(_pick(record, "request_id", sidecar.get("request_id"))),
        queue_s=_number(_pick(record, "queue_seconds", sidecar.get("queue_seconds"))),
        run_s=_number(_pick(record, "run_seconds", sidecar.get("run_seconds"))),
        total_s=_number(_pick(record, "total_seconds", sidecar.get("total_seconds"))),
        cost=_number(_pick(record, "cost_usd", sidecar.get("cost_usd"))),
        duration=_number(_pick(record, "duration_s", probed.get("duration_s"))),
        width=int(width) if width else None,
        height=int(height) if height else None,
        size=_number(size),
        finished_at=_text(_pick(record, "finished_at", sidecar.get("finished_at"))),
        videos=_videos(record, files, row_id, status),
        metadata=metadata,
        parameters=_parameters(record, inputs),
        sources=_sources(record, sidecar, inputs),
        video_facts=_video_facts(probed),
    )


def _rows(manifest: pd.DataFrame | None, sidecars: Mapping[str, Any]) -> list[_Row]:
    records = manifest.to_dict(orient="records") if manifest is not None else []
    return [_row(number, record, sidecars) for number, record in enumerate(records)]


def _summary(rows: list[_Row]) -> RunSummary:
    # The tiles count what the cards show: the manifest with the sidecars' facts filled in.
    return summarize(
        pd.DataFrame(
            {
                "status": [r.status for r in rows],
                "cost_usd": [r.cost for r in rows],
                "duration_s": [r.duration for r in rows],
                "run_seconds": [r.run_s for r in rows],
            }
        )
    )


# -- what the template shows -----------------------------------------------------------------


@dataclass(frozen=True)
class _Tile:
    css: str
    value: str
    label: str


@dataclass(frozen=True)
class _Filter:
    status: str
    status_class: str
    label: str
    count: int


@dataclass(frozen=True)
class _Tick:
    x: str
    text: str


@dataclass(frozen=True)
class _Bar:
    tip: str
    label: str
    y: int
    text_y: int
    queue_w: str
    run_x: str
    run_w: str
    value_x: str
    value: str


@dataclass(frozen=True)
class _Chart:
    """A horizontal bar per row: queue time then run time, on one shared seconds scale."""

    width: int
    height: int
    label_x: int
    bar_x: int
    bar_h: int
    grid_top: int
    grid_bottom: int
    tick_y: int
    ticks: list[_Tick]
    bars: list[_Bar]
    hidden_rows: int


@dataclass(frozen=True)
class _Fact:
    name: str
    value: str
    is_code: bool = False


@dataclass(frozen=True)
class _Link:
    name: str
    """The file linked, beside the page."""
    text: str
    download: bool = False


@dataclass(frozen=True)
class _Problem:
    heading: str
    error: str
    advice: list[tuple[str, bool]]
    """The advice in pieces, each (text, shown as code)."""


@dataclass(frozen=True)
class _Card:
    id: str
    status: str
    status_class: str
    label: str
    video: str | None
    """The video shown in the player; None when there is none beside the page."""
    poster: str | None
    width: int | None
    height: int | None
    placeholder: str
    """Shown instead of a player."""
    portrait: str | None
    prompt: str | None
    parameters: list[tuple[str, str]]
    sources: list[tuple[str, str]]
    problem: _Problem | None
    note: str | None
    facts: list[_Fact]
    links: list[_Link]


@dataclass(frozen=True)
class _Page:
    title: str
    generator: str
    generated_at: str
    row_count: int
    rows_word: str
    manifest: str
    manifest_linked: bool
    tiles: list[_Tile]
    chart: _Chart | None
    filters: list[_Filter]
    cards: list[_Card]


def _status_class(status: str) -> str:
    # Only known statuses become CSS classes; anything else from the data is 'other'.
    return status.replace("_", "-") if status in _STATUS_LABELS else "other"


def _label(status: str) -> str:
    return _STATUS_LABELS.get(status, status)


def _tiles(summary: RunSummary) -> list[_Tile]:
    tiles = [
        _Tile(f"s-{_status_class(status)}", str(count), _label(status))
        for status, count in summary.counts.items()
        if count or status == "succeeded"
    ]
    known_cost = summary.total_cost is not None
    cost_note = f" · {summary.unknown_cost} unknown" if known_cost and summary.unknown_cost else ""
    return [
        *tiles,
        _Tile("total", _money(summary.total_cost), f"total cost{cost_note}"),
        _Tile("total", _seconds(summary.video_seconds), "of video"),
        _Tile("total", _seconds(summary.run_seconds), "run time (sum)"),
    ]


def _filters(summary: RunSummary) -> list[_Filter]:
    return [
        _Filter(status, _status_class(status), _label(status), count)
        for status, count in summary.nonzero_counts.items()
    ]


def _chart(rows: list[_Row]) -> _Chart | None:
    timed = [r for r in rows if r.queue_s is not None or r.run_s is not None]
    if not timed:
        return None
    shown = timed[:CHART_MAX_ROWS]
    longest = max((r.queue_s or 0) + (r.run_s or 0) for r in shown) or 1.0
    step = _nice_step(longest)
    axis_max = step * math.ceil(longest / step)
    label_w, bar_w, bar_h, gap, top = 150, 560, 14, 8, 22
    height = top + len(shown) * (bar_h + gap) + 6
    ticks = round(axis_max / step)
    bars = []
    for i, row in enumerate(shown):
        y = top + i * (bar_h + gap)
        queue, run = row.queue_s or 0.0, row.run_s or 0.0
        qw, rw = bar_w * queue / axis_max, bar_w * run / axis_max
        bars.append(
            _Bar(
                tip=f"{row.id}: queued {_seconds(row.queue_s)}, ran {_seconds(row.run_s)}",
                label=row.id if len(row.id) <= 22 else row.id[:21] + "…",
                y=y,
                text_y=y + bar_h - 3,
                queue_w=f"{qw:.1f}",
                run_x=f"{label_w + qw:.1f}",
                run_w=f"{rw:.1f}",
                value_x=f"{label_w + qw + rw + 6:.1f}",
                value=_seconds(queue + run),
            )
        )
    return _Chart(
        width=label_w + bar_w + 70,
        height=height,
        label_x=label_w - 8,
        bar_x=label_w,
        bar_h=bar_h,
        grid_top=top - 4,
        grid_bottom=height - 4,
        tick_y=top - 8,
        ticks=[
            _Tick(f"{label_w + bar_w * i / ticks:.1f}", f"{step * i:g} s") for i in range(ticks + 1)
        ],
        bars=bars,
        hidden_rows=len(timed) - len(shown),
    )


def _nice_step(longest: float) -> float:
    raw = longest / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover


# Commands and options inside the advice, set as code so they stand out.
_CODE = re.compile(
    r"prefect-runcomfy collect .*?(?= \(or run)|retry_failed=True|resubmit_unknown=True"
    r"|--retry-failed|--resubmit-unknown"
)


def _advice_parts(advice: str) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    end = 0
    for match in _CODE.finditer(advice):
        if match.start() > end:
            parts.append((advice[end : match.start()], False))
        parts.append((match.group(0), True))
        end = match.end()
    if end < len(advice):
        parts.append((advice[end:], False))
    return parts


def _problem(row: _Row, output_uri: str | None) -> _Problem | None:
    if row.status == "succeeded":
        return None
    advice = advice_for(row.status, output_uri=output_uri)
    return _Problem(
        heading=_label(row.status).capitalize(),
        error=row.error or "no error message was recorded",
        advice=_advice_parts(advice) if advice else [],
    )


def _facts(row: _Row) -> list[_Fact]:
    facts: list[_Fact] = []
    if row.status != "invalid" or row.request_id:  # an invalid row was never submitted
        facts += [
            _Fact("request id", row.request_id, is_code=True)
            if row.request_id
            else _Fact("request id", "none"),
            _Fact("queued", _seconds(row.queue_s)),
            _Fact("ran", _seconds(row.run_s)),
        ]
    if row.cost is not None:
        facts.append(_Fact("cost", _money(row.cost)))
    if row.duration is not None:
        facts.append(_Fact("duration", _seconds(row.duration)))
    if row.width and row.height:
        facts.append(_Fact("size", f"{row.width}\u00d7{row.height}, {_size(row.size)}"))
    if row.video_facts:
        facts.append(_Fact("encoding", row.video_facts))
    if row.finished_at:
        facts.append(_Fact("finished", row.finished_at.replace("T", " ")[:19] + " UTC"))
    return facts


def _links(row: _Row, have: Callable[[str], bool], video: str | None) -> list[_Link]:
    links = [_Link(extra, extra) for extra in row.videos[1:] if have(extra)]
    if video:
        links.insert(0, _Link(video, "video", download=True))
    if row.metadata and have(row.metadata):
        links.append(_Link(row.metadata, "metadata (JSON)"))
    return links


def _card(row: _Row, have: Callable[[str], bool], output_uri: str | None) -> _Card:
    first = row.videos[0] if row.videos else None
    video = first if first and have(first) else None
    if first and not video:
        placeholder = f"{first} is not in this folder"
    else:
        placeholder = f"no video: {_label(row.status)}"
    return _Card(
        id=row.id,
        status=row.status,
        status_class=_status_class(row.status),
        label=_label(row.status),
        video=video,
        poster=poster_name(row.id) if video and have(poster_name(row.id)) else None,
        width=row.width,
        height=row.height,
        placeholder=placeholder,
        portrait=portrait_name(row.id) if have(portrait_name(row.id)) else None,
        prompt=row.prompt,
        parameters=row.parameters,
        sources=row.sources,
        problem=_problem(row, output_uri),
        note=row.note,
        facts=_facts(row),
        links=_links(row, have, video),
    )


# -- the page --------------------------------------------------------------------------------


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("prefect_runcomfy.report", "templates"),
        autoescape=True,  # every value is user text until proven otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["file_url"] = _file_url
    return environment.get_template(_TEMPLATE)


def render_review_html(
    manifest: pd.DataFrame,
    *,
    sidecars: Mapping[str, Mapping[str, Any]],
    title: str,
    generated_at: str,
    assets: Collection[str] | None = None,
    output_uri: str | None = None,
) -> str:
    """The review page for `manifest` as one self-contained HTML document. Pure: no I/O.

    Args:
        manifest: the manifest (any subset of its columns; older runs' manifests work).
        sidecars: each row's sidecar JSON, keyed by row id (or by `<id>.json`); missing rows
            are fine. Used for what the manifest lacks (parameters as sent, probed facts).
        title: the page title (escaped like everything else).
        generated_at: when the page was made, shown as given.
        assets: names of the files beside the page. When given, posters, portraits, videos
            and sidecars not in it are not linked (no broken images); None assumes all exist.
        output_uri: shown in the `prefect-runcomfy collect` advice for timed-out rows.

    Example:
        ```python
        page = render_review_html(manifest, sidecars={}, title="Videos", generated_at="now")
        ```
    """
    rows = _rows(manifest, sidecars)
    have: Callable[[str], bool] = (
        (lambda name: True) if assets is None else set(assets).__contains__
    )
    summary = _summary(rows)
    page = _Page(
        title=title,
        generator=f"prefect-runcomfy {__version__}",
        generated_at=generated_at,
        row_count=len(rows),
        rows_word="row" if len(rows) == 1 else "rows",
        manifest=MANIFEST_NAME,
        manifest_linked=have(MANIFEST_NAME),
        tiles=_tiles(summary),
        chart=_chart(rows),
        filters=_filters(summary),
        cards=[_card(row, have, output_uri) for row in rows],
    )
    return _template().render(page=page)


# -- writing it ------------------------------------------------------------------------------


def _read_limited(stream: Any) -> bytes | None:
    data = stream.read(MAX_IMAGE_BYTES + 1)
    return None if len(data) > MAX_IMAGE_BYTES else bytes(data)


def _decode_data_uri(value: str) -> bytes | None:
    head, _, payload = value.partition(",")
    try:
        if head.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


def read_input_image(
    value: str, *, storage_options: dict[str, Any] | None = None, timeout_s: float = 20.0
) -> bytes | None:
    """The bytes of a row's `image` as the user gave it, or None if it cannot be read.

    `http(s)://` is fetched with a plain GET (no credentials of ours are ever sent); `data:`
    URIs are decoded; anything else (`s3://`, `gs://`, a local path) is read through fsspec
    with `storage_options`. Never raises.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        if value.startswith("data:"):
            return _decode_data_uri(value)
        if value.lower().startswith(("http://", "https://")):
            import httpx

            with (
                httpx.Client(
                    timeout=timeout_s, follow_redirects=True, verify=shared_ssl_context()
                ) as http,
                http.stream("GET", value) as response,
            ):
                if response.status_code != 200:
                    return None
                chunks, total = [], 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > MAX_IMAGE_BYTES:
                        return None
                    chunks.append(chunk)
                return b"".join(chunks)
        import fsspec

        with fsspec.open(value, "rb", **(storage_options or {})) as fh:
            return _read_limited(fh)
    except Exception as exc:  # any failure only means "no thumbnail"
        logger.debug("Cannot read the portrait %s: %s", _short_source(value), exc)
        return None


def _tolerant_sidecars(store: OutputStore, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    names = {f"{row_id}.json": row_id for row_id in ids}
    try:
        raw = store.read_many_bytes(names)
    except Exception as exc:
        logger.warning("Review page: cannot read the sidecars: %s", exc)
        return {}
    found = {}
    for name, data in raw.items():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            value = json.loads(data)
            if isinstance(value, dict):
                found[names[name]] = value
    return found


def _safe_id(value: Any) -> str | None:
    text = _text(value)
    if not text:
        return None
    from prefect_runcomfy.engine.inputs.ids import id_problem

    return None if id_problem(text) else text


def _make_portraits(
    store: OutputStore,
    wanted: dict[str, str],
    input_storage_options: dict[str, Any] | None,
) -> set[str]:
    """Create `<id>.portrait.jpg` for every `{row id: image}`; returns the names written."""
    by_image: dict[str, list[str]] = {}
    for row_id, image in wanted.items():
        by_image.setdefault(image, []).append(row_id)
    written: set[str] = set()

    def one(image: str, row_ids: list[str]) -> set[str]:
        # Rows often share a portrait: read and scale it once, store one copy per row.
        data = read_input_image(image, storage_options=input_storage_options)
        if not data:
            return set()
        done = set()
        with staging_file(".jpg") as tmp:
            if not thumbnail(data, tmp):
                return set()
            for row_id in row_ids:
                try:
                    store.put_file(tmp, portrait_name(row_id))
                    done.add(portrait_name(row_id))
                except Exception as exc:
                    logger.debug("Cannot store the portrait of %s: %s", row_id, exc)
        return done

    if not by_image:
        return written
    with ThreadPoolExecutor(max_workers=min(8, len(by_image))) as pool:
        for names in pool.map(lambda item: one(*item), by_image.items()):
            written |= names
    return written


def _make_posters(store: OutputStore, wanted: dict[str, str]) -> set[str]:
    """Create `<id>.poster.jpg` from each `{row id: video name}` in the store; names written."""

    def one(row_id: str, video: str) -> str | None:
        try:
            with staging_folder() as tmp:
                if store.is_local:
                    local = store.path(video)
                else:
                    local = os.path.join(tmp, "video" + posixpath.splitext(video)[1])
                    store.fs.get_file(store.path(video), local)
                _, made = store_poster(store, local, row_id, tmp)
                return poster_name(row_id) if made else None
        except Exception as exc:
            logger.debug("Cannot make the poster of %s: %s", row_id, exc)
            return None

    if not wanted:
        return set()
    with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
        return {n for n in pool.map(lambda item: one(*item), wanted.items()) if n}


def _missing_previews(
    records: list[dict[str, Any]], sidecars: Mapping[str, dict[str, Any]], present: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The previews to make: `{row id: image}` for portraits, `{row id: video}` for posters."""
    portraits: dict[str, str] = {}
    posters: dict[str, str] = {}
    for record in records:
        row_id = _safe_id(record.get("id"))
        if row_id is None:
            continue
        image = _text(record.get("image"))
        if image is None:
            sidecar = sidecars.get(row_id, {})
            image = _text((sidecar.get("inputs") or {}).get("284_image"))
            # The sidecar holds the URL without its (pre-signed) query: only public URLs work.
        if image and portrait_name(row_id) not in present:
            portraits[row_id] = image
        status = _text(record.get("status"))
        if status == "succeeded" and poster_name(row_id) not in present:
            video = _file_name(record.get("video_uri")) or f"{row_id}.mp4"
            if video in present:
                posters[row_id] = video
    return portraits, posters


def write_review_page(
    store: OutputStore,
    manifest: pd.DataFrame,
    *,
    input_storage_options: dict[str, Any] | None = None,
    title: str | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write `index.html` for `manifest` under `store` (atomically); returns its URI.

    First creates the previews that are missing: `<id>.portrait.jpg` from each row's input
    `image` (read with `input_storage_options`), and `<id>.poster.jpg` for succeeded rows
    (their video is downloaded to a temporary file when the store is remote). A preview that
    cannot be made is skipped, so a page is always written. Sync; blocking I/O.

    Args:
        store: the output location.
        manifest: usually the merged `manifest.parquet` (every row stored there).
        input_storage_options: fsspec options for reading `s3://` / `gs://` portraits.
        title: the page title; default "Talking videos · <folder name>".
        known: the sidecars of the rows a run holds in memory (each `RowOutcome.sidecar()`,
            `{}` for a row that has none), keyed by row id: only the other rows' sidecars are
            read from the store.

    Raises:
        StorageError: only when `index.html` itself cannot be written.

    Example:
        ```python
        write_review_page(OutputStore("out"), OutputStore("out").read_manifest())
        ```
    """
    if manifest is None:
        manifest = pd.DataFrame(columns=["id", "status"])
    records = manifest.to_dict(orient="records")
    ids = [i for i in (_safe_id(r.get("id")) for r in records) if i]
    held = {k: dict(v) for k, v in (known or {}).items()}
    sidecars = {**_tolerant_sidecars(store, [i for i in ids if i not in held]), **held}
    try:
        present = set(store.list())
    except Exception as exc:
        logger.warning("Review page: cannot list %s: %s", store.uri(""), exc)
        present = set()

    portraits, posters = _missing_previews(records, sidecars, present)
    present |= _make_portraits(store, portraits, input_storage_options)
    present |= _make_posters(store, posters)
    present.add(INDEX_NAME)

    folder = store.uri("").rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or store.uri("")
    page = render_review_html(
        manifest,
        sidecars=sidecars,
        title=title or f"Talking videos · {folder}",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        assets=present,
        output_uri=store.output_uri,
    )
    return store.write_bytes(INDEX_NAME, page.encode("utf-8"))


__all__ = [
    "INDEX_NAME",
    "advice_for",
    "read_input_image",
    "render_review_html",
    "write_review_page",
]
