"""How long to wait between attempts: exponential backoff with jitter, and `Retry-After`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, bounded by `max_delay_s`.

    Example:
        ```python
        Backoff(initial_s=0.5, max_delay_s=30).delay(3)  # somewhere in [2.0, 4.0]
        ```
    """

    initial_s: float = 0.5
    """Delay before the second attempt (before jitter)."""
    multiplier: float = 2.0
    """How much the delay grows per attempt."""
    max_delay_s: float = 30.0
    """The longest delay, whatever the attempt number."""
    jitter: float = 0.5
    """Fraction of the delay drawn at random, so many clients do not retry in step."""

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0 = the first)."""
        base = min(self.max_delay_s, self.initial_s * self.multiplier ** max(0, attempt))
        spread = base * self.jitter
        draw = (rng or random).uniform(-spread / 2, spread / 2)
        return max(0.0, min(self.max_delay_s, base + draw))


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
