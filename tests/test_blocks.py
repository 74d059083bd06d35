"""RunComfyCredentials saved to and loaded from a real Prefect API; the token stays secret."""

from __future__ import annotations

import html
import logging
import re

import pytest
from prefect import flow, task
from prefect.logging import get_run_logger

from prefect_runcomfy import RunComfyCredentials
from prefect_runcomfy.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("prefect_api")


async def test_save_load_and_use_against_the_sandbox(shared_sandbox: Sandbox) -> None:
    sb = shared_sandbox
    await RunComfyCredentials(api_token=sb.token, base_url=sb.base_url + "/", timeout=5).save(
        "sandbox-creds", overwrite=True
    )
    loaded = await RunComfyCredentials.load("sandbox-creds")
    assert loaded.api_token.get_secret_value() == sb.token
    assert loaded.base_url == sb.base_url
    assert loaded.timeout == 5
    async with loaded.get_client() as client:
        info = await client.model_info()
    assert info.model_id == "community/infinite-talk/image-to-video"


async def test_a_block_wins_over_every_token_variable(
    shared_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = shared_sandbox
    for name in ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY"):
        monkeypatch.setenv(name, "a-token-the-sandbox-refuses")
    block = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url)
    async with block.get_client() as client:
        info = await client.model_info()  # the refused token would raise AuthenticationError
    assert info.model_id == "community/infinite-talk/image-to-video"


def test_every_field_is_described() -> None:
    for name, field in RunComfyCredentials.model_fields.items():
        assert field.description, name
        assert field.title, name
    assert ".load(" in (RunComfyCredentials.__doc__ or "")


def test_the_block_forms_help_renders_as_written() -> None:
    """Prefect's UI renders a field's description as markdown: a `*` pattern outside code
    turns into italics and loses its stars. Each help text, rendered, must read as written
    (code spans shown without their backticks)."""
    from markdown_it import MarkdownIt

    for name, field in RunComfyCredentials.model_fields.items():
        text = field.description or ""
        rendered = MarkdownIt().render(text)
        assert "<em>" not in rendered and "<strong>" not in rendered, (name, rendered)
        shown = html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip()
        assert shown == text.replace("`", ""), (name, shown)


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="https://"):
        RunComfyCredentials(api_token="x", base_url="ftp://example.test")


async def test_token_never_appears_in_reprs_logs_or_run_output(
    shared_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "rc-super-secret-token-value"
    creds = RunComfyCredentials(api_token=secret, base_url=shared_sandbox.base_url)
    await creds.save("secret-creds", overwrite=True)

    @task
    async def use_it(block_name: str) -> str:
        loaded = await RunComfyCredentials.load(block_name)
        get_run_logger().info("loaded %r", loaded)
        async with loaded.get_client() as client:
            try:
                await client.status("nope")
            except Exception as exc:  # the sandbox refuses this token
                get_run_logger().warning("failed: %s", exc)
                return repr(exc)
        return "unexpected"

    @flow
    async def probe() -> str:
        return await use_it("secret-creds")

    caplog.set_level(logging.DEBUG)
    outcome = await probe()
    texts = [repr(creds), str(creds), creds.model_dump_json(), outcome]
    texts += [r.getMessage() for r in caplog.records]
    assert any("failed:" in t for t in texts), "the failing call was logged"
    for text in texts:
        assert secret not in text
