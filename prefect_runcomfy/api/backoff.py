"""How long to wait between attempts, and the one loop that tries again.

`Backoff` is the one growing-delay policy (exponential, jittered, bounded): the client's
retries, downloads and the wait loop's poll interval all draw from it. `retrying` is the one
retry loop: every call in this package that is tried again goes through it, with either a
`Backoff` or a fixed list of pauses, a predicate saying which errors are worth another try,
and the `Retry-After` an error carries. `parse_retry_after` reads that header.

This module does not import Prefect.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")

RetryListener = Callable[[BaseException, int, float], None]
"""Called before each pause with (the error, how many tries have failed so far, the pause in s)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, bounded by `max_delay_s`.

    The delay after failed attempt `n` (0 = the first) is `initial_s * multiplier**n`, capped
    at `max_delay_s`, then moved at random by up to `jitter / 2` of itself either way, and
    never beyond `[0, max_delay_s]`.

    Example:
        ```python
        Backoff(initial_s=0.5, max_delay_s=30).delay(3)  # somewhere in [3.0, 5.0]
        ```
    """

    initial_s: float = 0.5
    """Delay before the second attempt (before jitter)."""
    multiplier: float = 2.0
    """How much the delay grows per attempt."""
    max_delay_s: float = 30.0
    """The longest delay, whatever the attempt number."""
    jitter: float = 0.5
    """Width of the random spread as a fraction of the delay, so many clients do not retry in step."""

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0 = the first)."""
        base = self._grown(attempt)
        spread = base * self.jitter
        draw = (rng or random).uniform(-spread / 2, spread / 2)
        return max(0.0, min(self.max_delay_s, base + draw))

    def _grown(self, attempt: int) -> float:
        if self.initial_s <= 0:
            return 0.0
        try:
            grown = self.initial_s * self.multiplier ** max(0, attempt)
        except OverflowError:
            # A wait of hours polls a thousand times: 2.0**1024 overflows, the cap still holds.
            return self.max_delay_s
        return min(self.max_delay_s, grown)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Read a `Retry-After` header: delay seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def retry_after_of(error: BaseException) -> float | None:
    """The `Retry-After` an error carries in seconds (`RateLimitedError`, `DownloadError`), or None."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return max(0.0, float(value))


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    delays: Backoff | Sequence[float],
    retry_if: Callable[[BaseException], bool],
    attempts: int | None = None,
    wait_hint: Callable[[BaseException], float | None] | None = None,
    max_wait_s: float | None = None,
    on_retry: RetryListener | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Await `call()` until it succeeds, trying again after a pause while `retry_if(error)` holds.

    Args:
        call: Makes one attempt; called anew for each (a coroutine can be awaited only once).
        delays: The pauses: a `Backoff` (then `attempts` is required), or a fixed list such as
            `(0.5, 2.0)`: the pause before try 2, try 3, ... (the last repeats if `attempts`
            asks for more tries than the list has pauses).
        retry_if: Whether an error is worth another try. Errors it refuses are raised at once.
            Only `Exception`s are caught: cancellation and interrupts always pass straight through.
        attempts: Tries in all, the first included; `len(delays) + 1` for a fixed list.
        wait_hint: Reads the wait the other side asked for (e.g. `retry_after_of`). When it
            gives one, the pause is at least that long, plus up to 10 % (at most 1 s) of
            jitter so a fleet of workers does not come back in the same instant.
        max_wait_s: A hinted wait longer than this is not waited for: the error is raised.
        on_retry: Told of each retry before its pause (for a log line).
        sleep: How to pause (tests pass a recorder).
        rng: Where `Backoff` jitter and hint jitter are drawn from (tests pass a seeded one).

    Raises:
        The last error, unchanged (same object, traceback and cause), when `retry_if` refuses
        it, the attempts are used up, or its hinted wait exceeds `max_wait_s`.

    Example:
        ```python
        entry = await retrying(
            lambda: asyncio.to_thread(ledger.mark, row_id, state),
            delays=(0.5, 2.0),
            retry_if=lambda error: isinstance(error, StorageError),
        )
        ```
    """
    tries = _tries(delays, attempts)
    failures = 0
    while True:
        pause: float | None
        try:
            return await call()
        except Exception as error:
            failures += 1
            pause = None
            if failures < tries and retry_if(error):
                pause = _pause(error, failures, delays, wait_hint, max_wait_s, rng)
            if pause is None:
                raise
            if on_retry is not None:
                on_retry(error, failures, pause)
        # Outside the except block, so the next try's error is not chained onto this one.
        await sleep(pause)


def _tries(delays: Backoff | Sequence[float], attempts: int | None) -> int:
    if attempts is None:
        if isinstance(delays, Backoff):
            raise ValueError("retrying with a Backoff needs a bound: pass attempts")
        return len(delays) + 1
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if attempts > 1 and not isinstance(delays, Backoff) and not delays:
        raise ValueError("retrying more than once needs at least one pause in delays")
    return attempts


def _pause(
    error: BaseException,
    failures: int,
    delays: Backoff | Sequence[float],
    wait_hint: Callable[[BaseException], float | None] | None,
    max_wait_s: float | None,
    rng: random.Random | None,
) -> float | None:
    """The pause after the `failures`-th failed try; None when the hinted wait is too long."""
    if isinstance(delays, Backoff):
        pause = delays.delay(failures - 1, rng=rng)
    else:
        pause = max(0.0, float(delays[min(failures, len(delays)) - 1]))
    hint = wait_hint(error) if wait_hint is not None else None
    if hint is None:
        return pause
    if max_wait_s is not None and hint > max_wait_s:
        return None
    return max(pause, hint + (rng or random).uniform(0, min(1.0, hint * 0.1)))


__all__ = ["Backoff", "RetryListener", "parse_retry_after", "retry_after_of", "retrying"]
