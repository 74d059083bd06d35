"""A batch on a fake clock: K slots, jobs of drawn length, the wait loop's planning rules.

No asyncio and no HTTP: every read is an event on a heap, so a batch of minutes runs in
milliseconds and the same seed gives the same figures. It follows `wait_until_finished`'s
rules: the first read when the job's watch says (at once without history), the policy's
doubling interval when the watch has no plan, a re-plan of every sleeping job of a kind when
that kind's window moves.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from prefect_runcomfy.api.models import RequestResult, RequestStatus
from prefect_runcomfy.engine.estimate import JobWatch, RunEstimator
from prefect_runcomfy.engine.waiting import PollPolicy


@dataclass
class SimJob:
    """One job: its kind, queue delay, run time, and what happened to it."""

    kind: str
    queue_s: float
    run_s: float
    submitted: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    detected: float = 0.0
    reads: int = 0
    polls: int = 0
    watch: JobWatch | None = None
    fallback_at: float = 0.0
    version: int = 0


@dataclass
class SimResult:
    """What a simulated batch measured."""

    jobs: list[SimJob]
    makespan: float
    ideal: float
    reads: list[int] = field(default_factory=list)

    @property
    def reads_per_job(self) -> float:
        """Mean status/result reads per job."""
        return sum(j.reads for j in self.jobs) / len(self.jobs)

    @property
    def mean_lag_fraction(self) -> float:
        """Mean (detected - finished) / run time."""
        return sum((j.detected - j.finished) / j.run_s for j in self.jobs) / len(self.jobs)

    @property
    def over_ideal(self) -> float:
        """Makespan over the ideal (zero lag, same slots)."""
        return self.makespan / self.ideal


def draw_jobs(
    n: int, run_s: float, spread: float = 0.15, queue_s: float = 0.0, seed: int = 7
) -> list[SimJob]:
    """`n` jobs of one kind, run time uniform in run_s * (1 +- spread), queue in [0, queue_s]."""
    rng = random.Random(seed)
    return [
        SimJob(
            kind="k",
            queue_s=rng.uniform(0.0, queue_s),
            run_s=rng.uniform(run_s * (1 - spread), run_s * (1 + spread)),
        )
        for _ in range(n)
    ]


def ideal(jobs: list[SimJob], slots: int, overhead_s: float = 0.0) -> float:
    """The makespan of a client that notices every finish at once (same slots, same order)."""
    free = [0.0] * slots
    end = 0.0
    for job in jobs:
        start = heapq.heappop(free)
        finish = start + job.queue_s + job.run_s + overhead_s
        end = max(end, finish)
        heapq.heappush(free, finish)
    return end


def simulate(
    jobs: list[SimJob],
    slots: int,
    *,
    strategy: str = "learned",
    policy: PollPolicy | None = None,
    overhead_s: float = 0.0,
    reads_in_window: int = 8,
) -> SimResult:
    """Run `jobs` (in order) on `slots` places; a place takes its next job `overhead_s` after
    it noticed its previous job finished (its download and the next submit)."""
    policy = policy or PollPolicy(jitter=0.0, strategy=strategy)  # type: ignore[arg-type]
    estimator = RunEstimator(reads_in_window=reads_in_window)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, job index, version)
    seq = 0
    pending = list(range(len(jobs)))
    pending.reverse()

    def schedule(index: int, now: float) -> None:
        nonlocal seq
        job = jobs[index]
        job.version += 1
        planned = job.watch.next_read(now) if job.watch is not None else None
        at = job.fallback_at if planned is None else planned
        seq += 1
        heapq.heappush(events, (max(at, now), seq, index, job.version))

    def submit(now: float) -> None:
        if not pending:
            return
        index = pending.pop()
        job = jobs[index]
        job.submitted = now
        job.started = now + job.queue_s
        job.finished = job.started + job.run_s
        if strategy == "learned":
            job.watch = estimator.watch(
                job.kind,
                submitted=now,
                min_pause_s=policy.min_pause_s,
                max_pause_s=policy.max_s,
            )
        job.fallback_at = now
        schedule(index, now)

    for _ in range(slots):
        submit(0.0)
    makespan = 0.0
    while events:
        now, _, index, version = heapq.heappop(events)
        job = jobs[index]
        if version != job.version:
            continue  # re-planned since
        job.reads += 1
        job.polls += 1
        if now >= job.finished:
            job.detected = now
            makespan = max(makespan, now)
            if job.watch is not None:
                result = RequestResult.model_validate(
                    {
                        "request_id": str(index),
                        "status": "succeeded",
                        "created_at": 1_000_000.0 + job.submitted,
                        "finished_at": 1_000_000.0 + job.finished,
                    }
                )
                job.watch.finished(result, now)
                job.watch.close()
                # the wait loop's sleepers of this kind plan again when woken
                for other_index, other in enumerate(jobs):
                    if (
                        other is not job
                        and other.watch is not None
                        and other.detected == 0.0
                        and other.kind == job.kind
                        and other_index not in pending
                    ):
                        schedule(other_index, now)
            submit(now + overhead_s)
            continue
        status = RequestStatus.IN_QUEUE if now < job.started else RequestStatus.IN_PROGRESS
        if job.watch is not None:
            job.watch.saw(status, now)
        pause = policy.interval(job.polls - 1)
        job.fallback_at = now + (job.watch.fallback(pause) if job.watch else pause)
        schedule(index, now)
    return SimResult(jobs=jobs, makespan=makespan, ideal=ideal(jobs, slots, overhead_s))
