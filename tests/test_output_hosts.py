"""The output host policy over real HTTP: a sandbox that also listens on 127.0.0.2 plays the
foreign host a spoofed answer (or a redirect) would name; its counter shows it was never asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from prefect_runcomfy.api.backoff import Backoff
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.hosts import DEFAULT_MAX_OUTPUT_BYTES, HostRule, OutputPolicy
from prefect_runcomfy.api.models import InfiniteTalkInput, RequestResult
from prefect_runcomfy.engine.record.outcome import StoredFile
from prefect_runcomfy.exceptions import ConfigurationError, OutputRefusedError
from prefect_runcomfy.sandbox import Sandbox

FAST = Backoff(initial_s=0.01, max_delay_s=0.05)


@pytest.fixture
def sb(two_host_sandbox: Sandbox) -> Sandbox:
    two_host_sandbox.reset(config=True)
    return two_host_sandbox


def client_for(sb: Sandbox, **kwargs: Any) -> RunComfyClient:
    return RunComfyClient(sb.token, sb.base_url, backoff=FAST, **kwargs)


async def finished_result(client: RunComfyClient, sb: Sandbox) -> RequestResult:
    job = InfiniteTalkInput(
        prompt="a person talks",
        image=f"{sb.base_url}/samples/portrait.png",
        audio=f"{sb.base_url}/samples/hello.mp3",
        resolution="480x480",
    )
    request_id = (await client.submit(job)).request_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = await client.result(request_id)
        if result.status.is_terminal:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


def file_requests(sb: Sandbox) -> dict[str, int]:
    counts: dict[str, int] = sb.stats()["file_requests_by_listener"]
    return counts


# --- over HTTP ----------------------------------------------------------------------------------


async def test_the_apis_own_host_is_allowed_and_gets_no_token(sb: Sandbox, tmp_path: Path) -> None:
    async with client_for(sb) as client:
        result = await finished_result(client, sb)
        done = await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert done.size > 1000 and done.content_type == "video/mp4"
    assert file_requests(sb) == {"api": 1, "foreign": 0}
    assert sb.stats()["file_requests_with_authorization"] == 0


async def test_an_output_on_a_foreign_host_is_never_fetched(sb: Sandbox, tmp_path: Path) -> None:
    sb.set(output_urls_on="foreign")
    async with client_for(sb) as client:
        result = await finished_result(client, sb)
        assert result.output_urls[0].startswith(sb.foreign_base_url)
        with pytest.raises(OutputRefusedError) as caught:
            await client.download(result.output_urls[0], tmp_path / "v.mp4")
    refused = caught.value
    assert (refused.reason, refused.host) == ("host", "127.0.0.2")
    message = str(refused)
    assert "127.0.0.2" in message and "not an allowed output host" in message
    assert f"RUNCOMFY_OUTPUT_HOSTS={sb.foreign_base_url}" in message
    assert "RunComfyCredentials.output_hosts" in message
    assert file_requests(sb) == {"api": 0, "foreign": 0}, "the foreign host was never asked"
    assert not (tmp_path / "v.mp4").exists()


async def test_every_redirect_hop_is_checked_before_it_is_followed(
    sb: Sandbox, tmp_path: Path
) -> None:
    sb.set(files_redirect="foreign")
    async with client_for(sb) as client:
        result = await finished_result(client, sb)
        with pytest.raises(OutputRefusedError) as caught:
            await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert caught.value.host == "127.0.0.2"
    assert "redirected to" in str(caught.value)
    assert file_requests(sb) == {"api": 1, "foreign": 0}, "the redirect was not followed"
    # a redirect that stays on an allowed host is followed
    sb.set(files_redirect="self")
    async with client_for(sb) as client:
        done = await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert done.size > 1000
    assert file_requests(sb) == {"api": 3, "foreign": 0}


@pytest.mark.parametrize("how", ["client", "environment"])
async def test_a_foreign_host_the_user_allows_is_fetched(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sb.set(files_redirect="foreign")
    pattern = sb.foreign_base_url  # http://127.0.0.2:<port>
    kwargs: dict[str, Any] = {}
    if how == "client":
        kwargs["output_hosts"] = [pattern]
    else:
        monkeypatch.setenv("RUNCOMFY_OUTPUT_HOSTS", f"cdn.example.test, {pattern}")
    async with client_for(sb, **kwargs) as client:
        result = await finished_result(client, sb)
        done = await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert done.size > 1000
    assert file_requests(sb) == {"api": 1, "foreign": 1}
    assert sb.stats()["file_requests_with_authorization"] == 0, "no token to any output host"


async def test_an_output_over_the_size_cap_is_refused_and_removed(
    sb: Sandbox, tmp_path: Path
) -> None:
    async with client_for(sb, max_output_bytes=1000) as client:
        result = await finished_result(client, sb)
        with pytest.raises(OutputRefusedError) as caught:
            await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert caught.value.reason == "size"
    assert "more than the 1000 bytes" in str(caught.value)
    assert "max_output_bytes" in str(caught.value)
    assert not (tmp_path / "v.mp4").exists()


async def test_an_output_without_a_length_is_counted_and_cut_at_the_cap(
    sb: Sandbox, tmp_path: Path
) -> None:
    # chunked, no Content-Length: the bytes are counted as they come
    sb.set(files_without_length=True, output_padding_bytes=3 << 20)
    async with client_for(sb, max_output_bytes=2 << 20) as client:
        result = await finished_result(client, sb)
        with pytest.raises(OutputRefusedError) as caught:
            await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert caught.value.reason == "size" and f"passed {2 << 20} bytes" in str(caught.value)
    assert not (tmp_path / "v.mp4").exists()
    async with client_for(sb, max_output_bytes=4 << 20) as client:
        done = await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert done.size > 3 << 20


async def test_a_local_folder_takes_the_download_in_place_and_keeps_nothing_refused(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local output folder gets the video written beside its final name and renamed: no
    staging copy under the system temp folder, and nothing hidden left when it is refused."""
    import tempfile

    from prefect_runcomfy.engine.outputs.store import OutputStore
    from prefect_runcomfy.engine.run.steps import store_files

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    out = tmp_path / "out"
    store = OutputStore(str(out))

    def keep(result: RequestResult, client: RunComfyClient) -> Awaitable[tuple[StoredFile, ...]]:
        policy = client.output_policy
        return store_files(
            result, "r1", store, http=client.output_http, policy=policy, suffix=".mp4"
        )

    sb.set(files_without_length=True, output_padding_bytes=3 << 20)
    async with client_for(sb, max_output_bytes=2 << 20) as client:
        result = await finished_result(client, sb)
        with pytest.raises(OutputRefusedError):
            await keep(result, client)
    assert sorted(p.name for p in out.rglob("*")) == [], "nothing kept, nothing hidden"
    async with client_for(sb, max_output_bytes=4 << 20) as client:
        files = await keep(result, client)
    assert sorted(p.name for p in out.rglob("*")) == ["r1.mp4", "r1.poster.jpg"]
    assert files[0].uri == str(out / "r1.mp4") and files[0].size == (out / "r1.mp4").stat().st_size
    assert files[0].video and files[0].video["width"] > 0
    assert list(system_tmp.iterdir()) == [], "no staging folder for a local output folder"


async def test_an_output_that_is_not_a_video_is_refused(sb: Sandbox, tmp_path: Path) -> None:
    sb.set(output_content_type="text/html")
    async with client_for(sb) as client:
        result = await finished_result(client, sb)
        with pytest.raises(OutputRefusedError) as caught:
            await client.download(result.output_urls[0], tmp_path / "v.mp4")
    assert caught.value.reason == "type"
    assert "'text/html'" in str(caught.value) and "RUNCOMFY_OUTPUT_TYPES" in str(caught.value)
    assert sb.stats()["file_requests"] == 1, "a refusal is not tried again"
    sb.set(output_content_type="application/octet-stream")
    async with client_for(sb) as client:
        assert (await client.download(result.output_urls[0], tmp_path / "v.mp4")).size > 1000


# --- the rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://playgrounds-storage-public.runcomfy.net/a/b.mp4?sig=1", True),
        ("https://files.runcomfy.com/x.mp4", True),
        ("https://a.b.runcomfy.net/x.mp4", True),
        ("https://FILES.RunComfy.NET./x.mp4", True),
        ("http://files.runcomfy.net/x.mp4", False),  # https only
        ("https://files.runcomfy.net:8443/x.mp4", False),  # its own port only
        ("https://runcomfy.net.evil.test/x.mp4", False),
        ("https://evilruncomfy.net/x.mp4", False),
        ("https://files.runcomfy.net@169.254.169.254/latest", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://127.0.0.1:8787/files/x.mp4", True),  # the API's own host, scheme and port
        ("https://127.0.0.1:8787/files/x.mp4", False),
        ("http://127.0.0.1:8788/files/x.mp4", False),
        ("file:///etc/passwd", False),
        ("ftp://files.runcomfy.net/x.mp4", False),
        ("https://xn--fles-runcomfy.net/a.mp4", False),  # a host IDNA cannot decode
    ],
)
def test_the_default_policy(url: str, allowed: bool) -> None:
    policy = OutputPolicy.build("http://127.0.0.1:8787", environ={})
    if allowed:
        policy.check_url(url)
    else:
        with pytest.raises(OutputRefusedError):
            policy.check_url(url)


def test_host_patterns() -> None:
    assert str(HostRule.parse("cdn.example.com")) == "https://cdn.example.com"
    assert str(HostRule.parse("*.Example.com.")) == "https://*.example.com"
    assert str(HostRule.parse("http://10.0.0.5:8080")) == "http://10.0.0.5:8080"
    assert str(HostRule.parse("https://[::1]:*")) == "https://[::1]:*"
    any_port = HostRule.parse("cdn.example.com:*")
    assert any_port.allows("https", "cdn.example.com", 9443)
    assert not any_port.allows("http", "cdn.example.com", 80)
    for bad in ("*", "*.", "ftp://x.test", "https://x.test/path", "x.test:99999", "u@x.test"):
        with pytest.raises(ConfigurationError):
            HostRule.parse(bad)
    policy = OutputPolicy.build(
        environ={"RUNCOMFY_OUTPUT_HOSTS": "a.test,  *.b.test", "RUNCOMFY_OUTPUT_TYPES": "image/*"}
    )
    policy.check_url("https://a.test/x")
    policy.check_url("https://c.b.test/x")
    assert policy.allows_type("image/png") and policy.allows_type("video/mp4; codecs=avc1")
    assert not policy.allows_type("video/") and not policy.allows_type("text/html")
    assert policy.max_bytes == DEFAULT_MAX_OUTPUT_BYTES == 2 * 1024**3
    with pytest.raises(ConfigurationError):
        OutputPolicy.build(max_bytes=0)


def test_the_block_carries_output_hosts_and_the_cap() -> None:
    from prefect_runcomfy import RunComfyCredentials

    block = RunComfyCredentials(
        api_token="x",
        base_url="http://127.0.0.1:9",
        output_hosts=["cdn.example.test"],
        max_output_bytes=10,
    )
    client = block.get_client()
    try:
        client.output_policy.check_url("https://cdn.example.test/v.mp4")
        client.output_policy.check_url("http://127.0.0.1:9/files/v.mp4")
        assert client.output_policy.max_bytes == 10
    finally:
        asyncio.run(client.aclose())
    with pytest.raises(ValueError, match="name the host"):
        RunComfyCredentials(api_token="x", output_hosts=["*"])
