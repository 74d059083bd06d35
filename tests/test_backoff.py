"""The one backoff policy and the one retry loop, on a fake clock: every pause is recorded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from prefect_runcomfy.api.backoff import Backoff, retry_after_of, retrying
from prefect_runcomfy.engine.run.waiting import PollPolicy
from prefect_runcomfy.exceptions import DownloadError, RateLimitedError, ServerError


class Flake(Exception):
    """A passing failure, worth another try."""


class Flaky:
    """A call that fails with the given errors in turn, then answers `"done"`."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Clock:
    """A fake `sleep` that records the pauses asked for and never waits."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


def always(_: BaseException) -> bool:
    return True


def only(*types: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda error: isinstance(error, types)


async def test_a_fixed_pause_list_is_followed_in_order() -> None:
    call, clock = Flaky(Flake("1"), Flake("2")), Clock()
    assert await retrying(call, delays=(0.5, 2.0), retry_if=always, sleep=clock) == "done"
    assert clock.pauses == [0.5, 2.0]
    assert call.calls == 3


async def test_a_fixed_pause_list_gives_up_after_its_length_plus_one_with_the_last_error() -> None:
    errors = [Flake("first"), Flake("second"), Flake("third"), Flake("never reached")]
    call, clock = Flaky(*errors), Clock()
    with pytest.raises(Flake, match="third") as caught:
        await retrying(call, delays=(2.0, 10.0), retry_if=always, sleep=clock)
    assert caught.value is errors[2]
    assert call.calls == 3
    assert clock.pauses == [2.0, 10.0]


async def test_more_attempts_than_pauses_repeat_the_last_pause() -> None:
    call, clock = Flaky(*(Flake(str(n)) for n in range(9))), Clock()
    with pytest.raises(Flake, match="4"):
        await retrying(call, delays=(1.0, 3.0), attempts=5, retry_if=always, sleep=clock)
    assert clock.pauses == [1.0, 3.0, 3.0, 3.0]


async def test_a_backoff_gives_up_after_n_attempts_and_grows() -> None:
    call, clock = Flaky(*(ServerError(f"try {n}") for n in range(10))), Clock()
    policy = Backoff(initial_s=1.0, multiplier=2.0, max_delay_s=5.0, jitter=0.0)
    with pytest.raises(ServerError, match="try 3"):
        await retrying(call, delays=policy, attempts=4, retry_if=always, sleep=clock)
    assert call.calls == 4
    assert clock.pauses == [1.0, 2.0, 4.0]


async def test_backoff_jitter_stays_within_its_spread_and_its_cap() -> None:
    call, clock = Flaky(*(Flake(str(n)) for n in range(20))), Clock()
    policy = Backoff(initial_s=1.0, max_delay_s=8.0, jitter=0.5)
    with pytest.raises(Flake, match=r"^7$"):
        await retrying(
            call, delays=policy, attempts=8, retry_if=always, sleep=clock, rng=random.Random(7)
        )
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for pause, base in zip(clock.pauses, bases, strict=True):
        assert base * 0.75 <= pause <= min(8.0, base * 1.25)


async def test_the_last_error_is_raised_unchanged_with_its_cause() -> None:
    cause = ValueError("the root")
    first, last = Flake("first"), Flake("last")
    last.__cause__ = cause

    async def call() -> None:
        raise (first if not clock.pauses else last)

    clock = Clock()
    with pytest.raises(Flake) as caught:
        await retrying(call, delays=(0.1,), retry_if=always, sleep=clock)
    assert caught.value is last
    assert caught.value.__cause__ is cause
    assert caught.value.__context__ is not first, "an earlier try must not be chained on"


async def test_the_predicate_decides_and_a_refused_error_is_not_retried() -> None:
    refused = KeyError("not worth it")
    call, clock = Flaky(Flake("worth it"), refused, Flake("never")), Clock()
    with pytest.raises(KeyError) as caught:
        await retrying(call, delays=(0.5, 0.5, 0.5), retry_if=only(Flake), sleep=clock)
    assert caught.value is refused
    assert call.calls == 2
    assert clock.pauses == [0.5]


async def test_the_predicate_is_asked_about_each_error() -> None:
    asked: list[BaseException] = []

    def worth_it(error: BaseException) -> bool:
        asked.append(error)
        return True

    errors = [Flake("a"), Flake("b")]
    assert await retrying(Flaky(*errors), delays=(0, 0), retry_if=worth_it, sleep=Clock())
    assert asked == errors


async def test_a_retry_after_hint_lengthens_the_pause() -> None:
    limited = RateLimitedError("slow down", retry_after=3.0)
    call, clock = Flaky(limited), Clock()
    await retrying(
        call,
        delays=Backoff(initial_s=0.5, jitter=0.0),
        attempts=3,
        retry_if=always,
        wait_hint=retry_after_of,
        sleep=clock,
    )
    [pause] = clock.pauses
    assert 3.0 <= pause <= 3.3, "the wait asked for, plus at most 10 % of jitter"


async def test_a_short_hint_never_shortens_the_pause() -> None:
    call, clock = Flaky(RateLimitedError("soon", retry_after=0.0)), Clock()
    await retrying(call, delays=(2.0,), retry_if=always, wait_hint=retry_after_of, sleep=clock)
    assert clock.pauses == [2.0]


async def test_an_error_without_a_hint_keeps_the_backoff() -> None:
    call, clock = Flaky(RateLimitedError("no header"), ServerError("5xx")), Clock()
    await retrying(call, delays=(1.0, 2.0), retry_if=always, wait_hint=retry_after_of, sleep=clock)
    assert clock.pauses == [1.0, 2.0]


async def test_a_hint_longer_than_max_wait_is_not_waited_for() -> None:
    limited = RateLimitedError("come back in ten minutes", retry_after=600)
    call, clock = Flaky(limited), Clock()
    with pytest.raises(RateLimitedError) as caught:
        await retrying(
            call,
            delays=(1.0, 1.0),
            retry_if=always,
            wait_hint=retry_after_of,
            max_wait_s=300,
            sleep=clock,
        )
    assert caught.value is limited
    assert clock.pauses == []
    assert call.calls == 1


async def test_on_retry_hears_each_retry_but_not_the_final_failure() -> None:
    heard: list[tuple[str, int, float]] = []
    call = Flaky(Flake("a"), Flake("b"), Flake("c"))
    with pytest.raises(Flake, match="c"):
        await retrying(
            call,
            delays=(0.5, 2.0),
            retry_if=always,
            on_retry=lambda error, failures, pause: heard.append((str(error), failures, pause)),
            sleep=Clock(),
        )
    assert heard == [("a", 1, 0.5), ("b", 2, 2.0)]


async def test_cancellation_is_never_retried() -> None:
    call, clock = Flaky(asyncio.CancelledError()), Clock()
    with pytest.raises(asyncio.CancelledError):
        await retrying(call, delays=(1.0,), retry_if=always, sleep=clock)
    assert call.calls == 1


async def test_one_attempt_means_no_retry() -> None:
    call, clock = Flaky(Flake("once")), Clock()
    with pytest.raises(Flake):
        await retrying(call, delays=Backoff(), attempts=1, retry_if=always, sleep=clock)
    assert clock.pauses == []


@pytest.mark.parametrize(
    ("delays", "attempts"),
    [(Backoff(), None), ((1.0,), 0), ((), 2)],
)
async def test_unbounded_or_impossible_settings_are_refused(
    delays: Backoff | tuple[float, ...], attempts: int | None
) -> None:
    call = Flaky()
    with pytest.raises(ValueError, match=r"attempts|pause"):
        await retrying(call, delays=delays, attempts=attempts, retry_if=always, sleep=Clock())
    assert call.calls == 0


def test_retry_after_of_reads_what_errors_carry() -> None:
    assert retry_after_of(RateLimitedError("x", retry_after=2.5)) == 2.5
    assert retry_after_of(DownloadError("x", status_code=429, retry_after=4)) == 4.0
    assert retry_after_of(RateLimitedError("x")) is None
    assert retry_after_of(Flake("x")) is None


def test_backoff_survives_a_thousand_attempts() -> None:
    policy = Backoff(initial_s=2.0, max_delay_s=30.0, jitter=0.0)
    assert policy.delay(5000) == 30.0
    assert Backoff(initial_s=0.0).delay(5000) == 0.0


def test_poll_interval_comes_from_the_one_policy() -> None:
    policy = PollPolicy(initial_s=2.0, max_s=30.0, jitter=0.1)
    assert policy.backoff == Backoff(initial_s=2.0, multiplier=2.0, max_delay_s=30.0, jitter=0.2)
    rng = random.Random(3)
    for poll, base in enumerate([2.0, 4.0, 8.0, 16.0, 30.0, 30.0]):
        interval = policy.interval(poll, rng)
        assert base * 0.9 <= interval <= min(30.0, base * 1.1)
    flat = PollPolicy(initial_s=2.0, max_s=30.0, jitter=0.0)
    assert [flat.interval(n) for n in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert flat.interval(10_000) == 30.0
