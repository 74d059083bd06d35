"""The job queue: FIFO order, a fixed number of workers, and every job's schedule recorded.

A job waits until its queue delay has passed and a worker is free; among the jobs that may
start, the earliest submitted starts first. Once picked up it "runs" for its drawn duration
while the real video renders in a thread; it finishes at the later of the two. Everything here
lives on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.sandbox.config import SandboxConfig
from prefect_runcomfy.sandbox.render import MediaError, RenderedVideo
from prefect_runcomfy.sandbox.stats import Stats


class JobState(StrEnum):
    """Where a sandbox job stands (the sandbox's own words; the API spells them per switch)."""

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the job will not change any more."""
        return self in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


@dataclass
class Job:
    """One submitted request and its whole life."""

    request_id: str
    """The id handed to the client (a uuid4 string)."""
    seq: int
    """Submission order, for FIFO."""
    model_id: str
    """The model it was submitted to."""
    owner: str
    """sha256 of the submitting token (never the token itself)."""
    payload: dict[str, Any]
    """The JSON body as received."""
    payload_sha256: str
    """sha256 of the canonical JSON of `payload`."""
    job_input: InfiniteTalkInput
    """The validated input."""
    queue_delay_s: float
    """Scaled extra wait before the job may be picked up."""
    run_s: float
    """Scaled run duration drawn at submit."""
    planned_failure: str | None = None
    """Why the run will fail regardless of its inputs (fail_rate or `[sandbox:fail]`)."""
    expire_on_finish: bool = False
    """`[sandbox:expire]`: the result is gone as soon as the job finishes."""
    state: JobState = JobState.IN_QUEUE
    """Current state."""
    submitted_mono: float = field(default_factory=time.monotonic)
    """time.monotonic() at submit (comparable across processes on one Linux host)."""
    submitted_wall: float = field(default_factory=time.time)
    """time.time() at submit."""
    started_mono: float | None = None
    """time.monotonic() when a worker picked the job up."""
    started_wall: float | None = None
    """time.time() when a worker picked the job up."""
    finished_mono: float | None = None
    """time.monotonic() when the job ended (or was cancelled)."""
    finished_wall: float | None = None
    """time.time() when the job ended (or was cancelled)."""
    error_type: str | None = None
    """Failure type, e.g. `MediaFetchError`, `SandboxFailure`."""
    error_message: str | None = None
    """Failure message."""
    video: RenderedVideo | None = None
    """The rendered output of a succeeded job."""
    render_cached: bool = False
    """True when the video came from the render cache."""
    first_download_mono: float | None = None
    """time.monotonic() when its output file was first requested (GET), for lag benchmarks."""
    downloads: int = 0
    """GET requests served for its output file."""

    @property
    def eligible_mono(self) -> float:
        """When the job may be picked up at the earliest."""
        return self.submitted_mono + self.queue_delay_s

    @property
    def file_name(self) -> str:
        """The name under /files/ of this job's video."""
        return f"{self.request_id}.mp4"

    def expired(self, config: SandboxConfig, now: float | None = None) -> bool:
        """True when the job's result and files are gone (TTL passed or `[sandbox:expire]`)."""
        if self.finished_mono is None or self.state == JobState.IN_QUEUE:
            return False
        if self.expire_on_finish:
            return True
        if config.result_ttl_s is None:
            return False
        return (now or time.monotonic()) - self.finished_mono > config.result_ttl_s

    def record(self, config: SandboxConfig) -> dict[str, Any]:
        """The job as a JSON-friendly dict for /_sandbox/requests (no payload, no token)."""
        video = self.video
        return {
            "request_id": self.request_id,
            "seq": self.seq,
            "model_id": self.model_id,
            "state": self.state.value,
            "payload_sha256": self.payload_sha256,
            "prompt": self.job_input.prompt,
            "resolution": self.job_input.resolution,
            "frames_requested": self.job_input.frames,
            "queue_delay_s": self.queue_delay_s,
            "run_s": self.run_s,
            "planned_failure": self.planned_failure,
            "submitted_at": iso_utc(self.submitted_wall),
            "started_at": iso_utc(self.started_wall),
            "finished_at": iso_utc(self.finished_wall),
            "submitted_mono": self.submitted_mono,
            "started_mono": self.started_mono,
            "finished_mono": self.finished_mono,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "expired": self.expired(config),
            "file_name": self.file_name if video else None,
            "video_frames": video.frames if video else None,
            "video_seconds": video.seconds if video else None,
            "video_size": f"{video.width}x{video.height}" if video else None,
            "render_s": video.render_s if video and not self.render_cached else None,
            "render_cached": self.render_cached,
            "first_download_mono": self.first_download_mono,
            "downloads": self.downloads,
        }


Execute = Callable[[Job], Awaitable[tuple[RenderedVideo, bool]]]
"""Fetches a job's inputs and renders its video; returns (video, came from cache)."""


class Scheduler:
    """Runs jobs on `workers` slots in FIFO order, on the server's event loop."""

    def __init__(
        self, config: Callable[[], SandboxConfig], execute: Execute, stats: Callable[[], Stats]
    ) -> None:
        """`config` and `stats` are read on every use so runtime changes take effect."""
        self._config = config
        self._execute = execute
        self._stats = stats
        self.jobs: dict[str, Job] = {}
        """Every job by request id, in submission order."""
        self._waiting: list[Job] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._seq = 0

    def next_seq(self) -> int:
        """The submission number for the next job."""
        self._seq += 1
        return self._seq

    def start(self) -> None:
        """Start dispatching (call on the server's loop)."""
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def stop(self) -> None:
        """Stop dispatching and abandon the running jobs."""
        tasks = [*self._running.values()]
        if self._dispatcher is not None:
            tasks.append(self._dispatcher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
        self._dispatcher = None

    async def reset(self) -> None:
        """Forget every job (running ones are abandoned) and keep dispatching."""
        await self.stop()
        self.jobs.clear()
        self._waiting.clear()
        self._seq = 0
        self.start()

    def wake(self) -> None:
        """Re-check the queue now (after a submit, a finish or a config change)."""
        self._wake.set()

    def submit(self, job: Job) -> None:
        """Put a job at the back of the queue."""
        self.jobs[job.request_id] = job
        self._waiting.append(job)
        self.wake()

    def cancel(self, job: Job) -> bool:
        """Cancel a queued job; returns False when it is running or finished already."""
        if job.state == JobState.CANCELLED:
            return True
        if job.state != JobState.IN_QUEUE:
            return False
        self._waiting.remove(job)
        job.state = JobState.CANCELLED
        job.finished_mono, job.finished_wall = time.monotonic(), time.time()
        self.wake()
        return True

    def queue_position(self, job: Job) -> int:
        """How many queued jobs are ahead of `job` (0 = it is next)."""
        for ahead, other in enumerate(self._waiting):
            if other is job:
                return ahead
        return 0

    @property
    def running(self) -> int:
        """Jobs being run right now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs in the queue."""
        return len(self._waiting)

    async def _dispatch_forever(self) -> None:
        while True:
            self._wake.clear()
            timeout = self._start_what_can_start()
            # sleep until something changes or the next queued job becomes eligible
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start_what_can_start(self) -> float | None:
        now = time.monotonic()
        next_eligible: float | None = None
        workers = self._config().workers
        for job in list(self._waiting):
            if len(self._running) >= workers:
                break
            if job.eligible_mono <= now:
                self._waiting.remove(job)
                self._running[job.request_id] = asyncio.get_running_loop().create_task(
                    self._run(job), name=f"sandbox-job-{job.request_id}"
                )
            elif next_eligible is None or job.eligible_mono < next_eligible:
                next_eligible = job.eligible_mono
        return None if next_eligible is None else max(0.0, next_eligible - now)

    async def _run(self, job: Job) -> None:
        stats = self._stats()
        job.state = JobState.IN_PROGRESS
        job.started_mono, job.started_wall = time.monotonic(), time.time()
        stats.runs_started += 1
        try:
            if job.planned_failure is None:
                try:
                    job.video, job.render_cached = await self._execute(job)
                except MediaError as exc:
                    job.error_type, job.error_message = exc.kind, str(exc)
                except Exception as exc:  # a bug in rendering must fail the job, not hang it
                    job.error_type, job.error_message = (
                        "RenderError",
                        f"{type(exc).__name__}: {exc}",
                    )
            else:
                job.error_type, job.error_message = "SandboxFailure", job.planned_failure
            remaining = job.run_s - (time.monotonic() - job.started_mono)
            if remaining > 0:
                await asyncio.sleep(remaining)
            job.finished_mono, job.finished_wall = time.monotonic(), time.time()
            if job.video is not None and job.error_type is None:
                job.state = JobState.SUCCEEDED
                stats.runs_succeeded += 1
                stats.billed_seconds += job.video.seconds
            else:
                job.video = None
                job.state = JobState.FAILED
                stats.runs_failed += 1
        finally:
            self._running.pop(job.request_id, None)
            self.wake()


def iso_utc(wall: float | None) -> str | None:
    """ISO-8601 UTC with a `Z`, e.g. `2025-01-31T12:00:00.123456Z`; None stays None."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")
