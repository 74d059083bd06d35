"""Called the way Prefect users write flows: sync scripts, sync and async parent flows, tasks.

Real Prefect API (the test harness's server), the sandbox over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentTaskRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.context import get_run_context
from prefect.settings import PREFECT_API_URL

from prefect_runcomfy import (
    InfiniteTalkInput,
    RunComfyCredentials,
    Waiting,
    collect_outstanding_requests,
    generate_talking_videos,
)
from prefect_runcomfy.sandbox import Sandbox, sample_inputs
from prefect_runcomfy.sync_or_async import caller_is_async
from prefect_runcomfy.tasks import (
    get_request_result,
    get_request_status,
    store_outputs,
    submit_request,
    wait_for_request,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = {"waiting": Waiting(poll_initial_s=0.05, poll_max_s=0.2)}


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def creds(sb: Sandbox) -> RunComfyCredentials:
    return RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)


def two_rows(sb: Sandbox) -> list[dict[str, Any]]:
    return [dict(row, id=f"n{i}") for i, row in enumerate(sample_inputs(sb.base_url)[:2])]


async def child_runs_of(parent_flow_run_id: str) -> list[Any]:
    """The flow runs whose parent task run belongs to `parent_flow_run_id`."""
    async with get_client() as client:
        # Filtered on the server: the harness is shared by the whole session, and an
        # unfiltered read returns only the first page of every test's task runs.
        task_runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[UUID(parent_flow_run_id)])
            )
        )
        parent_tasks = [t.id for t in task_runs]
        if not parent_tasks:
            return []
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=parent_tasks)
            )
        )


def test_a_plain_sync_script_runs_the_flow_and_gets_the_manifest(
    sb: Sandbox, tmp_path: Path
) -> None:
    # A new process, as a user's script is: no event loop, no pytest, no Prefect context.
    script = tmp_path / "nightly.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos
            from prefect_runcomfy.sandbox import sample_inputs

            rows = [dict(r, id=f"s{{i}}") for i, r in enumerate(sample_inputs({sb.base_url!r})[:2])]
            creds = RunComfyCredentials(api_token={sb.token!r}, base_url={sb.base_url!r})
            manifest = generate_talking_videos(
                rows, {str(tmp_path / "out")!r}, creds,
                waiting=Waiting(poll_initial_s=0.05, poll_max_s=0.2),
            )
            print("TYPE", type(manifest).__name__)
            print("STATUS", ",".join(manifest["status"]))
            """
        )
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TYPE DataFrame" in done.stdout
    assert "STATUS succeeded,succeeded" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == ["s0.mp4", "s1.mp4"]


def test_a_sync_parent_flow_gets_a_dataframe_from_a_linked_subflow(
    sb: Sandbox, tmp_path: Path
) -> None:
    @flow
    def nightly(out: str) -> tuple[str, pd.DataFrame]:
        manifest = generate_talking_videos(two_rows(sb), out, creds(sb), **FAST)
        return str(get_run_context().flow_run.id), manifest  # type: ignore[union-attr]

    parent_id, manifest = nightly(str(tmp_path / "out"))
    assert isinstance(manifest, pd.DataFrame)
    assert list(manifest["status"]) == ["succeeded", "succeeded"]
    children = asyncio.run(child_runs_of(parent_id))
    assert [c.name for c in children] and all(c.state_name == "Completed" for c in children)
    assert {c.parameters["output_uri"] for c in children} == {str(tmp_path / "out")}


async def test_an_async_parent_flow_awaits_it_as_a_linked_subflow(
    sb: Sandbox, tmp_path: Path
) -> None:
    @flow
    async def nightly(out: str) -> tuple[str, pd.DataFrame]:
        manifest = await generate_talking_videos(two_rows(sb), out, creds(sb), **FAST)
        return str(get_run_context().flow_run.id), manifest  # type: ignore[union-attr]

    parent_id, manifest = await nightly(str(tmp_path / "out"))
    assert list(manifest["status"]) == ["succeeded", "succeeded"]
    children = await child_runs_of(parent_id)
    assert len(children) == 1 and children[0].state_name == "Completed"


def test_collect_runs_from_a_sync_flow(sb: Sandbox, tmp_path: Path) -> None:
    @flow
    def tidy(out: str) -> pd.DataFrame:
        return collect_outstanding_requests(out, creds(sb))

    manifest = tidy(str(tmp_path / "out"))
    assert isinstance(manifest, pd.DataFrame) and manifest.empty


def test_the_tasks_run_from_a_sync_flow_called_and_submitted(sb: Sandbox, tmp_path: Path) -> None:
    @flow
    def one_video(out: str) -> tuple[str, str, list[str]]:
        credentials = creds(sb)
        first = sample_inputs(sb.base_url)[0]
        job = InfiniteTalkInput(prompt=first["prompt"], image=first["image"], audio=first["audio"])
        request_id = submit_request(job, credentials, row_id="t0")
        status = get_request_status.submit(request_id, credentials).result()
        finished = wait_for_request(request_id, credentials, row_id="t0", poll=None)
        result = get_request_result.submit(request_id, credentials).result()
        stored = store_outputs(finished.result, "t0", out, credentials=credentials)
        assert result.status.value == "succeeded"
        return request_id, status.status.value, stored.video_uris

    request_id, status, videos = one_video(str(tmp_path / "out"))
    assert request_id and status in {"in_queue", "in_progress", "completed"}
    assert videos == [str(tmp_path / "out" / "t0.mp4")]
    assert (tmp_path / "out" / "t0.mp4").stat().st_size > 0


async def test_the_tasks_are_still_awaited_in_an_async_flow(sb: Sandbox) -> None:
    @flow
    async def peek() -> str:
        first = sample_inputs(sb.base_url)[0]
        job = InfiniteTalkInput(prompt=first["prompt"], image=first["image"], audio=first["audio"])
        request_id = await submit_request(job, creds(sb), row_id="a0")
        return (await get_request_status(request_id, creds(sb))).status.value

    assert await peek() in {"in_queue", "in_progress", "completed"}


# -- the rule that decides sync or async ----------------------------------------------------


def _prefect_rule() -> bool | None:
    # Prefect's own rule lives in a private module; compare where it still exists.
    try:
        from prefect._internal.compatibility.async_dispatch import is_in_async_context
    except ImportError:  # pragma: no cover - Prefect moved it; our rule stands on its own
        return None
    return is_in_async_context()


def test_sync_or_async_is_decided_as_prefect_decides() -> None:
    seen: dict[str, tuple[bool, bool | None]] = {}

    def look(where: str) -> None:
        seen[where] = (caller_is_async(), _prefect_rule())

    look("script")

    async def in_loop() -> None:
        look("event loop")

    asyncio.run(in_loop())

    @task
    def sync_task() -> None:
        look("sync task in an async flow")

    @flow
    def sync_flow() -> None:
        look("sync flow")

    @flow
    async def async_flow() -> None:
        look("async flow")
        sync_task()

    sync_flow()
    asyncio.run(async_flow())
    assert {k: v[0] for k, v in seen.items()} == {
        "script": False,
        "event loop": True,
        "sync flow": False,
        "async flow": True,
        "sync task in an async flow": False,
    }
    for where, (ours, prefects) in seen.items():
        assert prefects is None or ours == prefects, where


# -- artifacts and tags -----------------------------------------------------------------------


async def test_two_runs_add_two_versions_under_one_key_and_carry_the_tags(
    sb: Sandbox, tmp_path: Path
) -> None:
    from prefect import tags
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect_runcomfy.report.naming import artifact_key

    out = str(tmp_path / "out")
    with tags("nightly"):
        await generate_talking_videos(two_rows(sb), out, creds(sb), **FAST)
        await generate_talking_videos(two_rows(sb), out, creds(sb), **FAST)
    key = f"{artifact_key(out)}-summary"
    async with get_client() as client:
        versions = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
        assert len(versions) == 2 and len({v.flow_run_id for v in versions}) == 2
        run_ids = {v.flow_run_id for v in versions}
        for run_id in run_ids:
            run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
            assert {"runcomfy", "infinite-talk", "nightly"} <= set(run.tags)
        # Only the first run has row task runs: the second finds both rows stored.
        task_runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=list(run_ids)))
        )
        rows = [t for t in task_runs if t.name in {"n0", "n1"}]
        assert len(rows) == 2
        assert rows and all({"runcomfy", "infinite-talk", "nightly"} <= set(t.tags) for t in rows)
