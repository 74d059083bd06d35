"""Shared fixtures: a real Prefect API, the sandbox over HTTP, and moto's S3 server on loopback.

Nothing here reaches beyond 127.0.0.1.

The suite runs on several processes (pytest-xdist, see pyproject.toml); everything here is
per process: each worker has its own PREFECT_HOME, its own Prefect test harness, its own
sandboxes on free ports and its own pytest temporary folder (`<basetemp>/popen-gwN`). Tests go
to whichever worker is free, one at a time, except tests/reliability/: one worker runs all of
it, in file order (`pytest_xdist_make_scheduler` below).

The whole-run secret scan is here too (`pytest_sessionfinish` below): once every worker is
done, the main process reads every file the run wrote under pytest's temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler import LoadGroupScheduling

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


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, absent with `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadGroupScheduling | None:
    """`--dist loadgroup`, with tests/reliability/ as one group.

    The reliability tests share a harness database and the log records kept since the first
    of them, and the secret scan (last in file order) reads both, so they must run on one
    worker, in order. pytest-xdist's own `xdist_group` marks cannot say so here: with pytest
    9.2 it no longer groups by them (pytest-xdist issue #1386), silently.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ReliabilityTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/reliability/"):
                return "tests/reliability/"
            return str(super()._split_scope(nodeid))

    return ReliabilityTogether(config, log)


HARNESS_DB_COPY = "prefect-test-harness-db"
"""Where each process leaves a copy of its harness's database, for the whole-run secret scan."""


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One real Prefect API (the test harness's server) for the whole session (per process).

    When the harness has stopped (its last logs drained), its SQLite files are copied under
    pytest's temporary folder: the whole-run secret scan reads them with every other file.
    """
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    # generous: on a loaded machine (other suites, helpers) the server has taken over 60 s
    with prefect_test_harness(server_startup_timeout=180):
        url = get_current_settings().server.database.connection_url
        db = Path((url.get_secret_value() if url else "").split("///")[-1])
        yield
    # the harness deletes its folder only when the process exits
    copy = tmp_path_factory.getbasetemp() / HARNESS_DB_COPY
    copy.mkdir(exist_ok=True)
    for path in db.parent.glob(db.name + "*"):
        shutil.copy2(path, copy / path.name)


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


# --- The whole-run secret scan -------------------------------------------------------------
# tests/reliability uses one token everywhere; it must end up in no file the run wrote: no
# output, ledger, sidecar, manifest, runner log, Prefect database (each process's harness
# copies its database here when it stops: parameters, task runs, logs, artifacts) and no log
# line (tests/reliability/conftest.py writes every record it kept here). Workers each have
# their own temporary folder under the main process's, so the main process reads them all,
# after every worker has finished. A token found fails the run, as a failed test.

_SECRET_SCAN_TEST = "test_reliability_zz_secret_scan.py::test_the_token_is_nowhere"
_scan_state: dict[str, object] = {"secret_test_passed": False, "summary": None}


def run_secrets() -> tuple[str, ...]:
    """The reliability suite's token, and the wrong token it also runs with (reversed)."""
    path = Path(__file__).with_name("reliability") / "reliability_helpers.py"
    spec = importlib.util.spec_from_file_location("_reliability_helpers_for_scan", path)
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    token = str(helpers.TOKEN)
    return token, token[::-1]


def scan_for_secrets(root: Path, secrets: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Every file under root, and a line for each one holding a secret."""
    needles = [secret.encode() for secret in secrets]
    files = sorted({p.resolve() for p in root.rglob("*") if p.is_file()})
    leaks = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:  # a file the scan cannot read is not a file it has checked
            leaks.append(f"{path}: unreadable ({exc})")
            continue
        leaks.extend(f"the token is in {path}" for needle in needles if needle in data)
    return files, leaks


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # in the main process this sees every worker's reports too
    if report.when == "call" and report.passed and _SECRET_SCAN_TEST in report.nodeid:
        _scan_state["secret_test_passed"] = True


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: the main process scans
        return
    root = config._tmp_path_factory.getbasetemp()
    files, problems = scan_for_secrets(root, run_secrets())
    if _scan_state["secret_test_passed"]:
        # the reliability suite ran: its outputs, database copy and log lines must be here
        if len(files) <= 50:
            problems.append(f"only {len(files)} files under {root}: the run's outputs are missing")
        for name in (HARNESS_DB_COPY, "reliability-log-lines.txt"):
            if not any(p.parent.name == name or p.name == name for p in files):
                problems.append(f"no {name} under {root}")
    _scan_state["summary"] = f"secret scan: {len(files)} files under {root}, " + (
        f"{len(problems)} problems" if problems else "no token in any"
    )
    if problems:
        report = pytest.TestReport(
            nodeid="tests/conftest.py::whole-run secret scan",
            location=("tests/conftest.py", None, "whole-run secret scan"),
            keywords={},
            outcome="failed",
            longrepr="\n".join(problems),
            when="call",
        )
        config.hook.pytest_runtest_logreport(report=report)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summary = _scan_state["summary"]
    if summary:
        terminalreporter.write_sep("-", str(summary))
