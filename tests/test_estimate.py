"""The run's estimator of job durations and each job's read plan, on a fake clock.

Deterministic: the planner is asked at given moments, and whole batches are simulated as
events on a heap (`estimate_sim.py`). The few asyncio tests use a fake client and pauses of
a few hundredths of a second.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from estimate_sim import draw_jobs, simulate

from prefect_runcomfy.api.exceptions import RateLimitedError, RunTimedOutError
from prefect_runcomfy.api.models import RequestResult, RequestState, RequestStatus
from prefect_runcomfy.engine.run.durations import (
    RunEstimator,
    Window,
    server_seconds,
    window_of,
)
from prefect_runcomfy.engine.run.waiting import PollPolicy, reads_status, wait_until_finished
from prefect_runcomfy.models import INFINITE_TALK

POLICY = PollPolicy(jitter=0.0)


def result(created: Any = None, finished: Any = None, status: str = "succeeded") -> RequestResult:
    return RequestResult.model_validate(
        {"request_id": "r", "status": status, "created_at": created, "finished_at": finished}
    )


def watch(estimator: RunEstimator, submitted: float | None = 0.0, kind: str = "k") -> Any:
    return estimator.watch(kind, submitted=submitted, min_pause_s=0.5, max_pause_s=30.0)


def taught(*totals: float, kind: str = "k") -> RunEstimator:
    estimator = RunEstimator(reads_in_window=8)
    for total in totals:
        estimator.learn(kind, total_s=total, run_s=None)
    return estimator


# --- what a job's kind and duration are -------------------------------------------------------


def test_jobs_of_one_resolution_frame_count_and_steps_share_a_kind() -> None:
    a = {"245_valuex246_value": "480x480 (1:1)", "270_value": 125, "241_positive_prompt": "a"}
    b = {**a, "241_positive_prompt": "b", "128_seed": 3}
    assert INFINITE_TALK.job_kind(a) == INFINITE_TALK.job_kind(b)
    assert INFINITE_TALK.job_kind(a) != INFINITE_TALK.job_kind({**a, "270_value": 250})
    assert INFINITE_TALK.job_kind(a) != INFINITE_TALK.job_kind(
        {**a, "245_valuex246_value": "720x720 (1:1)"}
    )
    assert INFINITE_TALK.job_kind(a) != INFINITE_TALK.job_kind({**a, "128_steps": 12})
    assert INFINITE_TALK.job_kind(None) == INFINITE_TALK.job_kind({})


def test_the_server_timestamps_give_the_duration_in_either_spelling() -> None:
    assert server_seconds(result("2026-12-04T10:00:00Z", "2026-12-04T10:01:30.5Z")) == 90.5
    assert server_seconds(result(1_700_000_000, 1_700_000_060)) == 60.0
    assert server_seconds(result(1_700_000_000_000, 1_700_000_060_000)) == 60.0  # milliseconds
    assert server_seconds(result("1700000000", "1700000012.5")) == 12.5
    assert server_seconds(result(None, "2026-12-04T10:00:00Z")) is None
    assert server_seconds(result("soon", "later")) is None
    assert server_seconds(result(100.0, 50.0)) is None


def test_a_window_widens_the_seen_range_by_the_gap_one_more_sample_would_leave() -> None:
    assert window_of([]) is None
    one = window_of([100.0])
    assert one == Window(low=90.0, high=110.0, samples=1)
    five = window_of([90.0, 95.0, 100.0, 105.0, 110.0])
    assert five is not None
    assert five.low == pytest.approx(85.0) and five.high == pytest.approx(115.0)


# --- the read plan of one job ------------------------------------------------------------------


def test_a_job_of_an_unknown_kind_waits_as_before() -> None:
    estimator = RunEstimator()
    first = watch(estimator)
    assert first.next_read(0.0) is None  # the wait loop uses PollPolicy's doubling
    assert first.fallback(2.0) == 2.0  # the kind's scout: as a lone job
    companion = watch(estimator)
    assert companion.fallback(2.0) == 4.0  # read half as often until the scout's finish
    first.close()
    assert watch(estimator).fallback(2.0) == 2.0  # the role passed on


def test_a_known_kind_is_read_just_after_its_earliest_finish_then_evenly_to_its_latest() -> None:
    estimator = taught(100.0)  # window 90..110 s after submit: 8 reads, 2.5 s apart
    job = watch(estimator, submitted=1000.0)
    assert job.next_read(1000.0) == pytest.approx(1092.5)
    reads = []
    now = 1000.0
    for _ in range(8):
        now = job.next_read(now)
        reads.append(round(now - 1000.0, 3))
        job.saw(RequestStatus.IN_PROGRESS, now)
    assert reads == [92.5, 95.0, 97.5, 100.0, 102.5, 105.0, 107.5, 110.0]


def test_a_job_that_runs_long_falls_back_to_a_growing_interval() -> None:
    estimator = taught(100.0)
    job = watch(estimator, submitted=0.0)
    now = 0.0
    for _ in range(8):
        now = job.next_read(now)
        job.saw(RequestStatus.IN_PROGRESS, now)
    assert now == pytest.approx(110.0)
    gaps = []
    for _ in range(12):
        later = job.next_read(now)
        gaps.append(later - now)
        job.saw(RequestStatus.IN_PROGRESS, later)
        now = later
    assert all(b >= a for a, b in itertools.pairwise(gaps))
    assert gaps[0] == pytest.approx(2.5 * 1.5)
    assert gaps[-1] == 30.0  # never beyond the policy's longest interval


def test_reads_are_never_closer_than_the_shortest_pause() -> None:
    estimator = taught(10.0, 10.0, 10.0, 10.0)  # a narrow window: steps of a few ms
    job = watch(estimator, submitted=0.0)
    now = 9.9
    job.saw(RequestStatus.IN_PROGRESS, now)
    assert job.next_read(now) >= now + 0.5


def test_a_job_seen_queued_is_read_at_the_runs_pace_then_timed_from_its_start() -> None:
    estimator = taught(100.0)
    for moment in (10.0, 20.0, 30.0):  # a job finishing every 10 s
        estimator.learn("other", total_s=None, run_s=None, finished=moment)
    job = watch(estimator, submitted=80.0)  # queued 12.5 s: the run does not queue much
    job.saw(RequestStatus.IN_QUEUE, 92.5, position=2)
    assert job.next_read(92.5) == pytest.approx(92.5 + 20.0)  # two ahead, one every 10 s
    job.saw(RequestStatus.IN_PROGRESS, 112.5)
    assert job.started == pytest.approx(102.5)
    assert job.next_read(112.5) == pytest.approx(102.5 + 92.5)  # the window from its start


def test_a_short_queue_leaves_the_first_read_where_the_window_says() -> None:
    """The binding regime: jobs wait a few seconds for a worker; no read at once."""
    estimator = taught(100.0)
    watch(estimator, submitted=0.0).saw(RequestStatus.IN_QUEUE, 20.0, position=0)
    assert not estimator.queueing("k")
    job = watch(estimator, submitted=100.0)
    assert not job.wants_position
    assert job.next_read(100.0) == pytest.approx(192.5)


def test_once_the_run_sees_jobs_queue_long_a_new_job_is_read_at_once_on_status() -> None:
    """RunComfy's queue absorbs: a job waited 30 % of a job's run; the next job is read at
    its submit, from /status (for its place in the queue)."""
    estimator = taught(100.0)
    watch(estimator, submitted=0.0).saw(RequestStatus.IN_QUEUE, 30.0, position=2)
    assert estimator.queueing("k")
    job = watch(estimator, submitted=100.0)
    assert job.wants_position and job.next_read(100.0) == 100.0
    assert reads_status(job, RequestStatus.UNKNOWN, polls=1)
    assert not reads_status(watch(taught(100.0)), RequestStatus.UNKNOWN, polls=1)


def test_a_job_found_running_at_its_submit_is_timed_from_its_start() -> None:
    estimator = taught(200.0)  # from submit, queued or not: 180..220 s
    estimator.learn("k", total_s=None, run_s=100.0)  # from start: 90..110 s
    watch(estimator, submitted=0.0).saw(RequestStatus.IN_QUEUE, 60.0, position=1)
    job = watch(estimator, submitted=1000.0)
    job.saw(RequestStatus.IN_PROGRESS, 1000.2)
    assert job.started == pytest.approx(1000.1)
    assert job.next_read(1000.2) == pytest.approx(1000.1 + 92.5)


def test_a_queued_job_starts_when_the_runs_ends_reach_its_place() -> None:
    """Seen queued with one job ahead: it starts at the second end of a job of the run
    after that read; its window counts from there, and /result is read from then on."""
    estimator = taught(200.0)
    estimator.learn("k", total_s=None, run_s=100.0)  # from start: 90..110 s
    watch(estimator, submitted=0.0).saw(RequestStatus.IN_QUEUE, 60.0, position=1)
    job = watch(estimator, submitted=1000.0)
    job.saw(RequestStatus.IN_QUEUE, 1000.1, position=1)
    assert job.waits_for_end and job.start_by_queue() is None
    assert reads_status(job, RequestStatus.IN_QUEUE, polls=2)
    estimator.ended(990.0)  # before the read: does not count
    estimator.learn("other", total_s=None, run_s=None, finished=1030.0)  # its place: 0
    assert job.start_by_queue() is None
    estimator.ended(1055.0)  # failed or cancelled: a place came free all the same
    assert job.start_by_queue() == 1055.0 and not job.waits_for_end
    assert job.next_read(1060.0) == pytest.approx(1055.0 + 92.5)
    assert not reads_status(job, RequestStatus.IN_QUEUE, polls=2)
    job.saw(RequestStatus.IN_PROGRESS, 1147.5)
    job.finished(result(created=0.0, finished=250.0), now=1252.0)  # ended at 1250
    assert estimator.window("k", from_start=True) == window_of([100.0, 195.0])


async def test_a_queued_job_waiting_for_its_start_is_woken_by_any_end() -> None:
    estimator = taught(0.2)
    estimator.learn("k", total_s=None, run_s=0.1)
    watch(estimator, submitted=0.0).saw(RequestStatus.IN_QUEUE, 0.06, position=0)
    job = watch(estimator, submitted=10.0)
    job.saw(RequestStatus.IN_QUEUE, 10.0, position=0)
    sleeping = asyncio.create_task(job.sleep_until(time.monotonic() + 30.0))
    await asyncio.sleep(0.01)
    estimator.ended(10.5)  # a job of another kind ended
    assert await asyncio.wait_for(sleeping, 1.0) is True


def test_a_queued_job_without_a_pace_waits_as_before() -> None:
    job = watch(taught(100.0))
    job.saw(RequestStatus.IN_QUEUE, 95.0, position=1)
    assert job.next_read(95.0) is None


def test_a_job_of_unknown_submit_time_waits_as_before() -> None:
    assert watch(taught(100.0), submitted=None).next_read(5.0) is None


def test_a_finished_job_teaches_its_kind_from_the_server_timestamps() -> None:
    estimator = RunEstimator()
    job = watch(estimator, submitted=50.0)
    job.saw(RequestStatus.IN_PROGRESS, 60.0)
    job.finished(result(1_000.0, 1_080.0), now=140.0)  # seen 10 s late: the 80 s still count
    assert estimator.window("k", from_start=False) == window_of([80.0])
    assert estimator.pace() is None  # one finish is no pace yet


def test_without_timestamps_the_reads_bracket_the_finish() -> None:
    estimator = RunEstimator()
    job = watch(estimator, submitted=0.0)
    job.saw(RequestStatus.IN_QUEUE, 0.0)
    job.saw(RequestStatus.IN_PROGRESS, 4.0)  # started between 0 and 4 s: at 2 s
    job.saw(RequestStatus.IN_PROGRESS, 90.0)
    job.finished(result(), now=100.0)  # ended between 90 and 100 s: at 95 s
    assert estimator.window("k", from_start=False) == window_of([95.0])
    assert estimator.window("k", from_start=True) == window_of([93.0])


async def test_a_first_finish_wakes_the_sleeping_jobs_of_its_kind_only() -> None:
    estimator = RunEstimator()
    same = asyncio.create_task(estimator.sleep("k", 30.0))
    other = asyncio.create_task(estimator.sleep("other", 0.2))
    await asyncio.sleep(0.01)
    estimator.learn("k", total_s=10.0, run_s=None)
    assert await asyncio.wait_for(same, 1.0) is True
    assert await other is False  # slept its time out
    estimator.learn("k", total_s=10.05, run_s=None)  # the window hardly moved: nobody woken
    quiet = asyncio.create_task(estimator.sleep("k", 0.1))
    await asyncio.sleep(0.01)
    estimator.learn("k", total_s=10.02, run_s=None)
    assert await quiet is False


# --- whole batches on a fake clock --------------------------------------------------------------


@pytest.mark.parametrize("minutes", [1, 2, 5])
def test_when_the_cap_binds_a_learned_batch_meets_its_targets(minutes: int) -> None:
    """32 jobs of about `minutes` (+-15 %), 4 slots: makespan <= 1.05 x ideal, <= 6 reads
    per job, mean lag <= 3 % of a job; the doubling policy misses the lag target."""
    learned = simulate(draw_jobs(32, 60.0 * minutes, seed=3), 4, overhead_s=1.0)
    assert learned.over_ideal <= 1.05
    assert learned.reads_per_job <= 6.0
    assert learned.mean_lag_fraction <= 0.03
    doubling = simulate(draw_jobs(32, 60.0 * minutes, seed=3), 4, strategy="doubling")
    assert doubling.mean_lag_fraction > learned.mean_lag_fraction
    assert doubling.reads_per_job > learned.reads_per_job


MIXED = {"480x480/125": 0.5, "480x480/250": 1.0, "720x720/125": 1.125, "720x720/250": 2.25}


@pytest.mark.parametrize("minutes", [1, 2, 5, "mixed"])
def test_when_runcomfys_queue_absorbs_a_learned_batch_lags_less_than_doubling(
    minutes: int | str,
) -> None:
    """32 jobs, 8 client places, 4 workers: jobs wait in RunComfy's queue about a job's
    length. Makespan <= 1.03 x ideal, no more reads than the doubling policy, and a mean
    lag under half of doubling's and <= 5 % of a job."""

    def jobs() -> list[Any]:
        if minutes == "mixed":
            return draw_jobs(32, 120.0, queue_s=5.0, seed=3, kinds=MIXED)
        return draw_jobs(32, 60.0 * float(minutes), queue_s=5.0, seed=3)

    learned = simulate(jobs(), 8, workers=4, overhead_s=1.0)
    doubling = simulate(jobs(), 8, workers=4, strategy="doubling", overhead_s=1.0)
    assert learned.over_ideal <= 1.03
    assert learned.reads_per_job <= doubling.reads_per_job
    assert learned.mean_lag_fraction <= min(0.5 * doubling.mean_lag_fraction, 0.05)


def test_a_lone_job_is_waited_for_as_before() -> None:
    """A single 5-minute job: <= 15 reads, lag <= 10 % + 2 s, and the same reads both ways."""
    learned = simulate(draw_jobs(1, 300.0, spread=0.0), 1)
    doubling = simulate(draw_jobs(1, 300.0, spread=0.0), 1, strategy="doubling")
    [job] = learned.jobs
    assert job.reads <= 15 and job.detected - job.finished <= 0.1 * 300 + 2
    assert [j.reads for j in learned.jobs] == [j.reads for j in doubling.jobs]


# --- the wait loop with a watch ------------------------------------------------------------------


class FakeClient:
    """Answers like RunComfy for one job that finishes `run_s` after it was made."""

    def __init__(self, run_s: float, limited_first: float | None = None) -> None:
        self.made = time.monotonic()
        self.run_s = run_s
        self.reads: list[float] = []
        self.limited_first = limited_first

    def _status(self) -> str:
        return "succeeded" if time.monotonic() - self.made >= self.run_s else "in_progress"

    async def result(self, request_id: str, include_cost: bool = False) -> RequestResult:
        self.reads.append(time.monotonic() - self.made)
        if self.limited_first is not None and len(self.reads) == 1:
            raise RateLimitedError("slow down", retry_after=self.limited_first)
        status = self._status()
        body: dict[str, Any] = {"request_id": request_id, "status": status}
        if status == "succeeded":
            body.update(output={"video": "https://x/v.mp4"}, created_at=0.0, finished_at=self.run_s)
        return RequestResult.model_validate(body)

    async def status(self, request_id: str) -> RequestState:
        self.reads.append(time.monotonic() - self.made)
        return RequestState.model_validate({"request_id": request_id, "status": self._status()})


FAST = PollPolicy(initial_s=0.04, max_s=0.4, jitter=0.0, not_found_grace_s=1.0)


async def test_the_wait_loop_reads_a_known_kind_first_near_its_expected_finish() -> None:
    estimator = taught(0.3)
    client = FakeClient(0.3)
    outcome = await wait_until_finished(
        client,  # type: ignore[arg-type]
        "r",
        max_wait_s=5.0,
        policy=FAST,
        submitted_monotonic=client.made,
        estimator=estimator,
        kind="k",
    )
    assert outcome.result.status is RequestStatus.SUCCEEDED
    assert client.reads[0] >= 0.27  # not at once, as the doubling policy would
    assert len(client.reads) <= 5
    doubling = FakeClient(0.3)
    await wait_until_finished(doubling, "r", max_wait_s=5.0, policy=FAST)  # type: ignore[arg-type]
    assert doubling.reads[0] < 0.05 and len(doubling.reads) > len(client.reads)


async def test_retry_after_still_rules_over_the_learned_plan() -> None:
    estimator = taught(0.2)
    client = FakeClient(0.2, limited_first=0.3)
    await wait_until_finished(
        client,  # type: ignore[arg-type]
        "r",
        max_wait_s=5.0,
        policy=FAST,
        submitted_monotonic=client.made,
        estimator=estimator,
        kind="k",
    )
    assert client.reads[1] - client.reads[0] >= 0.29


async def test_the_deadline_still_rules_over_the_learned_plan() -> None:
    estimator = taught(10.0)  # the window opens long after the deadline
    client = FakeClient(10.0)
    started = time.monotonic()
    with pytest.raises(RunTimedOutError):
        await wait_until_finished(
            client,  # type: ignore[arg-type]
            "r",
            max_wait_s=0.2,
            policy=FAST,
            submitted_monotonic=client.made,
            estimator=estimator,
            kind="k",
        )
    assert time.monotonic() - started < 1.0 and len(client.reads) == 1
