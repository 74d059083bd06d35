"""What the review page's template shows of its rows: the header's tiles, the status filters
and one card per row, as plain strings and numbers (the template escapes them)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from prefect_runcomfy.engine.outputs.previews import portrait_name, poster_name
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.report.review.advice import advice_for, advice_parts
from prefect_runcomfy.report.review.rows import ReviewRow
from prefect_runcomfy.report.summary import RunSummary, summarize

Have = Callable[[str], bool]
"""Whether a file of that name is beside the page."""


# -- words for numbers -----------------------------------------------------------------------


def seconds_text(value: float | None) -> str:
    """A duration as people read it: `4.2 s`, `3 min 05 s`, `1 h 02 min`; `—` when unknown."""
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def money_text(value: float | None) -> str:
    """US dollars, with the cents' fractions a job's price has (`$0.075`); `—` when unknown."""
    if value is None:
        return "—"
    return f"${value:,.2f}" if value >= 100 else f"${value:,.4f}".rstrip("0").rstrip(".")


def size_text(value: float | None) -> str:
    """A file size in decimal units (`110.0 KB`); `—` when unknown."""
    if value is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "—"  # pragma: no cover


CARD_TEXT_MAX = 10_000
"""The most characters of one text a card shows (a prompt, an error, a note, a setting); a
valid prompt is never longer, and the rest is in the manifest. Keeps every card, and so every
page of cards, a bounded size."""


def clipped(text: str | None, limit: int = CARD_TEXT_MAX) -> str | None:
    """`text` cut to `limit` characters, ending in `… (N more characters)` when it was cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def file_url(name: object) -> str:
    """A file name beside the page as a link: every reserved character percent-encoded."""
    # ':' too, so an id can never become a scheme (`javascript:`), a path or a query;
    # autoescaping then makes it attribute-safe.
    return urllib.parse.quote(str(name), safe="-_.~")


def status_class(status: str) -> str:
    """The CSS class part of a status: only our statuses become classes, anything else from
    the data is `other`."""
    return status.replace("_", "-") if RowStatus.parse(status) else "other"


def status_label(status: str) -> str:
    """A status in words (`timed out`); a word that is none of ours is shown as it is."""
    parsed = RowStatus.parse(status)
    return parsed.label if parsed else status


# -- the header ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One number in the page's header, with its label."""

    css: str
    value: str
    label: str


@dataclass(frozen=True)
class Filter:
    """One status filter button, with its count of rows."""

    status: str
    status_class: str
    label: str
    count: int


def rows_summary(rows: list[ReviewRow]) -> RunSummary:
    """The counts and totals of `rows`, as the run's summary says them."""
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


def tiles(summary: RunSummary) -> list[Tile]:
    """The header's numbers: rows per status (succeeded always), cost, video and run time."""
    counted = [
        Tile(f"s-{status_class(status)}", str(count), status_label(status))
        for status, count in summary.counts.items()
        if count or status == RowStatus.SUCCEEDED
    ]
    known_cost = summary.total_cost is not None
    cost_note = f" · {summary.unknown_cost} unknown" if known_cost and summary.unknown_cost else ""
    return [
        *counted,
        Tile("total", money_text(summary.total_cost), f"total cost{cost_note}"),
        Tile("total", seconds_text(summary.video_seconds), "of video"),
        Tile("total", seconds_text(summary.run_seconds), "run time (sum)"),
    ]


def filters(summary: RunSummary) -> list[Filter]:
    """A filter per status that some row has."""
    return [
        Filter(status, status_class(status), status_label(status), count)
        for status, count in summary.nonzero_counts.items()
    ]


# -- the cards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One line of a card's facts."""

    name: str
    value: str
    is_code: bool = False


@dataclass(frozen=True)
class Link:
    """A link from a card to a file beside the page."""

    name: str
    """The file linked, beside the page."""
    text: str
    download: bool = False


@dataclass(frozen=True)
class Problem:
    """What went wrong with a row and what to do about it."""

    heading: str
    error: str
    advice: list[tuple[str, bool]]
    """The advice in pieces, each (text, shown as code)."""


@dataclass(frozen=True)
class Card:
    """One row's card."""

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
    problem: Problem | None
    note: str | None
    facts: list[Fact]
    links: list[Link]


def card(row: ReviewRow, have: Have, output_uri: str | None) -> Card:
    """The card of `row`; `have` says which files are beside the page (only those are linked)."""
    first = row.videos[0] if row.videos else None
    video = first if first and have(first) else None
    if first and not video:
        placeholder = f"{first} is not in this folder"
    else:
        placeholder = f"no video: {status_label(row.status)}"
    return Card(
        id=row.id,
        status=row.status,
        status_class=status_class(row.status),
        label=status_label(row.status),
        video=video,
        poster=poster_name(row.id) if video and have(poster_name(row.id)) else None,
        width=row.width,
        height=row.height,
        placeholder=placeholder,
        portrait=portrait_name(row.id) if have(portrait_name(row.id)) else None,
        prompt=clipped(row.prompt),
        parameters=[(name, clipped(value) or "") for name, value in row.parameters],
        sources=row.sources,
        problem=_problem(row, output_uri),
        note=clipped(row.note),
        facts=_facts(row),
        links=_links(row, have, video),
    )


def _problem(row: ReviewRow, output_uri: str | None) -> Problem | None:
    if row.status == RowStatus.SUCCEEDED:
        return None
    advice = advice_for(row.status, output_uri=output_uri)
    return Problem(
        heading=status_label(row.status).capitalize(),
        error=clipped(row.error) or "no error message was recorded",
        advice=advice_parts(advice) if advice else [],
    )


def _facts(row: ReviewRow) -> list[Fact]:
    facts: list[Fact] = []
    if row.status != RowStatus.INVALID or row.request_id:  # an invalid row was never submitted
        facts += [
            Fact("request id", row.request_id, is_code=True)
            if row.request_id
            else Fact("request id", "none"),
            Fact("queued", seconds_text(row.queue_s)),
            Fact("ran", seconds_text(row.run_s)),
        ]
    if row.cost is not None:
        facts.append(Fact("cost", money_text(row.cost)))
    if row.duration is not None:
        facts.append(Fact("duration", seconds_text(row.duration)))
    if row.width and row.height:
        facts.append(Fact("size", f"{row.width}\u00d7{row.height}, {size_text(row.size)}"))
    if row.video_facts:
        facts.append(Fact("encoding", row.video_facts))
    if row.finished_at:
        facts.append(Fact("finished", row.finished_at.replace("T", " ")[:19] + " UTC"))
    return facts


def _links(row: ReviewRow, have: Have, video: str | None) -> list[Link]:
    links = [Link(extra, extra) for extra in row.videos[1:] if have(extra)]
    if video:
        links.insert(0, Link(video, "video", download=True))
    if row.metadata and have(row.metadata):
        links.append(Link(row.metadata, "metadata (JSON)"))
    return links


__all__ = [
    "CARD_TEXT_MAX",
    "Card",
    "Fact",
    "Filter",
    "Have",
    "Link",
    "Problem",
    "Tile",
    "card",
    "clipped",
    "file_url",
    "filters",
    "money_text",
    "rows_summary",
    "seconds_text",
    "size_text",
    "status_class",
    "status_label",
    "tiles",
]
