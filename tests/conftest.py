"""Shared fixtures: a real Prefect API, the sandbox over HTTP, and moto's S3 server on loopback.

Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before Prefect is imported anywhere: no telemetry, a private home, no outbound calls.
_HOME = tempfile.mkdtemp(prefix="prefect-runcomfy-tests-")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The tests pass tokens explicitly; a developer's real token must never be picked up.
for _name in ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY", "RUNCOMFY_OUTPUT_HOSTS"):
    os.environ.pop(_name, None)
os.environ.pop("RUNCOMFY_BASE_URL", None)

import pytest  # noqa: E402

from prefect_runcomfy.sandbox import Sandbox, SandboxConfig, run_sandbox  # noqa: E402

# moto's S3 server on loopback: fixtures `s3_server`, `s3_bucket` (see tests/s3_fixtures.py).
pytest_plugins = ["s3_fixtures"]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One real Prefect API (the test harness's server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def quick_config(**changes: object) -> SandboxConfig:
    """Quick jobs, a second user's token, and a token whose account has no balance."""
    base: dict[str, object] = {
        "workers": 2,
        "queue_seconds": 0.0,
        "run_seconds": 0.2,
        "tokens": ("sandbox-token", "other-user-token"),
        "no_balance_tokens": ("broke-token",),
    }
    base.update(changes)
    return SandboxConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox server with quick jobs, on a free loopback port."""
    with run_sandbox(quick_config()) as sb:
        yield sb


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[Sandbox]:
    """One sandbox for tests that reset it themselves (cheaper than a server per test)."""
    with run_sandbox(quick_config()) as sb:
        yield sb


@pytest.fixture(scope="session")
def two_host_sandbox() -> Iterator[Sandbox]:
    """A sandbox that also listens on 127.0.0.2 (a foreign host to the client); its stats
    count file requests per listener. Tests reset it themselves."""
    with run_sandbox(quick_config(), foreign_host="127.0.0.2") as sb:
        yield sb


@pytest.fixture
def tmp_output(tmp_path: Path) -> Path:
    """A fresh local output folder."""
    out = tmp_path / "output"
    out.mkdir()
    return out
