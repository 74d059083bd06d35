"""The scheduled path end to end: the project's own deployment files, a real Prefect server on
loopback (the test harness's), runs triggered the way the scheduler triggers them
(`run_deployment`), executed by a process worker or a `serve` runner against the sandbox."""

from __future__ import annotations

import asyncio
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

from prefect_runcomfy import RunComfyCredentials
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
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

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
            concurrency_limit="shard-test-account",
            shard_parameters={"poll_initial_s": 0.2, "poll_max_s": 1.0},
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
    async with get_client() as client:
        shards = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["shard-0000", "shard-0001", "shard-0002"])
            )
        )
    assert len(shards) == 3
    assert all(r.state is not None and r.state.is_completed() for r in shards)
