"""The review page: `<output_uri>/index.html`, one card per manifest row, rewritten every run.

The page is a single self-contained HTML file: inline CSS, an inline SVG chart and a few lines
of inline JavaScript (status filters; everything is readable without it). It loads nothing
from the network and links only file names in its own folder (`alice.mp4`,
`alice.poster.jpg`, `alice.json`, `manifest.parquet`), so it works opened from a local folder,
downloaded from a bucket, or served by any static host. Every value from the data (prompts are
user text) is HTML-escaped; ids in links are percent-encoded as well.

Beside the videos it relies on two previews per row (see `prefect_runcomfy.report.previews`):
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
import html
import json
import logging
import math
import os
import posixpath
import re
import shlex
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.downloads import shared_ssl_context
from prefect_runcomfy.engine.manifest import RowStatus
from prefect_runcomfy.engine.storage import MANIFEST_NAME, OutputStore, staging_file, staging_folder
from prefect_runcomfy.report.previews import (
    MAX_IMAGE_BYTES,
    portrait_name,
    poster_frame,
    poster_name,
    thumbnail,
)

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
"""The review page's file name under the output location."""

CHART_MAX_ROWS = 200
"""The chart shows at most this many rows (the first ones, scrolling); the cards show them all."""

_STATUS_ORDER = [s.value for s in RowStatus]
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
            "The wait ended before the job finished; it may still be running (and billed) on "
            f"RunComfy. Collect it without paying again: prefect-runcomfy collect {target} "
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


def _href(name: str) -> str:
    # Percent-encode every reserved character (':' included), so an id can never become a
    # scheme (`javascript:`), a path or a query; html.escape then makes it attribute-safe.
    return html.escape(urllib.parse.quote(name, safe="-_.~"), quote=True)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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


def _rows(manifest: pd.DataFrame, sidecars: Mapping[str, Any]) -> list[_Row]:
    rows: list[_Row] = []
    records = manifest.to_dict(orient="records") if manifest is not None else []
    for number, record in enumerate(records):
        row_id = _text(record.get("id")) or f"row {number}"
        sidecar = _sidecar_for(sidecars, row_id)
        inputs: dict[str, Any] = sidecar.get("inputs") or {}
        if not isinstance(inputs, dict):
            inputs = {}
        files = [f for f in (sidecar.get("files") or []) if isinstance(f, dict)]
        probed = (files[0].get("video") if files else None) or {}
        if not isinstance(probed, dict):
            probed = {}

        def pick(column: str, *fallbacks: Any, record: dict[str, Any] = record) -> Any:
            value = record.get(column)
            if _missing(value):
                for candidate in fallbacks:
                    if not _missing(candidate):
                        return candidate
                return None
            return value

        status = (_text(pick("status", sidecar.get("status"))) or "unknown").strip()
        videos = [n for n in (_file_name(v) for v in _list(record.get("video_uris"))) if n]
        first = _file_name(pick("video_uri", files[0].get("uri") if files else None))
        if first and first not in videos:
            videos.insert(0, first)
        if not videos and files:
            videos = [n for n in (_file_name(f.get("uri")) for f in files) if n]
        if not videos and status == "succeeded":
            videos = [f"{row_id}.mp4"]

        parameters = []
        for name, raw_key in _PARAMETERS:
            shown = _text(pick(name, inputs.get(raw_key)))
            if shown is not None:
                parameters.append((name, shown))
        sources = []
        for kind, raw_key in (("image", "284_image"), ("audio", "125_audio")):
            given = (
                (sidecar.get("sources") or {}) if isinstance(sidecar.get("sources"), dict) else {}
            )
            shown = _short_source(pick(kind, given.get(kind), inputs.get(raw_key)))
            if shown:
                sources.append((kind, shown))
        facts = []
        if probed.get("video_codec"):
            facts.append(str(probed["video_codec"]))
        if _number(probed.get("fps")):
            facts.append(f"{_number(probed.get('fps')):g} fps")
        if probed.get("audio_codec"):
            facts.append(f"audio {probed['audio_codec']}")
        width = _number(pick("width", probed.get("width")))
        height = _number(pick("height", probed.get("height")))
        metadata = _file_name(record.get("metadata_uri")) or (f"{row_id}.json" if sidecar else None)
        rows.append(
            _Row(
                id=row_id,
                status=status,
                prompt=_text(pick("prompt", inputs.get("241_positive_prompt"))),
                error=_text(pick("error", sidecar.get("error"))),
                note=_text(record.get("note")),
                request_id=_text(pick("request_id", sidecar.get("request_id"))),
                queue_s=_number(pick("queue_seconds", sidecar.get("queue_seconds"))),
                run_s=_number(pick("run_seconds", sidecar.get("run_seconds"))),
                total_s=_number(pick("total_seconds", sidecar.get("total_seconds"))),
                cost=_number(pick("cost_usd", sidecar.get("cost_usd"))),
                duration=_number(pick("duration_s", probed.get("duration_s"))),
                width=int(width) if width else None,
                height=int(height) if height else None,
                size=_number(pick("size_bytes", files[0].get("size") if files else None)),
                finished_at=_text(pick("finished_at", sidecar.get("finished_at"))),
                videos=videos if status == "succeeded" else [],
                metadata=metadata,
                parameters=parameters,
                sources=sources,
                video_facts=" · ".join(facts) or None,
            )
        )
    return rows


# -- the page --------------------------------------------------------------------------------


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
    have = (lambda name: True) if assets is None else set(assets).__contains__
    counts = {status: 0 for status in _STATUS_ORDER}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    cards = "\n".join(_card(row, have, output_uri) for row in rows)
    if not rows:
        cards = '<p class="empty">The manifest has no rows yet.</p>'
    manifest_link = (
        f'<a href="{_href(MANIFEST_NAME)}">{_esc(MANIFEST_NAME)}</a>'
        if have(MANIFEST_NAME)
        else _esc(MANIFEST_NAME)
    )
    return _PAGE.format(
        title=_esc(title),
        generator=_esc(f"prefect-runcomfy {__version__}"),
        css=_CSS,
        script=_SCRIPT,
        generated_at=_esc(generated_at),
        row_count=len(rows),
        rows_word="row" if len(rows) == 1 else "rows",
        manifest_link=manifest_link,
        summary=_summary(rows, counts),
        chart=_chart(rows),
        filters=_filters(counts, len(rows)),
        cards=cards,
    )


def _summary(rows: list[_Row], counts: dict[str, int]) -> str:
    tiles = []
    for status, count in counts.items():
        if count == 0 and status not in ("succeeded",):
            continue
        tiles.append(
            f'<div class="tile s-{_status_class(status)}"><span class="n">{count}</span>'
            f'<span class="l">{_esc(_STATUS_LABELS.get(status, status))}</span></div>'
        )
    costs = [r.cost for r in rows if r.cost is not None]
    unknown_cost = sum(1 for r in rows if r.cost is None and r.status not in ("invalid",))
    cost_note = f" · {unknown_cost} unknown" if costs and unknown_cost else ""
    durations = [r.duration for r in rows if r.duration is not None and r.status == "succeeded"]
    runs = [r.run_s for r in rows if r.run_s is not None]
    tiles.append(
        f'<div class="tile total"><span class="n">{_money(sum(costs)) if costs else "—"}</span>'
        f'<span class="l">total cost{_esc(cost_note)}</span></div>'
    )
    tiles.append(
        f'<div class="tile total"><span class="n">{_seconds(sum(durations)) if durations else "—"}'
        f'</span><span class="l">of video</span></div>'
    )
    tiles.append(
        f'<div class="tile total"><span class="n">{_seconds(sum(runs)) if runs else "—"}</span>'
        f'<span class="l">run time (sum)</span></div>'
    )
    return "\n".join(tiles)


def _chart(rows: list[_Row]) -> str:
    """A horizontal bar per row: queue time then run time, on one shared seconds scale."""
    timed = [r for r in rows if r.queue_s is not None or r.run_s is not None]
    if not timed:
        return '<p class="muted">No queue or run times yet.</p>'
    shown = timed[:CHART_MAX_ROWS]
    longest = max((r.queue_s or 0) + (r.run_s or 0) for r in shown) or 1.0
    step = _nice_step(longest)
    axis_max = step * math.ceil(longest / step)
    label_w, bar_w, bar_h, gap, top = 150, 560, 14, 8, 22
    height = top + len(shown) * (bar_h + gap) + 6
    width = label_w + bar_w + 70
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-labelledby="chart-title">',
        '<title id="chart-title">Queue and run time per row, in seconds</title>',
    ]
    ticks = round(axis_max / step)
    for i in range(ticks + 1):
        x = label_w + bar_w * i / ticks
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{top - 8}" text-anchor="middle">'
            f"{step * i:g} s</text>"
        )
    for i, row in enumerate(shown):
        y = top + i * (bar_h + gap)
        queue, run = row.queue_s or 0.0, row.run_s or 0.0
        qw, rw = bar_w * queue / axis_max, bar_w * run / axis_max
        label = row.id if len(row.id) <= 22 else row.id[:21] + "…"
        tip = f"{row.id}: queued {_seconds(row.queue_s)}, ran {_seconds(row.run_s)}"
        parts.append(
            f"<g><title>{_esc(tip)}</title>"
            f'<text class="label" x="{label_w - 8}" y="{y + bar_h - 3}" text-anchor="end">'
            f"{_esc(label)}</text>"
            f'<rect class="queue" x="{label_w}" y="{y}" width="{qw:.1f}" height="{bar_h}" rx="2"/>'
            f'<rect class="run" x="{label_w + qw:.1f}" y="{y}" width="{rw:.1f}" '
            f'height="{bar_h}" rx="2"/>'
            f'<text class="value" x="{label_w + qw + rw + 6:.1f}" y="{y + bar_h - 3}">'
            f"{_esc(_seconds(queue + run))}</text></g>"
        )
    parts.append("</svg>")
    more = ""
    if len(timed) > len(shown):
        more = f'<p class="muted">First {len(shown)} of {len(timed)} timed rows shown.</p>'
    legend = (
        '<p class="legend"><span class="key queue"></span>queue '
        '<span class="key run"></span>run</p>'
    )
    return legend + "".join(parts) + more


def _nice_step(longest: float) -> float:
    raw = longest / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover


def _filters(counts: dict[str, int], total: int) -> str:
    # Hidden until the script runs: without JavaScript the buttons would do nothing.
    buttons = [
        f'<button type="button" data-filter="all" aria-pressed="true">all '
        f'<span class="c">{total}</span></button>'
    ]
    for status, count in counts.items():
        if count:
            buttons.append(
                f'<button type="button" data-filter="{_esc(status)}" aria-pressed="false" '
                f'class="s-{_status_class(status)}"><i class="dot"></i>'
                f'{_esc(_STATUS_LABELS.get(status, status))} <span class="c">{count}</span>'
                "</button>"
            )
    return (
        '<nav id="filters" class="filters" aria-label="Filter by status" hidden>'
        + "".join(buttons)
        + "</nav>"
    )


def _status_class(status: str) -> str:
    # Only known statuses become CSS classes; anything else from the data is 'other'.
    return status.replace("_", "-") if status in _STATUS_LABELS else "other"


# Commands and options inside the advice, set as code so they stand out (matched after escaping).
_CODE = re.compile(
    r"prefect-runcomfy collect .*?(?= \(or run)|retry_failed=True|resubmit_unknown=True"
    r"|--retry-failed|--resubmit-unknown"
)


def _advice_html(advice: str) -> str:
    return _CODE.sub(lambda m: f"<code>{m.group(0)}</code>", _esc(advice))


def _card(row: _Row, have: Any, output_uri: str | None) -> str:
    status_class = _status_class(row.status)
    label = _STATUS_LABELS.get(row.status, row.status)
    poster = poster_name(row.id)
    portrait = portrait_name(row.id)
    video = row.videos[0] if row.videos else None
    if video and have(video):
        poster_attr = f' poster="{_href(poster)}"' if have(poster) else ""
        size_attr = (
            f' width="{row.width}" height="{row.height}"' if row.width and row.height else ""
        )
        media = (
            f'<video controls preload="metadata" playsinline{poster_attr}{size_attr} '
            f'src="{_href(video)}"></video>'
        )
    elif video:
        media = f'<div class="placeholder">{_esc(video)} is not in this folder</div>'
    else:
        media = f'<div class="placeholder">no video: {_esc(label)}</div>'

    facts: list[tuple[str, str]] = []
    if row.status != "invalid" or row.request_id:  # an invalid row was never submitted
        request = f"<code>{_esc(row.request_id)}</code>" if row.request_id else "none"
        facts += [
            ("request id", request),
            ("queued", _esc(_seconds(row.queue_s))),
            ("ran", _esc(_seconds(row.run_s))),
        ]
    if row.cost is not None:
        facts.append(("cost", _esc(_money(row.cost))))
    if row.duration is not None:
        facts.append(("duration", _esc(_seconds(row.duration))))
    if row.width and row.height:
        facts.append(("size", _esc(f"{row.width}\u00d7{row.height}, {_size(row.size)}")))
    if row.video_facts:
        facts.append(("encoding", _esc(row.video_facts)))
    if row.finished_at:
        facts.append(("finished", _esc(row.finished_at.replace("T", " ")[:19] + " UTC")))
    facts_html = "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    facts_block = f'<dl class="facts">{facts_html}</dl>' if facts else ""
    params_html = "".join(
        f'<span class="param"><b>{_esc(k)}</b> {_esc(v)}</span>' for k, v in row.parameters
    )
    sources_html = "".join(
        f'<div class="source" title="{_esc(v)}"><b>{_esc(k)}</b> {_esc(v)}</div>'
        for k, v in row.sources
    )
    thumb = (
        f'<img class="portrait" src="{_href(portrait)}" alt="input portrait of {_esc(row.id)}" '
        'loading="lazy" decoding="async">'
        if have(portrait)
        else '<div class="portrait none" aria-hidden="true">no portrait</div>'
    )
    problem = ""
    advice = advice_for(row.status, output_uri=output_uri)
    if row.status != "succeeded":
        problem = (
            '<div class="problem">'
            f'<p class="error"><b>{_esc(label.capitalize())}:</b> '
            f"{_esc(row.error or 'no error message was recorded')}</p>"
            + (f'<p class="advice"><b>What to do:</b> {_advice_html(advice)}</p>' if advice else "")
            + "</div>"
        )
    note = f'<p class="note">{_esc(row.note)}</p>' if row.note else ""
    links = []
    for extra in row.videos[1:]:
        if have(extra):
            links.append(f'<a href="{_href(extra)}">{_esc(extra)}</a>')
    if video and have(video):
        links.insert(0, f'<a href="{_href(video)}" download>video</a>')
    if row.metadata and have(row.metadata):
        links.append(f'<a href="{_href(row.metadata)}">metadata (JSON)</a>')
    links_html = f'<p class="links">{" · ".join(links)}</p>' if links else ""
    prompt = (
        f'<p class="prompt">{_esc(row.prompt)}</p>'
        if row.prompt
        else '<p class="prompt muted">no prompt recorded</p>'
    )
    return (
        f'<article class="card s-{status_class}" data-status="{_esc(row.status)}" '
        f'id="row-{_href(row.id)}">'
        f'<div class="media{"" if "<video" in media else " none"}">{media}</div>'
        '<div class="body">'
        f'<header><h2 title="{_esc(row.id)}">{_esc(row.id)}</h2>'
        f'<span class="badge s-{status_class}">{_esc(label)}</span></header>'
        f'<div class="inputs">{thumb}{prompt}</div>'
        f'<div class="params">{params_html}</div>'
        f"{sources_html}{problem}{note}"
        f"{facts_block}{links_html}"
        "</div></article>"
    )


_CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1b1f24;--muted:#5f6b7a;--line:#e2e6ec;
--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--info:#0969da;--grey:#6e7781;--violet:#8250df;
--queue:#d4a72c;--run:#2f81f7;--shadow:0 1px 2px rgba(20,30,40,.06),0 2px 8px rgba(20,30,40,.05)}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--ink:#e6edf3;
--muted:#8d96a0;--line:#30363d;--shadow:none}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1400px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 2px}
.sub{color:var(--muted);margin:0 0 16px}
.sub a{color:inherit}
.top{display:grid;grid-template-columns:minmax(300px,400px) 1fr;gap:16px;align-items:start}
@media (max-width:900px){.top{grid-template-columns:1fr}}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px;
box-shadow:var(--shadow)}
.panel h3{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
margin:0 0 10px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(100px,1fr));gap:8px}
.tile{border:1px solid var(--line);border-left:4px solid var(--grey);border-radius:8px;
padding:8px 10px;display:flex;flex-direction:column}
.tile .n{font-size:20px;font-weight:650;font-variant-numeric:tabular-nums}
.tile .l{color:var(--muted);font-size:12px}
.tile.total{border-left-color:var(--line)}
.chartbox{overflow:auto;max-height:360px}
svg.chart{max-width:100%;min-width:520px;height:auto;display:block}
svg.chart text{font:11px system-ui,sans-serif;fill:var(--muted)}
svg.chart text.label{fill:var(--ink)}
svg.chart line.grid{stroke:var(--line);stroke-width:1}
svg.chart rect.queue{fill:var(--queue)}
svg.chart rect.run{fill:var(--run)}
.legend{margin:0 0 6px;color:var(--muted);font-size:12px}
.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 8px;
vertical-align:-1px}
.key.queue{background:var(--queue);margin-left:0}.key.run{background:var(--run)}
.filters{display:flex;flex-wrap:wrap;gap:6px;margin:18px 0 12px}
.filters[hidden]{display:none}
.filters button{font:inherit;border:1px solid var(--line);background:var(--card);color:var(--ink);
border-radius:999px;padding:4px 12px;cursor:pointer}
.filters button[aria-pressed=true]{background:var(--ink);color:var(--card);border-color:var(--ink)}
.filters .c{color:var(--muted);margin-left:2px;font-variant-numeric:tabular-nums}
.filters button[aria-pressed=true] .c{color:inherit;opacity:.75}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px;
background:var(--grey)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px;
margin-top:16px}
.filters:not([hidden])+.grid{margin-top:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;
display:flex;flex-direction:column;box-shadow:var(--shadow);border-top:4px solid var(--grey)}
.card[hidden]{display:none}
.media{background:#0b0d10;aspect-ratio:4/3;position:relative;display:flex;align-items:center;
justify-content:center}
/* Out of the flow, so a tall (9:16) or wide video keeps every card's media box the same. */
.media video{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;display:block;
background:#0b0d10}
/* No video: a short striped band instead of an empty player-sized box. */
.media.none{aspect-ratio:auto;height:64px;
background:repeating-linear-gradient(135deg,var(--bg) 0 10px,var(--card) 10px 20px)}
.placeholder{color:var(--muted);font-size:13px;padding:16px;text-align:center}
.body{padding:12px 14px 14px;display:flex;flex-direction:column;gap:8px;min-width:0}
.body header{display:flex;align-items:center;gap:8px;justify-content:space-between}
.body h2{font-size:15px;margin:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.badge{flex:none;font-size:12px;font-weight:600;padding:2px 9px;border-radius:999px;color:#fff;
background:var(--grey)}
.inputs{display:flex;gap:10px;align-items:flex-start}
.portrait{flex:none;width:64px;height:64px;border-radius:8px;object-fit:cover;
border:1px solid var(--line);background:var(--bg)}
.portrait.none{display:flex;align-items:center;justify-content:center;font-size:10px;
color:var(--muted);text-align:center}
.prompt{margin:0 0 6px;overflow-wrap:anywhere;white-space:pre-wrap}
.params{display:flex;flex-wrap:wrap;gap:4px}
.param{font-size:12px;background:var(--bg);border:1px solid var(--line);border-radius:6px;
padding:0 6px;color:var(--muted)}
.param b{font-weight:600;color:var(--ink)}
.source{font-size:12px;color:var(--muted);white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.source b{color:var(--ink);font-weight:600}
.problem{border-radius:8px;padding:8px 10px;background:rgba(207,34,46,.07);
border:1px solid rgba(207,34,46,.25)}
.problem p{margin:0;overflow-wrap:anywhere}
.problem p+p{margin-top:6px}
.problem code{background:rgba(127,127,127,.14);padding:0 4px;border-radius:4px;
overflow-wrap:anywhere}
.s-timed-out .problem,.s-outcome-unknown .problem{background:rgba(154,103,0,.08);
border-color:rgba(154,103,0,.3)}
.s-invalid .problem{background:rgba(130,80,223,.07);border-color:rgba(130,80,223,.3)}
.s-cancelled .problem{background:rgba(110,119,129,.08);border-color:rgba(110,119,129,.3)}
.note{margin:0;font-size:12px;color:var(--muted)}
.facts{display:grid;grid-template-columns:auto 1fr;gap:2px 12px;margin:0;font-size:12px}
.facts dt{color:var(--muted)}
.facts dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
code{font:11.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.links{margin:0;font-size:12px}
a{color:var(--info)}
.muted{color:var(--muted)}
.empty{color:var(--muted)}
footer{margin-top:28px;color:var(--muted);font-size:12px}
.s-succeeded{--c:var(--ok)}.s-failed{--c:var(--bad)}.s-invalid{--c:var(--violet)}
.s-timed-out{--c:var(--warn)}.s-outcome-unknown{--c:var(--warn)}.s-cancelled{--c:var(--grey)}
.s-other{--c:var(--grey)}
.card.s-succeeded,.card.s-failed,.card.s-invalid,.card.s-timed-out,.card.s-outcome-unknown,
.card.s-cancelled{border-top-color:var(--c)}
.badge[class*=s-],.filters [class*=s-] .dot{background:var(--c)}
.tile[class*=s-]{border-left-color:var(--c)}
"""

_SCRIPT = """
(function () {
  var nav = document.getElementById("filters");
  if (!nav) return;
  var buttons = nav.querySelectorAll("button");
  var cards = document.querySelectorAll(".card");
  function apply(status) {
    var known = false;
    buttons.forEach(function (b) { if (b.dataset.filter === status) known = true; });
    if (!known) status = "all";
    cards.forEach(function (c) {
      c.hidden = status !== "all" && c.dataset.status !== status;
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.filter === status));
    });
  }
  nav.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) return;
    apply(button.dataset.filter);
    try { history.replaceState(null, "", "#status=" + button.dataset.filter); } catch (e) {}
  });
  var match = /^#status=([a-z_]+)$/.exec(location.hash);
  apply(match ? match[1] : "all");
  nav.hidden = false;
})();
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{generator}">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<div class="wrap">
<h1>{title}</h1>
<p class="sub">{row_count} {rows_word} · generated {generated_at} · {manifest_link}</p>
<div class="top">
<section class="panel" aria-label="Summary"><h3>Summary</h3>
<div class="tiles">
{summary}
</div></section>
<section class="panel" aria-label="Queue and run time"><h3>Queue and run time per row</h3>
<div class="chartbox">{chart}</div></section>
</div>
{filters}
<main class="grid">
{cards}
</main>
<footer>Made by {generator} from {manifest_link}. Rewritten at the end of every run.</footer>
</div>
<script>{script}</script>
</body>
</html>
"""


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
    from prefect_runcomfy.engine.storage import _name_problem

    return None if _name_problem(text) else text


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
                poster = os.path.join(tmp, "poster.jpg")
                if not poster_frame(local, poster):
                    return None
                store.put_file(poster, poster_name(row_id))
                return poster_name(row_id)
        except Exception as exc:
            logger.debug("Cannot make the poster of %s: %s", row_id, exc)
            return None

    if not wanted:
        return set()
    with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
        return {n for n in pool.map(lambda item: one(*item), wanted.items()) if n}


def write_review_page(
    store: OutputStore,
    manifest: pd.DataFrame,
    *,
    input_storage_options: dict[str, Any] | None = None,
    title: str | None = None,
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
    sidecars = _tolerant_sidecars(store, ids)
    try:
        present = set(store.list())
    except Exception as exc:
        logger.warning("Review page: cannot list %s: %s", store.uri(""), exc)
        present = set()

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
