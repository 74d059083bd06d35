"""The RunComfy sandbox, over real HTTP: API answers, error codes, switches, faults, queue, MP4s."""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sandbox_helpers import (
    SUBMIT_PATH,
    data_uri,
    frame_at,
    payload,
    probe_mp4,
    submit,
    wait_result,
    wait_state,
    wav_bytes,
)

from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.models.infinite_talk import MODEL_ID
from prefect_runcomfy.sandbox import Sandbox, SandboxConfig, run_sandbox, sample_inputs
from prefect_runcomfy.sandbox.samples import SAMPLES_DIR, sample_files

# fast by default: tiny renders, short runs; tests that need real video switch to "full"
BASE = SandboxConfig(workers=2, run_seconds=0.05, render="tiny", seed=7)
OTHER_TOKEN = "other-user-token"
BROKE_TOKEN = "broke-token"


@pytest.fixture(scope="module")
def server() -> Iterator[Sandbox]:
    cfg = BASE.updated(tokens=("sandbox-token", OTHER_TOKEN), no_balance_tokens=(BROKE_TOKEN,))
    with run_sandbox(cfg) as sb:
        yield sb


@pytest.fixture
def sb(server: Sandbox) -> Sandbox:
    server.reset(config=True)
    return server


@pytest.fixture
def client(sb: Sandbox) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sb.token}"}
    with httpx.Client(base_url=sb.base_url, headers=headers, timeout=10, trust_env=False) as c:
        yield c


def requests_by_id(sb: Sandbox) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in sb.requests()}


# ------------------------------------------------------------------ the happy path and the MP4


def test_submit_status_result_and_real_mp4(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(render="full")
    answer = client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert answer.status_code == 200
    body = answer.json()
    rid = body["request_id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", rid)
    assert body["status_url"] == f"{sb.base_url}/v1/requests/{rid}/status"
    assert body["result_url"] == f"{sb.base_url}/v1/requests/{rid}/result"
    assert body["cancel_url"] == f"{sb.base_url}/v1/requests/{rid}/cancel"
    assert "status" not in body

    result = wait_result(client, rid)
    assert result["status"] == "succeeded"
    assert result["request_id"] == rid
    assert result["created_at"].endswith("Z")
    assert result["finished_at"] >= result["created_at"]
    status = client.get(f"/v1/requests/{rid}/status").json()
    assert status["status"] == "completed"
    assert "queue_position" not in status

    url = result["output"]["video"]
    assert url.startswith(f"{sb.base_url}/files/")
    download = httpx.get(url, trust_env=False)  # public: no token
    assert download.status_code == 200
    assert int(download.headers["content-length"]) == len(download.content) > 10_000
    assert download.headers["content-type"] == "video/mp4"
    probe = probe_mp4(download.content)
    # hello.mp3 lasts 6.6 s, more than 125 frames: the frame budget wins
    assert (probe.fps, probe.width, probe.height, probe.frames) == (25.0, 480, 480, 125)
    assert (probe.video_codec, probe.pix_fmt, probe.audio_codec) == ("h264", "yuv420p", "aac")
    assert probe.audio_seconds == pytest.approx(5.0, abs=0.05)
    assert probe.video_seconds == pytest.approx(5.0, abs=0.05)

    stats = sb.stats()
    assert stats["submits_accepted"] == 1
    assert stats["runs_succeeded"] == 1
    assert stats["renders"] == 1
    assert stats["file_requests"] == 1
    assert stats["file_requests_with_authorization"] == 0
    assert stats["billed_seconds"] == pytest.approx(5.0)


def test_short_audio_shortens_video_and_drives_the_mouth(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(render="full")
    portrait = (SAMPLES_DIR / "portrait.png").read_bytes()
    # 1 s of silence, then 1 s of loud tone: 2 s of audio -> 50 frames of the 250 asked for
    audio = wav_bytes(2.0, loud_from=1.0)
    rid = submit(
        client,
        sb.base_url,
        **{
            "284_image": data_uri(portrait, "image/png"),
            "125_audio": data_uri(audio, "audio/wav"),
            "245_valuex246_value": "720x480 (3:2)",
            "270_value": 250,
        },
    )
    result = wait_result(client, rid)
    assert result["status"] == "succeeded", result
    video = httpx.get(result["output"]["video"], trust_env=False).content
    probe = probe_mp4(video)
    assert (probe.width, probe.height, probe.frames) == (720, 480, 50)
    assert probe.audio_seconds == pytest.approx(2.0, abs=0.05)
    # the portrait is letterboxed into 720x480: black bars left and right, picture in the middle
    quiet, loud = frame_at(video, 10), frame_at(video, 40)
    assert quiet[:, :100].max() < 20
    assert quiet[:, 620:].max() < 20
    assert quiet[:, 300:420].mean() > 100
    # the mouth (dark) is open on loud frames and closed on silent ones
    mouth = (slice(int(480 * 0.6), int(480 * 0.72)), slice(330, 390))
    dark_quiet = int((quiet[mouth].mean(axis=2) < 90).sum())
    dark_loud = int((loud[mouth].mean(axis=2) < 90).sum())
    assert dark_loud > 4 * max(dark_quiet, 1), (dark_quiet, dark_loud)


def test_identical_jobs_render_once(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(render="full")
    # inputs no other test renders: the render cache outlives reset()
    unique = {"125_audio": f"{sb.base_url}/samples/short.mp3", "245_valuex246_value": "540x960"}
    first = submit(client, sb.base_url, **unique)
    second = submit(client, sb.base_url, **unique)
    assert wait_result(client, first)["status"] == "succeeded"
    assert wait_result(client, second)["status"] == "succeeded"
    stats = sb.stats()
    assert (stats["renders"], stats["render_cache_hits"]) == (1, 1)
    assert stats["duplicate_submits"] == 1
    assert list(stats["submits_by_payload"].values()) == [2]


@pytest.mark.parametrize(
    ("overrides", "error_type", "needle"),
    [
        ({"284_image": "http://127.0.0.1:{port}/samples/missing.png"}, "MediaFetchError", "404"),
        ({"125_audio": "data:audio/mpeg;base64,AAAAAAAAAAAA"}, "MediaDecodeError", "audio"),
        ({"284_image": "portrait.png"}, "MediaFetchError", "not an http"),
    ],
)
def test_unusable_media_fails_the_run(
    sb: Sandbox, client: httpx.Client, overrides: dict[str, str], error_type: str, needle: str
) -> None:
    sb.set(render="full")
    overrides = {k: v.format(port=sb.port) for k, v in overrides.items()}
    rid = submit(client, sb.base_url, **overrides)
    result = wait_result(client, rid)
    assert result["status"] == "failed"
    assert "output" not in result
    assert result["error"]["type"] == error_type
    assert needle in result["error"]["message"]


def test_tiny_render_is_a_real_small_mp4(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url, **{"284_image": "not even fetched"})
    result = wait_result(client, rid)
    probe = probe_mp4(httpx.get(result["output"]["video"], trust_env=False).content)
    assert (probe.width, probe.height, probe.fps, probe.video_codec) == (64, 64, 25.0, "h264")
    assert probe.frames == 25
    assert probe.audio_codec == "aac"


# ------------------------------------------------------------------ error codes


@pytest.mark.parametrize("http_status", [None, 404, 400])
def test_unknown_model_is_400001(
    sb: Sandbox, client: httpx.Client, http_status: int | None
) -> None:
    # 404 by default (RunComfy's CLI reads it as "model not found"); 400 is the other reading
    if http_status is not None:
        sb.set(unknown_model_http_status=http_status)
    answer = client.post("/v1/models/community/no-such-model", json=payload(sb.base_url))
    assert answer.status_code == (http_status or 404)
    assert answer.json()["error_code"] == 400001
    entry = client.get("/v1/models/community/no-such-model")
    assert (entry.status_code, entry.json()["error_code"]) == (http_status or 404, 400001)
    assert sb.stats()["submits_accepted"] == 0


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic sandbox-token", "Bearer"])
def test_bad_token_is_400004(sb: Sandbox, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    answer = httpx.post(
        sb.base_url + SUBMIT_PATH, json=payload(sb.base_url), headers=headers, trust_env=False
    )
    assert answer.status_code == 401
    assert answer.json()["error_code"] == 400004
    assert "wrong-token" not in answer.text
    status = httpx.get(f"{sb.base_url}/v1/requests/x/status", headers=headers, trust_env=False)
    assert (status.status_code, status.json()["error_code"]) == (401, 400004)


def test_no_balance_is_400002_on_submit(sb: Sandbox) -> None:
    answer = httpx.post(
        sb.base_url + SUBMIT_PATH,
        json=payload(sb.base_url),
        headers={"Authorization": f"Bearer {BROKE_TOKEN}"},
        trust_env=False,
    )
    assert answer.status_code == 402
    assert answer.json()["error_code"] == 400002
    stats = sb.stats()
    assert stats["submits_accepted"] == 0
    assert stats["submits_rejected"] == {"400002": 1}


def test_other_users_request_is_403001(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url)
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    for method, path in [
        ("GET", "status"),
        ("GET", "result"),
        ("POST", "cancel"),
    ]:
        answer = httpx.request(
            method, f"{sb.base_url}/v1/requests/{rid}/{path}", headers=other, trust_env=False
        )
        assert answer.status_code == 403, path
        assert answer.json()["error_code"] == 403001


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "status"), ("GET", "result"), ("POST", "cancel")]
)
def test_unknown_request_is_404001(client: httpx.Client, method: str, path: str) -> None:
    answer = client.request(method, f"/v1/requests/3f1e0000-0000-4000-8000-000000000000/{path}")
    assert answer.status_code == 404
    assert answer.json()["error_code"] == 404001


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"128_steps": 50}, "128_steps"),
        ({"245_valuex246_value": "100x100"}, "245_valuex246_value"),
        ({"270_value": 99}, "270_value"),
        ({"prompt": "friendly names are not API keys"}, "prompt"),
        ({"241_positive_prompt": None}, "241_positive_prompt"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    sb: Sandbox, client: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**payload(sb.base_url), **change}.items() if v is not None}
    answer = client.post(SUBMIT_PATH, json=body)
    assert answer.status_code == 422
    data = answer.json()
    assert data["error_message"] == "input does not match the schema"
    assert any(item.startswith(f"{field}: ") for item in data["detail"])
    assert field in [e["field"] for e in data["errors"]]
    assert sb.stats()["submits_accepted"] == 0


def test_non_json_body_is_422(client: httpx.Client) -> None:
    answer = client.post(
        SUBMIT_PATH, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422


# ------------------------------------------------------------------ switches


def test_submit_status_code_202(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(submit_status_code=202)
    answer = client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert answer.status_code == 202
    assert answer.json()["status"] == "in_queue"


@pytest.mark.parametrize("word", ["completed", "failed"])
def test_failed_status_word(sb: Sandbox, client: httpx.Client, word: str) -> None:
    sb.set(failed_status_word=word)
    rid = submit(client, sb.base_url, **{"241_positive_prompt": "talk [sandbox:fail]"})
    result = wait_result(client, rid)
    assert result["status"] == "failed"
    assert result["error"] == {
        "type": "SandboxFailure",
        "message": "sandbox: the prompt asked for a failure ([sandbox:fail])",
    }
    assert client.get(f"/v1/requests/{rid}/status").json()["status"] == word
    assert sb.stats()["runs_failed"] == 1


@pytest.mark.parametrize(
    ("shape", "key", "expected"),
    [
        (
            "object",
            "error",
            {"type": "SandboxFailure", "message": "sandbox: fail_rate drew a failure"},
        ),
        ("string", "error", "sandbox: fail_rate drew a failure"),
        ("failure_reason", "failure_reason", "sandbox: fail_rate drew a failure"),
    ],
)
def test_error_shape_and_fail_rate(
    sb: Sandbox, client: httpx.Client, shape: str, key: str, expected: Any
) -> None:
    sb.set(error_shape=shape, fail_rate=1.0)
    result = wait_result(client, submit(client, sb.base_url))
    assert result["status"] == "failed"
    assert result[key] == expected
    assert {"error", "failure_reason"} - {key} - set(result) == {"error", "failure_reason"} - {key}


def test_fail_rate_is_seeded(sb: Sandbox, client: httpx.Client) -> None:
    def outcomes() -> list[str]:
        ids = [submit(client, sb.base_url, **{"128_seed": i}) for i in range(8)]
        return [wait_result(client, rid)["status"] for rid in ids]

    sb.set(fail_rate=0.5, workers=8)
    first = outcomes()
    sb.reset()  # keeps the config, re-seeds the generator
    assert outcomes() == first
    assert set(first) == {"succeeded", "failed"}


def test_cancelled_spelling(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(cancelled_spelling="canceled", queue_seconds=5.0)
    rid = submit(client, sb.base_url)
    answer = client.post(f"/v1/requests/{rid}/cancel")
    assert answer.json() == {"request_id": rid, "status": "canceled", "outcome": "cancelled"}
    assert client.get(f"/v1/requests/{rid}/status").json()["status"] == "canceled"
    assert client.get(f"/v1/requests/{rid}/result").json()["status"] == "canceled"


def test_transient_states(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(transient_states=True, transient_window_s=0.4, queue_seconds=0.6, run_seconds=1.5)
    rid = submit(client, sb.base_url)
    assert client.get(f"/v1/requests/{rid}/status").json()["status"] == "pending"
    assert client.get(f"/v1/requests/{rid}/result").json()["status"] == "pending"
    assert wait_state(client, rid, {"in_queue"}) == "in_queue"
    assert wait_state(client, rid, {"starting"}) == "starting"
    assert client.get(f"/v1/requests/{rid}/result").json()["status"] == "starting"
    assert wait_state(client, rid, {"in_progress"}) == "in_progress"


def test_output_shape_videos(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(output_shape="videos")
    result = wait_result(client, submit(client, sb.base_url))
    assert list(result["output"]) == ["videos"]
    (url,) = result["output"]["videos"]
    assert httpx.get(url, trust_env=False).status_code == 200


def test_timestamp_format_epoch(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(timestamp_format="epoch")
    before = time.time()
    result = wait_result(client, submit(client, sb.base_url))
    assert isinstance(result["created_at"], float)
    assert isinstance(result["finished_at"], float)
    assert before - 1 < result["created_at"] <= result["finished_at"] < time.time() + 1


def test_not_found_right_after_submit(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(not_found_after_submit_s=0.4)
    rid = submit(client, sb.base_url)
    early = client.get(f"/v1/requests/{rid}/status")
    assert (early.status_code, early.json()["error_code"]) == (404, 404001)
    assert client.post(f"/v1/requests/{rid}/cancel").status_code == 404
    time.sleep(0.45)
    assert client.get(f"/v1/requests/{rid}/status").status_code == 200


def test_result_ttl_expires_result_and_file(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(result_ttl_s=0.3)
    rid = submit(client, sb.base_url)
    url = wait_result(client, rid)["output"]["video"]
    assert httpx.get(url, trust_env=False).status_code == 200
    time.sleep(0.35)
    gone = client.get(f"/v1/requests/{rid}/result")
    assert (gone.status_code, gone.json()["error_code"]) == (404, 404001)
    assert client.get(f"/v1/requests/{rid}/status").status_code == 404
    assert httpx.get(url, trust_env=False).status_code == 404
    assert requests_by_id(sb)[rid]["expired"] is True


def test_expire_trigger(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url, **{"241_positive_prompt": "bye [sandbox:expire]"})
    deadline = time.monotonic() + 5
    while client.get(f"/v1/requests/{rid}/result").status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert requests_by_id(sb)[rid]["state"] == "succeeded"
    assert client.get(f"/files/{rid}.mp4").status_code == 404


def test_auth_http_status_and_error_body_shapes(sb: Sandbox) -> None:
    url = f"{sb.base_url}/v1/requests/x/status"
    sb.set(auth_http_status=403, error_body_shape="detail")
    answer = httpx.get(url, trust_env=False)
    assert answer.status_code == 403
    assert set(answer.json()) == {"detail"}
    assert isinstance(answer.json()["detail"], str)
    sb.set(error_body_shape="code")
    body = httpx.get(url, trust_env=False).json()
    assert body["code"] == 400004
    assert isinstance(body["error"], str)


def test_include_cost(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(render="full")
    rid = submit(client, sb.base_url)
    wait_result(client, rid)
    with_cost = client.get(f"/v1/requests/{rid}/result", params={"include_cost": "true"}).json()
    assert with_cost["cost"] == pytest.approx(5.0 * 0.015)
    assert "cost" not in client.get(f"/v1/requests/{rid}/result").json()


def test_time_scale_and_run_trigger(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(time_scale=0.02, queue_seconds=10.0)
    rid = submit(client, sb.base_url, **{"241_positive_prompt": "talk [sandbox:run=20]"})
    wait_result(client, rid)
    record = requests_by_id(sb)[rid]
    assert record["run_s"] == pytest.approx(0.4)
    assert record["queue_delay_s"] == pytest.approx(0.2)
    assert record["started_mono"] - record["submitted_mono"] >= 0.2
    assert record["finished_mono"] - record["started_mono"] >= 0.4


# ------------------------------------------------------------------ faults


def test_rate_limit_fault(sb: Sandbox, client: httpx.Client) -> None:
    sb.add_fault(endpoint="submit", kind="rate_limit", retry_after=3)
    answer = client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"
    assert answer.json()["error_code"] == 429001
    assert sb.stats()["submits_accepted"] == 0
    # consumed: the next submit goes through
    assert client.post(SUBMIT_PATH, json=payload(sb.base_url)).status_code == 200
    assert sb.stats()["faults_fired"] == {"rate_limit": 1}


@pytest.mark.parametrize("http_status", [500, 502, 503])
def test_server_error_fault(sb: Sandbox, client: httpx.Client, http_status: int) -> None:
    sb.add_fault(endpoint="submit", kind="server_error", http_status=http_status)
    answer = client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert answer.status_code == http_status
    assert answer.json()["error_code"] == 500001
    assert sb.stats()["submits_accepted"] == 0


def test_drop_before_accept_creates_no_job(sb: Sandbox, client: httpx.Client) -> None:
    sb.add_fault(endpoint="submit", kind="drop_before_accept")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert sb.stats()["submits_accepted"] == 0
    assert sb.requests() == []


def test_drop_after_accept_creates_exactly_one_job(sb: Sandbox, client: httpx.Client) -> None:
    sb.add_fault(endpoint="submit", kind="drop_after_accept")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(SUBMIT_PATH, json=payload(sb.base_url))
    (record,) = sb.requests()
    assert sb.stats()["submits_accepted"] == 1
    # the job the client never heard of still runs (and would be billed)
    assert wait_result(client, record["request_id"])["status"] == "succeeded"
    assert sb.stats()["billed_seconds"] > 0


def test_drop_after_accept_on_status_keeps_the_connection_usable(
    sb: Sandbox, client: httpx.Client
) -> None:
    rid = submit(client, sb.base_url)
    sb.add_fault(endpoint="status", kind="drop_after_accept", count=2)
    for _ in range(2):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(f"/v1/requests/{rid}/status")
    assert client.get(f"/v1/requests/{rid}/status").status_code == 200
    assert sb.stats()["requests_by_endpoint"]["status"] == 3


def test_error_code_200_fault(sb: Sandbox, client: httpx.Client) -> None:
    sb.add_fault(endpoint="any", kind="error_code_200", error_code=400004)
    answer = client.post(SUBMIT_PATH, json=payload(sb.base_url))
    assert answer.status_code == 200
    assert answer.json()["error_code"] == 400004
    assert "request_id" not in answer.json()
    assert sb.stats()["submits_accepted"] == 0


def test_slow_submit_times_out_but_creates_the_job(sb: Sandbox, client: httpx.Client) -> None:
    sb.add_fault(endpoint="submit", kind="slow", retry_after=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post(SUBMIT_PATH, json=payload(sb.base_url), timeout=0.3)
    assert sb.stats()["submits_accepted"] == 1


def test_slow_fault_delays_the_answer(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url)
    sb.add_fault(endpoint="result", kind="slow", retry_after=0.3)
    started = time.monotonic()
    assert client.get(f"/v1/requests/{rid}/result").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_faults_on_files_and_catalog(sb: Sandbox, client: httpx.Client) -> None:
    url = wait_result(client, submit(client, sb.base_url))["output"]["video"]
    sb.add_fault(endpoint="files", kind="server_error", http_status=503)
    sb.add_fault(endpoint="catalog", kind="rate_limit")
    assert httpx.get(url, trust_env=False).status_code == 503
    assert httpx.get(url, trust_env=False).status_code == 200
    limited = client.get(f"/v1/models/{MODEL_ID}")
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "1")
    assert sb.stats()["faults_pending"] == []


def test_bad_fault_is_refused(sb: Sandbox) -> None:
    with pytest.raises(ValueError, match="kind"):
        sb.add_fault(endpoint="submit", kind="explode")
    with pytest.raises(ValueError, match="endpoint"):
        sb.add_fault(endpoint="nowhere", kind="rate_limit")


# ------------------------------------------------------------------ queue and cancel


def test_fifo_with_one_worker(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(workers=1, run_seconds=0.15)
    # the first job runs long enough for every queue position to be read while it runs
    first = submit(client, sb.base_url, **{"241_positive_prompt": "talk [sandbox:run=0.8]"})
    ids = [first] + [submit(client, sb.base_url, **{"128_seed": i}) for i in range(3)]
    positions = [
        client.get(f"/v1/requests/{rid}/status").json().get("queue_position") for rid in ids
    ]
    assert positions[1:] == [0, 1, 2]  # 0-based: jobs ahead of this one
    for rid in ids:
        wait_result(client, rid)
    records = [requests_by_id(sb)[rid] for rid in ids]
    starts = [r["started_mono"] for r in records]
    assert starts == sorted(starts)
    for earlier, later in itertools.pairwise(records):
        assert later["started_mono"] >= earlier["finished_mono"] - 1e-6  # never overlapping
    assert sum(r["finished_mono"] - r["started_mono"] for r in records) >= 0.8 + 3 * 0.15


def test_workers_run_in_parallel(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(workers=3, run_seconds=0.3)
    ids = [submit(client, sb.base_url, **{"128_seed": i}) for i in range(6)]
    for rid in ids:
        wait_result(client, rid)
    records = sb.requests()
    events = sorted(
        [(r["started_mono"], 1) for r in records] + [(r["finished_mono"], -1) for r in records]
    )
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3


def test_queue_position_base_1(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(queue_seconds=5.0, queue_position_base=1)
    ids = [submit(client, sb.base_url, **{"128_seed": i}) for i in range(2)]
    assert [client.get(f"/v1/requests/{r}/status").json()["queue_position"] for r in ids] == [1, 2]


def test_cancel_queued_never_runs(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(workers=1, run_seconds=0.4)
    running = submit(client, sb.base_url, **{"128_seed": 1})
    queued = submit(client, sb.base_url, **{"128_seed": 2})
    wait_state(client, running, {"in_progress"})
    answer = client.post(f"/v1/requests/{queued}/cancel")
    assert answer.status_code == 202
    assert answer.json() == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
    again = client.post(f"/v1/requests/{queued}/cancel")  # harmless twice
    assert (again.status_code, again.json()["outcome"]) == (202, "cancelled")

    not_now = client.post(f"/v1/requests/{running}/cancel").json()
    assert not_now["outcome"] == "not_cancellable"
    assert not_now["status"] == "in_progress"
    assert wait_result(client, running)["status"] == "succeeded"
    time.sleep(0.1)
    result = client.get(f"/v1/requests/{queued}/result").json()
    assert result["status"] == "cancelled"
    assert "output" not in result
    record = requests_by_id(sb)[queued]
    assert record["state"] == "cancelled"
    assert record["started_mono"] is None
    stats = sb.stats()
    assert (stats["runs_started"], stats["cancels"], stats["cancelled_jobs"]) == (1, 3, 1)


def test_cancel_finished_is_not_cancellable(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url)
    wait_result(client, rid)
    body = client.post(f"/v1/requests/{rid}/cancel").json()
    assert body == {"request_id": rid, "status": "completed", "outcome": "not_cancellable"}


# ------------------------------------------------------------------ catalog, samples, admin


def test_catalog(sb: Sandbox, client: httpx.Client) -> None:
    entry = client.get(f"/v1/models/{MODEL_ID}").json()
    assert entry["model_id"] == MODEL_ID
    assert entry["price_unit"] == "second"
    assert entry["base_price_usd"] == 0.015
    schema = entry["input_schema"]
    assert schema["required"] == ["241_positive_prompt", "284_image", "125_audio"]
    assert schema["properties"]["270_value"]["enum"] == [125, 250]
    assert schema["properties"]["128_steps"]["minimum"] == 6
    assert "720x720 (1:1)" in schema["properties"]["245_valuex246_value"]["enum"]
    assert entry["pricing_note"] and "lip-sync" in entry["categories"]
    unknown = client.get("/v1/models/community/nothing")
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, 400001)
    assert httpx.get(f"{sb.base_url}/v1/models", trust_env=False).status_code == 401


def test_catalog_listing_as_runcomfys_clients_read_it(sb: Sandbox, client: httpx.Client) -> None:
    # {"models": [...], "total": N} with search, category, limit and offset
    everything = client.get("/v1/models").json()
    assert set(everything) == {"models", "total"}
    assert everything["total"] == len(everything["models"]) == 3
    ids = [m["model_id"] for m in everything["models"]]
    assert ids[0] == MODEL_ID
    for entry in everything["models"]:
        assert {"base_price_usd", "price_unit", "pricing_note", "categories"} <= set(entry)
        assert "input_schema" not in entry  # only with include_schema=true
    assert {m["price_unit"] for m in everything["models"]} == {"second", "image", "output"}
    with_schema = client.get("/v1/models", params={"include_schema": "true", "limit": 1}).json()
    assert with_schema["models"][0]["input_schema"]["required"]
    found = client.get("/v1/models", params={"search": "INFINITE"}).json()
    assert ([m["model_id"] for m in found["models"]], found["total"]) == ([MODEL_ID], 1)
    assert client.get("/v1/models", params={"search": "flux"}).json() == {"models": [], "total": 0}
    by_category = client.get("/v1/models", params={"category": "text-to-image"}).json()
    assert [m["price_unit"] for m in by_category["models"]] == ["image"]
    page = client.get("/v1/models", params={"limit": 1, "offset": 1}).json()
    assert ([m["model_id"] for m in page["models"]], page["total"]) == ([ids[1]], 3)
    beyond = client.get("/v1/models", params={"offset": 10}).json()
    assert beyond == {"models": [], "total": 3}
    categories = client.get("/v1/models/categories")
    assert categories.status_code == 200
    assert "image-to-video" in categories.json()["categories"]
    assert categories.json()["total"] == len(categories.json()["categories"])
    # an entry that is listed but not run by the sandbox
    listed_only = client.post(f"/v1/models/{ids[1]}", json=payload(sb.base_url))
    assert listed_only.json()["error_code"] == 400001


def test_catalog_price_switches(sb: Sandbox, client: httpx.Client) -> None:
    sb.set(price_unit="output", price_per_second_usd=0.3)
    entry = client.get(f"/v1/models/{MODEL_ID}").json()
    assert (entry["base_price_usd"], entry["price_unit"]) == (0.3, "output")
    sb.set(catalog_priced=False)
    entry = client.get(f"/v1/models/{MODEL_ID}").json()
    assert (entry["base_price_usd"], entry["price_unit"]) == (None, None)


def test_samples_are_public_and_valid(sb: Sandbox) -> None:
    names = set(sample_files())
    assert "portrait.png" in names
    assert len(names) >= 3
    for path in sample_files().values():
        assert path.stat().st_size < 200_000
    portrait = httpx.get(f"{sb.base_url}/samples/portrait.png", trust_env=False)
    assert portrait.status_code == 200
    assert portrait.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(f"{sb.base_url}/samples/..%2Fapp.py", trust_env=False).status_code == 404
    rows = sample_inputs(sb.base_url)
    assert len(rows) >= 2
    for row in rows:
        spec = InfiniteTalkInput(**{k: v for k, v in row.items() if k != "id"})
        assert spec.resolution == "480x480 (1:1)"
        assert spec.frames == 125
        audio = httpx.get(row["audio"], trust_env=False)
        assert audio.status_code == 200
        assert len(audio.content) > 1000


def test_sample_speech_lasts_3_to_8_seconds() -> None:
    import av

    for name, path in sample_files().items():
        if name.endswith(".png"):
            continue
        with av.open(str(path)) as container:
            seconds = container.duration / 1_000_000
        assert 3.0 <= seconds <= 8.0, (name, seconds)


def test_admin_api(sb: Sandbox, client: httpx.Client) -> None:
    admin = httpx.Client(base_url=f"{sb.base_url}/_sandbox", trust_env=False)
    assert admin.post("/config", json={"workers": 1, "result_ttl_s": 9}).json()["workers"] == 1
    assert sb.config.workers == 1
    assert sb.config.result_ttl_s == 9
    assert admin.post("/config", json={"workers": 0}).status_code == 422
    assert admin.post("/config", json={"no_such_switch": 1}).status_code == 422
    fault = admin.post("/faults", json={"endpoint": "status", "kind": "rate_limit", "count": 2})
    assert fault.json()["count"] == 2
    assert admin.post("/faults", json={"endpoint": "status", "kind": "nope"}).status_code == 422
    assert len(admin.get("/faults").json()) == 1

    rid = submit(client, sb.base_url)
    assert client.get(f"/v1/requests/{rid}/status").status_code == 429
    stats = admin.get("/stats").json()
    assert stats["submits_accepted"] == 1
    assert stats["requests_by_endpoint"] == {"submit": 1, "status": 1}
    assert stats["faults_pending"][0]["count"] == 1
    (record,) = admin.get("/requests").json()
    assert record["request_id"] == rid
    assert record["payload_sha256"] == next(iter(stats["submits_by_payload"]))
    assert {"submitted_at", "started_at", "finished_at", "submitted_mono", "state"} <= set(record)

    assert admin.post("/reset").json() == {"ok": True}
    assert admin.get("/requests").json() == []
    assert admin.get("/stats").json()["requests_total"] == 0
    assert admin.get("/faults").json() == []
    assert sb.config.workers == 1  # reset keeps the switches...
    admin.post("/reset", json={"config": True})
    assert sb.config.workers == BASE.workers  # ...unless asked


def test_token_never_appears_in_admin_output(sb: Sandbox, client: httpx.Client) -> None:
    rid = submit(client, sb.base_url)
    wait_result(client, rid)
    text = json.dumps([sb.stats(), sb.requests(), sb.config.public_dict()])
    assert sb.token not in text
    assert OTHER_TOKEN not in text
    assert BROKE_TOKEN not in text


def test_files_record_authorization_headers(sb: Sandbox, client: httpx.Client) -> None:
    url = wait_result(client, submit(client, sb.base_url))["output"]["video"]
    assert client.get(url).status_code == 200  # this client sends the token: counted
    httpx.get(url, trust_env=False)
    stats = sb.stats()
    assert (stats["file_requests"], stats["file_requests_with_authorization"]) == (2, 1)


# ------------------------------------------------------------------ ways to run it


async def test_async_context_manager() -> None:
    async with run_sandbox(BASE, workers=1) as sb:
        headers = {"Authorization": f"Bearer {sb.token}"}
        async with httpx.AsyncClient(base_url=sb.base_url, headers=headers, trust_env=False) as c:
            answer = await c.post(SUBMIT_PATH, json=payload(sb.base_url))
            assert answer.status_code == 200
        assert sb.stats()["submits_accepted"] == 1
    async with httpx.AsyncClient(trust_env=False) as after:
        with pytest.raises(httpx.ConnectError):
            await after.get(f"{sb.base_url}/_sandbox/health")


def test_command_line_entry() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect_runcomfy.sandbox",
            "--port",
            "0",
            "--run-seconds",
            "0.1-0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        token_line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        assert token_line.strip() == "token: sandbox-token"
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"{match.group(0)}/_sandbox/health", trust_env=False)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health.json()["ok"] is True
        config = httpx.get(f"{match.group(0)}/_sandbox/config", trust_env=False).json()
        assert config["run_seconds"] == [0.1, 0.2]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="submit_status_code"):
        SandboxConfig(submit_status_code=201)
    with pytest.raises(ValueError, match="range"):
        SandboxConfig(run_seconds=(3.0, 1.0))
    assert SandboxConfig(run_seconds=[1, 2]).run_seconds == (1.0, 2.0)  # type: ignore[arg-type]
    assert math.isclose(SandboxConfig(time_scale=0.5).time_scale, 0.5)
    assert np.isfinite(SandboxConfig().price_per_second_usd)


def test_idle_connection_outlives_the_clients_keepalive(sb: Sandbox) -> None:
    """The sandbox keeps an idle connection open longer than httpx keeps it in its pool.

    With both at 5 s, a request sent on a pooled connection as the server closed it failed with
    ReadError (seen in CI as a sandbox MediaFetchError on its own samples URL). The client must
    always be the side that gives up on an idle connection first.
    """
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    host, port = sb.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        request = f"GET /_sandbox/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        conn.sendall(request)
        assert _read_response(conn).startswith(b"HTTP/1.1 200")
        time.sleep(client_expiry + 1.0)
        conn.sendall(request)  # the same connection, idle for longer than httpx would keep it
        assert _read_response(conn).startswith(b"HTTP/1.1 200")


def _read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and Content-Length body): a server may send the two
    in separate segments (uvicorn 0.30 does), and what one recv() leaves belongs to this one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return data
