"""The review page's chart: horizontal bars of queue time then run time, on one shared seconds
scale. Up to `CHART_MAX_ROWS` timed rows it draws a bar per row; more, a bar per time bucket
(the mean queue and run time of the rows that finished in it), so the chart stays a few dozen
bars however many rows a run has. Numbers only; the template draws it as inline SVG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.report.review.rows import ReviewRow
from prefect_runcomfy.report.review.view import seconds_text

CHART_MAX_ROWS = 200
"""Up to this many timed rows, the chart has a bar per row; more, a bar per time bucket."""

MAX_BUCKETS = 48
"""The most bars a bucketed chart has."""

_BUCKET_SECONDS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
"""The bucket widths to choose from: the narrowest that gives at most `MAX_BUCKETS` bars."""

_LABEL_W, _BAR_W, _BAR_H, _GAP, _TOP = 150, 560, 14, 8, 22
"""The layout in SVG units: the label column, the longest bar, a bar's height, the gap between
bars, the space above the first bar (for the axis labels)."""


@dataclass(frozen=True)
class Tick:
    """A mark on the seconds axis."""

    x: str
    text: str


@dataclass(frozen=True)
class Bar:
    """One bar (a row's, or a bucket's means): its label, queue part and run part."""

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
class Chart:
    """Horizontal bars, queue time then run time, on one shared seconds scale."""

    title: str
    """The chart's heading: what a bar is."""
    width: int
    height: int
    label_x: int
    bar_x: int
    bar_h: int
    grid_top: int
    grid_bottom: int
    tick_y: int
    ticks: list[Tick]
    bars: list[Bar]
    note: str | None = None
    """A line under the chart (rows it could not place), or None."""
    bucketed: bool = False
    """Whether a bar is a bucket's (its rows' mean times, their count beside it)."""


@dataclass(frozen=True)
class Group:
    """The rows behind one bar (one row, or a bucket's), and how the bar is labelled."""

    label: str
    tip: str
    rows: Sequence[ReviewRow]


def chart(rows: list[ReviewRow]) -> Chart | None:
    """The chart of the rows that have a queue or run time; None when none has."""
    timed = [r for r in rows if r.queue_s is not None or r.run_s is not None]
    if not timed:
        return None
    if len(timed) <= CHART_MAX_ROWS:
        return _draw("Queue and run time per row", [_one(r) for r in timed], timed)
    by_time = time_buckets(timed)
    if by_time is not None:
        groups, width, unplaced = by_time
        title = f"Mean queue and run time, by finish time ({_width_text(width)} buckets, UTC)"
        note = f"{unplaced} timed rows with no finish time are not shown." if unplaced else None
        return _draw(title, groups, timed, note)
    return _draw("Mean queue and run time, by position in the table", order_buckets(timed), timed)


def _one(row: ReviewRow) -> Group:
    label = row.id if len(row.id) <= 22 else row.id[:21] + "…"
    tip = f"{row.id}: queued {seconds_text(row.queue_s)}, ran {seconds_text(row.run_s)}"
    return Group(label, tip, [row])


def finished(row: ReviewRow) -> datetime | None:
    """When `row` finished (UTC), or None when its manifest does not say or says nonsense."""
    if not row.finished_at:
        return None
    try:
        moment = datetime.fromisoformat(row.finished_at.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def time_buckets(timed: list[ReviewRow]) -> tuple[list[Group], int, int] | None:
    """`timed` grouped by the time they finished, in buckets of a width from `_BUCKET_SECONDS`
    (empty buckets kept: they show a pause): (groups, width in seconds, rows without a finish
    time). None when most rows have no finish time."""
    moments = [(finished(r), r) for r in timed]
    placed = [(m, r) for m, r in moments if m is not None]
    if len(placed) * 2 < len(timed):
        return None
    first = min(m for m, _ in placed).timestamp()
    last = max(m for m, _ in placed).timestamp()
    width = next(
        (w for w in _BUCKET_SECONDS if (last // w - first // w) < MAX_BUCKETS),
        _day_width(first, last),
    )
    start = int(first // width)
    rows_in: list[list[ReviewRow]] = [[] for _ in range(int(last // width) - start + 1)]
    for moment, row in placed:
        rows_in[int(moment.timestamp() // width) - start].append(row)
    several_days = last - first >= 86400 or width >= 86400
    groups = [
        _bucket((start + i) * width, width, bucket, several_days)
        for i, bucket in enumerate(rows_in)
    ]
    return groups, width, len(timed) - len(placed)


def _day_width(first: float, last: float) -> int:
    """A width of whole days that gives at most `MAX_BUCKETS` bars."""
    days = math.ceil((last - first + 1) / 86400 / MAX_BUCKETS)
    return 86400 * max(1, days)


def _bucket(begin: int, width: int, rows: Sequence[ReviewRow], several_days: bool) -> Group:
    start = datetime.fromtimestamp(begin, UTC)
    end = datetime.fromtimestamp(begin + width, UTC)
    if width >= 86400:
        label, span = f"{start:%Y-%m-%d}", f"{start:%Y-%m-%d} \u2013 {end:%Y-%m-%d}"
    elif several_days:
        label, span = f"{start:%m-%d %H:%M}", f"{start:%Y-%m-%d %H:%M}\u2013{end:%H:%M}"
    else:
        label, span = f"{start:%H:%M}", f"{start:%Y-%m-%d %H:%M}\u2013{end:%H:%M}"
    return Group(label, f"finished {span} UTC", rows)


def order_buckets(timed: list[ReviewRow]) -> list[Group]:
    """`timed` in runs of consecutive rows, at most `MAX_BUCKETS` of them (for manifests
    without finish times)."""
    size = math.ceil(len(timed) / MAX_BUCKETS)
    return [
        Group(f"rows {i + 1}\u2013{i + len(part)}", f"rows {i + 1}\u2013{i + len(part)}", part)
        for i, part in ((i, timed[i : i + size]) for i in range(0, len(timed), size))
    ]


def _width_text(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day" + ("s" if seconds > 86400 else "")
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _draw(
    title: str, groups: list[Group], timed: list[ReviewRow], note: str | None = None
) -> Chart:
    means = [(_mean([r.queue_s for r in g.rows]), _mean([r.run_s for r in g.rows])) for g in groups]
    longest = max(((q or 0) + (r or 0) for q, r in means), default=0.0) or 1.0
    step = _nice_step(longest)
    axis_max = step * math.ceil(longest / step)
    height = _TOP + len(groups) * (_BAR_H + _GAP) + 6
    ticks = round(axis_max / step)
    bars = [
        _bar(i, g, q, r, axis_max, single=len(timed) <= CHART_MAX_ROWS)
        for i, (g, (q, r)) in enumerate(zip(groups, means, strict=True))
    ]
    return Chart(
        title=title,
        width=_LABEL_W + _BAR_W + (70 if len(timed) <= CHART_MAX_ROWS else 130),
        height=height,
        label_x=_LABEL_W - 8,
        bar_x=_LABEL_W,
        bar_h=_BAR_H,
        grid_top=_TOP - 4,
        grid_bottom=height - 4,
        tick_y=_TOP - 8,
        ticks=[
            Tick(f"{_LABEL_W + _BAR_W * i / ticks:.1f}", f"{step * i:g} s")
            for i in range(ticks + 1)
        ],
        bars=bars,
        note=note,
        bucketed=len(timed) > CHART_MAX_ROWS,
    )


def _bar(
    index: int,
    group: Group,
    queue_s: float | None,
    run_s: float | None,
    axis_max: float,
    *,
    single: bool,
) -> Bar:
    y = _TOP + index * (_BAR_H + _GAP)
    queue, run = queue_s or 0.0, run_s or 0.0
    qw, rw = _BAR_W * queue / axis_max, _BAR_W * run / axis_max
    if single:
        tip, value = group.tip, seconds_text(queue + run)
    else:
        count = len(group.rows)
        attention = sum(1 for r in group.rows if _needs_attention(r.status))
        tip = (
            f"{group.tip}: {count} rows ({attention} need attention); mean queued "
            f"{seconds_text(queue_s)}, mean ran {seconds_text(run_s)}"
        )
        value = f"{count} · {seconds_text(queue + run)}" if count else "0 rows"
    return Bar(
        tip=tip,
        label=group.label,
        y=y,
        text_y=y + _BAR_H - 3,
        queue_w=f"{qw:.1f}",
        run_x=f"{_LABEL_W + qw:.1f}",
        run_w=f"{rw:.1f}",
        value_x=f"{_LABEL_W + qw + rw + 6:.1f}",
        value=value,
    )


def _needs_attention(status: str) -> bool:
    parsed = RowStatus.parse(status)
    return bool(parsed and parsed.needs_attention)


def _nice_step(longest: float) -> float:
    """An axis step of 1, 2 or 5 times a power of ten that gives about five ticks."""
    raw = longest / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover


__all__ = [
    "CHART_MAX_ROWS",
    "MAX_BUCKETS",
    "Bar",
    "Chart",
    "Group",
    "Tick",
    "chart",
    "finished",
    "order_buckets",
    "time_buckets",
]
