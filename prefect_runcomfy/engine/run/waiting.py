"""Following one request to its end: adaptive polling, `Retry-After`, a wall-clock deadline.

This is the one wait loop; the Prefect task `wait_for_request` wraps it. It polls `/status`
while the job is queued (that is where RunComfy reports the queue position) and `/result` once
it runs (so the answer that says "finished" already carries the outputs: no extra call).

When the run shares a `RunEstimator` (a batch does) and the policy's `strategy` is
"learned", the reads of a job whose kind has finished before in this run follow the run's
experience (`engine.run.durations`); otherwise, and for a job of a kind not seen yet, the interval
doubles as `PollPolicy` says. Either way `Retry-After` and the deadline rule.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from prefect_runcomfy.api.backoff import Backoff
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import (
    RateLimitedError,
    RequestNotFoundError,
    RunTimedOutError,
    ServerError,
    TransportError,
)
from prefect_runcomfy.api.models import RequestResult, RequestStatus
from prefect_runcomfy.engine.run.durations import JobKind, JobWatch, RunEstimator

PollStrategy = Literal["learned", "doubling"]
"""How a batch waits: "learned" (the run's finished jobs say when to look) or "doubling"
(each job on its own, the interval doubling up to `max_s`)."""


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask whether a request is done.

    The interval starts at `initial_s` and doubles up to `max_s`, with `jitter` (a fraction)
    drawn at random either way, and never beyond `max_s`. For a five-minute job that is about
    13 polls and at most `max_s` of lag between the job finishing and the download starting.
    The interval is drawn from the package's one growing-delay policy, `Backoff` (see `backoff`).
    """

    initial_s: float = 2.0
    """First interval, in seconds."""
    multiplier: float = 2.0
    """How much the interval grows after each poll."""
    max_s: float = 30.0
    """The longest interval."""
    jitter: float = 0.1
    """Fraction of each interval drawn at random either way, so many rows do not poll in step."""
    not_found_grace_s: float = 30.0
    """How long after a submit "request not found" means "not visible yet" rather than gone."""
    strategy: PollStrategy = "learned"
    """"learned": with a run's `RunEstimator`, read a job when jobs of its kind finished
    before; "doubling": always the doubling interval."""

    @property
    def min_pause_s(self) -> float:
        """The shortest pause between two reads of one job in the learned schedule."""
        return self.initial_s / 4.0

    @property
    def backoff(self) -> Backoff:
        """This policy as a `Backoff` (whose `jitter` is the spread's whole width: twice ours)."""
        return Backoff(
            initial_s=self.initial_s,
            multiplier=self.multiplier,
            max_delay_s=self.max_s,
            jitter=2 * self.jitter,
        )

    def interval(self, poll_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before poll number `poll_number` + 1 (0-based)."""
        return self.backoff.delay(poll_number, rng=rng)


@dataclass
class WaitOutcome:
    """How a wait ended: the last result, and when the job was first seen running and finished."""

    result: RequestResult
    polls: int
    started_waiting: float
    first_running: float | None = None
    finished: float | None = None
    states: list[str] = field(default_factory=list)
    last_queued: float | None = None
    """When a read last saw the job queued: a job never seen running started after it."""


StateListener = Callable[[RequestStatus, str | None, int | None], None]
"""Called with (status, raw status word, queue position) when any of them changes."""


async def wait_until_finished(
    client: RunComfyClient,
    request_id: str,
    *,
    max_wait_s: float,
    policy: PollPolicy | None = None,
    submitted_monotonic: float | None = None,
    on_change: StateListener | None = None,
    clock: Callable[[], float] = time.monotonic,
    estimator: RunEstimator | None = None,
    kind: JobKind = None,
) -> WaitOutcome:
    """Poll until the request is finished (succeeded, failed or cancelled) or `max_wait_s` passes.

    Transient trouble (rate limits past the client's own retries, 5xx, broken connections)
    does not end the wait; it only makes the next poll later. "Not found" within
    `policy.not_found_grace_s` of the submit is taken as "not visible yet". With a run's
    `estimator` (and `policy.strategy == "learned"`), reads of a job of `kind` (`ModelSpec.job_kind`)
    follow what the run learned; a success teaches it this job's durations.

    Raises:
        RunTimedOutError: the deadline passed; `last_status` says whether it was still queued.
        RequestNotFoundError: the request is unknown or its record expired.
        RunComfyAPIError: any other refusal (token, permission).
    """
    policy = policy or PollPolicy()
    start = clock()
    deadline = start + max_wait_s
    submitted = submitted_monotonic if submitted_monotonic is not None else start
    watch: JobWatch | None = None
    if estimator is not None and policy.strategy == "learned":
        watch = estimator.watch(
            kind,
            submitted=submitted_monotonic,
            min_pause_s=policy.min_pause_s,
            max_pause_s=policy.max_s,
        )
    follow = _Follow(client, request_id, policy, watch, clock, submitted, on_change)
    try:
        return await follow.run(start, deadline, max_wait_s)
    finally:
        if watch is not None:
            watch.close()


@dataclass
class _Follow:
    """The loop of `wait_until_finished` and what it keeps between reads: read, note, rest,
    until finished or the deadline."""

    client: RunComfyClient
    request_id: str
    policy: PollPolicy
    watch: JobWatch | None
    clock: Callable[[], float]
    submitted: float
    on_change: StateListener | None
    status: RequestStatus = RequestStatus.UNKNOWN
    polls: int = 0
    first_running: float | None = None
    last_queued: float | None = None
    seen: bool = False  # once RunComfy has shown the request, "not found" means gone
    states: list[str] = field(default_factory=list)
    result: RequestResult | None = None
    last_key: tuple[RequestStatus, str | None, int | None] | None = None

    async def run(self, start: float, deadline: float, max_wait_s: float) -> WaitOutcome:
        if self.watch is not None:
            await _rest(self.watch, 0.0, 0.0, deadline, self.clock)  # until the first read
        while True:
            delay_hint = await self.read()
            done = self.status.is_terminal and self.status is not RequestStatus.COMPLETED
            if done and self.result is not None:
                return self.finished(start)
            now = self.clock()
            if now >= deadline:
                seen_last = self.last_key[1] if self.last_key else "nothing yet"
                raise RunTimedOutError(
                    f"Request {self.request_id} did not finish within {max_wait_s:g} s "
                    f"(last seen: {seen_last}).",
                    request_id=self.request_id,
                    last_status=self.status.value,
                )
            pause = self.policy.interval(self.polls - 1)
            if delay_hint is not None:
                pause = max(pause, delay_hint)
            if self.watch is None:
                await asyncio.sleep(max(0.0, min(pause, deadline - now)))
            else:
                await _rest(self.watch, pause, delay_hint or 0.0, deadline, self.clock)

    async def read(self) -> float | None:
        """One read of the request, noted; returns a `Retry-After` hint when rate limited."""
        delay_hint: float | None = None
        self.polls += 1
        try:
            self.status, raw, position, fresh, ran = await _poll(
                self.client,
                self.request_id,
                reads_status(self.watch, self.status, self.polls),
                self.watch is None,
            )
            self.result = fresh or self.result
            if ran and self.first_running is None:
                self.first_running = self.clock()
            self.seen = True
        except RequestNotFoundError:
            if self.seen or self.clock() - self.submitted > self.policy.not_found_grace_s:
                raise
            raw, position = "not_visible_yet", None
        except RateLimitedError as exc:
            raw, position = None, None
            delay_hint = exc.retry_after
        except (ServerError, TransportError):
            raw, position = None, None
        self.note(raw, position)
        return delay_hint

    def note(self, raw: str | None, position: int | None) -> None:
        """Record what the read saw; tell `on_change` when the state moved."""
        if self.status is RequestStatus.IN_PROGRESS and self.first_running is None:
            self.first_running = self.clock()
        if self.status is RequestStatus.IN_QUEUE and raw is not None:
            self.last_queued = self.clock()
        if self.watch is not None:
            seen = self.status if raw is not None else RequestStatus.UNKNOWN
            self.watch.saw(seen, self.clock(), position)
        key = (self.status, raw, position)
        if raw is not None and key != self.last_key:
            self.last_key = key
            self.states.append(raw)
            if self.on_change is not None:
                self.on_change(self.status, raw, position)

    def finished(self, start: float) -> WaitOutcome:
        """The outcome of a request that ended; its place at RunComfy came free."""
        assert self.result is not None
        if self.watch is not None and self.status is RequestStatus.SUCCEEDED:
            self.watch.finished(self.result, self.clock())
        elif self.watch is not None:
            self.watch.ended(self.result, self.clock())  # queued jobs move up
        return WaitOutcome(
            result=self.result,
            polls=self.polls,
            started_waiting=start,
            first_running=self.first_running,
            finished=self.clock(),
            states=self.states,
            last_queued=self.last_queued,
        )


async def _rest(
    watch: JobWatch,
    fallback_s: float,
    retry_after_s: float,
    deadline: float,
    clock: Callable[[], float],
) -> None:
    """Sleep until the job's next read: when its kind's window says (planned again whenever
    the window moves), else after `fallback_s`; never before `Retry-After`, never past the
    deadline."""
    now = clock()
    fallback_at, not_before = now + watch.fallback(fallback_s), now + retry_after_s
    while True:
        planned = watch.next_read(now)
        at = min(max(fallback_at if planned is None else planned, not_before), deadline)
        if at <= now or not await watch.sleep_until(at, clock):
            return
        now = clock()


def reads_status(watch: JobWatch | None, status: RequestStatus, polls: int) -> bool:
    """Whether read number `polls` goes to `/status` (for a queued job's position) rather
    than `/result`: while the job may be queued, after the first read; the learned schedule
    also reads a new job's `/status` at once when the run sees jobs queue
    (`JobWatch.wants_position`), and `/result` once a queued job's start is counted."""
    if watch is not None and watch.wants_position:
        return True
    if watch is not None and watch.start_by_queue() is not None:
        return False
    return status in (RequestStatus.IN_QUEUE, RequestStatus.UNKNOWN) and polls > 1


async def _poll(
    client: RunComfyClient, request_id: str, by_status: bool, result_when_running: bool
) -> tuple[RequestStatus, str | None, int | None, RequestResult | None, bool]:
    """One look at a request: (status, raw word, queue position, result if read, whether
    `/status` saw it running). `/result` alone tells the state; while the job queues,
    `/status` is read instead (`by_status`) for its queue position; a finished job (and,
    `result_when_running`, a running one) is read once more from `/result`."""
    if by_status:
        state = await client.status(request_id)
        running = state.status is RequestStatus.IN_PROGRESS
        if not (state.status.is_terminal or (running and result_when_running)):
            return state.status, state.raw_status, state.queue_position, None, running
        # A finished job is read once more from /result for its outputs and error.
        result = await client.result(request_id, include_cost=True)
        return result.status, result.raw_status, None, result, running
    result = await client.result(request_id, include_cost=True)
    status = result.status
    if status is RequestStatus.COMPLETED:
        # /result speaks succeeded/failed; "completed" here means "ask again".
        status = RequestStatus.IN_PROGRESS
    return status, result.raw_status, result.queue_position, result, False


__all__ = [
    "PollPolicy",
    "PollStrategy",
    "StateListener",
    "WaitOutcome",
    "reads_status",
    "wait_until_finished",
]
