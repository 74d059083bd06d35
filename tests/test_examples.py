"""The examples run as users run them: a new process, against the sandbox, reporting to the
test harness's Prefect API (so the parent and child flow runs can be read back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.settings import get_current_settings

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARGS = ("--sandbox", "--output")


async def test_the_nightly_pipeline_example_publishes_its_videos(tmp_path: Path) -> None:
    out = tmp_path / "nightly"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "examples/nightly_pipeline.py",
            *ARGS,
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the table went through fsspec as Parquet, and the downstream task got the videos
    assert (out / "inputs" / "rows.parquet").stat().st_size > 0
    playlist = json.loads((out / "playlist.json").read_text())
    assert len(playlist) == 3
    for entry in playlist:
        assert Path(entry["video"]).stat().st_size > 0
        assert entry["seconds"] > 0
    # generate_talking_videos ran as a subflow of the sync pipeline flow, linked to it
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly-talking-videos"]))
        )
        (pipeline,) = [r for r in runs if r.parameters.get("output_uri") == str(out)]
        assert pipeline.state is not None and pipeline.state.is_completed()
        children = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["generate-talking-videos"]))
        )
        (child,) = [r for r in children if r.parameters.get("output_uri") == str(out)]
        assert child.parent_task_run_id is not None
        link = await client.read_task_run(child.parent_task_run_id)
        assert link.flow_run_id == pipeline.id
