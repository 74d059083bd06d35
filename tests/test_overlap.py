"""Overlapping runs never pay twice: a row is claimed on the output's storage before its POST.

Real parts: flows in separate processes (tests/flow_runner.py) against the sandbox over HTTP and
the session's Prefect API, a local folder and moto's S3 server on loopback. The only stand-in
is a filesystem that ignores exclusive create (no real backend here does; see the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from sandbox_helpers import manifest_of
from test_flow import FAST, creds, rows

from prefect_runcomfy import Concurrency, generate_talking_videos
from prefect_runcomfy.engine.claims.claim import OWNERS_DIR, OwnerLease, RowClaims, Taken
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.exceptions import ConfigurationError
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("prefect_api")

RUNNER = Path(__file__).with_name("flow_runner.py")


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def _start(sb: Sandbox, tmp_path: Path, name: str, **args: Any) -> subprocess.Popen[str]:
    from prefect.settings import get_current_settings

    spec = tmp_path / f"{name}.json"
    given = {"token": sb.token, "base_url": sb.base_url, **FAST, **args}
    spec.write_text(json.dumps(given, default=lambda section: section.model_dump()))
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


LOGS: list[str] = []
"""The runs' log lines that say what they did with rows (shown when a test fails)."""


async def _manifest(proc: subprocess.Popen[str], timeout: float = 180.0) -> list[dict[str, Any]]:
    out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    keep = os.environ.get("OVERLAP_KEEP")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        Path(keep, f"{proc.pid}.err").write_text(err)
        Path(keep, f"{proc.pid}.out").write_text(out)
    assert proc.returncode == 0, err[-3000:]
    LOGS.extend(f"{proc.pid}: {line}" for line in err.splitlines() if " - r" in line)
    return list(json.loads(out.strip().splitlines()[-1]))


def _paid_once(sb: Sandbox, rows_total: int) -> None:
    stats = sb.stats()
    detail = "\n".join([str(stats["submits_by_payload"]), *LOGS[-200:]])
    assert stats["submits_accepted"] == rows_total, detail
    assert max(stats["submits_by_payload"].values()) == 1, detail


async def _two_runs(
    sb: Sandbox, tmp_path: Path, apart_s: float, **args: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    first = _start(sb, tmp_path, "first", **args)
    await asyncio.sleep(apart_s)
    second = _start(sb, tmp_path, "second", **args)
    return await _manifest(first), await _manifest(second)


def _paid_by(manifest: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in manifest if r["submitted_by_this_run"]}


@pytest.mark.parametrize("apart_s", [0.0, 2.0], ids=["together", "2s-apart"])
async def test_two_processes_on_one_table_into_one_folder_pay_once(
    sb: Sandbox, tmp_path: Path, apart_s: float
) -> None:
    sb.set(workers=4, run_seconds=1.5)
    out = tmp_path / "out"
    first, second = await _two_runs(
        sb, tmp_path, apart_s, inputs=rows(sb, 20), output_uri=str(out), max_concurrency=4
    )
    _paid_once(sb, 20)
    # Each run reports every row stored: its own, and those the other run paid for.
    assert [r["status"] for r in first] == ["succeeded"] * 20
    assert [r["status"] for r in second] == ["succeeded"] * 20
    assert not _paid_by(first) & _paid_by(second)
    assert _paid_by(first) | _paid_by(second) == {f"r{i}" for i in range(20)}
    for i in range(20):
        sidecar = json.loads((out / f"r{i}.json").read_text())
        ledger = json.loads((out / "_ledger" / f"r{i}.json").read_text())
        assert sidecar["request_id"] == ledger["request_id"]


async def test_two_processes_into_one_s3_prefix_pay_once(
    sb: Sandbox, tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    """Once paid one row in six runs twice: s3fs answered the second run's ledger reads from
    a listing cached before the first run wrote them (fixed in `OutputStore._fresh`).
    `OVERLAP_KEEP=DIR` keeps both runs' logs and the ledger and claim objects for a look."""
    sb.set(workers=4, run_seconds=1.5)
    first, second = await _two_runs(
        sb,
        tmp_path,
        0.0,
        inputs=rows(sb, 12),
        output_uri=f"s3://{s3_bucket}/videos",
        storage_options=s3_server.storage_options,
        max_concurrency=4,
    )
    keep = os.environ.get("OVERLAP_KEEP")
    if keep:
        fs = fsspec.filesystem("s3", **s3_server.storage_options)
        for path in fs.find(f"{s3_bucket}/videos"):
            if "/_ledger/" in path or "/_claims/" in path or path.endswith(".csv"):
                Path(keep, path.replace("/", "__")).write_bytes(fs.cat(path))
        Path(keep, "stats.json").write_text(json.dumps(sb.stats(), default=str))
    _paid_once(sb, 12)
    assert {r["status"] for r in first + second} == {"succeeded"}
    assert not _paid_by(first) & _paid_by(second)


async def test_two_tables_sharing_ids_pay_once_and_never_overwrite(
    sb: Sandbox, tmp_path: Path
) -> None:
    """Tables A (r0-r11) and B (r6-r17, other prompts) into one folder while both run: each
    id is paid once, and the files of an id belong to the run that paid for it.

    B starts once A has claimed its first row, and a long row of A's own keeps A alive while
    B works, however slowly either starts on a loaded machine: runs that do not overlap are
    not this case (a table run *after* another one ended is the user changing those rows,
    and pays for them, as documented)."""
    sb.set(workers=4, run_seconds=3.0)
    out = tmp_path / "out"
    long_row = {**rows(sb, 1)[0], "id": "a-long", "prompt": "keeps A alive [sandbox:run=20]"}
    table_a = [long_row, *rows(sb, 12)]
    table_b = [{**r, "prompt": f"table B {r['prompt']}"} for r in rows(sb, 18)][6:]

    def run(table: list[dict[str, Any]]) -> Any:
        return manifest_of(
            generate_talking_videos(table, str(out), creds(sb), max_concurrency=4, **FAST)
        )

    first = asyncio.create_task(run(table_a))
    claims = out / "_claims"
    while not (claims.exists() and any(p.name[0].isalnum() for p in claims.iterdir())):
        assert not first.done(), "A ended before it claimed a row"
        await asyncio.sleep(0.1)
    manifests = [await run(table_b), await first]
    manifest_b, manifest_a = (m.to_dict(orient="records") for m in manifests)
    assert sb.stats()["submits_accepted"] == 19  # a-long and r0-r17, each once
    by_id = {r["id"]: r for r in manifest_a}
    for other in manifest_b:
        if other["id"] not in by_id:
            assert other["status"] == "succeeded"
            continue
        mine = by_id[other["id"]]
        paid = [m for m in (mine, other) if m["submitted_by_this_run"]]
        assert len(paid) == 1, (mine, other)
        loser = other if paid[0] is mine else mine
        assert loser["status"] == "failed" and "did not" in loser["error"], loser
        sidecar = json.loads((out / f"{other['id']}.json").read_text())
        assert sidecar["request_id"] == paid[0]["request_id"]


# --- a claim whose owner is gone, or alive elsewhere --------------------------------------------


def _foreign_claim(
    store: OutputStore, row_id: str, *, renewed_s_ago: float, lease_s: float
) -> None:
    """Write what a run on another machine leaves: its claim 1 on `row_id` and its lease,
    last renewed `renewed_s_ago` seconds ago (it was killed, or still runs)."""
    from datetime import UTC, datetime, timedelta

    lease = OwnerLease(store, flow_run_id=None, lease_s=lease_s)
    lease.record = lease.record.model_copy(update={"host": "another-machine", "pid": 1})
    payload = Ledger(store).get(row_id).payload_sha256  # type: ignore[union-attr]
    assert isinstance(RowClaims(store, lease).take(row_id, 0, payload or ""), Taken)
    when = (datetime.now(UTC) - timedelta(seconds=renewed_s_ago)).isoformat()
    record = lease.record.model_copy(update={"renewed_at": when})
    store.write_json(f"{OWNERS_DIR}/{record.token}.json", record.model_dump(mode="json"))


async def _submitted_elsewhere(sb: Sandbox, tmp_path: Path, row: dict[str, Any]) -> str:
    """A job of `row` that another run submitted under claim 1 and is waiting for: a real
    request at the sandbox (made through a scratch folder), in the ledger as `submitted`."""
    scratch = OutputStore(str(tmp_path / "scratch"))
    await generate_talking_videos([row], scratch.uri(""), creds(sb), **FAST)
    done = Ledger(scratch).get(row["id"])
    assert done is not None and done.request_id and done.payload_sha256
    ledger = Ledger(OutputStore(str(tmp_path / "out")))
    ledger.hold(row["id"], 1)
    ledger.mark_submitting(row["id"], done.payload_sha256)
    ledger.mark_submitted(row["id"], done.request_id)
    return done.request_id


async def test_a_claim_whose_lease_lapsed_is_taken_over_and_collected_without_a_post(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OutputStore(str(tmp_path / "out"))
    row = rows(sb, 1)[0]
    request_id = await _submitted_elsewhere(sb, tmp_path, row)
    _foreign_claim(store, row["id"], renewed_s_ago=30.0, lease_s=5.0)  # lapsed long ago
    before = sb.stats()["submits_accepted"]
    manifest = await generate_talking_videos([row], str(tmp_path / "out"), creds(sb), **FAST)
    assert sb.stats()["submits_accepted"] == before, "taken over without a new POST"
    assert manifest["status"][0] == "succeeded"
    assert manifest["request_id"][0] == request_id
    assert Ledger(store).get(row["id"]).claim == 2  # type: ignore[union-attr]


async def test_a_claim_whose_owner_is_alive_elsewhere_is_never_taken_over(
    sb: Sandbox, tmp_path: Path
) -> None:
    store = OutputStore(str(tmp_path / "out"))
    row = rows(sb, 1)[0]
    await _submitted_elsewhere(sb, tmp_path, row)
    _foreign_claim(store, row["id"], renewed_s_ago=0.0, lease_s=300.0)
    before = sb.stats()["submits_accepted"]
    manifest = await manifest_of(
        generate_talking_videos([row], str(tmp_path / "out"), creds(sb), max_wait_s=1.0, **FAST)
    )
    assert sb.stats()["submits_accepted"] == before
    assert manifest["status"][0] == "timed_out"
    assert "still worked on by" in manifest["error"][0]
    assert not (tmp_path / "out" / f"{row['id']}.mp4").exists()


# --- storage that cannot create exclusively -----------------------------------------------------


class IgnoresExclusiveCreate(MemoryFileSystem):
    """A stand-in: an fsspec backend that silently overwrites on `mode="xb"`. Every backend
    installed here honours it (local, memory, s3fs on moto), so the failure is made here."""

    protocol = "ignores-xb"

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        return super()._open(path, mode.replace("x", "w"), *args, **kwargs)


class RefusesExclusiveCreate(MemoryFileSystem):
    """A stand-in: an fsspec backend without `mode="xb"` at all."""

    protocol = "refuses-xb"

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "x" in mode:
            raise NotImplementedError("mode 'xb' is not supported")
        return super()._open(path, mode, *args, **kwargs)


@pytest.mark.parametrize("backend", [IgnoresExclusiveCreate, RefusesExclusiveCreate])
async def test_storage_without_exclusive_create_is_refused_unless_single_writer(
    sb: Sandbox, backend: type[MemoryFileSystem]
) -> None:
    fsspec.register_implementation(str(backend.protocol), backend, clobber=True)
    out = f"{backend.protocol}://bucket/out"
    assert OutputStore(out).supports_exclusive_create() is not None
    with pytest.raises(ConfigurationError, match="single_writer=True"):
        await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert sb.stats()["submits_accepted"] == 0
    manifest = await generate_talking_videos(
        rows(sb, 2), out, creds(sb), concurrency=Concurrency(single_writer=True), **FAST
    )
    assert list(manifest["status"]) == ["succeeded"] * 2


def test_local_memory_and_s3_storage_create_exclusively(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    for uri, options in (
        (str(tmp_path / "out"), None),
        ("memory://claims-test/out", None),
        (f"s3://{s3_bucket}/out", s3_server.storage_options),
    ):
        store = OutputStore(uri, options)
        assert store.supports_exclusive_create() is None, uri
        assert store.create_exclusive("_claims/a/1.json", b"one")
        assert not store.create_exclusive("_claims/a/1.json", b"two")
        assert store.read_bytes("_claims/a/1.json") == b"one"
        assert store.list("_claims/") == ["_claims/a/1.json"], "the probe left nothing"


async def test_collect_leaves_a_request_a_live_run_waits_for_to_it(
    sb: Sandbox, tmp_path: Path
) -> None:
    from prefect_runcomfy import collect_outstanding_requests

    store = OutputStore(str(tmp_path / "out"))
    row = rows(sb, 1)[0]
    await _submitted_elsewhere(sb, tmp_path, row)
    _foreign_claim(store, row["id"], renewed_s_ago=0.0, lease_s=300.0)
    manifest = await collect_outstanding_requests(str(tmp_path / "out"), creds(sb))
    assert manifest.empty
    assert not (tmp_path / "out" / f"{row['id']}.mp4").exists()


def _submitting_elsewhere(store: OutputStore, row: dict[str, Any]) -> None:
    """The ledger as another run leaves it the moment before its POST: `submitting`, claim 1."""
    import pandas as pd

    from prefect_runcomfy.engine.inputs.table import check_table

    fingerprint = check_table(pd.DataFrame([row]), INFINITE_TALK).valid[0].fingerprint
    ledger = Ledger(store)
    ledger.hold(row["id"], 1)
    ledger.mark_submitting(row["id"], fingerprint)


@pytest.mark.parametrize("owner_alive", [True, False], ids=["owner-alive", "owner-gone"])
async def test_a_submit_in_progress_elsewhere_is_followed_not_reported_unknown(
    sb: Sandbox, tmp_path: Path, owner_alive: bool
) -> None:
    """`submitting` with no answer yet: another live run may be POSTing this instant, so the
    row is followed; only once that run is gone is it `outcome_unknown`, and never paid."""
    store = OutputStore(str(tmp_path / "out"))
    row = rows(sb, 1)[0]
    _submitting_elsewhere(store, row)
    lease_s = 300.0 if owner_alive else 5.0
    _foreign_claim(store, row["id"], renewed_s_ago=0.0 if owner_alive else 30.0, lease_s=lease_s)
    manifest = await manifest_of(
        generate_talking_videos([row], str(tmp_path / "out"), creds(sb), max_wait_s=1.0, **FAST)
    )
    assert sb.stats()["submits_accepted"] == 0
    if owner_alive:
        assert manifest["status"][0] == "timed_out"
        assert "still worked on by" in manifest["error"][0]
    else:
        assert manifest["status"][0] == "outcome_unknown"
