"""How long one output's download may take, and what a long one says while it runs.

The rule, for each output, counted from its first try (a retry does not restart the clock):

- the host announces the size: the download must be complete within
  `grace_s + size / min_rate` (defaults: 120 s plus the size at 256 KiB/s; a 50 MB video gets
  about 5 minutes, a 2 GiB one about 2.3 hours);
- no size announced: it must keep that pace, and ends as soon as it falls behind it (`received
  / min_rate + grace_s` seconds have passed); the size cap (`max_output_bytes`) bounds it, at
  `grace_s + max_bytes / min_rate`;
- a connection that sends nothing for `stall_s` (60 s) ends that try; the next try gets what
  is left of the deadline.

Past the deadline the download ends with `DownloadTimedOutError`, and its partial file is
removed. A long download tells `on_progress` how far it got every `progress_every_s` (30 s).

The settings come from the environment (`DownloadLimits.from_env`):
`RUNCOMFY_DOWNLOAD_MIN_RATE` (bytes per second: `262144`, `256k`, `1M`),
`RUNCOMFY_DOWNLOAD_GRACE_S` and `RUNCOMFY_DOWNLOAD_STALL_S` (seconds).

This module does not import Prefect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from prefect_runcomfy.api.exceptions import ConfigurationError, DownloadTimedOutError

T = TypeVar("T")

logger = logging.getLogger("prefect_runcomfy.api.downloads")

MIN_RATE_ENV = "RUNCOMFY_DOWNLOAD_MIN_RATE"
"""Environment variable: the slowest average a download may keep (bytes per second)."""
GRACE_ENV = "RUNCOMFY_DOWNLOAD_GRACE_S"
"""Environment variable: seconds every download gets on top of its size at the minimum rate."""
STALL_ENV = "RUNCOMFY_DOWNLOAD_STALL_S"
"""Environment variable: seconds without a byte that end a try."""

DOWNLOAD_MIN_RATE = 256 * 1024
"""Default minimum rate, bytes per second: a 50 MB video in about 3 minutes. Far below what a
CDN delivers, so only a sick transfer is ended by it."""
DOWNLOAD_GRACE_S = 120.0
"""Default grace: connecting, a slow start and a retry fit in it whatever the size."""
DOWNLOAD_STALL_S = 60.0
"""Default stall limit (the read timeout of each try)."""
PROGRESS_EVERY_S = 30.0
"""How often a long download says how far it got (tests set it smaller)."""

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]?)(?:i?b)?\s*(?:/\s*s)?\s*$", re.I)


@dataclass(frozen=True)
class DownloadLimits:
    """How long one output's download may take (see the module's docstring for the rule).

    Example:
        ```python
        DownloadLimits().deadline_s(50_000_000)  # 120 + 50e6 / 262144: about 311 s
        DownloadLimits(min_rate=1 << 20, grace_s=30).deadline_s(None, max_bytes=1 << 30)  # 1054 s
        ```
    """

    min_rate: float = DOWNLOAD_MIN_RATE
    """The slowest average a download may keep, in bytes per second."""
    grace_s: float = DOWNLOAD_GRACE_S
    """Seconds every download gets on top of its size at `min_rate`."""
    stall_s: float = DOWNLOAD_STALL_S
    """Seconds without a byte that end a try (it is tried again within the deadline)."""
    progress_every_s: float = PROGRESS_EVERY_S
    """How often a long download tells its progress listener how far it got."""

    def __post_init__(self) -> None:
        """Refuse limits that would never end a download, or end every one at once."""
        for name in ("min_rate", "grace_s", "stall_s", "progress_every_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ConfigurationError(f"Download limit {name} must be a positive number.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DownloadLimits:
        """The limits from `RUNCOMFY_DOWNLOAD_MIN_RATE`, `RUNCOMFY_DOWNLOAD_GRACE_S` and
        `RUNCOMFY_DOWNLOAD_STALL_S`, each one's default where it is not set.

        Raises:
            ConfigurationError: a variable is set to something that is not a positive amount.
        """
        env = os.environ if environ is None else environ
        return cls(
            min_rate=_rate(env.get(MIN_RATE_ENV), DOWNLOAD_MIN_RATE),
            grace_s=_seconds(GRACE_ENV, env.get(GRACE_ENV), DOWNLOAD_GRACE_S),
            stall_s=_seconds(STALL_ENV, env.get(STALL_ENV), DOWNLOAD_STALL_S),
            progress_every_s=PROGRESS_EVERY_S,
        )

    def deadline_s(self, size: int | None, *, max_bytes: int | None = None) -> float:
        """Seconds an output of `size` bytes may take, from its first try; for an unknown size,
        the bound the size cap gives (the pace ends a slow one sooner: `DownloadClock.arrived`),
        or no bound without a cap."""
        known = size if size is not None else max_bytes
        if known is None:
            return float("inf")
        return self.grace_s + max(0, known) / self.min_rate

    def describe(self) -> str:
        """The rule in the words of its settings, for error messages."""
        return (
            f"{GRACE_ENV}={self.grace_s:g} s plus its size at "
            f"{MIN_RATE_ENV}={human_bytes(self.min_rate)}/s"
        )


def _rate(text: str | None, default: float) -> float:
    if text is None or not text.strip():
        return default
    match = _RATE.match(text)
    value = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0.0
    if value <= 0:
        raise ConfigurationError(
            f"{MIN_RATE_ENV}={text!r} is not a rate: give bytes per second, such as 262144, "
            "256k or 1M (binary units)."
        )
    return value


def _seconds(name: str, text: str | None, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigurationError(f"{name}={text!r} is not a positive number of seconds.")
    return value


def human_bytes(count: float) -> str:
    """`512 B`, `48.2 KiB`, `3.1 MiB`, `2.0 GiB`."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            break
    return f"{count:.1f} {unit}"


@dataclass(frozen=True)
class DownloadProgress:
    """How far a long download got, as its progress listener is told."""

    url: str
    """The output's URL without its query (which may hold a signature)."""
    received: int
    """Bytes of the current try so far."""
    expected: int | None
    """The size the host announced, or None."""
    elapsed_s: float
    """Seconds since the first try began."""
    rate: float
    """Bytes per second of the current try."""
    deadline_s: float
    """Seconds the download may take in all (infinite without a size and a cap)."""
    tries: int = 1
    """Which try this is (or, with `failed`, which one failed)."""
    failed: str | None = None
    """Set when a try failed and another follows: why (`stalled: nothing arrived for 60 s
    after 1048576 bytes`)."""

    def describe(self) -> str:
        """`12.0 KiB of 48.0 KiB after 30 s (410 B/s); deadline 315 s` (the current try's
        bytes and rate; the time since the first try), or, when a try failed, `try 1 stalled:
        ...; trying again after 61 s of its 315 s deadline`."""
        deadline = seconds(self.deadline_s)
        if self.failed is not None:
            return (
                f"try {self.tries} {self.failed}; trying again after "
                f"{seconds(self.elapsed_s)} of its {deadline} deadline"
            )
        of = f" of {human_bytes(self.expected)}" if self.expected is not None else ""
        return (
            f"{human_bytes(self.received)}{of} after {seconds(self.elapsed_s)} "
            f"({human_bytes(self.rate)}/s); deadline {deadline}"
        )


ProgressListener = Callable[[DownloadProgress], None]
"""Told how far a long download got, about every `DownloadLimits.progress_every_s`, and of
each try that failed before the next (`DownloadProgress.failed`)."""


def log_progress(progress: DownloadProgress) -> None:
    """The default progress listener: one line on this package's `downloads` logger."""
    logger.info("Downloading %s: %s", progress.url, progress.describe())


class DownloadClock:
    """One output's deadline, shared by every try of its download.

    `run` bounds the whole download (retries and their pauses included) and raises
    `DownloadTimedOutError` when it passes; each try calls `begin_try`, `announce` (the size
    the host gave) and `arrived` (for every piece of the body). `started` is a
    `time.monotonic()` value: pass the first one again when storing is tried again, so a retry
    does not restart the clock.
    """

    def __init__(
        self,
        url: str,
        limits: DownloadLimits,
        *,
        max_bytes: int | None = None,
        started: float | None = None,
        on_progress: ProgressListener | None = None,
    ) -> None:
        self.url = url
        self.limits = limits
        self.max_bytes = max_bytes
        self.started = time.monotonic() if started is None else started
        self.on_progress = on_progress
        self.expected: int | None = None
        self.received = 0
        self.tries = 0
        self.last_error: BaseException | None = None
        """The last try's error, kept as the cause of a deadline error."""
        self._try_started = self.started
        self._said = time.monotonic()
        self._scope: asyncio.Timeout | None = None

    @property
    def deadline_s(self) -> float:
        """Seconds the download may take in all, from its first try."""
        return self.limits.deadline_s(self.expected, max_bytes=self.max_bytes)

    def elapsed_s(self) -> float:
        """Seconds since the first try began."""
        return time.monotonic() - self.started

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`, cut off at the deadline (rescheduled once a size is announced).

        Raises:
            DownloadTimedOutError: the deadline passed; its cause is the last try's error.
        """
        left = self.deadline_s - self.elapsed_s()
        if left <= 0:  # an earlier attempt at storing used it all
            raise self.passed()
        try:
            async with asyncio.timeout(left if left != float("inf") else None) as scope:
                self._scope = scope
                return await call()
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise self.passed() from (self.last_error or exc)
        finally:
            self._scope = None

    def note_retry(self, error: BaseException, tries: int, pause: float) -> None:
        """Keep a failed try's error (the cause of a later deadline error) and say it, so a
        download tried again is not silent; a `RetryListener`."""
        self.last_error = error
        if self.elapsed_s() + pause >= self.deadline_s:
            return  # no time is left for another try: the deadline's error will say this one
        if self.on_progress is not None:
            self.on_progress(dataclasses.replace(self.progress(), failed=self._why(error)))

    def _why(self, error: BaseException) -> str:
        # Our download errors all start by naming the URL, which the listener knows already.
        return str(error).removeprefix(f"Downloading {self.url} ").rstrip(".")

    def begin_try(self) -> None:
        """A new try starts from byte 0."""
        self.tries += 1
        self.received = 0
        self._try_started = time.monotonic()

    def announce(self, size: int | None) -> None:
        """The host said the output's size: the deadline is now fixed by it (the first size
        announced counts; a later try does not move it)."""
        if size is None or self.expected is not None:
            return
        self.expected = size
        if self._scope is not None:
            left = self.deadline_s - self.elapsed_s()
            self._scope.reschedule(asyncio.get_running_loop().time() + left)

    def arrived(self, count: int) -> None:
        """Count `count` more bytes of the current try; say the progress when it is due.

        Raises:
            DownloadTimedOutError: no size was announced and the download fell behind the
                pace (`grace_s` plus what arrived at `min_rate`).
        """
        self.received += count
        now = time.monotonic()
        elapsed = now - self.started
        if self.expected is None:
            allowed = self.limits.grace_s + self.received / self.limits.min_rate
            if elapsed > allowed:
                raise self.passed(behind=True)
        if self.on_progress is not None and now - self._said >= self.limits.progress_every_s:
            self._said = now
            self.on_progress(self.progress(now))

    def progress(self, now: float | None = None) -> DownloadProgress:
        """How far the download got."""
        now = time.monotonic() if now is None else now
        spent = max(now - self._try_started, 1e-9)
        return DownloadProgress(
            url=self.url,
            received=self.received,
            expected=self.expected,
            elapsed_s=now - self.started,
            rate=self.received / spent,
            deadline_s=self.deadline_s,
            tries=self.tries,
        )

    def passed(self, *, behind: bool = False) -> DownloadTimedOutError:
        """The error that ends the download at its deadline, saying how far it got and why."""
        progress = self.progress()
        rule = self.limits
        if behind:
            what = (
                f"fell behind the pace a download must keep ({MIN_RATE_ENV}="
                f"{human_bytes(rule.min_rate)}/s once {GRACE_ENV}={rule.grace_s:g} s have "
                "passed; the host announced no size)"
            )
        else:
            what = (
                f"did not finish within its deadline of {seconds(progress.deadline_s)} "
                f"({rule.describe()})"
            )
        of = f" of {human_bytes(self.expected)}" if self.expected is not None else ""
        where = f" in try {self.tries}" if self.tries > 1 else ""
        got = f"{human_bytes(progress.received)}{of} arrived{where}, at {human_bytes(progress.rate)}/s"
        if self.last_error is not None:
            got += f"; try {self.tries - 1} {self._why(self.last_error)}"
        return DownloadTimedOutError(
            f"Downloading {self.url} {what}: {got}.",
            deadline_s=progress.deadline_s,
            received=progress.received,
            expected=self.expected,
        )


def seconds(value: float) -> str:
    """`2.4 s`, `315 s`: a duration as an error message says it."""
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


__all__ = [
    "DOWNLOAD_GRACE_S",
    "DOWNLOAD_MIN_RATE",
    "DOWNLOAD_STALL_S",
    "GRACE_ENV",
    "MIN_RATE_ENV",
    "PROGRESS_EVERY_S",
    "STALL_ENV",
    "DownloadClock",
    "DownloadLimits",
    "DownloadProgress",
    "ProgressListener",
    "human_bytes",
    "log_progress",
    "seconds",
]
