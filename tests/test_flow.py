"""generate_talking_videos against a real Prefect API, the sandbox over HTTP, and moto's S3."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from sandbox_helpers import manifest_of

from prefect_runcomfy import (
    Concurrency,
    MediaOptions,
    RunComfyCredentials,
    Spending,
    Waiting,
    generate_talking_videos,
)
from prefect_runcomfy.engine.outputs.store import TEMP_PREFIX, OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.exceptions import (
    ConfigurationError,
    CostLimitError,
    InvalidInputError,
    StorageError,
    SubmitLimitError,
)
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = pytest.mark.usefixtures("prefect_api")

# These tests check each row's status; the run's own verdict is tested in
# tests/test_run_outcome.py, so failed rows are tolerated here.
FAST = {
    "waiting": Waiting(poll_initial_s=0.1, poll_max_s=0.5),
    "spending": Spending(allow_failed_rows=True),
}


def fast(**spending: Any) -> dict[str, Any]:
    """`FAST` with more of the `spending` section set (`max_submits=2`, ...)."""
    return {**FAST, "spending": Spending(allow_failed_rows=True, **spending)}


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def creds(sb: Sandbox, token: str | None = None) -> RunComfyCredentials:
    return RunComfyCredentials(api_token=token or sb.token, base_url=sb.base_url, max_retries=3)


def rows(sb: Sandbox, n: int = 3, **extra: Any) -> list[dict[str, Any]]:
    samples = sample_inputs(sb.base_url)
    out = []
    for i in range(n):
        row = dict(samples[i % len(samples)])
        row["id"] = f"r{i}"
        row["prompt"] = f"{row['prompt']} #{i}"
        row["customer"] = f"cust-{i}"  # a user column, carried through
        row.update(extra)
        out.append(row)
    return out


def assert_one_submit_per_payload(sb: Sandbox) -> None:
    counts = sb.stats()["submits_by_payload"]
    assert counts and max(counts.values()) == 1, counts


# --- happy paths ------------------------------------------------------------------------------


async def test_local_folder_gets_videos_sidecars_and_manifest(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "videos"
    manifest = await generate_talking_videos(rows(sb, 3), str(out), creds(sb), **FAST)
    assert list(manifest["status"]) == ["succeeded"] * 3
    assert list(manifest["id"]) == ["r0", "r1", "r2"]
    assert list(manifest["customer"]) == ["cust-0", "cust-1", "cust-2"]
    for column in ("id", "status", "request_id", "video_uri", "metadata_uri", "error"):
        assert column in manifest.columns
    for record in manifest.to_dict(orient="records"):
        video = Path(record["video_uri"])
        assert video == out / f"{record['id']}.mp4" and video.stat().st_size > 1000
        sidecar = json.loads(Path(record["metadata_uri"]).read_text())
        assert sidecar["request_id"] == record["request_id"]
        assert sidecar["status"] == "succeeded"
        assert sidecar["files"][0]["sha256"] == record["sha256"]
        assert sidecar["files"][0]["size"] == video.stat().st_size
        assert sidecar["files"][0]["video"]["width"] == 480
        assert sidecar["inputs"]["241_positive_prompt"] == record["prompt"]
        # queue/run are observed by polling (a short job may be missed running); total is not
        assert {"queue_seconds", "run_seconds"} <= set(sidecar)
        assert 0 < sidecar["total_seconds"] < 60
        assert sidecar["cost_usd"] > 0
    stored = pd.read_parquet(out / "manifest.parquet")
    assert list(stored["id"]) == ["r0", "r1", "r2"]
    page = (out / "index.html").read_text()
    assert manifest.attrs["review_page"] == str(out / "index.html")
    for row_id in ("r0", "r1", "r2"):
        assert (out / f"{row_id}.poster.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG
        assert f'src="{row_id}.mp4"' in page
    assert not list(out.glob(".*")), "no temporary files left behind"
    assert_one_submit_per_payload(sb)


async def test_memory_filesystem(sb: Sandbox) -> None:
    manifest = await generate_talking_videos(
        rows(sb, 2), "memory://flow-test/out", creds(sb), **FAST
    )
    assert set(manifest["status"]) == {"succeeded"}
    fs = fsspec.filesystem("memory")
    assert fs.exists("/flow-test/out/r0.mp4") and fs.exists("/flow-test/out/manifest.parquet")


async def test_s3_output(sb: Sandbox, s3_server: Any, s3_bucket: str) -> None:
    options = s3_server.storage_options
    uri = f"s3://{s3_bucket}/nightly"
    manifest = await generate_talking_videos(
        rows(sb, 2), uri, creds(sb), storage_options=options, **FAST
    )
    assert set(manifest["status"]) == {"succeeded"}
    fs = fsspec.filesystem("s3", **options)
    assert fs.size(f"{s3_bucket}/nightly/r0.mp4") == manifest.loc[0, "size_bytes"]
    assert fs.exists(f"{s3_bucket}/nightly/r1.json")
    assert fs.exists(f"{s3_bucket}/nightly/manifest.parquet")
    assert manifest.loc[0, "video_uri"] == f"s3://{s3_bucket}/nightly/r0.mp4"


async def test_inputs_from_a_csv_file_and_derived_ids(sb: Sandbox, tmp_path: Path) -> None:
    table = pd.DataFrame(rows(sb, 2)).drop(columns=["id"])
    path = tmp_path / "rows.csv"
    table.to_csv(path, index=False)
    manifest = await generate_talking_videos(str(path), str(tmp_path / "out"), creds(sb), **FAST)
    assert set(manifest["status"]) == {"succeeded"}
    assert all(i.startswith("row-") for i in manifest["id"])
    again = await generate_talking_videos(str(path), str(tmp_path / "out"), creds(sb), **FAST)
    assert list(again["id"]) == list(manifest["id"]), "derived ids are stable across runs"
    assert sb.stats()["submits_accepted"] == 2


# --- bad input ----------------------------------------------------------------------------------


async def test_mixed_valid_and_invalid_rows(sb: Sandbox, tmp_path: Path) -> None:
    table = rows(sb, 2)
    table.append({**table[0], "id": "bad-steps", "steps": 99})
    table.append({**table[0], "id": "../escape"})
    table.append({k: v for k, v in table[1].items() if k != "audio"} | {"id": "no-audio"})
    table.append({**table[0], "id": "bad-media", "image": "ftp://example.test/x.png"})
    out = tmp_path / "out"
    manifest = await generate_talking_videos(table, str(out), creds(sb), **FAST)
    by_id = manifest.set_index("row")
    assert list(manifest["status"]) == [
        "succeeded",
        "succeeded",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
    ]
    assert "steps" in by_id.loc[2, "error"] and "99" in by_id.loc[2, "error"]
    assert "row 2" in by_id.loc[2, "error"]
    assert "id:" in by_id.loc[3, "error"] and "cannot name a file" in by_id.loc[3, "error"]
    assert "audio: is required" in by_id.loc[4, "error"]
    assert "image:" in by_id.loc[5, "error"]
    assert sb.stats()["submits_accepted"] == 2, "nothing was submitted for invalid rows"
    assert not (tmp_path / "escape.mp4").exists()


async def test_ids_no_disk_could_hold_are_invalid_before_anything_is_paid(
    sb: Sandbox, tmp_path: Path
) -> None:
    # `com1` passed validation and was refused at store time, as `failed` with a traceback.
    table = rows(sb, 1)
    for i, bad in enumerate(["com1", "LPT9.mp4", "name.", "a..b", "nul"]):
        table.append({**table[0], "id": bad, "prompt": f"talks {i}"})
    manifest = await generate_talking_videos(table, str(tmp_path / "o"), creds(sb), **FAST)
    assert list(manifest["status"]) == ["succeeded"] + ["invalid"] * 5
    for error in manifest["error"][1:]:
        assert "cannot name a file" in error
    assert sb.stats()["submits_accepted"] == 1
    assert sorted(Ledger(OutputStore(str(tmp_path / "o"))).load_all()) == ["r0"]


async def test_stop_on_invalid_submits_nothing(sb: Sandbox, tmp_path: Path) -> None:
    table = rows(sb, 2)
    table.append({**table[0], "id": "bad", "frames": 100})
    with pytest.raises(InvalidInputError, match=r"row 2 \(id 'bad'\): frames"):
        await generate_talking_videos(
            table, str(tmp_path / "o"), creds(sb), media=MediaOptions(on_invalid="stop"), **FAST
        )
    assert sb.stats()["submits_accepted"] == 0


async def test_max_submits_refuses_a_run_that_would_pay_for_more_rows(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = str(tmp_path / "o")
    with pytest.raises(
        SubmitLimitError, match=r"would submit 3 new jobs, more than max_submits=2"
    ) as caught:
        await generate_talking_videos(rows(sb, 3), out, creds(sb), **fast(max_submits=2))
    assert (caught.value.would_submit, caught.value.limit) == (3, 2)
    assert "r0, r1, r2" in str(caught.value)
    assert sb.stats()["submits_accepted"] == 0
    assert Ledger(OutputStore(out)).load_all() == {}, "nothing was even marked as submitting"

    # Rows already stored (or collected) do not count: 2 stored + 2 new rows fit under 2.
    await generate_talking_videos(rows(sb, 2), out, creds(sb), **fast(max_submits=2))
    manifest = await generate_talking_videos(rows(sb, 4), out, creds(sb), **fast(max_submits=2))
    assert list(manifest["status"]) == ["succeeded"] * 4
    assert sb.stats()["submits_accepted"] == 4
    # 0 allows a run that only skips and collects
    again = await generate_talking_videos(rows(sb, 4), out, creds(sb), **fast(max_submits=0))
    assert all("already stored" in n for n in again["note"])
    with pytest.raises(ConfigurationError, match="max_submits must be 0 or more"):
        await generate_talking_videos(rows(sb, 1), out, creds(sb), **fast(max_submits=-1))
    assert sb.stats()["submits_accepted"] == 4


async def test_a_run_refused_by_its_budget_has_no_task_run_and_leaves_no_row_behind(
    sb: Sandbox, tmp_path: Path
) -> None:
    """Every row planned, then the whole run refused by `max_submits=0`: no POST, no task
    run, and none of its rows left in memory. Prefect keeps a failed run's exception after
    the run (and here `state` holds it): its traceback must not hold the run's plan."""
    import gc

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from prefect_runcomfy.engine.inputs.table import PreparedRow

    table = [{**row, "id": f"refused-{row['id']}"} for row in rows(sb, 5)]
    state = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), return_state=True, **fast(max_submits=0)
    )
    assert state.is_failed() and "more than max_submits=0" in str(state.message)
    assert sb.stats()["submits_accepted"] == 0
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert task_runs == []
    gc.collect()
    left = [o.id for o in gc.get_objects() if isinstance(o, PreparedRow)]
    assert not [i for i in left if i.startswith("refused-")], left


async def test_the_cost_is_estimated_from_the_catalog_before_paying(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = str(tmp_path / "o")
    manifest = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    # 125 frames at 25 fps = 5 s of video each, at the catalog's $0.015 per second
    assert list(manifest["estimated_cost_usd"]) == pytest.approx([0.075, 0.075])
    assert list(manifest["cost_usd"]) == pytest.approx([0.075, 0.075], abs=0.01)
    plan_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Plan: ")]
    assert plan_lines == [
        "Plan: 2 to submit; estimated cost $0.1500 for 2 jobs "
        "(10.0 s of video at $0.0150 per second, from RunComfy's catalog)"
    ]
    # nothing new to pay for: no estimate needed, $0 fits any limit
    again = await generate_talking_videos(rows(sb, 2), out, creds(sb), **fast(max_cost_usd=0))
    assert list(again["status"]) == ["succeeded", "succeeded"]
    assert sb.stats()["submits_accepted"] == 2
    assert sb.stats()["requests_by_endpoint"]["catalog"] == 1, "read only when something is new"


async def test_max_cost_refuses_before_any_post_naming_the_estimate_and_the_rows(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = str(tmp_path / "o")
    with pytest.raises(CostLimitError) as caught:
        await generate_talking_videos(rows(sb, 3), out, creds(sb), **fast(max_cost_usd=0.2))
    message = str(caught.value)
    assert "estimated cost $0.2250 for 3 jobs" in message and "max_cost_usd=0.2" in message
    assert "r0, r1, r2" in message and "nothing was submitted" in message
    assert (caught.value.estimate_usd, caught.value.would_submit) == (pytest.approx(0.225), 3)
    assert sb.stats()["submits_accepted"] == 0
    assert Ledger(OutputStore(out)).load_all() == {}
    # per output: one base price a row
    sb.set(price_unit="output", price_per_second_usd=0.5)
    with pytest.raises(CostLimitError, match=r"estimated cost \$1.5000 for 3 jobs"):
        await generate_talking_videos(rows(sb, 3), out, creds(sb), **fast(max_cost_usd=1))
    manifest = await generate_talking_videos(rows(sb, 3), out, creds(sb), **fast(max_cost_usd=2))
    assert list(manifest["estimated_cost_usd"]) == [0.5, 0.5, 0.5]
    assert sb.stats()["submits_accepted"] == 3


async def test_no_usable_price_refuses_a_cost_limit_rather_than_guess(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sb.set(catalog_priced=False)
    out = str(tmp_path / "o")
    with pytest.raises(CostLimitError, match="cannot be estimated") as caught:
        await generate_talking_videos(rows(sb, 1), out, creds(sb), **fast(max_cost_usd=100))
    assert caught.value.estimate_usd is None and "gives no usable price" in str(caught.value)
    assert sb.stats()["submits_accepted"] == 0
    # without a limit the run goes on, and says it has no estimate
    manifest = await generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST)
    assert list(manifest["status"]) == ["succeeded"]
    assert manifest["estimated_cost_usd"].isna().all()
    assert any("cost of 1 job not estimated" in r.getMessage() for r in caplog.records)


async def test_a_known_audio_length_caps_the_estimate(sb: Sandbox, tmp_path: Path) -> None:
    image, audio = _local_media(tmp_path)  # 4.86 s of speech, under 125 frames (5 s)
    table = [{"id": "short", "prompt": "talks", "image": str(image), "audio": str(audio)}]
    manifest = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    estimate = manifest["estimated_cost_usd"][0]
    assert estimate < 5 * 0.015  # capped below the 125 frames' price
    # FFmpeg versions read an MP3's length with or without its encoder padding (PyAV 13: 4.94 s)
    assert estimate == pytest.approx(4.86 * 0.015, abs=0.1 * 0.015)


async def test_sharded_parent_checks_max_submits_before_any_shard(
    sb: Sandbox, tmp_path: Path
) -> None:
    from prefect_runcomfy.flows import generate_talking_videos_sharded

    out = tmp_path / "o"
    # No deployment exists: the parent must refuse before it writes or starts any shard.
    with pytest.raises(SubmitLimitError, match="would submit 3 new jobs, more than max_submits=1"):
        await generate_talking_videos_sharded(
            rows(sb, 3), str(out), deployment="missing/deployment", spending=Spending(max_submits=1)
        )
    assert not (out / "_shards").exists()
    await RunComfyCredentials(api_token=sb.token, base_url=sb.base_url).save(
        "sharded-cost", overwrite=True
    )
    with pytest.raises(CostLimitError, match=r"estimated cost \$0.2250 for 3 jobs"):
        await generate_talking_videos_sharded(
            rows(sb, 3),
            str(out),
            deployment="missing/deployment",
            credentials="sharded-cost",
            spending=Spending(max_cost_usd=0.1),
        )
    assert not (out / "_shards").exists()
    assert sb.stats()["submits_accepted"] == 0


# --- faults -------------------------------------------------------------------------------------


async def test_faults_end_with_the_right_status_per_row(sb: Sandbox, tmp_path: Path) -> None:
    table = rows(sb, 5)
    table[2]["prompt"] += " [sandbox:fail]"
    table[3]["prompt"] += " [sandbox:expire] [sandbox:run=3]"  # seen running, then gone
    sb.set(not_found_after_submit_s=0.5)  # "not found" just after the submit
    sb.add_fault(endpoint="submit", kind="rate_limit", retry_after=0.2, count=2)
    sb.add_fault(endpoint="status", kind="server_error", http_status=503, count=2)
    sb.add_fault(endpoint="result", kind="server_error", http_status=500, count=2)
    sb.add_fault(endpoint="result", kind="rate_limit", retry_after=0.1, count=1)
    manifest = await generate_talking_videos(table, str(tmp_path / "o"), creds(sb), **FAST)
    status = dict(zip(manifest["id"], manifest["status"], strict=True))
    assert status == {
        "r0": "succeeded",
        "r1": "succeeded",
        "r2": "failed",
        "r3": "failed",
        "r4": "succeeded",
    }
    errors = dict(zip(manifest["id"], manifest["error"], strict=True))
    assert "SandboxFailure" in errors["r2"] or "fail" in errors["r2"].lower()
    assert "expired" in errors["r3"]
    failed_sidecar = json.loads((tmp_path / "o" / "r2.json").read_text())
    assert failed_sidecar["status"] == "failed" and failed_sidecar["api_error"]
    assert_one_submit_per_payload(sb)


async def test_dropped_submit_answer_is_outcome_unknown_and_not_resubmitted(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = str(tmp_path / "o")
    sb.add_fault(endpoint="submit", kind="drop_after_accept", count=1)
    first = await generate_talking_videos(rows(sb, 2), out, creds(sb), max_concurrency=1, **FAST)
    assert sorted(first["status"]) == ["outcome_unknown", "succeeded"]
    again = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert sorted(again["status"]) == ["outcome_unknown", "succeeded"]
    unknown = again[again["status"] == "outcome_unknown"].iloc[0]
    assert "resubmit_unknown=True" in unknown["error"]
    assert sb.stats()["submits_accepted"] == 2
    forced = await generate_talking_videos(
        rows(sb, 2), out, creds(sb), **fast(resubmit_unknown=True)
    )
    assert list(forced["status"]) == ["succeeded", "succeeded"]
    assert sb.stats()["submits_accepted"] == 3


async def test_a_malformed_request_id_is_outcome_unknown_and_never_submitted_again(
    sb: Sandbox, tmp_path: Path
) -> None:
    # The job exists and is billed, but its id cannot be followed: an unknown outcome, not
    # `failed` (which retry_failed=True would pay for again).
    out = str(tmp_path / "o")
    sb.set(request_id_shape="malformed")
    first = await manifest_of(generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST))
    assert list(first["status"]) == ["outcome_unknown"]
    assert "malformed request id" in first["error"][0]
    assert Ledger(OutputStore(out)).get("r0").state == "outcome_unknown"
    sb.set(request_id_shape="uuid")
    again = await manifest_of(
        generate_talking_videos(rows(sb, 1), out, creds(sb), **fast(retry_failed=True))
    )
    assert list(again["status"]) == ["outcome_unknown"]
    stats = sb.stats()
    assert stats["submits_accepted"] == 1
    assert not {"status", "result", "cancel"} & set(stats["requests_by_endpoint"])


async def test_a_refused_output_keeps_its_paid_request_until_its_host_is_allowed(
    two_host_sandbox: Sandbox, tmp_path: Path
) -> None:
    # The result names a foreign host (127.0.0.2): nothing is fetched from it, the row says
    # which host and how to allow it, and the paid request stays collectable: retry_failed
    # never submits it again, a run that allows the host stores it.
    sb = two_host_sandbox
    sb.reset(config=True)
    sb.set(output_urls_on="foreign")
    out = str(tmp_path / "o")
    first = await manifest_of(generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST))
    row = first.iloc[0]
    assert row["status"] == "failed"
    assert row["request_id"]
    assert "127.0.0.2" in row["error"] and "RUNCOMFY_OUTPUT_HOSTS" in row["error"]
    assert "without submitting it again" in row["error"]
    assert Ledger(OutputStore(out)).get("r0").state == "output_refused"
    assert not (tmp_path / "o" / "r0.mp4").exists()

    again = await manifest_of(
        generate_talking_videos(rows(sb, 1), out, creds(sb), **fast(retry_failed=True))
    )
    assert list(again["status"]) == ["failed"]
    assert again["request_id"][0] == row["request_id"]

    allowed = creds(sb).model_copy(update={"output_hosts": [sb.foreign_base_url]})
    stored = await generate_talking_videos(rows(sb, 1), out, allowed, **FAST)
    assert list(stored["status"]) == ["succeeded"], stored["error"].tolist()
    assert stored["request_id"][0] == row["request_id"]
    assert (tmp_path / "o" / "r0.mp4").stat().st_size > 1000
    stats = sb.stats()
    assert stats["submits_accepted"] == 1, "paid once, stored on the third run"
    assert stats["file_requests_by_listener"] == {"api": 0, "foreign": 1}


async def test_collect_stores_a_refused_output_once_its_host_is_allowed(
    two_host_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_runcomfy.flows import collect_outstanding_requests

    sb = two_host_sandbox
    sb.reset(config=True)
    sb.set(files_redirect="foreign")  # the API host's file route redirects to 127.0.0.2
    out = str(tmp_path / "o")
    first = await manifest_of(generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST))
    assert "redirected to" in first["error"][0]
    assert sb.stats()["file_requests_by_listener"] == {"api": 1, "foreign": 0}
    monkeypatch.setenv("RUNCOMFY_OUTPUT_HOSTS", sb.foreign_base_url)
    collected = await collect_outstanding_requests(
        out, creds(sb), waiting=Waiting(poll_initial_s=0.1)
    )
    assert list(collected["status"]) == ["succeeded"]
    on_disk = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert list(on_disk["status"]) == ["succeeded"]
    assert sb.stats()["submits_accepted"] == 1
    assert sb.stats()["file_requests_by_listener"] == {"api": 2, "foreign": 1}


def _failing_ledger_writes(
    monkeypatch: pytest.MonkeyPatch, state: str, times: int | None
) -> list[str]:
    """Make the ledger's writes of `state` fail like an unwritable output location.

    Injected (not real) because a storage failure exactly between a POST and its ledger entry
    cannot be produced on demand with a real disk or moto; everything else stays real.
    """
    failed: list[str] = []
    real_write = Ledger._write

    def write(self: Ledger, entry: Any, **kwargs: Any) -> Any:
        if entry.state == state and (times is None or len(failed) < times):
            failed.append(entry.id)
            raise StorageError(f"could not write {entry.id}: injected outage")
        return real_write(self, entry, **kwargs)

    monkeypatch.setattr(Ledger, "_write", write)
    return failed


async def test_a_ledger_write_that_fails_once_after_the_post_is_retried(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = _failing_ledger_writes(monkeypatch, "submitted", times=1)
    out = str(tmp_path / "o")
    manifest = await generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST)
    assert failed == ["r0"]
    assert list(manifest["status"]) == ["succeeded"]
    entry = Ledger(OutputStore(out)).get("r0")
    assert entry is not None and entry.request_id == manifest["request_id"][0]
    assert "submitted" in [step["state"] for step in entry.history]


async def test_a_paid_request_the_ledger_cannot_record_is_still_delivered(
    sb: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = _failing_ledger_writes(monkeypatch, "submitted", times=None)
    out = str(tmp_path / "o")
    with caplog.at_level(logging.WARNING):
        manifest = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert sorted(set(failed)) == ["r0", "r1"]
    assert list(manifest["status"]) == ["succeeded", "succeeded"]
    for record in manifest.to_dict(orient="records"):
        request_id = record["request_id"]
        assert request_id and f"ledger could not record request {request_id}" in record["note"]
        assert any(request_id in m and "could not record" in m for m in caplog.messages)
        # the final entry carries the request id even though `submitted` was never written
        entry = Ledger(OutputStore(out)).get(record["id"])
        assert entry is not None and entry.state == "stored" and entry.request_id == request_id
    monkeypatch.undo()
    again = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert set(again["status"]) == {"succeeded"}
    assert sb.stats()["submits_accepted"] == 2, "paid once per row"


async def test_bad_token_stops_submitting_and_says_so(sb: Sandbox, tmp_path: Path) -> None:
    manifest = await manifest_of(
        generate_talking_videos(
            rows(sb, 3), str(tmp_path / "o"), creds(sb, "wrong"), max_concurrency=1, **FAST
        )
    )
    assert set(manifest["status"]) == {"failed"}
    assert all("token" in e for e in manifest["error"])
    assert sb.stats()["requests_by_endpoint"].get("submit", 0) == 1


async def test_deadline_cancels_queued_jobs(sb: Sandbox, tmp_path: Path) -> None:
    sb.set(workers=1, run_seconds=3.0)
    out = str(tmp_path / "o")
    manifest = await manifest_of(
        generate_talking_videos(
            rows(sb, 2), out, creds(sb), max_wait_s=1.0, max_concurrency=2, **FAST
        )
    )
    assert set(manifest["status"]) == {"timed_out"}
    errors = " ".join(manifest["error"])
    assert "cancelled while still queued" in errors and "still running" in errors
    entries = Ledger(OutputStore(out)).load_all()
    assert sorted(e.state.value for e in entries.values()) == ["cancelled", "timed_out"]
    # Cancelled before it ran means not run: the next run submits that row with no flag (and
    # collects the one still running, without paying for it again).
    sb.set(run_seconds=0.2)
    again = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert set(again["status"]) == {"succeeded"}
    assert list(again["submitted_by_this_run"]).count(True) == 1
    assert sb.stats()["submits_accepted"] == 3


async def test_a_job_cancelled_on_runcomfy_while_queued_is_submitted_again(
    sb: Sandbox, tmp_path: Path
) -> None:
    """Someone cancels a queued job (`prefect-runcomfy cancel`, the dashboard): the row ends
    `cancelled`, and since RunComfy cancels only jobs that never ran, the next run pays for it
    without --retry-failed."""
    sb.set(workers=1, run_seconds=2.0)
    out = str(tmp_path / "o")
    run = asyncio.create_task(
        manifest_of(generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST))
    )
    for _ in range(1200):  # both submitted: one running, one queued behind it (60 s at most)
        if len(sb.requests()) == 2:
            break
        await asyncio.sleep(0.05)
    queued = [r["request_id"] for r in sb.requests() if r["state"] == "in_queue"]
    assert len(queued) == 1, sb.requests()
    headers = {"Authorization": f"Bearer {sb.token}"}
    async with httpx.AsyncClient(base_url=sb.base_url, headers=headers) as http:
        answer = await http.post(f"/v1/requests/{queued[0]}/cancel")
    assert answer.json()["outcome"] == "cancelled"
    manifest = await run
    assert sorted(manifest["status"]) == ["cancelled", "succeeded"]
    sb.set(run_seconds=0.2)
    again = await generate_talking_videos(rows(sb, 2), out, creds(sb), **FAST)
    assert set(again["status"]) == {"succeeded"}
    assert list(again["submitted_by_this_run"]).count(True) == 1
    assert sb.stats()["submits_accepted"] == 3


# --- resume -------------------------------------------------------------------------------------


async def test_rerun_skips_stored_rows_and_pays_only_for_new_ones(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = str(tmp_path / "o")
    await generate_talking_videos(rows(sb, 3), out, creds(sb), **FAST)
    again = await generate_talking_videos(rows(sb, 3) + rows(sb, 4)[3:], out, creds(sb), **FAST)
    assert set(again["status"]) == {"succeeded"}
    assert [("already stored" in str(n)) for n in again["note"]] == [True, True, True, False]
    assert sb.stats()["submits_accepted"] == 4
    # tonight's spending is the one new row; the three stored rows were paid for before
    assert list(again["submitted_by_this_run"]) == [False, False, False, True]
    from prefect_runcomfy.report.artifacts import summary_markdown

    summary = summary_markdown(again, output_uri=out, manifest_uri=out)
    assert (
        "Jobs this run submitted: 1, estimated $0.0750 before submitting, cost reported by RunComfy"
    ) in summary
    assert "Rows submitted by earlier runs (stored or collected now): 3" in summary


async def test_collect_finishes_what_a_timed_out_run_left(sb: Sandbox, tmp_path: Path) -> None:
    from prefect_runcomfy import collect_outstanding_requests

    sb.set(run_seconds=1.5)
    out = str(tmp_path / "o")
    first = await manifest_of(
        generate_talking_videos(rows(sb, 2), out, creds(sb), max_wait_s=0.5, **FAST)
    )
    assert set(first["status"]) == {"timed_out"}
    collected = await collect_outstanding_requests(
        out, creds(sb), waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.5)
    )
    assert set(collected["status"]) == {"succeeded"}
    manifest = pd.read_parquet(Path(out) / "manifest.parquet")
    assert set(manifest["status"]) == {"succeeded"} and len(manifest) == 2
    assert (Path(out) / "r0.mp4").exists()
    assert sb.stats()["submits_accepted"] == 2


# --- the UI -------------------------------------------------------------------------------------


async def test_artifacts_show_progress_rows_and_summary(sb: Sandbox, tmp_path: Path) -> None:
    table = rows(sb, 2)
    table.append({**table[0], "id": "bad", "cfg": 9})
    state = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), return_state=True, **FAST
    )
    flow_run_id = state.state_details.flow_run_id
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    kinds = {a.type: a for a in artifacts}
    assert {"progress", "table", "markdown"} <= set(kinds)
    assert kinds["progress"].data == 100.0
    table_rows = kinds["table"].data
    if isinstance(table_rows, str):
        table_rows = json.loads(table_rows)
    # the rows that need a person first, then the manifest's order
    assert [r["id"] for r in table_rows] == ["bad", "r0", "r1"]
    assert [r["status"] for r in table_rows] == ["invalid", "succeeded", "succeeded"]
    assert "manifest.parquet" in (kinds["table"].description or "")
    summary = kinds["markdown"].data
    assert "2 of 3 rows succeeded" in summary
    assert "index.html" in summary and str(tmp_path / "o") in summary
    assert "cfg" in summary
    # the estimate before paying (2 rows x 125 frames / 25 x $0.015) beside RunComfy's cost
    assert (
        "Jobs this run submitted: 2, estimated $0.1500 before submitting, "
        "cost reported by RunComfy $0."
    ) in summary


async def test_a_shard_run_publishes_its_summary_but_no_table(sb: Sandbox, tmp_path: Path) -> None:
    """A shard's rows are in its parent's table artifact: a shard run adds none of its own
    (and no review page), only its small markdown summary."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from prefect_runcomfy.engine.run.settings import ShardRole

    out = tmp_path / "o"
    role = ShardRole(manifest_name="_shards/0000/manifest.parquet")
    state = await generate_talking_videos(
        rows(sb, 2), str(out), creds(sb), shard=role, return_state=True, **FAST
    )
    flow_run_id = state.state_details.flow_run_id
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert sorted(a.type for a in artifacts) == ["markdown", "progress"]
    assert (out / "_shards" / "0000" / "manifest.parquet").exists()
    assert not (out / "index.html").exists() and not (out / "manifest.parquet").exists()


async def test_one_task_run_per_row_named_after_it_in_the_rows_state(
    sb: Sandbox, tmp_path: Path
) -> None:
    table = rows(sb, 3)
    table[1]["prompt"] += " [sandbox:fail]"
    table.append({**table[0], "id": "bad", "cfg": 9})  # invalid: no task run at all
    state = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), return_state=True, **FAST
    )
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
        by_name = {run.name: run for run in runs}
        assert sorted(by_name) == ["r0", "r1", "r2"], sorted(by_name)
        assert {run.task_key.split("-")[0] for run in runs} == {"_row_task"}
        assert by_name["r0"].state.type.value == "COMPLETED"
        assert by_name["r2"].state.type.value == "COMPLETED"
        assert by_name["r1"].state.type.value == "FAILED"
        assert "r1 ended failed: Request" in by_name["r1"].state.message
        from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # log lines reach the API in batches
        logs = []
        only_r0 = LogFilter(task_run_id=LogFilterTaskRunId(any_=[by_name["r0"].id]))
        for _ in range(50):
            logs = await client.read_logs(log_filter=only_r0)
            if any(log.message.startswith("Finished in state") for log in logs):
                break
            await asyncio.sleep(0.2)
    # The row's own log: its task run's last line, Prefect's "Finished in state", carries the
    # request id and the video (no separate submit line, no separate stored line).
    lines = [log.message for log in logs]
    manifest = await state.aresult()
    request_id = manifest.set_index("id").loc["r0", "request_id"]
    said = f"r0: request {request_id} succeeded after"
    assert by_name["r0"].state.message.startswith(said), by_name["r0"].state.message
    assert "r0.mp4" in by_name["r0"].state.message
    assert [line for line in lines if said in line] == [
        f"Finished in state Completed('{by_name['r0'].state.message}')"
    ], lines
    assert not any(line.startswith("Submitted r0") for line in lines), lines


# --- secrets ------------------------------------------------------------------------------------


async def test_the_token_is_in_no_file_and_no_log_line(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    table = rows(sb, 2)
    table[1]["prompt"] += " [sandbox:fail]"
    out = tmp_path / "o"
    await generate_talking_videos(table, str(out), creds(sb), **FAST)
    await generate_talking_videos(rows(sb, 1), str(out), creds(sb, "wrong"), **FAST)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        assert sb.token.encode() not in path.read_bytes(), path
        assert b"wrong" not in path.read_bytes() or path.suffix == ".mp4", path
    for record in caplog.records:
        assert sb.token not in record.getMessage()
    assert sb.stats()["file_requests_with_authorization"] == 0
    # Nor in Prefect's own database (flow run parameters, task runs, artifacts, logs).
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    db = Path((url.get_secret_value() if url else "").split("///")[-1])
    db_files = list(db.parent.glob(db.name + "*"))
    assert db_files, "the test harness's SQLite database was found"
    for path in db_files:
        assert sb.token.encode() not in path.read_bytes(), path


async def test_cancelling_the_flow_cancels_queued_requests(sb: Sandbox, tmp_path: Path) -> None:
    sb.set(workers=1, run_seconds=5.0)
    run = asyncio.create_task(
        generate_talking_videos(rows(sb, 3), str(tmp_path / "o"), creds(sb), **FAST)
    )
    # Wait until the ledger knows all three request ids: a request whose id was never recorded
    # (cancelled between the POST's answer and the ledger write) cannot be found to cancel.
    for _ in range(400):
        await asyncio.sleep(0.05)
        if _ledger_states(tmp_path / "o").count("submitted") == 3:
            break
    assert sb.stats()["submits_accepted"] == 3
    run.cancel()
    with pytest.raises((asyncio.CancelledError, BaseException)):
        await run
    await asyncio.sleep(0.5)
    states = sorted(r["state"] for r in sb.requests())
    assert states.count("cancelled") == 2, states


# --- crashes ------------------------------------------------------------------------------------


def _ledger_states(out: Path) -> list[str]:
    states = []
    for path in (out / "_ledger").glob("*.json"):
        if path.name.startswith(TEMP_PREFIX):
            continue  # a write in progress: not the ledger's state until it is renamed
        try:
            states.append(json.loads(path.read_text())["state"])
        except (ValueError, OSError):
            continue
    return states


async def test_sigkill_then_rerun_pays_once_per_row(sb: Sandbox, tmp_path: Path) -> None:
    """The flow process is killed (SIGKILL: no hooks, no cleanup) while jobs are in flight."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import get_current_settings

    sb.set(workers=3, run_seconds=3.0)
    out = tmp_path / "o"
    args = {
        "inputs": rows(sb, 6),
        "output_uri": str(out),
        "max_concurrency": 3,
        "token": sb.token,
        "base_url": sb.base_url,
        **FAST,
    }
    spec = tmp_path / "args.json"
    spec.write_text(json.dumps(args, default=lambda section: section.model_dump()))
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    runner = Path(__file__).with_name("flow_runner.py")
    proc = subprocess.Popen(
        [sys.executable, str(runner), str(spec)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            await asyncio.sleep(0.1)
            states = _ledger_states(out)
            if states.count("submitted") == 3 and sb.stats()["submits_accepted"] == 3:
                break
        else:
            raise AssertionError(f"the flow never had 3 jobs in flight: {_ledger_states(out)}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.parquet").exists(), "killed before the end"

    manifest = await generate_talking_videos(rows(sb, 6), str(out), creds(sb), **FAST)
    assert list(manifest["status"]) == ["succeeded"] * 6
    notes = list(manifest["note"].fillna(""))
    assert sum("earlier run" in n for n in notes) >= 3, notes
    # The killed run's claims were taken over (its process is gone): claim 2 on those rows.
    claims = [json.loads(p.read_text())["claim"] for p in (out / "_ledger").glob("*.json")]
    assert claims.count(2) >= 3, claims
    stats = sb.stats()
    assert stats["submits_accepted"] == 6
    assert_one_submit_per_payload(sb)
    for record in manifest.to_dict(orient="records"):
        assert Path(record["video_uri"]).stat().st_size == record["size_bytes"]


# --- the account-wide limit ---------------------------------------------------------------------


class _Records(logging.Handler):
    """Keeps every record a logger hands it, to read after the run."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


async def test_global_concurrency_limit_bounds_jobs_in_flight(sb: Sandbox, tmp_path: Path) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="runcomfy-account", limit=1)
        )
    # Places wait on a full limit here; a denied ask is not an error and must not log one
    # (Prefect's acquisition service logs ERROR for an ask that fails instead of retrying).
    errors = _Records()
    # `prefect._internal` does not propagate to `prefect`: listen on both.
    loggers = [logging.getLogger("prefect"), logging.getLogger("prefect._internal")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        manifest = await generate_talking_videos(
            rows(sb, 3),
            str(tmp_path / "o"),
            creds(sb),
            max_concurrency=3,
            concurrency=Concurrency(limit="runcomfy-account"),
            **FAST,
        )
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert set(manifest["status"]) == {"succeeded"}
    assert not errors.messages(logging.ERROR), errors.messages(logging.ERROR)
    spans = sorted((r["submitted_mono"], r["finished_mono"]) for r in sb.requests())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "a second job was submitted while one was in flight"


async def test_a_job_place_keeps_its_slot_while_rows_wait_for_it(
    sb: Sandbox, tmp_path: Path
) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with get_client() as client:
        limit_id = await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="runcomfy-keep", limit=2)
        )
    manifest = await generate_talking_videos(
        rows(sb, 10),
        str(tmp_path / "o"),
        creds(sb),
        max_concurrency=2,
        concurrency=Concurrency(limit="runcomfy-keep"),
        **FAST,
    )
    assert set(manifest["status"]) == {"succeeded"}
    # Still strict: never more than 2 jobs at RunComfy at once.
    moments = sorted(
        [(r["submitted_mono"], 1) for r in sb.requests()]
        + [(r["finished_mono"], -1) for r in sb.requests()]
    )
    assert max(itertools.accumulate(step for _, step in moments)) <= 2

    async def count(name: str) -> int:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[name]),
                    resource=EventResourceFilter(id=[f"prefect.concurrency-limit.{limit_id}"]),
                ),
                limit=50,
            )
        return len(page.events)

    # The server stores events a moment after they are sent: wait until the releases are in.
    deadline = time.monotonic() + 30
    acquired = released = 0
    while time.monotonic() < deadline:
        acquired = await count("prefect.concurrency-limit.acquired")
        released = await count("prefect.concurrency-limit.released")
        if acquired >= 2 and released >= acquired:
            break
        await asyncio.sleep(0.5)
    # One slot per place while rows waited for places: 2 here (10 rows took one each before).
    assert 2 <= acquired <= 4, acquired
    assert released == acquired
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name("runcomfy-keep")
    assert limit.active_slots == 0  # every slot given back at the end


async def test_a_missing_global_limit_is_an_error_not_unbounded(
    sb: Sandbox, tmp_path: Path
) -> None:
    manifest = await manifest_of(
        generate_talking_videos(
            rows(sb, 1),
            str(tmp_path / "o"),
            creds(sb),
            concurrency=Concurrency(limit="no-such-limit"),
            **FAST,
        )
    )
    assert list(manifest["status"]) == ["failed"]
    assert "no-such-limit" in manifest.loc[0, "error"]
    assert sb.stats()["submits_accepted"] == 0


# --- credentials and media ------------------------------------------------------------------------


async def test_credentials_by_saved_block_name(sb: Sandbox, tmp_path: Path) -> None:
    await creds(sb).save("flow-test-creds", overwrite=True)
    manifest = await generate_talking_videos(
        rows(sb, 1), str(tmp_path / "o"), "flow-test-creds", **FAST
    )
    assert list(manifest["status"]) == ["succeeded"]


async def test_unknown_block_name_is_a_configuration_error(sb: Sandbox, tmp_path: Path) -> None:
    from prefect_runcomfy.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="no-such-block"):
        await generate_talking_videos(rows(sb, 1), str(tmp_path / "o"), "no-such-block", **FAST)
    assert sb.stats()["submits_accepted"] == 0


def _local_media(tmp_path: Path) -> tuple[Path, Path]:
    from prefect_runcomfy.sandbox.samples import SAMPLES_DIR

    media = tmp_path / "media"
    media.mkdir()
    image = media / "face.png"
    audio = media / "voice.mp3"
    image.write_bytes((SAMPLES_DIR / "portrait.png").read_bytes())
    audio.write_bytes((SAMPLES_DIR / "short.mp3").read_bytes())
    return image, audio


async def test_local_media_sent_inline(sb: Sandbox, tmp_path: Path) -> None:
    image, audio = _local_media(tmp_path)
    table = [{"id": "inline", "prompt": "talks", "image": str(image), "audio": str(audio)}]
    manifest = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    assert list(manifest["status"]) == ["succeeded"], manifest["error"].tolist()
    sidecar = json.loads((tmp_path / "o" / "inline.json").read_text())
    assert sidecar["inputs"]["284_image"].startswith("data:image/png;base64,<")
    assert len(json.dumps(sidecar)) < 10_000, "inline bytes are not copied into the sidecar"


async def test_a_stored_row_needs_no_media_on_a_rerun(sb: Sandbox, tmp_path: Path) -> None:
    # Media are resolved only for rows to submit: a portrait deleted after its video was
    # stored does not make the stored row invalid (the manifest would disown a video in place).
    image, audio = _local_media(tmp_path)
    table = [{"id": "kept", "prompt": "talks", "image": str(image), "audio": str(audio)}]
    first = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    assert list(first["status"]) == ["succeeded"], first["error"].tolist()
    submits = sb.stats()["submits_accepted"]
    image.unlink()
    again = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    assert list(again["status"]) == ["succeeded"], again["error"].tolist()
    assert "already stored" in again["note"][0]
    assert sb.stats()["submits_accepted"] == submits
    on_disk = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert list(on_disk["status"]) == ["succeeded"]
    # A row that must be submitted still needs its media, and says which file is missing.
    table.append({"id": "new", "prompt": "talks", "image": str(image), "audio": str(audio)})
    third = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    by_id = third.set_index("id")
    assert by_id.loc["kept", "status"] == "succeeded"
    assert by_id.loc["new", "status"] == "invalid"
    assert "face.png" in by_id.loc["new", "error"] and "image" in by_id.loc["new", "error"]
    assert sb.stats()["submits_accepted"] == submits
    # `prefect-runcomfy plan` agrees: the stored row is skipped, not invalid
    from prefect_runcomfy.engine.outputs.store import OutputStore
    from prefect_runcomfy.engine.plan.planning import MediaSettings, plan_table

    media = MediaSettings(inline_media=True, mode="check")
    planned = await plan_table(table, OutputStore(str(tmp_path / "o")), INFINITE_TALK, media=media)
    assert [(r.id, d.plan.value) for r, d in zip(planned.rows, planned.decisions, strict=True)] == [
        ("kept", "skip_stored")
    ]
    assert [p.id for p in planned.invalid] == ["new"]


async def test_max_submits_counts_only_rows_that_will_be_sent(sb: Sandbox, tmp_path: Path) -> None:
    image, audio = _local_media(tmp_path)
    table = [
        {"id": f"ok{i}", "prompt": "talks", "image": str(image), "audio": str(audio)}
        for i in range(2)
    ] + [{"id": "gone", "prompt": "talks", "image": str(tmp_path / "no.png"), "audio": str(audio)}]
    before = sb.stats()["submits_accepted"]
    manifest = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **fast(max_submits=2)
    )
    assert dict(zip(manifest["id"], manifest["status"], strict=True)) == {
        "ok0": "succeeded",
        "ok1": "succeeded",
        "gone": "invalid",
    }
    assert sb.stats()["submits_accepted"] - before == 2


async def test_the_run_and_the_plan_command_agree_on_every_row(
    sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One plan path: the run's `Plan:` line (logged after the media checks) and
    `prefect-runcomfy plan` count the same rows to submit, and name the same invalid rows."""
    from typer.testing import CliRunner

    from prefect_runcomfy.cli import app

    caplog.set_level(logging.INFO)
    image, audio = _local_media(tmp_path)
    table = [
        {"id": f"ok{i}", "prompt": "talks", "image": str(image), "audio": str(audio)}
        for i in range(2)
    ] + [{"id": "gone", "prompt": "talks", "image": str(tmp_path / "no.png"), "audio": str(audio)}]
    table_path = tmp_path / "rows.csv"
    pd.DataFrame(table).to_csv(table_path, index=False)
    out = str(tmp_path / "o")

    def plan(*args: str) -> Any:  # the command runs its own event loop: not in this one
        return asyncio.to_thread(CliRunner().invoke, app, ["plan", str(table_path), *args])

    shown = await plan("-o", out, "--inline-media")
    assert shown.exit_code == 2, shown.output  # the row without its image is invalid
    said = " ".join(shown.output.split())
    assert "2 to submit, 1 invalid" in said and "no.png" in said
    manifest = await generate_talking_videos(
        str(table_path), out, creds(sb), inline_media=True, **FAST
    )
    plan_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Plan: ")]
    assert len(plan_lines) == 1 and plan_lines[0].startswith("Plan: 2 to submit"), plan_lines
    assert dict(zip(manifest["id"], manifest["status"], strict=True)) == {
        "ok0": "succeeded",
        "ok1": "succeeded",
        "gone": "invalid",
    }
    # Without --inline-media or --staging-uri a local file cannot reach RunComfy: the plan
    # says so, as the run would, instead of counting the row as to submit.
    again = await plan("-o", str(tmp_path / "new"))
    assert "0 to submit" not in again.output and "3 invalid" in " ".join(again.output.split())
    assert "staging_uri" in " ".join(again.output.split())


async def test_local_media_staged_to_s3_and_signed(
    sb: Sandbox, tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    _image, _audio = _local_media(tmp_path)
    table = pd.DataFrame(
        [{"id": "staged", "prompt": "talks", "image": "media/face.png", "audio": "media/voice.mp3"}]
    )
    table_path = tmp_path / "rows.parquet"
    table.to_parquet(table_path)  # relative media paths resolve against the table's folder
    manifest = await generate_talking_videos(
        str(table_path),
        str(tmp_path / "o"),
        creds(sb),
        staging_uri=f"s3://{s3_bucket}/staging",
        media=MediaOptions(staging_storage_options=s3_server.storage_options),
        **FAST,
    )
    assert list(manifest["status"]) == ["succeeded"], manifest["error"].tolist()
    sidecar = json.loads((tmp_path / "o" / "staged.json").read_text())
    sent = sidecar["inputs"]["284_image"]
    assert sent.startswith(s3_server.endpoint_url) and "?" not in sent, "no signature stored"
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert len(fs.ls(f"{s3_bucket}/staging")) == 2


async def test_missing_local_media_is_an_invalid_row(sb: Sandbox, tmp_path: Path) -> None:
    table = [
        *rows(sb, 1),
        {
            "id": "gone",
            "prompt": "x",
            "image": str(tmp_path / "nope.png"),
            "audio": str(tmp_path / "nope.mp3"),
        },
    ]
    manifest = await generate_talking_videos(
        table, str(tmp_path / "o"), creds(sb), inline_media=True, **FAST
    )
    assert list(manifest["status"]) == ["succeeded", "invalid"]
    assert "nope.png" in manifest.loc[1, "error"]
    assert sb.stats()["submits_accepted"] == 1


async def test_a_large_in_memory_table_is_not_stored_as_a_parameter(
    sb: Sandbox, tmp_path: Path
) -> None:
    """Prefect refuses flow run parameters over 512 KiB (about 2,000 rows)."""
    rows_ = [
        {
            "id": f"b{i}",
            "prompt": "x" * 200,
            "image": "/nonexistent/p.png",
            "audio": "/n/a.mp3",
            "steps": 99,
        }
        for i in range(3000)
    ]
    state = await generate_talking_videos(
        rows_, str(tmp_path / "o"), creds(sb), return_state=True, **FAST
    )
    assert state.is_failed(), "no row produced a video"
    manifest = (await state.result(raise_on_failure=False)).manifest
    assert len(manifest) == 3000
    assert set(manifest["status"]) == {"invalid"}
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert run.parameters["inputs"].startswith("<in-memory list of rows of 3000 rows")
    assert sb.stats()["submits_accepted"] == 0


def test_storing_is_retried_unless_the_output_expired() -> None:
    from prefect.states import Failed

    from prefect_runcomfy.exceptions import DownloadError, StorageError
    from prefect_runcomfy.tasks import _should_retry_store

    def decide(error: Exception) -> bool:
        return _should_retry_store(None, None, Failed(data=error))

    assert decide(DownloadError("gone", status_code=404)) is False
    assert decide(DownloadError("forbidden", status_code=403)) is False
    assert decide(DownloadError("slow down", status_code=429, retry_after=1.0)) is True
    assert decide(DownloadError("broken stream")) is True
    assert decide(StorageError("bucket hiccup")) is True


async def test_a_row_whose_task_run_never_finished_its_body_is_failed_not_lost() -> None:
    from prefect import flow

    from prefect_runcomfy.engine.record.outcome import RowOutcome
    from prefect_runcomfy.engine.run.row import RowCell, in_row_task

    cell = RowCell(RowOutcome(id="r9"))

    async def body_that_leaves_no_status() -> None:
        return None

    @flow
    async def one_row() -> RowOutcome:
        return await in_row_task(cell, body_that_leaves_no_status)

    outcome = await one_row()
    assert outcome is cell.latest
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("the row's task run ended FAILED: ")


async def test_a_download_that_keeps_failing_is_collected_not_paid_again(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("prefect_runcomfy.engine.run.row.STORE_RETRY_DELAYS_S", (0.1, 0.1))
    # the job succeeded and is paid; its file answers 503 every time this run asks
    sb.add_fault(endpoint="files", kind="server_error", count=50)
    out = str(tmp_path / "o")
    first = await manifest_of(generate_talking_videos(rows(sb, 1), out, creds(sb), **FAST))
    assert list(first["status"]) == ["failed"]
    assert "without paying again" in first["error"][0]
    entry = Ledger(OutputStore(out)).load_all()["r0"]
    assert entry.state == "timed_out" and entry.request_id == first["request_id"][0]
    sb._on_loop(sb.state.faults.clear)  # the output host is well again
    again = await generate_talking_videos(rows(sb, 1), out, creds(sb), **fast(retry_failed=True))
    assert list(again["status"]) == ["succeeded"]
    assert sb.stats()["submits_accepted"] == 1, "collected, not paid again"
