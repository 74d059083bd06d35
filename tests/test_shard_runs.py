"""A sharded parent's shard runs on a real Prefect API without workers: found again rather
than duplicated, a new attempt once the last one ended, a silent run taken as dead, cancelled
with the parent, a dead shard's rows read from the ledger. (With real workers and a killed
one: tests/test_deployments.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.states import Completed, Pending, Running

from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.engine.plan.planning import prepare
from prefect_runcomfy.engine.record.status import LedgerState
from prefect_runcomfy.engine.shards.heartbeat import Heartbeat
from prefect_runcomfy.engine.shards.runs import (
    ShardRun,
    ShardWatch,
    cancel_recorded,
    idempotency_key,
    parents_record,
    shard_outcomes,
    start_shards,
)
from prefect_runcomfy.engine.shards.split import ShardFiles, ShardSpec, plan_shards
from prefect_runcomfy.models import INFINITE_TALK

pytestmark = pytest.mark.usefixtures("prefect_api")

DEPLOYMENT = "generate-talking-videos/shard-unit"


@pytest.fixture
async def deployment() -> Any:
    """A `shard` deployment on no work pool: its runs wait, Scheduled, for nobody."""
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("generate-talking-videos")
        return await client.create_deployment(
            flow_id, "shard-unit", entrypoint="prefect_runcomfy.flows:generate_talking_videos"
        )


def table(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"u{i}", "prompt": "talks", "image": "https://x/a.png", "audio": "https://x/a.wav"}
        for i in range(n)
    ]


async def specs_of(store: OutputStore, n: int, shard_size: int = 2) -> list[ShardSpec]:
    prepared = await prepare(table(n), INFINITE_TALK, storage_options=None)
    return plan_shards(
        store.uri(), prepared.valid, prepared.frame, shard_size, base_dir=None, model=INFINITE_TALK
    )


def parameters(store: OutputStore) -> Any:
    def of(files: ShardFiles) -> dict[str, Any]:
        return {
            "inputs": store.uri(files.rows),
            "output_uri": store.uri(),
            "shard": {"manifest_name": files.manifest, "heartbeat_name": files.heartbeat},
        }

    return of


async def start(store: OutputStore, specs: list[ShardSpec]) -> list[ShardRun]:
    @flow(name="shard-starter")
    async def starter() -> list[ShardRun]:
        return await start_shards(store, DEPLOYMENT, specs, parameters(store))

    return await starter()


async def set_state(flow_run_id: Any, state: Any) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, state, force=True)


async def test_a_shard_run_under_way_is_found_again_and_an_ended_one_gets_a_new_attempt(
    deployment: Any, tmp_path: Path
) -> None:
    store = OutputStore(str(tmp_path / "out"))
    specs = await specs_of(store, 3)
    first = await start(store, specs)
    assert [(r.attempt, r.found) for r in first] == [(0, False), (0, False)]
    assert all((tmp_path / "out" / r.files.rows).exists() for r in first)

    again = await start(store, specs)  # a re-run while they wait for a worker
    assert [r.flow_run_id for r in again] == [r.flow_run_id for r in first]
    assert all(r.found for r in again)

    await set_state(first[0].flow_run_id, Completed())
    later = await start(store, specs)  # tomorrow night: shard 0's run ended, shard 1's did not
    assert later[0].attempt == 1 and later[0].flow_run_id != first[0].flow_run_id
    assert later[1].flow_run_id == first[1].flow_run_id
    async with get_client() as client:
        run = await client.read_flow_run(later[0].flow_run_id)
    assert run.idempotency_key == idempotency_key(specs[0], 1)
    assert (
        run.parameters["shard"]["manifest_name"] == specs[0].files(1).manifest
    )  # its own manifest

    # two parents of a new output starting at once get one run per shard between them
    other = OutputStore(str(tmp_path / "other"))
    other_specs = await specs_of(other, 2)
    a, b = await asyncio.gather(start(other, other_specs), start(other, other_specs))
    assert a[0].flow_run_id == b[0].flow_run_id
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
        )
    assert len([r for r in runs if r.parameters["output_uri"] == other.uri()]) == 1


async def test_a_silent_running_shard_is_taken_as_dead_a_beating_one_is_not(
    deployment: Any, tmp_path: Path
) -> None:
    store = OutputStore(str(tmp_path / "out"))
    silent, beating, starting = await start(store, await specs_of(store, 6))
    await set_state(silent.flow_run_id, Running())
    await set_state(beating.flow_run_id, Running())
    await set_state(starting.flow_run_id, Pending())  # its process may take a while to start
    watch = ShardWatch(store, [silent, beating, starting], poll_s=0.2, stale_after_s=1.5)

    @flow(name="shard-watcher")
    async def watcher() -> float:
        began = time.monotonic()
        with Heartbeat(store, beating.files.heartbeat, 0.2):
            waiting = asyncio.create_task(watch.until_ended())
            for _ in range(100):
                if silent.dead is not None:
                    break
                await asyncio.sleep(0.1)
            taken = time.monotonic() - began
            assert beating.dead is None and starting.dead is None
            await asyncio.sleep(1.0)  # still beating: still alive
            assert beating.dead is None
            await set_state(beating.flow_run_id, Completed())
            await set_state(starting.flow_run_id, Completed())
            await asyncio.wait_for(waiting, 10)
        return taken

    taken = await watcher()
    assert 1.5 <= taken < 5
    assert "no sign of life" in (silent.dead or "")
    async with get_client() as client:
        state = (await client.read_flow_run(silent.flow_run_id)).state
    assert state is not None and state.is_crashed()
    assert "Taken as dead" in (state.message or "")
    assert beating.state is not None and beating.state.is_completed()


async def test_cancelling_the_parent_cancels_its_shard_runs(
    deployment: Any, tmp_path: Path
) -> None:
    from prefect_runcomfy import generate_talking_videos_sharded

    out = tmp_path / "out"
    parent = asyncio.create_task(
        generate_talking_videos_sharded(table(3), str(out), deployment=DEPLOYMENT, shard_size=2)
    )
    records = out / "_shards" / "parents"
    for _ in range(300):  # the parent wrote down its shard runs: it is waiting for them
        if records.exists() and list(records.iterdir()):
            break
        await asyncio.sleep(0.1)
    parent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parent
    record = pd.read_json(next(records.iterdir()), typ="series")
    async with get_client() as client:
        for flow_run_id in record["shard_flow_run_ids"]:
            state = (await client.read_flow_run(flow_run_id)).state
            assert state is not None and state.is_cancelled()  # not started: cancelled at once


async def test_the_cancellation_hook_cancels_the_runs_the_parent_wrote_down(
    deployment: Any, tmp_path: Path
) -> None:
    store = OutputStore(str(tmp_path / "out"))
    runs = await start(store, await specs_of(store, 2))
    store.write_json(
        parents_record("parent-1"), {"shard_flow_run_ids": [str(r.flow_run_id) for r in runs]}
    )
    assert await cancel_recorded(store, "parent-1") == [r.flow_run_id for r in runs]


def test_a_dead_shards_rows_are_read_from_the_ledger(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    ledger = Ledger(store)
    ledger.mark_submitting("stored", "sha")
    ledger.mark_submitted("stored", "req-1")
    ledger.mark("stored", LedgerState.STORED)
    store.write_json("stored.json", {"status": "succeeded", "request_id": "req-1"})
    ledger.mark_submitting("paid", "sha")
    ledger.mark_submitted("paid", "req-2")
    ledger.mark_submitting("sending", "sha")
    frame = pd.DataFrame({"id": ["stored", "paid", "sending", "untouched"]})
    spec = ShardSpec(0, "k" * 16, tuple(frame["id"]), frame)
    run = ShardRun(spec, 0, flow_run_id=uuid.uuid4(), found=False, dead="no sign of life for 61 s")

    outcomes = asyncio.run(shard_outcomes(store, run, "s3://bucket/out", INFINITE_TALK))
    by_id = {o.id: o for o in outcomes}
    assert [str(by_id[i].status) for i in frame["id"]] == [
        "succeeded",
        "timed_out",
        "outcome_unknown",
        "failed",
    ]
    assert "req-2 is paid" in (by_id["paid"].error or "")
    assert "prefect-runcomfy collect s3://bucket/out" in (by_id["paid"].error or "")
    assert "not submitted" in (by_id["untouched"].error or "")
    assert "no sign of life for 61 s" in (by_id["untouched"].error or "")
