"""Shared helpers of the benchmark scripts: sandboxes in their own processes, rows, memory.

Each sandbox runs in a separate process (`python benchmarks/_common.py sandbox CONFIG_JSON`)
so its CPU work does not share the GIL with the code being measured. `time.monotonic()` is the
same clock in every process of one Linux host, so the sandbox's `submitted_mono`,
`finished_mono` and `first_download_mono` compare directly with the client's clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOKEN = "sandbox-token"  # the sandbox's own token: not a secret


def quiet_prefect_env() -> str:
    """Before Prefect is imported: no telemetry, a private PREFECT_HOME; returns that home."""
    home = tempfile.mkdtemp(prefix="prefect-runcomfy-bench-")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_HOME"] = home
    os.environ.pop("RUNCOMFY_API_TOKEN", None)
    os.environ.pop("RUNCOMFY_BASE_URL", None)
    return home


@dataclass
class SandboxProcess:
    """A sandbox server running in a child process."""

    proc: subprocess.Popen[str]
    base_url: str

    def get(self, path: str) -> Any:
        with httpx.Client(timeout=60, trust_env=False) as http:
            answer = http.get(f"{self.base_url}{path}")
            answer.raise_for_status()
            return answer.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with httpx.Client(timeout=60, trust_env=False) as http:
            answer = http.post(f"{self.base_url}{path}", json=body)
            answer.raise_for_status()
            return answer.json()

    def stats(self) -> dict[str, Any]:
        return self.get("/_sandbox/stats")  # type: ignore[no-any-return]

    def requests(self) -> list[dict[str, Any]]:
        return self.get("/_sandbox/requests")  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def sandbox_process(**config: Any) -> Iterator[SandboxProcess]:
    """Start `SandboxConfig(**config)` in a child process on a free port."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "sandbox", json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    base_url = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("RunComfy sandbox: "):
            base_url = line.split(": ", 1)[1].strip()
            break
    if not base_url:
        proc.kill()
        raise RuntimeError("the sandbox process did not start")
    # keep draining its stdout so it never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    sb = SandboxProcess(proc, base_url)
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            sb.get("/_sandbox/health")
            break
        time.sleep(0.1)
    try:
        yield sb
    finally:
        sb.stop()


def rows(base_url: str, n: int, prefix: str = "r") -> list[dict[str, Any]]:
    """`n` distinct valid rows that use the sandbox's sample media."""
    from prefect_runcomfy.sandbox import sample_inputs

    samples = sample_inputs(base_url)
    out = []
    for i in range(n):
        row = dict(samples[i % len(samples)])
        row["id"] = f"{prefix}{i:05d}"
        row["prompt"] = f"{row['prompt']} #{i}"
        out.append(row)
    return out


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset VmHWM (the kernel's peak RSS of this process); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS since the start (or since `reset_peak_rss`)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples this process's RSS every `interval` seconds in a thread; `.peak` is the maximum."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how fast its CPU was at the start.

    The machines are shared: the same benchmark has run 2.7x slower from one hour to the
    next. `python_loop_ms` (a fixed pure-Python loop, best of 5) shows the machine's speed at
    the time, so per-row CPU figures from different runs can be compared (or not).
    """
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "python_loop_ms": python_loop_ms(),
    }


def python_loop_ms(iterations: int = 1_000_000, repeat: int = 5) -> float:
    """Best-of-`repeat` milliseconds of a fixed pure-Python loop: this machine's speed now."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def save(name: str, data: dict[str, Any]) -> Path:
    """Write a result JSON under benchmarks/results/ and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _serve(config_json: str) -> None:
    from prefect_runcomfy.sandbox import SandboxConfig, serve_sandbox

    config = json.loads(config_json)
    for key in ("queue_seconds", "run_seconds"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    serve_sandbox(SandboxConfig(**config), port=0, log_level="warning")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "sandbox":
        _serve(sys.argv[2])
    else:
        raise SystemExit("usage: python benchmarks/_common.py sandbox CONFIG_JSON")
