"""SandboxState: everything one running sandbox knows, shared by its routes and its controls.

Used only on the server's event loop; other threads reach it through `Sandbox`, which hops
onto that loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.sandbox.cache import CacheKey, RenderCache
from prefect_runcomfy.sandbox.config import SandboxConfig, draw_seconds
from prefect_runcomfy.sandbox.faults import Fault, FaultBook
from prefect_runcomfy.sandbox.fetch import fetch_media
from prefect_runcomfy.sandbox.queue import Job, JobState, Scheduler
from prefect_runcomfy.sandbox.render import (
    TINY_SIZE,
    RenderedVideo,
    render_talking_video,
    render_tiny,
)
from prefect_runcomfy.sandbox.stats import Stats

_TRIGGER = re.compile(r"\[sandbox:(fail|expire|run=([0-9.]+)|queue=([0-9.]+))\]", re.IGNORECASE)


def payload_hash(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a payload (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def token_digest(token: str) -> str:
    """A stand-in for a token that is safe to keep: its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()


class SandboxState:
    """Config, faults, counters, the queue and the render cache of one sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        """Prepare everything that does not need the event loop."""
        self.initial_config = config
        self.config = config
        self.faults = FaultBook()
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.scheduler = Scheduler(lambda: self.config, self._execute, lambda: self.stats)
        if config.output_dir:
            self.workdir = Path(config.output_dir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="runcomfy-sandbox-"))
            self._own_workdir = True
        self.cache = RenderCache(self.workdir, config.render_threads)
        self.http: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop, once it runs."""
        self.closed = False
        """True after shutdown: the work directory is gone, start a new state to run again."""
        self.foreign_address: tuple[str, int] | None = None
        """The foreign listener's (host, port), when the sandbox has one."""

    @property
    def foreign_base_url(self) -> str | None:
        """The foreign listener's base URL (another loopback host), or None without one."""
        if self.foreign_address is None:
            return None
        host, port = self.foreign_address
        return f"http://{host}:{port}"

    # --- life cycle (on the server's loop)

    async def startup(self) -> None:
        """Open the media fetcher and start the queue."""
        self.loop = asyncio.get_running_loop()
        self.http = httpx.AsyncClient(
            timeout=self.config.fetch_timeout_s,
            headers={"User-Agent": f"prefect-runcomfy-sandbox/{__version__}"},
            trust_env=False,  # the sandbox fetches like RunComfy: directly, no proxies
        )
        self.scheduler.start()

    async def shutdown(self) -> None:
        """Stop the queue, close the fetcher and remove the temporary files."""
        await self.scheduler.stop()
        if self.http is not None:
            await self.http.aclose()
        await self.cache.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.closed = True

    # --- controls (the same for Sandbox methods and the /_sandbox admin API)

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change switches now; returns the new settings (tokens hidden)."""
        new = self.config.updated(**changes)
        if "seed" in changes:
            self.rng = random.Random(new.seed)
        self.config = new
        self.scheduler.wake()  # a new worker count applies at once
        return new.public_dict()

    def add_fault(self, **fault: Any) -> dict[str, Any]:
        """Script a fault (see faults.Fault); returns it."""
        item = Fault(**fault)
        self.faults.add(item)
        return item.as_dict()

    async def reset(self, config: bool = False) -> None:
        """Forget requests, counters and faults; with `config=True` also restore the settings."""
        if config:
            self.config = self.initial_config
        self.rng = random.Random(self.config.seed)
        self.faults.clear()
        self.stats = Stats()
        await self.scheduler.reset()

    def stats_snapshot(self) -> dict[str, Any]:
        """Every counter, plus the queue's current shape and the pending faults."""
        snapshot = self.stats.snapshot(
            price_per_second_usd=self.config.price_per_second_usd,
            faults_fired=self.faults.fired,
        )
        states: dict[str, int] = {s.value: 0 for s in JobState}
        for job in self.scheduler.jobs.values():
            states[job.state.value] += 1
        snapshot["jobs"] = states
        snapshot["jobs_total"] = len(self.scheduler.jobs)
        snapshot["queue_length"] = self.scheduler.waiting
        snapshot["running"] = self.scheduler.running
        snapshot["faults_pending"] = self.faults.pending()
        return snapshot

    def requests_snapshot(self) -> list[dict[str, Any]]:
        """Every request with its state and schedule, in submission order."""
        return [job.record(self.config) for job in self.scheduler.jobs.values()]

    # --- jobs

    def create_job(
        self, model_id: str, payload: dict[str, Any], owner: str, job_input: InfiniteTalkInput
    ) -> Job:
        """Draw a new job's schedule and fate, queue it and count it."""
        cfg = self.config
        # always draw all three, in this order, so one seed gives one schedule whatever the switches
        queue_delay = draw_seconds(self.rng, cfg.queue_seconds)
        run = draw_seconds(self.rng, cfg.run_seconds)
        roll = self.rng.random()
        planned_failure = "sandbox: fail_rate drew a failure" if roll < cfg.fail_rate else None
        expire = False
        for match in _TRIGGER.finditer(job_input.prompt):
            word = match.group(1).lower()
            if word == "fail":
                planned_failure = "sandbox: the prompt asked for a failure ([sandbox:fail])"
            elif word == "expire":
                expire = True
            elif match.group(2):
                run = float(match.group(2))
            elif match.group(3):
                queue_delay = float(match.group(3))
        digest = payload_hash(payload)
        job = Job(
            request_id=str(uuid.uuid4()),
            seq=self.scheduler.next_seq(),
            model_id=model_id,
            owner=owner,
            payload=payload,
            payload_sha256=digest,
            job_input=job_input,
            queue_delay_s=queue_delay * cfg.time_scale,
            run_s=run * cfg.time_scale,
            planned_failure=planned_failure,
            expire_on_finish=expire,
        )
        self.stats.submits_accepted += 1
        self.stats.submits_by_payload[digest] += 1
        self.scheduler.submit(job)
        return job

    async def _execute(self, job: Job) -> tuple[RenderedVideo, bool]:
        cfg = self.config
        spec = job.job_input
        if cfg.render == "tiny":
            key: CacheKey = ("", "", TINY_SIZE, TINY_SIZE, 25, "tiny")
            video, hit = await self.cache.get(key, render_tiny)
        else:
            assert self.http is not None, "the sandbox has not started"
            image, audio = await asyncio.gather(
                fetch_media(self.http, spec.image, cfg.max_media_bytes, "image"),
                fetch_media(self.http, spec.audio, cfg.max_media_bytes, "audio"),
            )
            key = (
                hashlib.sha256(image).hexdigest(),
                hashlib.sha256(audio).hexdigest(),
                spec.width,
                spec.height,
                spec.frames,
                "full",
            )
            make = functools.partial(
                _render_to,
                image=image,
                audio=audio,
                width=spec.width,
                height=spec.height,
                frames=spec.frames,
                preset=cfg.x264_preset,
            )
            video, hit = await self.cache.get(key, make)
        if hit:
            self.stats.render_cache_hits += 1
        else:
            self.stats.renders += 1
        return video, hit


def _render_to(
    path: Path, *, image: bytes, audio: bytes, width: int, height: int, frames: int, preset: str
) -> RenderedVideo:
    return render_talking_video(image, audio, width, height, frames, path, preset)
