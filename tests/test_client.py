"""RunComfyClient over real HTTP against the sandbox: success, every error code, every fault."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_helpers import api_requests

from prefect_runcomfy.api.backoff import Backoff, parse_retry_after
from prefect_runcomfy.api.client import RunComfyClient, may_resend_submit
from prefect_runcomfy.api.models import InfiniteTalkInput, RequestStatus
from prefect_runcomfy.exceptions import (
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidRequestIdError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestNotFoundError,
    RunComfyAPIError,
    RunComfyError,
    ServerError,
    SubmitOutcomeUnknownError,
    TransportError,
)
from prefect_runcomfy.models.infinite_talk import MODEL_ID
from prefect_runcomfy.sandbox import Sandbox

FAST = Backoff(initial_s=0.01, max_delay_s=0.05)


def job(sb: Sandbox, prompt: str = "a person talks", **extra: Any) -> InfiniteTalkInput:
    return InfiniteTalkInput(
        prompt=prompt,
        image=f"{sb.base_url}/samples/portrait.png",
        audio=f"{sb.base_url}/samples/hello.mp3",
        resolution="480x480",
        **extra,
    )


def client_for(sb: Sandbox, **kwargs: Any) -> RunComfyClient:
    kwargs.setdefault("backoff", FAST)
    return RunComfyClient(kwargs.pop("token", sb.token), sb.base_url, **kwargs)


async def finish(client: RunComfyClient, request_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await client.result(request_id, include_cost=True)
        if result.status.is_terminal:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} did not finish in {timeout} s")


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


# --- success --------------------------------------------------------------------------------


async def test_submit_wait_and_download_a_real_video(sb: Sandbox, tmp_path: Path) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        assert submitted.request_id
        assert submitted.status_url and submitted.status_url.endswith("/status")
        state = await client.status(submitted.request_id)
        assert state.status in {RequestStatus.IN_QUEUE, RequestStatus.IN_PROGRESS}
        result = await finish(client, submitted.request_id)
        assert result.status is RequestStatus.SUCCEEDED
        assert result.cost is not None and result.cost > 0
        [url] = result.output_urls
        downloaded = await client.download(url, tmp_path / "out.mp4")
    assert downloaded.size == (tmp_path / "out.mp4").stat().st_size > 1000
    assert len(downloaded.sha256) == 64
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "out.mp4")) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (480, 480)
        assert container.streams.audio, "the video carries the speech"
    stats = sb.stats()
    assert stats["submits_accepted"] == 1
    assert stats["file_requests"] >= 1
    assert stats["file_requests_with_authorization"] == 0, "the token went to an output host"


async def test_status_after_success_says_completed(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        await finish(client, submitted.request_id)
        state = await client.status(submitted.request_id)
    assert state.status is RequestStatus.COMPLETED
    assert state.raw_status == "completed"


async def test_model_info_reads_the_catalog(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        info = await client.model_info()
    assert info.model_id == "community/infinite-talk/image-to-video"
    assert info.input_schema and "284_image" in info.input_schema["properties"]


async def test_cancel_a_queued_request_and_twice_is_harmless(sb: Sandbox) -> None:
    sb.set(workers=1, run_seconds=2.0)
    async with client_for(sb) as client:
        running = await client.submit(job(sb, "first"))
        queued = await client.submit(job(sb, "second"))
        await asyncio.sleep(0.3)
        first = await client.cancel(queued.request_id)
        second = await client.cancel(queued.request_id)
        busy = await client.cancel(running.request_id)
        assert first.cancelled and second.cancelled
        assert not busy.cancelled and busy.outcome == "not_cancellable"
        result = await client.result(queued.request_id)
    assert result.status is RequestStatus.CANCELLED


# --- every error code ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "shape"), [(404, "error_code"), (400, "error_code"), (404, "detail")]
)
async def test_unknown_model(sb: Sandbox, http_status: int, shape: str) -> None:
    sb.set(unknown_model_http_status=http_status, error_body_shape=shape)
    async with client_for(sb) as client:
        with pytest.raises(ModelNotFoundError) as caught:
            await client.submit(job(sb), model_id="community/no-such-model")
        with pytest.raises(ModelNotFoundError):
            await client.model_info("community/no-such-model")
    assert caught.value.status_code == http_status
    if shape == "error_code":
        assert caught.value.error_code == 400001


async def test_list_models_returns_the_sandboxs_catalog(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        models = await client.list_models()
        found = await client.list_models("infinite")
        by_category = await client.list_models(category="text-to-image")
        page = await client.list_models(limit=1, offset=2)
        categories = await client.list_categories()
    assert len(models) == 3 and models[0].model_id == MODEL_ID
    talk = models[0]
    assert (talk.base_price_usd, talk.price_unit) == (0.015, "second")
    assert talk.usable_price and talk.pricing_note and "lip-sync" in talk.categories
    assert [m.model_id for m in found] == [MODEL_ID]
    assert [m.price_unit for m in by_category] == ["image"]
    assert [m.model_id for m in page] == [models[2].model_id]
    assert "image-to-video" in categories


@pytest.mark.parametrize("http_status", [401, 403])
async def test_bad_token(sb: Sandbox, http_status: int) -> None:
    sb.set(auth_http_status=http_status)
    async with client_for(sb, token="not-a-real-token") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(job(sb))
    assert caught.value.error_code == 400004
    assert caught.value.status_code == http_status
    assert sb.stats()["submits_accepted"] == 0


async def test_no_balance(sb: Sandbox) -> None:
    token = sb.config.no_balance_tokens[0]
    async with client_for(sb, token=token) as client:
        with pytest.raises(InsufficientBalanceError) as caught:
            await client.submit(job(sb))
    assert caught.value.error_code == 400002
    assert "top up" in str(caught.value)


async def test_request_of_another_user(sb: Sandbox) -> None:
    other = sb.config.tokens[1]
    async with client_for(sb) as mine, client_for(sb, token=other) as theirs:
        submitted = await mine.submit(job(sb))
        with pytest.raises(PermissionDeniedError) as caught:
            await theirs.result(submitted.request_id)
    assert caught.value.error_code == 403001


async def test_unknown_request(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        with pytest.raises(RequestNotFoundError) as caught:
            await client.status("00000000-0000-0000-0000-000000000000")
    assert caught.value.error_code == 404001
    assert caught.value.request_id == "00000000-0000-0000-0000-000000000000"


async def test_rejected_input_carries_the_servers_detail(sb: Sandbox) -> None:
    payload = job(sb).to_api_payload() | {"128_steps": 99}
    async with client_for(sb) as client:
        with pytest.raises(InputRejectedError) as caught:
            await client.submit(payload)
    assert caught.value.status_code == 422
    assert "128_steps" in str(caught.value)


@pytest.mark.parametrize("shape", ["error_code", "detail", "code"])
async def test_a_schema_rejection_says_the_message_and_every_detail(
    sb: Sandbox, shape: str
) -> None:
    # RunComfy's 422: {"error_code", "error_message": "input does not match the schema",
    # "detail": [...]}; the message alone would hide which field is wrong.
    sb.set(error_body_shape=shape)
    payload = job(sb).to_api_payload() | {"128_steps": 99, "270_value": 7}
    async with client_for(sb) as client:
        with pytest.raises(InputRejectedError) as caught:
            await client.submit(payload)
    text = str(caught.value)
    if shape != "detail":
        assert "input does not match the schema" in text
    assert "128_steps: " in text and "270_value: " in text
    assert isinstance(caught.value.detail, list) and len(caught.value.detail) == 2
    assert sb.stats()["submits_accepted"] == 0


def test_error_reasons_of_every_shape_are_kept_whole_and_cut_at_a_limit() -> None:
    from prefect_runcomfy.api.client import MAX_REASON_CHARS, _error_detail

    assert _error_detail({"error_message": "bad", "detail": "steps too high"}) == (
        "bad: steps too high"
    )
    assert _error_detail(
        {"error_message": "input does not match the schema", "detail": ["128_steps: 6..20"]}
    ) == ("input does not match the schema: 128_steps: 6..20")
    pydantic_style = {"detail": [{"loc": ["body", "128_steps"], "msg": "too big"}]}
    assert _error_detail(pydantic_style) == "128_steps: too big"
    assert _error_detail({"error": {"type": "Quota", "message": "slow down"}}) == "slow down"
    assert _error_detail({"detail": {"field": "x", "limits": [1, 2]}}) == (
        '{"field": "x", "limits": [1, 2]}'
    )
    # the message repeated in the detail is said once
    assert _error_detail({"error_message": "no", "detail": "no"}) == "no"
    long = _error_detail({"error_message": "x" * 5000, "detail": ["a"] * 100})
    assert len(long) == MAX_REASON_CHARS and long.endswith("…")
    assert "\n" not in _error_detail({"detail": "two\nlines"})
    many = _error_detail({"detail": [f"f{i}: bad" for i in range(30)]})
    assert "f19: bad" in many and "f20" not in many and "and 10 more" in many


async def test_an_echoed_token_is_redacted_from_the_reason_before_it_is_cut(sb: Sandbox) -> None:
    # An error body that echoes the token (in its message or deep in its detail): the
    # message says '**********', and no cut can leave a piece of the token behind.
    secret = sb.token
    async with client_for(sb) as client:
        request = httpx.Request("POST", f"{sb.base_url}/v1/models/x")
        body = {
            "error_message": "x" * (990 - len(secret)) + secret,
            "detail": [{"msg": f"token {secret} refused"}],
        }
        error = client._error_for(httpx.Response(422, json=body, request=request), body, None, None)
    assert secret not in str(error) and secret[:6] not in str(error)
    assert secret not in repr(error.detail)


@pytest.mark.parametrize("shape", ["error_code", "detail", "code"])
async def test_every_error_body_shape_is_understood(sb: Sandbox, shape: str) -> None:
    sb.set(error_body_shape=shape)
    async with client_for(sb, token="nope") as client:
        with pytest.raises(AuthenticationError):
            await client.status("whatever")


# --- faults ---------------------------------------------------------------------------------


async def test_dropped_submit_answer_is_outcome_unknown_and_never_resent(sb: Sandbox) -> None:
    sb.add_fault(endpoint="submit", kind="drop_after_accept", count=1)
    async with client_for(sb) as client:
        with pytest.raises(SubmitOutcomeUnknownError) as caught:
            await client.submit(job(sb))
    assert "not sent again" in str(caught.value)
    stats = sb.stats()
    assert stats["submits_accepted"] == 1, "the job exists: the server accepted it"
    assert max(stats["submits_by_payload"].values()) == 1, "the client must not resend it"


async def test_a_malformed_request_id_is_an_unknown_outcome_never_put_in_a_url(
    sb: Sandbox,
) -> None:
    sb.set(request_id_shape="malformed")
    async with client_for(sb) as client:
        with pytest.raises(SubmitOutcomeUnknownError) as caught:
            await client.submit(job(sb))
        assert caught.value.cause == "malformed_request_id"
        assert "may be running and billed" in str(caught.value)
        before = api_requests(sb)
        for bad in ("../x", "a/b", "a?b=1", "", "x" * 129, "id with space", "ü"):
            with pytest.raises(InvalidRequestIdError):
                await client.status(bad)
            with pytest.raises(InvalidRequestIdError):
                await client.result(bad)
            with pytest.raises(InvalidRequestIdError):
                await client.cancel(bad)
    stats = sb.stats()
    assert stats["submits_accepted"] == 1, "the job was created: it is billed"
    assert api_requests(sb) == before, "no malformed id reached the server"
    assert "status" not in stats["requests_by_endpoint"]


async def test_submit_5xx_is_outcome_unknown(sb: Sandbox) -> None:
    sb.add_fault(endpoint="submit", kind="server_error", http_status=502, count=1)
    async with client_for(sb) as client:
        with pytest.raises(SubmitOutcomeUnknownError):
            await client.submit(job(sb))
    assert sb.stats()["requests_by_endpoint"]["submit"] == 1


async def test_submit_read_timeout_is_outcome_unknown(sb: Sandbox) -> None:
    sb.add_fault(endpoint="submit", kind="slow", retry_after=1.5, count=1)
    async with client_for(sb, timeout=httpx.Timeout(5.0, read=0.3)) as client:
        with pytest.raises(SubmitOutcomeUnknownError) as caught:
            await client.submit(job(sb))
    assert caught.value.cause == "ReadTimeout"
    await asyncio.sleep(1.5)
    assert sb.stats()["submits_accepted"] == 1


async def test_submit_refused_with_429_is_retried_after_the_wait_asked_for(sb: Sandbox) -> None:
    sb.add_fault(endpoint="submit", kind="rate_limit", retry_after=0.5, count=2)
    async with client_for(sb) as client:
        started = time.monotonic()
        submitted = await client.submit(job(sb))
        waited = time.monotonic() - started
    assert submitted.request_id
    assert waited >= 1.0, "Retry-After was honoured twice"
    stats = sb.stats()
    assert stats["requests_by_endpoint"]["submit"] == 3
    assert stats["submits_accepted"] == 1


async def test_submit_to_a_closed_port_never_sent_is_retried_then_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RunComfyClient("t", f"http://127.0.0.1:{port}", backoff=FAST, max_retries=2) as c:
        with pytest.raises(TransportError) as caught:
            await c.submit({"241_positive_prompt": "x"})
        assert c.requests_sent == 3
    assert "nothing was submitted" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "resend"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("no answer to SYN"), True),
        (httpx.PoolTimeout("no free connection"), True),
        (httpx.UnsupportedProtocol("ftp://"), True),
        (RateLimitedError("429", status_code=429, retry_after=1.0), True),
        (httpx.ReadTimeout("sent, no answer"), False),
        (httpx.WriteTimeout("half sent"), False),
        (httpx.RemoteProtocolError("dropped"), False),
        (httpx.ReadError("reset"), False),
        (ServerError("502", status_code=502), False),
        (TransportError("unreachable, but not said how"), False),
        (InputRejectedError("422", status_code=422), False),
    ],
)
def test_the_submit_rule_resends_only_what_never_left_or_was_refused(
    error: BaseException, resend: bool
) -> None:
    assert may_resend_submit(error) is resend


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("rate_limit", {"retry_after": 0.2}),
        ("server_error", {"http_status": 503}),
        ("drop_before_accept", {}),
        ("drop_after_accept", {}),
        ("error_code_200", {"error_code": 500001}),
    ],
)
async def test_reads_are_retried_through_faults(sb: Sandbox, kind: str, extra: dict) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        sb.add_fault(endpoint="result", kind=kind, count=2, **extra)
        result = await client.result(submitted.request_id)
    assert result.request_id == submitted.request_id
    assert sb.stats()["requests_by_endpoint"]["result"] == 3


async def test_retries_are_bounded(sb: Sandbox) -> None:
    async with client_for(sb, max_retries=2) as client:
        submitted = await client.submit(job(sb))
        sb.add_fault(endpoint="status", kind="server_error", http_status=500, count=10)
        with pytest.raises(ServerError):
            await client.status(submitted.request_id)
    assert sb.stats()["requests_by_endpoint"]["status"] == 3


async def test_a_retry_after_too_long_is_not_waited_for(sb: Sandbox) -> None:
    sb.add_fault(endpoint="status", kind="rate_limit", retry_after=600, count=1)
    async with client_for(sb, max_retry_after_s=5) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.status("anything")
    assert caught.value.retry_after == 600


async def test_http_200_with_error_code_is_an_error(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        sb.add_fault(endpoint="status", kind="error_code_200", error_code=404001, count=1)
        with pytest.raises(RequestNotFoundError):
            await client.status(submitted.request_id)
        sb.add_fault(endpoint="submit", kind="error_code_200", error_code=400002, count=1)
        with pytest.raises(InsufficientBalanceError):
            await client.submit(job(sb, "another"))
    assert sb.stats()["submits_accepted"] == 1


async def test_cancel_is_retried(sb: Sandbox) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        sb.add_fault(endpoint="cancel", kind="server_error", http_status=500, count=1)
        outcome = await client.cancel(submitted.request_id)
    assert outcome.request_id == submitted.request_id
    assert sb.stats()["requests_by_endpoint"]["cancel"] == 2


# --- [GAP] readings --------------------------------------------------------------------------


async def test_submit_answered_with_202(sb: Sandbox) -> None:
    sb.set(submit_status_code=202)
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
    assert submitted.request_id
    assert submitted.extras().get("status") == "in_queue"


@pytest.mark.parametrize("word", ["completed", "failed"])
@pytest.mark.parametrize("shape", ["string", "object", "failure_reason"])
async def test_failed_runs_in_every_reading(sb: Sandbox, word: str, shape: str) -> None:
    sb.set(failed_status_word=word, error_shape=shape)
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb, "[sandbox:fail] talk"))
        result = await finish(client, submitted.request_id)
        state = await client.status(submitted.request_id)
    assert result.status is RequestStatus.FAILED
    assert result.output_urls == []
    assert result.error_message
    assert state.status is RequestStatus.parse(word)


async def test_canceled_with_one_l(sb: Sandbox) -> None:
    sb.set(workers=1, run_seconds=2.0, cancelled_spelling="canceled")
    async with client_for(sb) as client:
        await client.submit(job(sb, "busy"))
        queued = await client.submit(job(sb, "waiting"))
        await client.cancel(queued.request_id)
        state = await client.status(queued.request_id)
    assert state.raw_status == "canceled"
    assert state.status is RequestStatus.CANCELLED


async def test_transient_states_are_not_finished(sb: Sandbox) -> None:
    sb.set(transient_states=True, run_seconds=1.0)
    seen: set[str | None] = set()
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        for _ in range(100):
            state = await client.status(submitted.request_id)
            seen.add(state.raw_status)
            if state.status.is_terminal:
                break
            assert state.status in {
                RequestStatus.UNKNOWN,
                RequestStatus.IN_QUEUE,
                RequestStatus.IN_PROGRESS,
            }
            await asyncio.sleep(0.05)
    assert seen & {"pending", "starting"}, seen


async def test_videos_list_output_and_epoch_timestamps(sb: Sandbox) -> None:
    sb.set(output_shape="videos", timestamp_format="epoch")
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        result = await finish(client, submitted.request_id)
    assert isinstance(result.output["videos"], list)
    assert len(result.output_urls) == 1
    assert isinstance(result.finished_at, float)


async def test_not_found_just_after_submit(sb: Sandbox) -> None:
    sb.set(not_found_after_submit_s=0.5)
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        with pytest.raises(RequestNotFoundError):
            await client.status(submitted.request_id)
        await asyncio.sleep(0.6)
        state = await client.status(submitted.request_id)
    assert state.request_id == submitted.request_id


async def test_expired_result_and_output(sb: Sandbox, tmp_path: Path) -> None:
    async with client_for(sb) as client:
        submitted = await client.submit(job(sb))
        result = await finish(client, submitted.request_id)
        sb.set(result_ttl_s=0.0)
        await asyncio.sleep(0.1)
        with pytest.raises(RequestNotFoundError) as caught:
            await client.result(submitted.request_id)
        with pytest.raises(DownloadError, match="expired"):
            await client.download(result.output_urls[0], tmp_path / "late.mp4")
    assert "expired" in str(caught.value)


# --- configuration and secrecy ----------------------------------------------------------------


TOKEN_VARIABLES = ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY")


def test_no_token_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOKEN_VARIABLES:
        monkeypatch.setenv(name, "  ")  # blank counts as unset
    with pytest.raises(ConfigurationError) as caught:
        RunComfyClient()
    for name in TOKEN_VARIABLES:
        assert name in str(caught.value)


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_each_token_variable_is_read_in_order(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch, position: int
) -> None:
    # RUNCOMFY_API_TOKEN, then RUNCOMFY_TOKEN (RunComfy's CLI and ComfyUI nodes), then
    # RUNCOMFY_API_KEY (its MCP servers): the first one set is used, the later ones never.
    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TOKEN_VARIABLES[position], sb.token)
    for later in TOKEN_VARIABLES[position + 1 :]:
        monkeypatch.setenv(later, "a-token-the-sandbox-refuses")
    async with RunComfyClient(base_url=sb.base_url, backoff=FAST) as client:
        submitted = await client.submit(job(sb))
    assert submitted.request_id
    assert sb.stats()["submits_rejected"] == {}


async def test_a_given_token_wins_over_every_variable(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TOKEN_VARIABLES:
        monkeypatch.setenv(name, "a-token-the-sandbox-refuses")
    async with RunComfyClient(sb.token, sb.base_url, backoff=FAST) as client:
        assert (await client.submit(job(sb))).request_id


async def test_environment_supplies_token_and_base_url(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", sb.token)
    monkeypatch.setenv("RUNCOMFY_BASE_URL", sb.base_url)
    async with RunComfyClient() as client:
        info = await client.model_info()
        assert client.base_url == sb.base_url
    assert info.model_id


async def test_user_agent_names_the_package(sb: Sandbox) -> None:
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers["User-Agent"])

    async with client_for(sb) as client:
        client._api.event_hooks["request"].append(record)
        await client.model_info()
    assert seen and seen[0].startswith("prefect-runcomfy/")


async def test_the_token_is_in_no_repr_log_or_exception(
    sb: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    secret = sb.token
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    sb.add_fault(endpoint="status", kind="server_error", http_status=500, count=1)
    async with client_for(sb) as client:
        texts.append(repr(client))
        submitted = await client.submit(job(sb))
        await client.status(submitted.request_id)
        sb.add_fault(endpoint="submit", kind="drop_after_accept", count=1)
        for call in (
            client.submit(job(sb, "dropped")),
            client.status("missing"),
            client.submit(job(sb), model_id="x/y"),
        ):
            with pytest.raises(RunComfyError) as caught:
                await call
            texts += [str(caught.value), repr(caught.value), repr(vars(caught.value))]
    async with client_for(sb, token="wrong-token-value") as bad:
        with pytest.raises(RunComfyAPIError) as caught:
            await bad.status("x")
        texts += [str(caught.value), repr(vars(caught.value))]
    texts += [r.getMessage() for r in caplog.records]
    assert texts
    for text in texts:
        assert secret not in text
        assert "wrong-token-value" not in text


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    delays = [Backoff(initial_s=1, max_delay_s=8).delay(n) for n in range(8)]
    assert all(0 <= d <= 8 for d in delays)
    assert delays[-1] > delays[0]
