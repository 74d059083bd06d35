"""Following one request to its end: adaptive polling, `Retry-After`, a wall-clock deadline.

This is the one wait loop; the Prefect task `wait_for_request` wraps it. It polls `/status`
while the job is queued (that is where RunComfy reports the queue position) and `/result` once
it runs (so the answer that says "finished" already carries the outputs: no extra call).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
) -> WaitOutcome:
    """Poll until the request is finished (succeeded, failed or cancelled) or `max_wait_s` passes.

    Transient trouble (rate limits past the client's own retries, 5xx, broken connections)
    does not end the wait; it only makes the next poll later. "Not found" within
    `policy.not_found_grace_s` of the submit is taken as "not visible yet".

    Raises:
        RunTimedOutError: the deadline passed; `last_status` says whether it was still queued.
        RequestNotFoundError: the request is unknown or its record expired.
        RunComfyAPIError: any other refusal (token, permission).
    """
    policy = policy or PollPolicy()
    start = clock()
    deadline = start + max_wait_s
    submitted = submitted_monotonic if submitted_monotonic is not None else start
    last_key: tuple[RequestStatus, str | None, int | None] | None = None
    status = RequestStatus.UNKNOWN
    polls = 0
    first_running: float | None = None
    seen = False  # once RunComfy has shown the request, "not found" means gone, not "not yet"
    states: list[str] = []
    result: RequestResult | None = None
    while True:
        delay_hint: float | None = None
        polls += 1
        try:
            status, raw, position, fresh, ran = await _poll(client, request_id, status, polls)
            result = fresh or result
            if ran and first_running is None:
                first_running = clock()
            seen = True
        except RequestNotFoundError:
            if seen or clock() - submitted > policy.not_found_grace_s:
                raise
            raw, position = "not_visible_yet", None
        except RateLimitedError as exc:
            raw, position = None, None
            delay_hint = exc.retry_after
        except (ServerError, TransportError):
            raw, position = None, None
        if status is RequestStatus.IN_PROGRESS and first_running is None:
            first_running = clock()
        key = (status, raw, position)
        if raw is not None and key != last_key:
            last_key = key
            states.append(raw)
            if on_change is not None:
                on_change(status, raw, position)
        if status.is_terminal and result is not None and status is not RequestStatus.COMPLETED:
            return WaitOutcome(
                result=result,
                polls=polls,
                started_waiting=start,
                first_running=first_running,
                finished=clock(),
                states=states,
            )
        now = clock()
        if now >= deadline:
            seen_last = last_key[1] if last_key else "nothing yet"
            raise RunTimedOutError(
                f"Request {request_id} did not finish within {max_wait_s:g} s "
                f"(last seen: {seen_last}).",
                request_id=request_id,
                last_status=status.value,
            )
        pause = policy.interval(polls - 1)
        if delay_hint is not None:
            pause = max(pause, delay_hint)
        await asyncio.sleep(max(0.0, min(pause, deadline - now)))


async def _poll(
    client: RunComfyClient, request_id: str, status: RequestStatus, polls: int
) -> tuple[RequestStatus, str | None, int | None, RequestResult | None, bool]:
    """One look at a request: (status, raw word, queue position, result if read, whether
    `/status` saw it running). `/result` alone tells the state; while the job queues,
    `/status` is read instead for its queue position."""
    if status in (RequestStatus.IN_QUEUE, RequestStatus.UNKNOWN) and polls > 1:
        state = await client.status(request_id)
        running = state.status is RequestStatus.IN_PROGRESS
        if not (state.status.is_terminal or running):
            return state.status, state.raw_status, state.queue_position, None, False
        # A finished job is read once more from /result for its outputs and error.
        result = await client.result(request_id, include_cost=True)
        return result.status, result.raw_status, None, result, running
    result = await client.result(request_id, include_cost=True)
    status = result.status
    if status is RequestStatus.COMPLETED:
        # /result speaks succeeded/failed; "completed" here means "ask again".
        status = RequestStatus.IN_PROGRESS
    return status, result.raw_status, result.queue_position, result, False


__all__ = ["PollPolicy", "StateListener", "WaitOutcome", "wait_until_finished"]
