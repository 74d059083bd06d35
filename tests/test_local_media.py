"""Local media files work wherever a run starts (issue 23, point 1): one rule
(`prefect_runcomfy.local_media`) for a script, the CLI and a deployment, and for `validate`,
`plan` and `run` alike. Real HTTP to the sandbox on loopback, a real Prefect API (the test
harness's, with its Variables), moto's S3 on loopback; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
from prefect import flow
from prefect.settings import get_current_settings
from prefect.variables import Variable

from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos
from prefect_runcomfy.api.exceptions import ConfigurationError
from prefect_runcomfy.exceptions import RowsNeedAttentionError
from prefect_runcomfy.local_media import choose_local_files, is_local_api
from prefect_runcomfy.sandbox import Sandbox
from prefect_runcomfy.sandbox.samples import SAMPLES_DIR

pytestmark = pytest.mark.usefixtures("prefect_api")

ROOT = Path(__file__).resolve().parents[1]
FAST = {"waiting": Waiting(poll_initial_s=0.1, poll_max_s=0.5)}
NOT_LOOPBACK = "http://192.0.2.1:9"
"""TEST-NET-1 (RFC 5737): not loopback, and routed nowhere. Nothing may be sent to it (a row
that is invalid is never submitted, and no row to submit means no price to read); if
something were, it would fail, not reach beyond this machine."""
VARIABLES = ("runcomfy_staging_uri", "runcomfy_inline_media")


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


@pytest.fixture
def no_variables() -> Iterator[None]:
    """The deployment Variables unset before and after (the harness's server is shared by
    every test of this process)."""

    def unset() -> None:
        for name in VARIABLES:
            Variable.unset(name, _sync=True)  # type: ignore[call-arg]

    unset()
    yield
    unset()


def local_table(folder: Path, n: int = 5, missing: int | None = None) -> Path:
    """A CSV of `n` rows naming a portrait and a speech file beside it (relative paths, as
    a new user writes them); row `missing` names an image that is not there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "face.png").write_bytes((SAMPLES_DIR / "portrait.png").read_bytes())
    (folder / "voice.mp3").write_bytes((SAMPLES_DIR / "short.mp3").read_bytes())
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"talks #{i}",
            "image": "gone.png" if i == missing else "face.png",
            "audio": "voice.mp3",
            "resolution": "480x480",
        }
        for i in range(n)
    ]
    path = folder / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def plan_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Plan: ")]


# --- the rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "local"),
    [
        ("http://127.0.0.1:8787", True),
        ("http://127.0.0.2:8787", True),
        ("http://localhost:8787", True),
        ("http://[::1]:8787", True),
        ("http://[::ffff:127.0.0.1]:8787", True),
        ("https://model-api.runcomfy.net", False),
        ("http://10.0.0.5:8080", False),
        (NOT_LOOPBACK, False),
        ("https://localhost.example.com", False),
    ],
)
def test_a_base_url_on_loopback_is_the_sandbox(base_url: str, local: bool) -> None:
    assert is_local_api(base_url) is local


def test_the_rule_settings_first_then_the_sandbox() -> None:
    sandbox, runcomfy = "http://127.0.0.1:8787", "https://model-api.runcomfy.net"
    # nothing set: inline against the sandbox, nowhere against RunComfy (the row is invalid)
    assert choose_local_files(base_url=sandbox).inline
    nowhere = choose_local_files(base_url=runcomfy)
    assert not nowhere.inline and nowhere.staging_uri is None
    # a deployment's Variable wins over the sandbox's default, staging over inline
    staged = choose_local_files(
        base_url=sandbox, staging_variable="s3://b/stage", inline_variable=True
    )
    assert (staged.staging_uri, staged.inline) == ("s3://b/stage", False)
    assert "runcomfy_staging_uri" in staged.why
    assert choose_local_files(base_url=runcomfy, inline_variable="true").inline
    assert not choose_local_files(base_url=runcomfy, inline_variable=False).inline
    with pytest.raises(ConfigurationError, match="runcomfy_inline_media must be true or false"):
        choose_local_files(base_url=runcomfy, inline_variable="yes please")
    with pytest.raises(ConfigurationError, match="runcomfy_staging_uri must be a folder URL"):
        choose_local_files(base_url=runcomfy, staging_variable=42)


# --- (a) + (e): a sync @flow script against the sandbox, no media setting ----------------------


def test_a_sync_flow_script_sends_local_files_to_the_sandbox_without_any_setting(
    sb: Sandbox, tmp_path: Path, no_variables: None, caplog: pytest.LogCaptureFixture
) -> None:
    """What a new user writes: a CSV naming local files, a sync `@flow` calling the flow,
    credentials pointing at the sandbox. Every row succeeds, and the `Plan:` line counts
    exactly the rows that were sent."""
    caplog.set_level(logging.INFO)
    table = local_table(tmp_path / "in")
    out = tmp_path / "out"

    @flow
    def nightly() -> pd.DataFrame:
        credentials = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url)
        return generate_talking_videos(str(table), str(out), credentials, **FAST)

    manifest = nightly()
    assert list(manifest["status"]) == ["succeeded"] * 5, manifest["error"].tolist()
    sent = sb.stats()["submits_accepted"]
    assert sent == 5
    assert len(plan_lines(caplog)) == 1 and plan_lines(caplog)[0].startswith(
        f"Plan: {sent} to submit;"
    ), plan_lines(caplog)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "local media files are sent inline" in said and "local sandbox" in said
    sidecar = json.loads((out / "r0.json").read_text())
    assert sidecar["inputs"]["284_image"].startswith("data:image/png;base64,")


# --- (b): against RunComfy (not loopback) without staging ------------------------------------


async def test_without_staging_against_runcomfy_rows_are_invalid_with_the_fix(
    tmp_path: Path, no_variables: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    table = local_table(tmp_path / "in")
    credentials = RunComfyCredentials(api_token="rc-test", base_url=NOT_LOOPBACK, timeout=5)
    with pytest.raises(RowsNeedAttentionError) as raised:
        await generate_talking_videos(str(table), str(tmp_path / "out"), credentials, **FAST)
    manifest = raised.value.manifest
    assert list(manifest["status"]) == ["invalid"] * 5
    assert manifest["request_id"].isna().all(), "nothing was submitted"
    error = manifest["error"][0]
    for fix in ("staging_uri=", "--staging-uri", "prefect variable set runcomfy_staging_uri"):
        assert fix in error, error
    assert plan_lines(caplog) == ["Plan: no valid rows, 5 invalid"], plan_lines(caplog)


# --- (c): validate, plan and run agree on every row ------------------------------------------


def test_validate_plan_and_run_agree_on_every_row(
    sb: Sandbox, tmp_path: Path, no_variables: None
) -> None:
    """The same table, the same (no) media options, the same API (the sandbox): the same
    rows valid, the same row invalid for the same reason, in all three commands."""
    from typer.testing import CliRunner

    from prefect_runcomfy.cli import app

    table = str(local_table(tmp_path / "in", missing=3))
    out = str(tmp_path / "out")
    env = {"RUNCOMFY_BASE_URL": sb.base_url, "RUNCOMFY_API_TOKEN": sb.token, "COLUMNS": "300"}
    runner = CliRunner()
    validated = runner.invoke(app, ["validate", table], env=env)
    assert validated.exit_code == 2, validated.output
    said = " ".join(validated.output.split())
    assert "4 of 5 rows valid" in said and "id 'r3'" in said
    assert "gone.png" in "".join(said.split()) and "id 'r0'" not in said
    planned = runner.invoke(app, ["plan", table, "-o", out], env=env)
    assert planned.exit_code == 2, planned.output
    said = " ".join(planned.output.split())
    assert "4 to submit, 1 invalid" in said and "gone.png" in "".join(said.split())
    ran = cli_run(table, out, sb)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    manifest = pd.read_parquet(Path(out) / "manifest.parquet")
    assert dict(zip(manifest["id"], manifest["status"], strict=True)) == {
        "r0": "succeeded",
        "r1": "succeeded",
        "r2": "succeeded",
        "r3": "invalid",
        "r4": "succeeded",
    }
    assert "gone.png" in manifest.set_index("id").loc["r3", "error"]
    assert sb.stats()["submits_accepted"] == 4


def cli_run(table: str, out: str, sb: Sandbox) -> subprocess.CompletedProcess[str]:
    """`prefect-runcomfy run` as a user types it (its own process: it sets up signals and
    Prefect's logging), against the test harness's Prefect API."""
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(get_current_settings().api.url),
        RUNCOMFY_BASE_URL=sb.base_url,
        RUNCOMFY_API_TOKEN=sb.token,
        COLUMNS="200",
    )
    command = [str(Path(sys.executable).parent / "prefect-runcomfy"), "run", table, "-o", out]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


# --- (d): a deployment picks up the staging folder set once ----------------------------------


@pytest.mark.slow
async def test_a_served_deployment_stages_local_files_where_the_variable_says(
    sb: Sandbox,
    tmp_path: Path,
    s3_server: Any,
    s3_bucket: str,
    no_variables: None,
    background: list[subprocess.Popen[bytes]],
) -> None:
    """`deployments/serve.py` with nothing but the environment it documents, and the staging
    folder set once, as a Prefect Variable. Against the sandbox the files would go inline
    without it: the sidecar shows they were staged to S3 and signed instead."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    await Variable.aset("runcomfy_staging_uri", f"s3://{s3_bucket}/staging", overwrite=True)
    await RunComfyCredentials(api_token=sb.token, base_url=sb.base_url).save(
        "local-media-test", overwrite=True
    )
    out = tmp_path / "served"
    env = dict(
        os.environ,
        PREFECT_API_URL=str(get_current_settings().api.url),
        PREFECT_LOGGING_LEVEL="INFO",
        RUNCOMFY_INPUTS=str(local_table(tmp_path / "in", n=2)),
        RUNCOMFY_OUTPUT_URI=str(out),
        RUNCOMFY_CREDENTIALS="local-media-test",
        RUNCOMFY_DEPLOYMENT_NAME="served-local-media",
        AWS_ENDPOINT_URL=s3_server.endpoint_url,  # the worker's S3 is moto's, on loopback
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
        for _ in range(240):
            try:
                await client.read_deployment_by_name("generate-talking-videos/served-local-media")
                break
            except Exception:
                await asyncio.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
    flow_run = await run_deployment("generate-talking-videos/served-local-media", timeout=0)
    finished = await wait_for_final_state(flow_run.id)
    assert finished.state is not None
    assert finished.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["status"]) == ["succeeded", "succeeded"], manifest["error"].tolist()
    sent = json.loads((out / "r0.json").read_text())["inputs"]["284_image"]
    assert sent.startswith(s3_server.endpoint_url), sent
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert len(fs.ls(f"{s3_bucket}/staging")) == 2  # one portrait, one speech file
    assert "runcomfy_staging_uri" in (tmp_path / "serve.log").read_text()


async def wait_for_final_state(flow_run_id: Any, timeout: float = 240) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for _ in range(int(timeout)):
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            await asyncio.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    import signal

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
