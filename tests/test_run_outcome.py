"""What Prefect shows about a run: its final state, row events, video assets, the crash hook.

Real Prefect API (the test harness's server: its event persister stores every event, read back
here through the API), the sandbox over HTTP. `[sandbox:fail]` in a prompt makes that row's run
fail on the sandbox, so failures are deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Crashed
from sandbox_helpers import submit

from prefect_runcomfy import RunComfyCredentials, Spending, Waiting, generate_talking_videos
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.engine.record.status import LedgerState
from prefect_runcomfy.exceptions import ConfigurationError, RowsNeedAttentionError
from prefect_runcomfy.flows import _cancel_queued_on_stop
from prefect_runcomfy.report.events import asset_key
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = {"waiting": Waiting(poll_initial_s=0.05, poll_max_s=0.2)}


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def creds(sb: Sandbox) -> RunComfyCredentials:
    return RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)


def rows(sb: Sandbox, *, failing: tuple[int, ...] = (), n: int = 3) -> list[dict[str, Any]]:
    base = sample_inputs(sb.base_url)
    table = [dict(base[i % len(base)], id=f"v{i}") for i in range(n)]
    for i in failing:
        table[i]["prompt"] += " [sandbox:fail]"
    return table


async def flow_run_state(flow_run_id: str) -> Any:
    async with get_client() as client:
        return (await client.read_flow_run(uuid.UUID(flow_run_id))).state


async def events_under(prefix: str, *, names: list[str], expect: int) -> list[Any]:
    """The events whose resource id starts with `prefix`, once `expect` of them are stored
    (the server persists events a moment after they are sent)."""
    deadline = time.monotonic() + 30
    found: list[Any] = []
    async with get_client() as client:
        while time.monotonic() < deadline:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=names),
                    resource=EventResourceFilter(id_prefix=[prefix]),
                ),
                limit=50,
            )
            found = page.events
            if len(found) >= expect:
                return found
            await asyncio.sleep(0.5)
    return found


# -- the run's state -------------------------------------------------------------------------


async def test_a_run_whose_rows_all_failed_ends_failed_and_still_writes_everything(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    state = await generate_talking_videos(
        rows(sb, failing=(0, 1), n=2), str(out), creds(sb), return_state=True, **FAST
    )
    assert state.is_failed()
    assert "No row produced a video: 2 failed of 2 rows" in (state.message or "")
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, RowsNeedAttentionError)
    assert error.manifest["status"].tolist() == ["failed", "failed"]
    assert error.counts == {"failed": 2}
    # everything was written before the verdict
    stored = pd.read_parquet(out / "manifest.parquet")
    assert sorted(stored["id"]) == ["v0", "v1"]
    assert (out / "index.html").exists()
    assert (out / "v0.json").exists()


async def test_some_rows_failing_fail_the_run_by_default_with_the_counts(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(RowsNeedAttentionError) as raised:
        await generate_talking_videos(rows(sb, failing=(1,)), str(out), creds(sb), **FAST)
    message = str(raised.value)
    assert "1 of 3 rows need attention (2 succeeded, 1 failed)" in message
    assert "allow_failed_rows=False tolerates 0" in message
    assert str(out / "manifest.parquet") in message
    manifest = raised.value.manifest
    assert dict(zip(manifest["id"], manifest["status"], strict=True)) == {
        "v0": "succeeded",
        "v1": "failed",
        "v2": "succeeded",
    }
    assert (out / "v0.mp4").stat().st_size > 0


async def test_failed_rows_can_be_tolerated_by_bool_or_count(sb: Sandbox, tmp_path: Path) -> None:
    table = rows(sb, failing=(1, 2), n=4)
    # any number
    state = await generate_talking_videos(
        table,
        str(tmp_path / "a"),
        creds(sb),
        return_state=True,
        spending=Spending(allow_failed_rows=True),
        **FAST,
    )
    assert state.is_completed()
    manifest = await state.result()
    assert manifest["status"].tolist() == ["succeeded", "failed", "failed", "succeeded"]
    # a count: two tolerated, then one too few
    manifest = await generate_talking_videos(
        table, str(tmp_path / "b"), creds(sb), spending=Spending(allow_failed_rows=2), **FAST
    )
    assert (manifest["status"] == "failed").sum() == 2
    with pytest.raises(RowsNeedAttentionError, match="allow_failed_rows=1 tolerates 1"):
        await generate_talking_videos(
            table, str(tmp_path / "c"), creds(sb), spending=Spending(allow_failed_rows=1), **FAST
        )


async def test_no_video_at_all_fails_the_run_whatever_the_tolerance(
    sb: Sandbox, tmp_path: Path
) -> None:
    with pytest.raises(RowsNeedAttentionError, match="No row produced a video"):
        await generate_talking_videos(
            rows(sb, failing=(0,), n=1),
            str(tmp_path),
            creds(sb),
            spending=Spending(allow_failed_rows=True),
            **FAST,
        )


async def test_a_bad_tolerance_is_refused_before_anything_is_paid(
    sb: Sandbox, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="allow_failed_rows=-1"):
        await generate_talking_videos(
            rows(sb), str(tmp_path), creds(sb), spending=Spending(allow_failed_rows=-1), **FAST
        )
    assert sb.stats()["submits_accepted"] == 0


def test_a_sync_parent_flow_catches_the_error_and_keeps_the_manifest(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    @flow
    def nightly() -> list[str]:
        try:
            manifest = generate_talking_videos(
                rows(sb, failing=(0,), n=2), str(out), creds(sb), **FAST
            )
        except RowsNeedAttentionError as exc:
            manifest = exc.manifest
        return manifest["status"].tolist()

    assert nightly() == ["failed", "succeeded"]


# -- events and assets -----------------------------------------------------------------------


async def test_every_row_outcome_is_an_event_and_every_new_video_an_asset(
    sb: Sandbox, tmp_path: Path
) -> None:
    table = rows(sb, failing=(1,), n=3)
    table[2]["audio"] = ""  # invalid: no audio
    table_path = tmp_path / "rows.csv"
    pd.DataFrame(table).to_csv(table_path, index=False)
    out = tmp_path / "out"
    store = OutputStore(str(out))
    with pytest.raises(RowsNeedAttentionError) as raised:
        await generate_talking_videos(str(table_path), str(out), creds(sb), **FAST)
    manifest = raised.value.manifest.set_index("id")

    events = await events_under(f"runcomfy.row.{out}", names=["runcomfy.row."], expect=3)
    by_row = {e.resource["runcomfy.row.id"]: e for e in events}
    assert {i: e.event for i, e in by_row.items()} == {
        "v0": "runcomfy.row.succeeded",
        "v1": "runcomfy.row.failed",
        "v2": "runcomfy.row.invalid",
    }
    ok = by_row["v0"]
    assert ok.resource.id == f"runcomfy.row.{store.uri('v0')}"
    assert ok.payload["request_id"] == manifest.loc["v0", "request_id"]
    assert ok.payload["video_uri"] == manifest.loc["v0", "video_uri"]
    assert ok.payload["cost_usd"] == pytest.approx(manifest.loc["v0", "cost_usd"])
    assert by_row["v1"].payload["error"] == manifest.loc["v1", "error"]
    assert by_row["v1"].payload["request_id"] == manifest.loc["v1", "request_id"]
    assert "audio" in by_row["v2"].payload["error"]
    # Prefect relates each event to the flow run it came from
    assert any(r.id.startswith("prefect.flow-run.") for r in ok.related)

    video_key = "file://" + manifest.loc["v0", "video_uri"]
    assert {r.id: r.role for r in ok.related}[video_key] == "video"
    [video] = ok.payload["videos"]
    assert video["uri"] == manifest.loc["v0", "video_uri"]
    assert video["sha256"] == manifest.loc["v0", "sha256"]
    assert video["size_bytes"] == manifest.loc["v0", "size_bytes"]
    assert video["duration_s"] == pytest.approx(manifest.loc["v0", "duration_s"])

    # The output location is the asset, materialized once by the run that stored videos.
    location_key = f"file://{out}"
    assets = await events_under(location_key, names=["prefect.asset.materialization."], expect=1)
    assert [a.event for a in assets] == ["prefect.asset.materialization.succeeded"]
    asset = assets[0]
    assert asset.resource.id == location_key
    assert asset.payload["videos_stored"] == 1
    assert asset.payload["bytes_stored"] == manifest.loc["v0", "size_bytes"]
    roles = {r.id: r.role for r in asset.related}
    assert roles[f"file://{table_path}"] == "asset"  # the input table, upstream
    assert roles["prefect-runcomfy"] == "asset-materialized-by"

    # a re-run pays nothing and says the stored row was skipped; no new materialization
    with pytest.raises(RowsNeedAttentionError):
        await generate_talking_videos(str(table_path), str(out), creds(sb), **FAST)
    again = await events_under(f"runcomfy.row.{store.uri('v0')}", names=["runcomfy.row."], expect=2)
    assert sorted(e.event for e in again) == ["runcomfy.row.skipped", "runcomfy.row.succeeded"]
    await asyncio.sleep(1)
    assets = await events_under(location_key, names=["prefect.asset.materialization."], expect=1)
    assert len(assets) == 1
    # no video is an asset of its own any more
    assert not await events_under(video_key, names=["prefect.asset."], expect=0)


def test_asset_keys_prefect_refuses_are_left_out() -> None:
    assert asset_key("s3://bucket/videos/ada.mp4") == "s3://bucket/videos/ada.mp4"
    assert asset_key("/data/videos/ada.mp4") == "file:///data/videos/ada.mp4"
    assert asset_key("/data/my videos/ada.mp4") is None
    assert asset_key("s3://bucket/100%/ada.mp4") is None
    assert asset_key("s3://bucket/" + "a" * 600 + ".mp4") is None


async def test_a_video_whose_uri_is_no_asset_key_still_succeeds(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "my videos"
    with caplog.at_level(logging.WARNING, logger="prefect_runcomfy.events"):
        manifest = await generate_talking_videos(rows(sb, n=1), str(out), creds(sb), **FAST)
    assert manifest["status"].tolist() == ["succeeded"]
    assert "not reported as an asset" in caplog.text
    events = await events_under(f"runcomfy.row.{out}", names=["runcomfy.row."], expect=1)
    assert events[0].payload["video_uri"] == manifest["video_uri"].iloc[0]


# -- the crash hook --------------------------------------------------------------------------


async def queued_request_in_ledger(sb: Sandbox, out: Path, flow_run_id: uuid.UUID) -> str:
    """A request that stays queued (no worker is free), recorded as this run's."""
    sb.set(workers=1, run_seconds=30.0)
    with httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.token}"}
    ) as client:
        submit(client, sb.base_url)  # keeps the only worker busy
        request_id = submit(client, sb.base_url)
    ledger = Ledger(OutputStore(str(out)))
    ledger.mark_submitting("row1", "0" * 64, flow_run_id=str(flow_run_id))
    ledger.mark_submitted("row1", request_id)
    return request_id


def stopped_run(parameters: dict[str, Any]) -> FlowRun:
    """The flow run as the hook receives it: parameters as Prefect stored them."""
    stored = generate_talking_videos.serialize_parameters(parameters)
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), parameters=stored)


async def test_the_crash_hook_says_it_cannot_cancel_with_an_unsaved_block(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    run = stopped_run({"inputs": "rows.csv", "output_uri": str(out), "credentials": creds(sb)})
    assert run.parameters["credentials"]["api_token"] == "**********"
    request_id = await queued_request_in_ledger(sb, out, run.id)
    with caplog.at_level(logging.WARNING, logger="prefect_runcomfy.flows"):
        await _cancel_queued_on_stop(generate_talking_videos, run, Crashed())
    assert "unsaved RunComfyCredentials block" in caplog.text
    assert request_id in caplog.text
    assert f"prefect-runcomfy collect {out} --cancel" in caplog.text
    assert "RUNCOMFY_API_TOKEN" in caplog.text
    assert sb.stats()["cancels"] == 0
    assert sb.token not in caplog.text


async def test_the_crash_hook_cancels_with_a_saved_block(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await creds(sb).save("crash-hook-test", overwrite=True)
    run = stopped_run(
        {"inputs": "rows.csv", "output_uri": str(out), "credentials": "crash-hook-test"}
    )
    request_id = await queued_request_in_ledger(sb, out, run.id)
    await _cancel_queued_on_stop(generate_talking_videos, run, Crashed())
    entry = Ledger(OutputStore(str(out))).load_all()["row1"]
    assert entry.state is LedgerState.CANCELLED
    assert entry.request_id == request_id


# -- a failed run says it once ---------------------------------------------------------------


async def flow_run_logs(flow_run_id: uuid.UUID, *, until: str) -> list[str]:
    """The messages Prefect's API holds for a flow run (its task runs' too), once one of
    them contains `until` (log lines reach the server in batches, a moment later)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    deadline = time.monotonic() + 30
    messages: list[str] = []
    async with get_client() as client:
        while time.monotonic() < deadline:
            logs = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
            )
            messages = [log.message for log in logs]
            if any(until in m for m in messages):
                return messages
            await asyncio.sleep(0.5)
    return messages


def test_a_failed_run_says_why_once_without_tracebacks(sb: Sandbox, tmp_path: Path) -> None:
    """4 rows, 2 failing, run as the subflow of a sync parent that lets the error through:
    the verdict (reason and counts) is each run's state message, no log line of either run
    holds a traceback, and the error with its manifest reaches the caller."""
    out = tmp_path / "out"
    ids: dict[str, uuid.UUID] = {}

    @flow
    def nightly() -> None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        ids["parent"] = context.flow_run.id
        generate_talking_videos(rows(sb, failing=(1, 2), n=4), str(out), creds(sb), **FAST)

    with pytest.raises(RowsNeedAttentionError) as raised:
        nightly()
    assert raised.value.manifest["status"].tolist() == [
        "succeeded",
        "failed",
        "failed",
        "succeeded",
    ]

    async def read() -> tuple[Any, Any, list[str], list[str]]:
        async with get_client() as client:
            parent = await client.read_flow_run(ids["parent"])
            [child] = await client.read_flow_runs(flow_run_filter=_children_of(parent.id), limit=5)
        verdict = "2 of 4 rows need attention (2 succeeded, 2 failed)"
        return (
            parent,
            child,
            await flow_run_logs(parent.id, until="Finished in state"),
            await flow_run_logs(child.id, until=verdict),
        )

    parent, child, parent_logs, child_logs = asyncio.run(read())
    verdict = "2 of 4 rows need attention (2 succeeded, 2 failed)"
    assert child.state.is_failed() and verdict in child.state.message
    assert parent.state.is_failed() and verdict in parent.state.message
    for messages in (parent_logs, child_logs):
        assert not [m for m in messages if "Traceback" in m], messages
    said = [m for m in child_logs if verdict in m]
    assert len(said) == 1 and said[0].startswith("Finished in state Failed"), said
    # each failed row's task run: one line for its failure, no "NoneType: None"
    failed_rows = [m for m in child_logs if "ended failed" in m]
    assert len(failed_rows) == 2, failed_rows
    assert not [m for m in child_logs if "NoneType: None" in m]


def _children_of(parent_id: uuid.UUID) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))


async def test_a_python_run_names_python_hints(sb: Sandbox, tmp_path: Path) -> None:
    """A row that failed in an earlier run says how to retry it in Python words."""
    out = tmp_path / "out"
    table = rows(sb, failing=(0,), n=2)
    for _ in range(2):
        with pytest.raises(RowsNeedAttentionError) as raised:
            await generate_talking_videos(table, str(out), creds(sb), **FAST)
    failed = raised.value.manifest.set_index("id").loc["v0"]
    assert "spending=Spending(retry_failed=True)" in failed["note"]
    assert "--retry-failed" not in failed["note"] + failed["error"]
