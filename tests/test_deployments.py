"""The scheduled path end to end: the project's own deployment files, a real Prefect server on
loopback (the test harness's), runs triggered the way the scheduler triggers them
(`run_deployment`), executed by a process worker or a `serve` runner against the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import get_current_settings

from prefect_runcomfy import Concurrency, RunComfyCredentials, ShardWatching, Waiting
from prefect_runcomfy.exceptions import RowsNeedAttentionError
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def prefect_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(get_current_settings().api.url),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    env.pop("PREFECT_API_KEY", None)
    env.update(extra)
    return env


def prefect_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def table(sb: Sandbox, tmp_path: Path) -> str:
    path = tmp_path / "rows.csv"
    pd.DataFrame(sample_inputs(sb.base_url)[:2]).to_csv(path, index=False)
    return str(path)


@pytest.fixture
async def block_name(sb: Sandbox) -> str:
    await RunComfyCredentials(api_token=sb.token, base_url=sb.base_url).save(
        "deployment-test", overwrite=True
    )
    return "deployment-test"


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def wait_for_final_state(flow_run_id: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            await asyncio.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")


async def shard_runs_of(out: Path) -> list[Any]:
    """The flow runs of the `shard` deployment that write into `out`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("generate-talking-videos/shard")
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return [r for r in runs if (r.parameters or {}).get("output_uri") == str(out)]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_machine(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and every process it started, as when its machine dies. (The flow-run
    processes of a process worker live in their own sessions: a process-group kill misses
    them.)"""
    tree = [proc.pid, *descendants(proc.pid)]
    for pid in tree:  # stopped first, so that none reacts to another's death
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def start_worker(
    env: dict[str, str], tmp_path: Path, name: str, limit: int, background: list
) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "runcomfy", "--limit", str(limit)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    background.append(proc)
    return proc


async def deploy_shard() -> None:
    """The `shard` deployment of prefect.yaml, made through the API (quicker than the CLI,
    which the test above exercises)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name="runcomfy", type="process"))
        flow_id = await client.create_flow_from_name("generate-talking-videos")
        await client.create_deployment(
            flow_id,
            "shard",
            entrypoint="prefect_runcomfy.flows:generate_talking_videos",
            work_pool_name="runcomfy",
            work_queue_name="default",
            tags=["runcomfy", "video", "shard"],
            pull_steps=[],
        )


async def test_prefect_yaml_deployment_runs_on_a_process_worker(
    sb: Sandbox, table: str, block_name: str, tmp_path: Path, background: list
) -> None:
    out = tmp_path / "nightly"
    env = prefect_env(
        RUNCOMFY_INPUTS=table, RUNCOMFY_OUTPUT_URI=str(out), RUNCOMFY_CREDENTIALS=block_name
    )
    created = prefect_cli("work-pool", "create", "runcomfy", "--type", "process", env=env)
    assert created.returncode == 0 or "already exists" in created.stdout, created.stdout
    deployed = prefect_cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("generate-talking-videos/nightly")
        assert deployment.parameters["output_uri"] == str(out)
        assert deployment.parameters["credentials"] == block_name
        # the run form's sections, given as JSON objects in prefect.yaml, reach the run
        assert deployment.parameters["spending"] == {
            "max_submits": 1000,
            "allow_failed_rows": False,
        }
        schema = deployment.parameter_openapi_schema or {}
        assert {"Spending", "Waiting", "MediaOptions", "Concurrency"} <= set(
            schema.get("definitions", {})
        )
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.work_pool_name == "runcomfy"
        await client.read_deployment_by_name("collect-outstanding-requests/collect")

    flow_run = await run_deployment("generate-talking-videos/nightly", timeout=0)
    log = (tmp_path / "worker.log").open("wb")
    background.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "runcomfy", "--type", "process"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    finished = await wait_for_final_state(flow_run.id)
    assert finished.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["status"]) == ["succeeded", "succeeded"]
    assert finished.parameters["waiting"] == {"poll_max_s": 30}
    assert all((out / f"{i}.mp4").stat().st_size > 1000 for i in manifest["id"])


async def test_serve_script_runs_a_triggered_run(
    sb: Sandbox, table: str, block_name: str, tmp_path: Path, background: list
) -> None:
    out = tmp_path / "served"
    env = prefect_env(
        RUNCOMFY_INPUTS=table,
        RUNCOMFY_OUTPUT_URI=str(out),
        RUNCOMFY_CREDENTIALS=block_name,
        RUNCOMFY_DEPLOYMENT_NAME="served-nightly",
    )
    log = (tmp_path / "serve.log").open("wb")
    background.append(
        subprocess.Popen(
            [sys.executable, str(ROOT / "deployments" / "serve.py")],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    async with get_client() as client:
        for _ in range(120):
            try:
                deployment = await client.read_deployment_by_name(
                    "generate-talking-videos/served-nightly"
                )
                break
            except Exception:
                await asyncio.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    flow_run = await run_deployment("generate-talking-videos/served-nightly", timeout=0)
    finished = await wait_for_final_state(flow_run.id)
    assert finished.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
    assert set(pd.read_parquet(out / "manifest.parquet")["status"]) == {"succeeded"}


async def test_block_register_from_the_module(tmp_path: Path) -> None:
    result = prefect_cli("block", "register", "-m", "prefect_runcomfy", env=prefect_env())
    assert result.returncode == 0, result.stdout + result.stderr
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug("runcomfy-credentials")
        schema = await client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert block_type.name == "RunComfy Credentials"
    assert schema is not None
    assert {"api_token", "base_url", "timeout"} <= set(schema.fields["properties"])


async def test_sharded_run_on_a_work_pool_shares_one_account_limit(
    sb: Sandbox, block_name: str, tmp_path: Path, background: list
) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from prefect_runcomfy import generate_talking_videos_sharded

    sb.set(workers=4, run_seconds=1.0)
    out = tmp_path / "sharded"
    env = prefect_env(
        RUNCOMFY_INPUTS="unused.csv", RUNCOMFY_OUTPUT_URI=str(out), RUNCOMFY_CREDENTIALS=block_name
    )
    prefect_cli("work-pool", "create", "runcomfy", "--type", "process", env=env)
    deployed = prefect_cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="shard-test-account", limit=2)
        )
    log = (tmp_path / "worker.log").open("wb")
    background.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "runcomfy", "--limit", "3"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    samples = sample_inputs(sb.base_url)
    table = [
        {**samples[i % 3], "id": f"s{i}", "prompt": f"row {i}", "batch": "b1"} for i in range(5)
    ]
    table.append({**samples[0], "id": "bad", "steps": 0, "batch": "b1"})
    # the invalid row fails the parent run (after the merged manifest is written)
    with pytest.raises(RowsNeedAttentionError, match="1 of 6 rows need attention") as raised:
        await generate_talking_videos_sharded(
            table,
            str(out),
            deployment="generate-talking-videos/shard",
            shard_size=2,
            credentials=block_name,
            concurrency=Concurrency(limit="shard-test-account"),
            waiting=Waiting(poll_initial_s=0.2, poll_max_s=1.0),
        )
    manifest = raised.value.manifest
    assert list(manifest["id"]) == ["s0", "s1", "s2", "s3", "s4", "bad"], (
        tmp_path / "worker.log"
    ).read_text()[-3000:]
    assert list(manifest["status"]) == ["succeeded"] * 5 + ["invalid"]
    assert list(manifest["batch"]) == ["b1"] * 6
    merged = pd.read_parquet(out / "manifest.parquet")
    assert sorted(merged["id"]) == sorted(manifest["id"])
    stats = sb.stats()
    assert stats["submits_accepted"] == 5
    assert max(stats["submits_by_payload"].values()) == 1
    # the account-wide limit: never more than 2 jobs in flight, across 3 shard runs
    events = sorted(
        [(r["submitted_mono"], 1) for r in sb.requests()]
        + [(r["finished_mono"], -1) for r in sb.requests()]
    )
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak <= 2
    shards = await shard_runs_of(out)
    assert len(shards) == 3
    assert all(r.state is not None and r.state.is_completed() for r in shards)


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Poll the async `check` every 0.5 s until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


async def test_sharded_parent_reports_a_killed_workers_shard_and_a_rerun_adds_no_post(
    sb: Sandbox, block_name: str, tmp_path: Path, background: list
) -> None:
    """Two workers; the machine of one dies while its shard runs; the parent is re-run at
    once, while the other worker's shards still run. Both parents wait for the same shard runs
    (the re-run starts none), take the dead one as dead within the stale bound, mark it
    Crashed, report its rows (the paid one collectable, with the command) and end with the
    merged manifest. No payload is POSTed twice."""
    from prefect_runcomfy import generate_talking_videos_sharded

    sb.set(workers=4)
    out = tmp_path / "killed"
    env = prefect_env(
        RUNCOMFY_INPUTS="unused.csv", RUNCOMFY_OUTPUT_URI=str(out), RUNCOMFY_CREDENTIALS=block_name
    )
    await deploy_shard()
    samples = sample_inputs(sb.base_url)
    ids = [f"k{i}" for i in range(6)]
    table = [
        {**samples[i % 3], "id": ids[i], "prompt": f"row {i} [sandbox:run=6]"} for i in range(6)
    ]
    options: dict[str, Any] = {
        "deployment": "generate-talking-videos/shard",
        "shard_size": 2,
        "credentials": block_name,
        "max_concurrency_per_shard": 1,  # a shard's second row waits for its first: 12 s
        "waiting": Waiting(poll_initial_s=0.2, poll_max_s=1.0),
        "shard_watch": ShardWatching(heartbeat_s=1.0, stale_after_s=10.0),
    }
    ended: dict[str, float] = {}

    async def parent(name: str) -> Any:
        try:
            return await generate_talking_videos_sharded(table, str(out), **options)
        finally:
            ended[name] = time.monotonic()

    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    doomed_worker = start_worker(worker_env, tmp_path, "worker-1", 1, background)
    start_worker(worker_env, tmp_path, "worker-2", 2, background)  # takes the other two
    first = asyncio.create_task(parent("first"))

    async def doomed_shard_has_paid() -> Any:
        below = set(descendants(doomed_worker.pid))
        for run in await shard_runs_of(out):
            beat = out / run.parameters["shard"]["heartbeat_name"]
            if not (run.state and run.state.is_running() and beat.exists()):
                continue
            if json.loads(beat.read_text())["pid"] not in below:
                continue
            entries = [
                out / "_ledger" / f"{i}.json"
                for i in pd.read_parquet(run.parameters["inputs"])["id"]
            ]
            if any(
                e.exists() and json.loads(e.read_text())["state"] == "submitted" for e in entries
            ):
                return run
        return None

    doomed = await wait_until(doomed_shard_has_paid, 180, "worker-1's shard paying for a row")
    kill_machine(doomed_worker)
    killed_at, killed_wall = time.monotonic(), time.time()
    again = asyncio.create_task(parent("again"))
    results = await asyncio.gather(first, again, return_exceptions=True)

    log = (tmp_path / "worker-2.log").read_text()[-3000:]
    doomed_ids = sorted(pd.read_parquet(doomed.parameters["inputs"])["id"])
    for result in results:
        assert isinstance(result, RowsNeedAttentionError), (result, log)
        manifest = result.manifest.set_index("id")
        assert sorted(manifest.index) == ids
        others = manifest.drop(doomed_ids)
        assert set(others["status"]) == {"succeeded"}, others[["status", "error"]].to_dict()
        lost = manifest.loc[doomed_ids]
        assert "timed_out" in set(lost["status"])  # the paid row, left at RunComfy
        paid = lost[lost["status"] == "timed_out"]
        assert all(f"prefect-runcomfy collect {out}" in e for e in paid["error"])
    assert sorted(pd.read_parquet(out / "manifest.parquet")["id"]) == ids
    # the re-run started no shard run: all three were still under way, the dead one included
    runs = await shard_runs_of(out)
    assert len(runs) == 3
    dead = next(r for r in runs if r.id == doomed.id)
    assert dead.state.is_crashed()
    assert "Taken as dead" in (dead.state.message or "")
    assert all(r.state.is_completed() for r in runs if r.id != doomed.id)
    # taken as dead within the stale bound (10 s) + one look (1 s) + a busy machine's slack
    assert dead.state.timestamp.timestamp() - killed_wall < 25
    assert max(ended.values()) - killed_at < 60
    stats = sb.stats()
    assert max(stats["submits_by_payload"].values()) == 1
    assert stats["submits_accepted"] <= len(ids)
