"""A download has a deadline: a trickling or stalled output host on loopback ends it in time.

The output hosts here are real HTTP servers on 127.0.0.1: a small asyncio server in the test
(`slow_host`, every connection bounded by `HOLD_S`) and the sandbox's own file route slowed by
its `files_bytes_per_s` / `files_stall_after_bytes` switches. The deadlines are made small
through the settings a user has (`RUNCOMFY_DOWNLOAD_GRACE_S`, `RUNCOMFY_DOWNLOAD_STALL_S`);
the time bounds asserted are generous: they tell "ended by its deadline" from "hung".
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import manifest_of

from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos
from prefect_runcomfy.api.backoff import Backoff
from prefect_runcomfy.api.download_deadline import (
    DownloadLimits,
    DownloadProgress,
    human_bytes,
)
from prefect_runcomfy.api.downloads import download_output
from prefect_runcomfy.api.hosts import OutputPolicy
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.exceptions import ConfigurationError, DownloadError, DownloadTimedOutError
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

HOLD_S = 15.0
"""No connection to the test's slow host lives longer than this, whatever the client does."""

FAST = Backoff(initial_s=0.05, max_delay_s=0.1)
LOOPBACK = OutputPolicy.build(extra_hosts=["http://127.0.0.1:*"])


# --- a slow output host -------------------------------------------------------------------------


@dataclass
class SlowHost:
    """An output host on 127.0.0.1 serving one file of `size` bytes as slowly as told."""

    size: int = 64 * 1024
    bytes_per_s: float | None = None
    """None: all at once."""
    stall_after: int | None = None
    """Send this many bytes, then nothing (until the client leaves or `HOLD_S` passes)."""
    announce_size: bool = True
    url: str = ""
    requests: int = 0
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            async with asyncio.timeout(HOLD_S):
                await reader.readuntil(b"\r\n\r\n")
                length = f"Content-Length: {self.size}\r\n" if self.announce_size else ""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n"
                    + length.encode()
                    + b"\r\n"
                )
                await self.body(writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left (its deadline), or HOLD_S passed
        finally:
            writer.close()
            self.handlers.discard(task)

    async def body(self, writer: asyncio.StreamWriter) -> None:
        step = max(1, int(self.bytes_per_s / 20)) if self.bytes_per_s else self.size
        sent = 0
        while sent < self.size:
            if self.stall_after is not None and sent >= self.stall_after:
                await asyncio.sleep(HOLD_S)  # silent, the connection open
                return
            piece = min(step, self.size - sent)
            if self.stall_after is not None:
                piece = min(piece, self.stall_after - sent)
            writer.write(b"\0" * piece)
            await writer.drain()
            sent += piece
            if self.bytes_per_s:
                await asyncio.sleep(piece / self.bytes_per_s)


@asynccontextmanager
async def slow_host(**behaviour: Any) -> AsyncIterator[SlowHost]:
    host = SlowHost(**behaviour)
    server = await asyncio.start_server(host.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host.url = f"http://127.0.0.1:{port}/files/video.mp4"
    try:
        async with server:
            yield host
    finally:
        # A stalled connection the client left keeps its handler asleep: end it with the test.
        for task in list(host.handlers):
            task.cancel()
        await asyncio.gather(*host.handlers, return_exceptions=True)


def limits(**changes: float) -> DownloadLimits:
    settings = {"grace_s": 1.0, "stall_s": 5.0, "progress_every_s": 0.3}
    settings.update(changes)
    return DownloadLimits(**settings)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- the download itself ------------------------------------------------------------------------


async def test_a_trickling_download_ends_by_its_deadline_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    heard: list[DownloadProgress] = []
    async with slow_host(size=64 * 1024, bytes_per_s=500) as host:
        started = time.monotonic()
        with pytest.raises(DownloadTimedOutError) as caught:
            await download_output(
                host.url,
                tmp_path / "v.mp4",
                policy=LOOPBACK,
                limits=limits(grace_s=2.0),
                backoff=FAST,
                on_progress=heard.append,
            )
        took = time.monotonic() - started
    error = caught.value
    deadline = 2.0 + 64 * 1024 / (256 * 1024)  # grace + size at the default minimum rate
    assert error.deadline_s == pytest.approx(deadline)
    assert deadline - 0.1 < took < deadline + 5, "ended at its deadline, not before, not hung"
    assert isinstance(error, DownloadError) and error.expected == 64 * 1024
    assert 0 < error.received < 64 * 1024
    message = str(error)
    assert f"did not finish within its deadline of {deadline:.1f} s" in message
    assert "RUNCOMFY_DOWNLOAD_GRACE_S=2 s plus its size at RUNCOMFY_DOWNLOAD_MIN_RATE" in message
    assert " of 64.0 KiB arrived, at " in message
    assert host.requests == 1, "a deadline is not tried again"
    assert leftovers(tmp_path) == [], "no partial file, under the final name or hidden"
    # a long download says how far it got, at most every progress_every_s
    assert len(heard) >= 3
    assert [p.received for p in heard] == sorted(p.received for p in heard)
    assert all(p.expected == 64 * 1024 and p.deadline_s == error.deadline_s for p in heard)
    assert 200 < heard[-1].rate < 2000, "about 500 B/s"


async def test_a_stalled_download_is_tried_again_within_one_deadline(tmp_path: Path) -> None:
    final = tmp_path / "v.mp4"
    final.write_bytes(b"an older complete video")
    heard: list[DownloadProgress] = []
    async with slow_host(size=64 * 1024, stall_after=1000) as host:
        started = time.monotonic()
        with pytest.raises(DownloadTimedOutError) as caught:
            await download_output(
                host.url,
                final,
                policy=LOOPBACK,
                limits=limits(grace_s=2.0, stall_s=0.5),
                attempts=20,
                backoff=FAST,
                on_progress=heard.append,
            )
        took = time.monotonic() - started
    assert took < 2.25 + 5
    # each try stalled after 0.5 s and the next began; all of them within the one deadline
    assert 2 <= host.requests <= 5
    message = str(caught.value)
    assert f"arrived in try {host.requests}, at " in message
    assert (
        f"; try {host.requests - 1} stalled: nothing arrived for 0.5 s after 1000 bytes." in message
    )
    assert message.count(host.url) == 1
    # every try that failed was said before the next one began
    said = [p.describe() for p in heard if p.failed]
    assert len(said) == host.requests - 1
    assert said[0].startswith("try 1 stalled: nothing arrived for 0.5 s after 1000 bytes; ")
    assert re.search(r"; trying again after 0\.\d s of its 2\.2 s deadline$", said[0]), said[0]
    assert isinstance(caught.value.__cause__, DownloadError), "the last try's error is kept"
    assert final.read_bytes() == b"an older complete video", "the old file is untouched"
    assert leftovers(tmp_path) == ["v.mp4"]


async def test_without_a_size_a_download_must_keep_the_pace(tmp_path: Path) -> None:
    async with slow_host(size=1 << 20, bytes_per_s=2000, announce_size=False) as host:
        started = time.monotonic()
        with pytest.raises(DownloadTimedOutError) as caught:
            await download_output(
                host.url, tmp_path / "v.mp4", policy=LOOPBACK, limits=limits(grace_s=1.0)
            )
        took = time.monotonic() - started
    assert 1.0 <= took < 1.0 + 5
    assert caught.value.expected is None
    assert "fell behind the pace a download must keep" in str(caught.value)
    assert leftovers(tmp_path) == []


async def test_a_retry_of_storing_does_not_restart_the_clock(tmp_path: Path) -> None:
    async with slow_host(size=1000, bytes_per_s=500) as host:
        started = time.monotonic()
        with pytest.raises(DownloadTimedOutError):
            await download_output(
                host.url,
                tmp_path / "v.mp4",
                policy=LOOPBACK,
                limits=limits(grace_s=1.0),
                started=started - 5,  # its first try began 5 s ago
            )
        # asked once (its size decides its deadline), and cut off as soon as it said it
        assert host.requests == 1 and time.monotonic() - started < 1.0
        host.bytes_per_s = None
        done = await download_output(
            host.url, tmp_path / "v.mp4", policy=LOOPBACK, limits=limits(grace_s=1.0)
        )
    assert done.size == 1000 and done.path == str(tmp_path / "v.mp4")
    assert leftovers(tmp_path) == ["v.mp4"], "complete: under its name, nothing hidden beside it"


async def test_a_long_download_logs_its_progress_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefect_runcomfy.api.downloads")
    async with slow_host(size=6000, bytes_per_s=5000) as host:
        await download_output(
            host.url, tmp_path / "v.mp4", policy=LOOPBACK, limits=limits(grace_s=5.0)
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "prefect_runcomfy.api.downloads"]
    assert lines, "at least one progress line"
    assert lines[0].startswith(f"Downloading http://127.0.0.1:{host.url.split(':')[2]}")
    assert " of 5.9 KiB after " in lines[0] and "/s); deadline 5.0 s" in lines[0]


# --- the rule and its settings ------------------------------------------------------------------


def test_the_deadline_is_the_grace_plus_the_size_at_the_minimum_rate() -> None:
    rule = DownloadLimits()
    assert (rule.min_rate, rule.grace_s, rule.stall_s) == (256 * 1024, 120.0, 60.0)
    assert rule.deadline_s(50_000_000) == pytest.approx(120 + 50_000_000 / 262_144)  # ~311 s
    assert rule.deadline_s(0) == 120.0
    assert rule.deadline_s(None, max_bytes=2 << 30) == pytest.approx(120 + 8192)
    assert rule.deadline_s(None) == float("inf")


def test_the_settings_come_from_the_environment() -> None:
    read = DownloadLimits.from_env
    assert read({}) == DownloadLimits()
    assert read({"RUNCOMFY_DOWNLOAD_MIN_RATE": "256k"}).min_rate == 256 * 1024
    assert read({"RUNCOMFY_DOWNLOAD_MIN_RATE": "1.5 MiB/s"}).min_rate == 1.5 * 2**20
    assert read({"RUNCOMFY_DOWNLOAD_MIN_RATE": "100000"}).min_rate == 100_000
    assert read({"RUNCOMFY_DOWNLOAD_GRACE_S": "30", "RUNCOMFY_DOWNLOAD_STALL_S": "7.5"}) == (
        DownloadLimits(grace_s=30.0, stall_s=7.5)
    )
    for name, value in [
        ("RUNCOMFY_DOWNLOAD_MIN_RATE", "fast"),
        ("RUNCOMFY_DOWNLOAD_MIN_RATE", "0"),
        ("RUNCOMFY_DOWNLOAD_GRACE_S", "-1"),
        ("RUNCOMFY_DOWNLOAD_STALL_S", "nan"),
        ("RUNCOMFY_DOWNLOAD_STALL_S", "inf"),
    ]:
        with pytest.raises(ConfigurationError, match=name):
            read({name: value})
    assert [human_bytes(n) for n in (500, 48 * 1024, 3 << 20)] == ["500 B", "48.0 KiB", "3.0 MiB"]


# --- a batch row whose video trickles or stalls ---------------------------------------------------


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    "switch", [{"files_bytes_per_s": 500}, {"files_stall_after_bytes": 1000}], ids=str
)
async def test_a_row_whose_video_trickles_or_stalls_ends_collectable_by_its_deadline(
    sb: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    switch: dict[str, Any],
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("RUNCOMFY_DOWNLOAD_GRACE_S", "2")
    monkeypatch.setenv("RUNCOMFY_DOWNLOAD_STALL_S", "0.5")
    monkeypatch.setattr("prefect_runcomfy.api.download_deadline.PROGRESS_EVERY_S", 0.5)
    monkeypatch.setattr("prefect_runcomfy.engine.run.row.STORE_RETRY_DELAYS_S", (0.2, 0.2))
    sb.set(**switch)
    row = {**sample_inputs(sb.base_url)[0], "id": "r0"}
    out = tmp_path / "o"
    credentials = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)
    started = time.monotonic()
    manifest = await manifest_of(
        generate_talking_videos(
            [row],
            str(out),
            credentials,
            waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.5),
            max_wait_s=20,
        )
    )
    took = time.monotonic() - started
    assert took < 45, "the row ended by its download's deadline, not hung"

    record = manifest.to_dict(orient="records")[0]
    assert record["status"] == "timed_out"
    error = record["error"]
    assert "did not finish within its deadline" in error
    assert "The job succeeded and is paid for" in error
    assert f"collect_outstanding_requests({str(out)!r})" in error  # a Python run says Python
    entry = Ledger(OutputStore(str(out))).load_all()["r0"]
    assert entry.state == "timed_out" and entry.request_id == record["request_id"]
    assert not (out / "r0.mp4").exists() and not (out / "r0.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")], "no partial file"
    if "files_bytes_per_s" in switch:
        lines = [r.getMessage() for r in caplog.records]
        assert any(line.startswith("r0: downloading r0.mp4: ") for line in lines), lines

    # what the error says to do collects it, without paying again
    from prefect_runcomfy import collect_outstanding_requests

    sb.set(files_bytes_per_s=None, files_stall_after_bytes=None)
    collected = await collect_outstanding_requests(
        str(out), credentials, waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.5)
    )
    assert list(collected["status"]) == ["succeeded"]
    assert (out / "r0.mp4").stat().st_size > 1000
    assert sb.stats()["submits_accepted"] == 1
