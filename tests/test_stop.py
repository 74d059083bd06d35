"""A stop is a stop: Ctrl-C or SIGTERM on `prefect-runcomfy run` and on a plain script, and a
deployment's run cancelled from Prefect, cancel the run's still-queued jobs, say what was left
running in one line, and end the flow run Cancelled on the server.

Each test runs the real thing in a process of its own, in its own process group, against a
sandbox whose two workers keep the first two jobs running (30 s) so that the others stay
queued, and the test harness's Prefect API. Signals are sent once the sandbox has the jobs
(its counters are polled, no sleep guesses when).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from prefect_runcomfy.sandbox import Sandbox, run_sandbox, sample_inputs

pytestmark = pytest.mark.usefixtures("prefect_api")

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
ROWS = 8
IN_FLIGHT = 6
"""--concurrency: 6 jobs submitted, 2 running on the sandbox's 2 workers, 4 queued."""
WORKERS = 2


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """Two workers and 30-second jobs: the first two run through the test, the rest queue."""
    with run_sandbox(
        workers=WORKERS, queue_seconds=0.0, run_seconds=30.0, render="tiny"
    ) as sandbox:
        yield sandbox


def write_table(sb: Sandbox, path: Path) -> str:
    samples = sample_inputs(sb.base_url)
    rows = [
        {**samples[i % len(samples)], "id": f"r{i:02d}", "prompt": f"row {i}"} for i in range(ROWS)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def environment(sb: Sandbox) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(get_current_settings().api.url),
        RUNCOMFY_API_TOKEN=sb.token,
        RUNCOMFY_BASE_URL=sb.base_url,
        COLUMNS="200",
    )
    return env


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A process in a group of its own, as a terminal's foreground job is: the signal goes
    to the group, as Ctrl-C sends it."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_until(
    proc: subprocess.Popen[str] | None, ready: Callable[[], bool], timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early:\n{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError("the sandbox never got the jobs")
        time.sleep(0.05)


def jobs_in_place(sb: Sandbox) -> Callable[[], bool]:
    """Every job of the run submitted, and the sandbox's workers busy with the first ones."""

    def ready() -> bool:
        stats = sb.stats()
        return stats["submits_accepted"] >= IN_FLIGHT and stats["runs_started"] >= WORKERS

    return ready


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, float]:
    """Send `signum` to the process group; its output and how long it took to end."""
    sent = time.monotonic()
    os.killpg(proc.pid, signum)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return output, time.monotonic() - sent


def queued_when_stopped(sb: Sandbox) -> list[dict[str, Any]]:
    """The jobs no worker had started: each must have been cancelled."""
    return [r for r in sb.requests() if r["started_at"] is None]


def assert_every_queued_job_cancelled(sb: Sandbox) -> list[dict[str, Any]]:
    queued = queued_when_stopped(sb)
    stats = sb.stats()
    assert len(queued) == IN_FLIGHT - WORKERS, sb.requests()
    assert [r["state"] for r in queued] == ["cancelled"] * len(queued)
    assert stats["cancelled_jobs"] == len(queued)
    assert stats["cancels"] >= len(queued)  # a cancel call reached each (and the running ones)
    assert stats["submits_accepted"] == IN_FLIGHT  # nothing submitted after the stop
    return queued


def ledger(out: Path) -> dict[str, dict[str, Any]]:
    entries = (json.loads(p.read_text()) for p in (out / "_ledger").glob("*.json"))
    return {e["id"]: e for e in entries}


def assert_ledger_says_what_happened(out: Path, sb: Sandbox) -> str:
    """Cancelled rows recorded as not billed (a re-run submits them), running ones with their
    request id (a re-run or `collect` stores them); returns the run's flow run id."""
    entries = ledger(out)
    states = {r["request_id"]: r["state"] for r in sb.requests()}
    for entry in entries.values():
        assert entry["request_id"] in states, entry
        if states[entry["request_id"]] == "cancelled":
            assert (entry["state"], entry.get("billed")) == ("cancelled", False), entry
        else:
            assert entry["state"] == "submitted", entry
    assert len(entries) == IN_FLIGHT
    (flow_run_id,) = {e["flow_run_id"] for e in entries.values()}
    return str(flow_run_id)


async def final_state(flow_run_id: str, timeout: float = 30.0) -> Any:
    """The flow run's state on the server once final (a stopped run must not stay Running)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            if run.state is not None and run.state.is_final():
                return run.state
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} still {run.state}")
            await asyncio.sleep(0.2)


def assert_one_short_message(output: str, out: Path, signal_name: str) -> None:
    said = " ".join(output.split())  # rich wraps long lines
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) <= 6, output  # the progress bar and the message
    assert f"Stopped ({signal_name}); 4 jobs cancelled while queued (not billed)" in said
    assert "2 jobs left running on RunComfy (billed)" in said
    assert f"`prefect-runcomfy collect {out}` stores their videos" in said


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["int", "term"]
)
async def test_a_stopped_cli_run_cancels_every_queued_job_and_ends_cancelled(
    sb: Sandbox, tmp_path: Path, signum: int, exit_code: int
) -> None:
    out = tmp_path / "out"
    table = write_table(sb, tmp_path / "rows.csv")
    cli = [str(BIN / "prefect-runcomfy"), "run", table, "-o", str(out), "-c", str(IN_FLIGHT)]
    proc = start(cli, environment(sb), tmp_path)
    wait_until(proc, jobs_in_place(sb))
    output, seconds = stop(proc, signum)
    assert proc.returncode == exit_code, output
    assert seconds < 15, f"the stop took {seconds:.1f} s"
    assert_every_queued_job_cancelled(sb)
    assert_one_short_message(output, out, signal.Signals(signum).name)
    state = await final_state(assert_ledger_says_what_happened(out, sb))
    assert state.is_cancelled(), state
    assert "4 jobs cancelled while queued" in (state.message or "")


async def test_a_stop_while_submits_are_unanswered_still_cancels_their_jobs(
    sb: Sandbox, tmp_path: Path
) -> None:
    """The POSTs reached RunComfy and their answers are late: the stop waits for them (a
    cut submit would leave a job running and billed that no one can name) and cancels the
    queued ones; the ledger knows all six request ids although the rows were stopped."""
    sb.add_fault("submit", "slow", count=IN_FLIGHT, retry_after=2.0)
    out = tmp_path / "out"
    table = write_table(sb, tmp_path / "rows.csv")
    cli = [str(BIN / "prefect-runcomfy"), "run", table, "-o", str(out), "-c", str(IN_FLIGHT)]
    proc = start(cli, environment(sb), tmp_path)
    wait_until(proc, jobs_in_place(sb))
    assert not (out / "_ledger").exists() or all(
        e["state"] == "submitting" for e in ledger(out).values()
    ), "the answers came before the stop: this test would show nothing"
    output, _ = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, output
    assert_every_queued_job_cancelled(sb)
    assert_one_short_message(output, out, "SIGINT")
    assert (await final_state(assert_ledger_says_what_happened(out, sb))).is_cancelled()


async def test_ctrl_c_on_a_plain_script_cancels_queued_jobs_then_raises_keyboard_interrupt(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    table = write_table(sb, tmp_path / "rows.csv")
    script = tmp_path / "nightly.py"
    script.write_text(
        "from prefect_runcomfy import generate_talking_videos\n"
        f"generate_talking_videos({table!r}, {str(out)!r}, max_concurrency={IN_FLIGHT})\n"
        "print('not reached')\n"
    )
    proc = start([sys.executable, str(script)], environment(sb), tmp_path)
    wait_until(proc, jobs_in_place(sb))
    output, seconds = stop(proc, signal.SIGINT)
    # Python ends a script that a KeyboardInterrupt left by SIGINT, as the shell expects
    assert proc.returncode == -signal.SIGINT, output
    assert output.rstrip().endswith("KeyboardInterrupt"), output
    assert "not reached" not in output
    assert seconds < 15, f"the stop took {seconds:.1f} s"
    assert_every_queued_job_cancelled(sb)
    state = await final_state(assert_ledger_says_what_happened(out, sb))
    assert state.is_cancelled(), state
    # the flow run's last line says it, as every flow run's does
    assert "Finished in state Cancelled('Stopped (SIGINT); 4 jobs cancelled" in output


def test_a_second_ctrl_c_ends_the_cli_at_once_and_still_names_the_collect_command(
    sb: Sandbox, tmp_path: Path
) -> None:
    """Impatient: a second Ctrl-C 50 ms after the first. No traceback wall, and the line
    names the command that finishes what the stop may not have."""
    out = tmp_path / "out"
    table = write_table(sb, tmp_path / "rows.csv")
    cli = [str(BIN / "prefect-runcomfy"), "run", table, "-o", str(out), "-c", str(IN_FLIGHT)]
    proc = start(cli, environment(sb), tmp_path)
    wait_until(proc, jobs_in_place(sb))
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    output, _ = stop(proc, signal.SIGINT)
    said = " ".join(output.split())
    assert proc.returncode in (130, -signal.SIGINT), output  # -2: at Python's very end
    assert "Traceback" not in output and "Logging error" not in output, output
    assert len(output.strip().splitlines()) <= 6, output
    assert f"prefect-runcomfy collect {out}" in said, output


def test_the_stop_line_says_what_was_cancelled_left_and_how_to_collect_it() -> None:
    from prefect_runcomfy.engine.run.stopping import StopReport

    both = StopReport("s3://b/my videos", cancelled=("a", "b"), running=("c",), reason="SIGINT")
    assert both.message() == (
        "Stopped (SIGINT); 2 jobs cancelled while queued (not billed); 1 job left running on "
        "RunComfy (billed): `prefect-runcomfy collect 's3://b/my videos'` stores their videos. "
        "Running the same table again goes on where it stopped."
    )
    unsure = StopReport("out", unanswered=("d",)).message()
    assert "1 job not confirmed cancelled (no answer): `prefect-runcomfy collect out --cancel`" in (
        unsure
    )
    assert "no job of this run was queued or running" in StopReport("out").message()
    collecting = StopReport("out", cancelling=False, reason="SIGTERM").message()
    assert collecting == (
        "Stopped (SIGTERM); the requests not collected yet stay for `prefect-runcomfy collect out`."
    )


@pytest.mark.slow
async def test_a_deployment_run_cancelled_from_prefect_cancels_its_queued_jobs(
    sb: Sandbox, tmp_path: Path
) -> None:
    """`prefect flow-run cancel` (or the UI): the runner sends the run's process SIGTERM."""
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    out = tmp_path / "out"
    name = f"stop-{os.getpid()}-{time.monotonic_ns()}"
    env = environment(sb)
    env.update(
        RUNCOMFY_INPUTS=write_table(sb, tmp_path / "rows.csv"),
        RUNCOMFY_OUTPUT_URI=str(out),
        RUNCOMFY_DEPLOYMENT_NAME=name,
    )
    served = start([sys.executable, str(ROOT / "deployments" / "serve.py")], env, tmp_path)
    try:
        await deployed(served, f"generate-talking-videos/{name}")
        run = await run_deployment(
            f"generate-talking-videos/{name}", parameters={"max_concurrency": IN_FLIGHT}, timeout=0
        )
        wait_until(served, jobs_in_place(sb))
        async with get_client() as client:
            await client.set_flow_run_state(run.id, Cancelling(), force=True)
        state = await final_state(str(run.id), timeout=60)
        assert state.is_cancelled(), state
        assert_every_queued_job_cancelled(sb)
        assert assert_ledger_says_what_happened(out, sb) == str(run.id)
    finally:
        output, _ = stop(served, signal.SIGINT)
    assert "Stopped; 4 jobs cancelled while queued" in " ".join(output.split()), output


async def deployed(served: subprocess.Popen[str], name: str, timeout: float = 120.0) -> None:
    """Wait until the serving process has registered the deployment."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            try:
                await client.read_deployment_by_name(name)
                return
            except Exception:
                if served.poll() is not None or time.monotonic() > deadline:
                    output = stop(served, signal.SIGINT)[0]
                    raise AssertionError(f"not served:\n{output}") from None
            await asyncio.sleep(0.3)
