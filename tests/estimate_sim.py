"""A batch on a fake clock: K client slots, W RunComfy workers, jobs of drawn length, the
wait loop's planning rules.

No asyncio and no HTTP: every read is an event on a heap, so a batch of minutes runs in
milliseconds and the same seed gives the same figures. RunComfy is modelled as the sandbox
runs it: a free worker takes the first submitted job whose queue delay has passed, and
`/status` reports a queued job's place (the queued jobs ahead of it). With `workers` =
`slots` (the default) the account's limit binds; with more slots than workers RunComfy's
queue absorbs. It follows `wait_until_finished`'s rules: the first read when the job's
watch says (at once without history), the policy's doubling interval when the watch has no
plan, a re-plan of every sleeping job when the run's estimator wakes it (`RunEstimator.sleep`
is mirrored by re-planning the jobs the estimator would wake).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from prefect_runcomfy.api.models import RequestResult, RequestStatus
from prefect_runcomfy.engine.run.durations import JobWatch, RunEstimator
from prefect_runcomfy.engine.run.waiting import PollPolicy, reads_status


@dataclass
class SimJob:
    """One job: its kind, queue delay, run time, and what happened to it."""

    kind: str
    queue_s: float
    run_s: float
    submitted: float = 0.0
    started: float | None = None
    finished: float | None = None
    detected: float = 0.0
    reads: int = 0
    polls: int = 0
    watch: JobWatch | None = None
    fallback_at: float = 0.0
    version: int = 0
    seen: RequestStatus = RequestStatus.UNKNOWN
    until_end: bool = False


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
        return sum((j.detected - (j.finished or 0.0)) / j.run_s for j in self.jobs) / len(self.jobs)

    @property
    def over_ideal(self) -> float:
        """Makespan over the ideal (zero lag, same slots and workers)."""
        return self.makespan / self.ideal


def draw_jobs(
    n: int,
    run_s: float,
    spread: float = 0.15,
    queue_s: float = 0.0,
    seed: int = 7,
    kinds: dict[str, float] | None = None,
) -> list[SimJob]:
    """`n` jobs, run time uniform in run_s * (1 +- spread), queue delay in [0, queue_s].
    With `kinds` (name: factor of `run_s`), the jobs cycle through them, shuffled."""
    rng = random.Random(seed)
    names = list(kinds or {"k": 1.0})
    chosen = [names[i % len(names)] for i in range(n)]
    if kinds:
        rng.shuffle(chosen)
    factors = kinds or {"k": 1.0}
    return [
        SimJob(
            kind=name,
            queue_s=rng.uniform(0.0, queue_s),
            run_s=factors[name] * rng.uniform(run_s * (1 - spread), run_s * (1 + spread)),
        )
        for name in chosen
    ]


class RunComfy:
    """The account's workers and queue, advanced event by event up to a read's moment."""

    def __init__(self, jobs: list[SimJob], workers: int) -> None:
        self.jobs = jobs
        self.workers = workers
        self.now = 0.0
        self.waiting: list[int] = []  # submission order
        self.running: list[tuple[float, int]] = []  # (finish, job index)

    def submit(self, index: int, now: float) -> None:
        self.advance(now)
        self.waiting.append(index)
        self._start(now)

    def _start(self, now: float) -> None:
        for index in list(self.waiting):
            if len(self.running) >= self.workers:
                return
            job = self.jobs[index]
            if job.submitted + job.queue_s <= now + 1e-12:
                self.waiting.remove(index)
                job.started = now
                job.finished = now + job.run_s
                heapq.heappush(self.running, (job.finished, index))

    def advance(self, until: float) -> None:
        """Run the workers up to `until`."""
        while True:
            self._start(self.now)
            moments = [self.running[0][0]] if self.running else []
            if len(self.running) < self.workers:
                moments += [
                    self.jobs[i].submitted + self.jobs[i].queue_s
                    for i in self.waiting
                    if self.jobs[i].submitted + self.jobs[i].queue_s > self.now
                ]
            if not moments or min(moments) > until:
                self.now = max(self.now, until)
                self._start(self.now)
                return
            self.now = min(moments)
            while self.running and self.running[0][0] <= self.now + 1e-12:
                heapq.heappop(self.running)

    def position(self, index: int) -> int:
        """Queued jobs ahead of this one (0 = next)."""
        return self.waiting.index(index)


def ideal(
    jobs: list[SimJob], slots: int, overhead_s: float = 0.0, workers: int | None = None
) -> float:
    """The makespan of a client that notices every finish at once (same slots, workers and
    order; each job's queue delay and run time as drawn)."""
    workers = workers or slots
    copies = [SimJob(kind=j.kind, queue_s=j.queue_s, run_s=j.run_s) for j in jobs]
    runcomfy = RunComfy(copies, workers)
    pending = list(range(len(copies)))
    pending.reverse()
    frees: list[float] = []
    in_flight: list[tuple[float, int]] = []
    end = 0.0
    now = 0.0
    for _ in range(min(slots, len(copies))):
        index = pending.pop()
        copies[index].submitted = 0.0
        runcomfy.submit(index, 0.0)
        in_flight.append((0.0, index))
    del frees
    unfinished = set(i for _, i in in_flight)
    while unfinished:
        # the next finish of a job in flight: advance until one is known and due
        candidates = [copies[i].finished for i in unfinished if copies[i].finished is not None]
        step_to = min(candidates) if candidates else None
        if step_to is None:
            # nothing started yet: advance to the next eligibility
            now = min(copies[i].submitted + copies[i].queue_s for i in unfinished)
            runcomfy.advance(now)
            continue
        runcomfy.advance(step_to)
        now = step_to
        done = [
            i
            for i in unfinished
            if copies[i].finished is not None and copies[i].finished <= now + 1e-12
        ]
        for index in done:
            unfinished.discard(index)
            end = max(end, now)
            if pending:
                nxt = pending.pop()
                copies[nxt].submitted = now + overhead_s
                runcomfy.submit(nxt, now + overhead_s)
                unfinished.add(nxt)
    return end


def simulate(
    jobs: list[SimJob],
    slots: int,
    *,
    workers: int | None = None,
    strategy: str = "learned",
    policy: PollPolicy | None = None,
    overhead_s: float = 0.0,
    reads_in_window: int = 8,
) -> SimResult:
    """Run `jobs` (in order) on `slots` client places and `workers` RunComfy workers (as
    many as places unless told); a place takes its next job `overhead_s` after it noticed
    its previous job finished (its download and the next submit)."""
    policy = policy or PollPolicy(jitter=0.0, strategy=strategy)  # type: ignore[arg-type]
    estimator = RunEstimator(reads_in_window=reads_in_window)
    runcomfy = RunComfy(jobs, workers or slots)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, job index, version)
    seq = 0
    pending = list(range(len(jobs)))
    pending.reverse()
    waiting: set[int] = set()

    def schedule(index: int, now: float) -> None:
        nonlocal seq
        job = jobs[index]
        job.version += 1
        planned = job.watch.next_read(now) if job.watch is not None else None
        at = job.fallback_at if planned is None else planned
        job.until_end = job.watch is not None and job.watch.waits_for_end
        seq += 1
        heapq.heappush(events, (max(at, now), seq, index, job.version))

    def submit(now: float) -> None:
        if not pending:
            return
        index = pending.pop()
        job = jobs[index]
        job.submitted = now
        runcomfy.submit(index, now)
        if strategy == "learned":
            job.watch = estimator.watch(
                job.kind,
                submitted=now,
                min_pause_s=policy.min_pause_s,
                max_pause_s=policy.max_s,
            )
        job.fallback_at = now
        waiting.add(index)
        schedule(index, now)

    for _ in range(slots):
        submit(0.0)
    makespan = 0.0
    while events:
        now, _, index, version = heapq.heappop(events)
        if index < 0:
            submit(now)
            continue
        job = jobs[index]
        if version != job.version:
            continue  # re-planned since
        runcomfy.advance(now)
        job.reads += 1
        job.polls += 1
        # the wait loop reads /status while the job may be queued (for its position), and
        # reads /result after it when /status says finished (or, without a watch, running)
        by_status = reads_status(job.watch, job.seen, job.polls)
        if job.finished is not None and now >= job.finished:
            job.reads += by_status
            job.detected = now
            waiting.discard(index)
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
                # the waits of its kind plan again (the wait loop's are woken when the
                # kind's window moved), and so do the queued jobs waiting for an end
                for other in sorted(waiting):
                    if jobs[other].until_end or jobs[other].kind == job.kind:
                        schedule(other, now)
            seq += 1
            heapq.heappush(events, (now + overhead_s, seq, -1, 0))  # the next submit
            continue
        queued = job.started is None or now < job.started
        status = RequestStatus.IN_QUEUE if queued else RequestStatus.IN_PROGRESS
        position = runcomfy.position(index) if queued and by_status else None
        if not queued and by_status and job.watch is None:
            job.reads += 1
        job.seen = status
        if job.watch is not None:
            job.watch.saw(status, now, position)
        pause = policy.interval(job.polls - 1)
        job.fallback_at = now + (job.watch.fallback(pause) if job.watch else pause)
        schedule(index, now)
    return SimResult(
        jobs=jobs, makespan=makespan, ideal=ideal(jobs, slots, overhead_s, workers or slots)
    )
