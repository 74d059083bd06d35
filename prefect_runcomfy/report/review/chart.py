"""The review page's chart: a horizontal bar per row, queue time then run time, on one shared
seconds scale. Numbers only; the template draws it as inline SVG."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prefect_runcomfy.report.review.rows import ReviewRow
from prefect_runcomfy.report.review.view import seconds_text

CHART_MAX_ROWS = 200
"""The chart shows at most this many rows (the first ones, scrolling); the cards show them all."""

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
    """One row's bar: its label, queue part and run part."""

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
    """A horizontal bar per row: queue time then run time, on one shared seconds scale."""

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
    hidden_rows: int


def chart(rows: list[ReviewRow]) -> Chart | None:
    """The chart of the rows that have a queue or run time; None when none has."""
    timed = [r for r in rows if r.queue_s is not None or r.run_s is not None]
    if not timed:
        return None
    shown = timed[:CHART_MAX_ROWS]
    longest = max((r.queue_s or 0) + (r.run_s or 0) for r in shown) or 1.0
    step = _nice_step(longest)
    axis_max = step * math.ceil(longest / step)
    height = _TOP + len(shown) * (_BAR_H + _GAP) + 6
    ticks = round(axis_max / step)
    return Chart(
        width=_LABEL_W + _BAR_W + 70,
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
        bars=[_bar(i, row, axis_max) for i, row in enumerate(shown)],
        hidden_rows=len(timed) - len(shown),
    )


def _bar(index: int, row: ReviewRow, axis_max: float) -> Bar:
    y = _TOP + index * (_BAR_H + _GAP)
    queue, run = row.queue_s or 0.0, row.run_s or 0.0
    qw, rw = _BAR_W * queue / axis_max, _BAR_W * run / axis_max
    return Bar(
        tip=f"{row.id}: queued {seconds_text(row.queue_s)}, ran {seconds_text(row.run_s)}",
        label=row.id if len(row.id) <= 22 else row.id[:21] + "…",
        y=y,
        text_y=y + _BAR_H - 3,
        queue_w=f"{qw:.1f}",
        run_x=f"{_LABEL_W + qw:.1f}",
        run_w=f"{rw:.1f}",
        value_x=f"{_LABEL_W + qw + rw + 6:.1f}",
        value=seconds_text(queue + run),
    )


def _nice_step(longest: float) -> float:
    """An axis step of 1, 2 or 5 times a power of ten that gives about five ticks."""
    raw = longest / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover


__all__ = ["CHART_MAX_ROWS", "Bar", "Chart", "Tick", "chart"]
