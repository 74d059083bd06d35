"""What a run has learned about how long its jobs take, and when each job should be read next.

A batch's jobs share a model, a resolution and a frame count, and the run watches dozens of
them finish: their run times say when the others will finish. `RunEstimator` (one per run,
held by `engine.run.state.RunState`) keeps the recent durations of the run's finished jobs by kind;
`JobWatch` (one per job, made by `RunEstimator.watch`) turns them into the next moment to
read that job:

- a job of a kind with no history yet is waited for with `PollPolicy`'s doubling;
  while one such job (the kind's scout) does so, the others of its kind, started with it,
  read half as often until a finish of the kind gives them a window;
- a job of a known kind is first read just after the earliest expected finish, then a few
  times evenly spread over the window of expected finishes ("tightens near it"), then, when
  it runs long, at a growing interval;
- a job seen queued is read about when the run's pace says it will start (once the run has
  seen jobs finish); its window then counts from its start;
- once the run has seen a job wait in RunComfy's queue for a good part of a job (its
  `max_concurrency` is above the account's workers), each new job is read at its submit
  (`/status`, for its queue position): a job found running is timed from then, a job found
  queued with `p` jobs ahead starts when `p + 1` of the run's jobs have ended (each end wakes
  it to plan again), so it is timed from its start without reads while it queues.

When a kind's window changes (above all its first finish), the run's sleeping waits of that
kind are woken so they plan again at once: the rest of the first wave does not sleep out a
30-second interval. `Retry-After`, the deadline and cancel-if-queued stay with the wait loop
(`engine.run.waiting`).

Durations come from RunComfy's own timestamps (`finished_at - created_at`) when the answer
has them, and from the reads otherwise.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect_runcomfy.api.models import RequestResult, RequestStatus

JobKind = Hashable
"""What makes two jobs take about as long: the model and the inputs it names for that (see
`ModelSpec.job_kind`)."""

SAMPLES_KEPT = 32
"""Recent durations kept per kind (a run's pace may drift over a night)."""
PACE_FINISHES = 16
"""Recent finishes the run's pace (jobs finished per second) is measured over."""
READS_IN_WINDOW = 8
"""Reads spread evenly over a kind's window of expected finishes; a job ends on average
half-way, so this costs about half as many reads, for a mean lag of window / 16."""
LATE_GROWTH = 1.5
"""How much the interval grows for a job that runs past its window."""
ENDS_KEPT = 1024
"""Recent ends (a job leaving RunComfy's worker or queue) kept to tell when queued jobs start."""
QUEUE_MATTERS = 0.25
"""The run reads each new job at once (queued or running?) once it has seen a job wait in
RunComfy's queue longer than this fraction of its kind's expected run time."""
CLOSE_START = 0.25
"""A start bracketed by reads to within this fraction of the run counts as seen."""


def server_seconds(result: RequestResult) -> float | None:
    """`finished_at - created_at` of a finished request (RunComfy's clock), or None when
    either is missing or unreadable (ISO-8601 strings or epoch seconds are read)."""
    created, finished = _epoch(result.created_at), _epoch(result.finished_at)
    if created is None or finished is None or finished < created:
        return None
    return finished - created


def _epoch(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
        return number / 1000.0 if number > 1e11 else number  # milliseconds, now and then
    if isinstance(value, str) and value.strip():
        text = value.strip()
        with contextlib.suppress(ValueError):
            return _epoch(float(text))
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


@dataclass(frozen=True)
class Window:
    """When a kind's jobs are expected to finish: `low`..`high` seconds after their anchor."""

    low: float
    high: float
    samples: int

    @property
    def width(self) -> float:
        """Seconds between the earliest and the latest expected finish."""
        return self.high - self.low


def window_of(durations: deque[float] | list[float]) -> Window | None:
    """The window of expected durations from a kind's recent ones, or None without any.

    The observed range is widened on both sides by the gap one more sample would be expected
    to leave beyond it (range / (n - 1)); a single sample gets +-10 %.
    """
    if not durations:
        return None
    low, high, n = min(durations), max(durations), len(durations)
    pad = (high - low) / (n - 1) if n > 1 else 0.0
    pad = max(pad, 0.1 * high / n, 0.01 * high)
    return Window(low=max(0.0, low - pad), high=high + pad, samples=n)


@dataclass
class _Kind:
    """What the run knows about one kind: recent durations from submit and from start."""

    totals: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    runs: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    total_window: Window | None = None
    run_window: Window | None = None
    sleepers: set[asyncio.Future[bool]] = field(default_factory=set)
    scout: JobWatch | None = None
    """The job that waits as a lone job would while the kind has no window yet."""


class RunEstimator:
    """What one run has learned about its jobs' durations, shared by the run's rows.

    It holds, per kind (`ModelSpec.job_kind`), the recent durations from submit to finish and from
    start to finish of the jobs that succeeded in this run, and the moments jobs were seen
    finished (the run's pace). `watch` gives each waiting job its planner.
    """

    def __init__(self, *, reads_in_window: int = READS_IN_WINDOW) -> None:
        """`reads_in_window`: reads spread over a kind's window of expected finishes."""
        self.reads_in_window = max(1, reads_in_window)
        self._kinds: dict[JobKind, _Kind] = {}
        self._finishes: deque[float] = deque(maxlen=PACE_FINISHES)
        self._ends: list[float] = []
        """When the run's jobs left RunComfy (finished, failed, cancelled), in order."""
        self._end_sleepers: set[asyncio.Future[bool]] = set()
        self._queue_wait = 0.0
        """The longest a job of this run was seen waiting in RunComfy's queue."""

    def watch(
        self, kind: JobKind, *, submitted: float | None, min_pause_s: float, max_pause_s: float
    ) -> JobWatch:
        """A planner for one job of `kind` submitted at `submitted` (monotonic seconds; None
        when unknown, e.g. a request collected from an earlier run)."""
        watch = JobWatch(self, kind, submitted, min_pause_s=min_pause_s, max_pause_s=max_pause_s)
        known = self._kind(kind)
        if known.scout is None and known.total_window is None and known.run_window is None:
            known.scout = watch
        return watch

    def is_scout(self, watch: JobWatch) -> bool:
        """True for the job of a kind without history that waits as a lone job would."""
        known = self._kinds.get(watch.kind)
        return known is None or known.scout is watch or known.scout is None

    def release(self, watch: JobWatch) -> None:
        """The job's wait ended: a scout hands its role to the next job of its kind."""
        known = self._kinds.get(watch.kind)
        if known is not None and known.scout is watch:
            known.scout = None

    def _kind(self, kind: JobKind) -> _Kind:
        found = self._kinds.get(kind)
        if found is None:
            found = self._kinds[kind] = _Kind()
        return found

    def window(self, kind: JobKind, *, from_start: bool) -> Window | None:
        """The expected durations of `kind` from start (else from submit); a duration from
        submit stands in for one from start when none is known (it is a little longer)."""
        known = self._kinds.get(kind)
        if known is None:
            return None
        if from_start:
            return known.run_window or known.total_window
        return known.total_window

    def learn(
        self,
        kind: JobKind,
        *,
        total_s: float | None,
        run_s: float | None,
        finished: float | None = None,
    ) -> bool:
        """Record a succeeded job's duration from submit (`total_s`) and from start (`run_s`,
        when its start was seen closely), and when it finished (for the run's pace).
        Sleeping waits of the kind are woken when its window moved (the answer: True then)."""
        if finished is not None:
            self._finishes.append(finished)
            self.ended(finished)
        known = self._kind(kind)
        before = (known.total_window, known.run_window)
        if total_s is not None and total_s >= 0:
            known.totals.append(total_s)
            known.total_window = window_of(known.totals)
        if run_s is not None and run_s >= 0:
            known.runs.append(run_s)
            known.run_window = window_of(known.runs)
        moved = _moved(before[0], known.total_window) or _moved(before[1], known.run_window)
        if moved:
            self._wake(known)
        return moved

    def ended(self, moment: float) -> None:
        """A job of the run left RunComfy at `moment` (a worker or a place in its queue came
        free): the queued jobs waiting for it to start are woken."""
        bisect.insort(self._ends, moment)
        if len(self._ends) > ENDS_KEPT:
            del self._ends[: len(self._ends) - ENDS_KEPT]
        sleepers, self._end_sleepers = self._end_sleepers, set()
        for future in sleepers:
            if not future.done():
                future.set_result(True)

    def end_after(self, moment: float, count: int) -> float | None:
        """The `count`-th end of the run's jobs after `moment`, or None while fewer are known."""
        index = bisect.bisect_right(self._ends, moment) + count - 1
        return self._ends[index] if count >= 1 and index < len(self._ends) else None

    def saw_queued(self, waited_s: float) -> None:
        """A job was seen still queued `waited_s` after its submit."""
        self._queue_wait = max(self._queue_wait, waited_s)

    def queueing(self, kind: JobKind) -> bool:
        """True once the run has seen a job wait in RunComfy's queue for a good part of a
        job of `kind` (of any kind while `kind` has no history): then a new job is read at
        once, to tell whether it queues and to time it from its start."""
        own = self.window(kind, from_start=True)
        lows = (
            [own.low]
            if own is not None
            else [w.low for k in self._kinds if (w := self.window(k, from_start=True))]
        )
        return bool(lows) and self._queue_wait > QUEUE_MATTERS * min(lows)

    def pace(self) -> float | None:
        """Jobs this run saw finish per second, over its recent finishes (None before two)."""
        if len(self._finishes) < 2:
            return None
        ordered = sorted(self._finishes)
        span = ordered[-1] - ordered[0]
        return (len(ordered) - 1) / span if span > 0 else None

    def _wake(self, known: _Kind) -> None:
        sleepers, known.sleepers = known.sleepers, set()
        for future in sleepers:
            if not future.done():
                future.set_result(True)

    async def sleep(self, kind: JobKind, seconds: float, *, until_end: bool = False) -> bool:
        """Sleep `seconds`, or less when `kind`'s window moves (or, `until_end`, when any
        job of the run ends); True when woken early."""
        if seconds <= 0:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        known = self._kind(kind)
        known.sleepers.add(future)
        if until_end:
            self._end_sleepers.add(future)
        timer = loop.call_later(seconds, _settle, future)
        try:
            return await future
        finally:
            timer.cancel()
            known.sleepers.discard(future)
            self._end_sleepers.discard(future)


def _settle(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


def _moved(before: Window | None, after: Window | None) -> bool:
    """True when a window appeared or moved by more than 2 % of its span."""
    if after is None:
        return False
    if before is None:
        return True
    tolerance = 0.02 * max(after.high, 1e-9)
    return abs(after.low - before.low) > tolerance or abs(after.high - before.high) > tolerance


class JobWatch:
    """One job's planner: what was seen of it, and when to read it next.

    The wait loop tells it each answer (`saw`) and asks for the next read (`next_read`),
    which is None when nothing is known yet: the loop then waits as `PollPolicy` says.
    """

    def __init__(
        self,
        estimator: RunEstimator,
        kind: JobKind,
        submitted: float | None,
        *,
        min_pause_s: float,
        max_pause_s: float,
    ) -> None:
        """See `RunEstimator.watch`; pauses are kept between `min_pause_s` and `max_pause_s`
        (the latter only for reads after the window and while queued)."""
        self.estimator = estimator
        self.kind = kind
        self.submitted = submitted
        self.min_pause_s = min_pause_s
        self.max_pause_s = max_pause_s
        self.last_read: float | None = None
        self.status = RequestStatus.UNKNOWN
        self.position: int | None = None
        """The queue position the last read that found the job queued reported."""
        self.last_queued: float | None = None
        """The last read that found the job queued."""
        self.first_running: float | None = None
        """The first read that found it running."""
        self.last_running: float | None = None
        """The last read that found it running."""
        self.late_reads = 0
        """Reads after its window closed."""

    # -- what was seen

    def saw(self, status: RequestStatus, now: float, position: int | None = None) -> None:
        """Note one read's answer (`status` UNKNOWN for a read that told nothing)."""
        if status is RequestStatus.IN_QUEUE:
            self.last_queued = now
            self.position = position
            if self.submitted is not None:
                self.estimator.saw_queued(now - self.submitted)
        elif status is RequestStatus.IN_PROGRESS:
            if self.first_running is None:
                self.first_running = now
            self.last_running = now
        if status is not RequestStatus.UNKNOWN:
            self.status = status
        anchor, window = self._plan_basis()
        if anchor is not None and window is not None and now > anchor + window.high:
            self.late_reads += 1
        self.last_read = now

    @property
    def wants_position(self) -> bool:
        """True when the next read should be the first, at once, and from `/status`: the run
        has seen jobs queue for long, so whether this one queues (and behind how many)
        tells when it starts."""
        return (
            self.last_read is None
            and self.submitted is not None
            and self.estimator.queueing(self.kind)
        )

    def start_by_queue(self) -> float | None:
        """When the job started, counted from its queue position: a job with `p` jobs
        ahead of it starts when the run's `p + 1`-th job after that read leaves a worker.
        None while it was not seen queued with a position, or fewer jobs ended since."""
        if self.last_queued is None or self.position is None:
            return None
        start = self.estimator.end_after(self.last_queued, max(0, self.position) + 1)
        if start is None:
            return None
        if self.first_running is not None and self.first_running > self.last_queued:
            start = min(start, self.first_running)
        return start

    @property
    def started(self) -> float | None:
        """When the job started: counted from its queue position (`start_by_queue`), else
        the middle of the reads that bracket it (the last that found it queued, or its
        submit, and the first that found it running)."""
        counted = self.start_by_queue()
        if counted is not None:
            return counted
        bracket = self._start_bracket()
        return None if bracket is None else (bracket[0] + bracket[1]) / 2.0

    def _start_bracket(self) -> tuple[float, float] | None:
        """The reads that bracket the job's start: the last that found it queued (or its
        submit) and the first that found it running; None unless both are known, in order."""
        if self.first_running is None:
            return None
        since = self.last_queued if self.last_queued is not None else self.submitted
        if since is None or since > self.first_running:
            return None
        return since, self.first_running

    def _start_seen_closely(self, run_s: float) -> bool:
        """True when the job's start is known to within `CLOSE_START` of `run_s`."""
        if self.start_by_queue() is not None:
            return True
        bracket = self._start_bracket()
        return bracket is not None and bracket[1] - bracket[0] <= CLOSE_START * max(run_s, 1e-9)

    def _end(self, result: RequestResult, now: float) -> tuple[float | None, float | None]:
        """(when the job ended, its duration from submit) from the server's timestamps,
        else from the reads around the end."""
        total = server_seconds(result)
        end: float | None = None
        if total is not None and self.submitted is not None:
            end = self.submitted + total
        elif self.last_running is not None:
            end = (self.last_running + now) / 2.0
        elif self.last_read is not None:
            end = (self.last_read + now) / 2.0
        if total is None and end is not None and self.submitted is not None:
            total = end - self.submitted
        return end, total

    def finished(self, result: RequestResult, now: float) -> bool:
        """Teach the run this job's durations (call once it succeeded); True when its kind's
        window moved (the kind's sleeping waits were woken)."""
        end, total = self._end(result, now)
        run: float | None = None
        started = self.started
        if started is not None and end is not None and self._start_seen_closely(end - started):
            run = end - started
        return self.estimator.learn(
            self.kind, total_s=total, run_s=run, finished=end if end is not None else now
        )

    def ended(self, result: RequestResult, now: float) -> None:
        """Tell the run this job left RunComfy without success (failed, cancelled): its
        place came free, nothing is learned of its duration."""
        end, _ = self._end(result, now)
        self.estimator.ended(end if end is not None else now)

    # -- when to read next

    def _plan_basis(self) -> tuple[float | None, Window | None]:
        """(anchor, window): the job's start (when known) or submit, and its kind's window."""
        counted = self.start_by_queue()
        if counted is not None:
            return counted, self.estimator.window(self.kind, from_start=True)
        if self.status is RequestStatus.IN_QUEUE:
            return None, None
        if self.last_queued is not None:
            started = self.started
            if started is None:
                return None, None
            return started, self.estimator.window(self.kind, from_start=True)
        if self.submitted is None:
            return None, None  # not known since when
        run = self.estimator.window(self.kind, from_start=True)
        started = self.started
        if started is not None and run is not None and self._start_seen_closely(run.low):
            return started, run  # seen running right after its submit
        return self.submitted, self.estimator.window(self.kind, from_start=False)

    def next_read(self, now: float) -> float | None:
        """The monotonic moment of the next read, or None to wait as `PollPolicy` says."""
        earliest = now if self.last_read is None else max(now, self.last_read + self.min_pause_s)
        if self.wants_position:
            return earliest
        anchor, window = self._plan_basis()
        if anchor is None or window is None:
            if self.status is RequestStatus.IN_QUEUE:
                return self._while_queued(earliest)
            return None
        reads = self.estimator.reads_in_window
        step = max(window.width / reads, self.min_pause_s)
        opens, closes = anchor + window.low, anchor + window.high
        # the grid: opens + step, opens + 2 step, ... closes
        k = max(1, math.ceil((earliest - opens) / step - 1e-9))
        at = opens + k * step
        if at <= closes + 1e-9:
            return at
        # running long: a growing interval from the window's step
        last = self.last_read if self.last_read is not None else closes
        pause = min(self.max_pause_s, step * LATE_GROWTH ** max(1, self.late_reads))
        return max(earliest, max(last, closes) + pause)

    @property
    def waits_for_end(self) -> bool:
        """True while the job is queued with a known position and its start is not counted
        yet: the next end of a job of the run may give it."""
        return (
            self.status is RequestStatus.IN_QUEUE
            and self.position is not None
            and self.start_by_queue() is None
        )

    def _while_queued(self, earliest: float) -> float | None:
        """Read a queued job again about when the run's pace says it reaches a worker."""
        pace = self.estimator.pace()
        if pace is None:
            return None
        last = self.last_read if self.last_read is not None else earliest
        if self.waits_for_end and self.estimator.queueing(self.kind):
            # the run's ends will give its start; read only if they do not come (jobs
            # from elsewhere on the account ahead of it): after twice its expected wait
            expected = (max(0, self.position or 0) + 1) / pace
            return max(earliest, last + max(self.max_pause_s, 2.0 * expected))
        ahead = max(1, self.position or 0)
        pause = min(self.max_pause_s, max(self.min_pause_s, ahead / pace))
        return max(earliest, last + pause)

    def fallback(self, pause: float) -> float:
        """The pause when there is no plan: the policy's own (`pause`) for a lone job or a
        kind's scout; twice that for the scout's companions, which the scout's finish will
        wake."""
        return pause if self.estimator.is_scout(self) else 2.0 * pause

    def close(self) -> None:
        """The wait ended (however it ended)."""
        self.estimator.release(self)

    async def sleep_until(self, at: float, clock: Callable[[], float] = time.monotonic) -> bool:
        """Sleep until `at` (on `clock`), or less when the kind's window moves or, while the
        job waits for an end to start it, a job of the run ends; True when woken early."""
        return await self.estimator.sleep(self.kind, at - clock(), until_end=self.waits_for_end)


__all__ = [
    "CLOSE_START",
    "ENDS_KEPT",
    "LATE_GROWTH",
    "PACE_FINISHES",
    "QUEUE_MATTERS",
    "READS_IN_WINDOW",
    "SAMPLES_KEPT",
    "JobKind",
    "JobWatch",
    "RunEstimator",
    "Window",
    "server_seconds",
    "window_of",
]
