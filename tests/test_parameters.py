"""The flows' parameters as a person meets them: a short run form with sections (the schema
Prefect builds from the signatures), and output locations given as Prefect filesystem blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import pytest
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.utilities.callables import parameter_schema

from prefect_runcomfy import (
    Concurrency,
    MediaOptions,
    RunComfyCredentials,
    Spending,
    Waiting,
    collect_outstanding_requests,
    generate_talking_videos,
    generate_talking_videos_sharded,
)
from prefect_runcomfy.locations import storage_location
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

FAST = {"waiting": Waiting(poll_initial_s=0.1, poll_max_s=0.5)}


def _schema(flow: Any) -> dict[str, Any]:
    return parameter_schema(flow.fn).model_dump_for_openapi()


def _section_fields(schema: dict[str, Any], name: str) -> list[str]:
    """The fields of the section `name` (a `$ref`, possibly under `allOf`, to a definition)."""
    prop = schema["properties"][name]
    ref = prop.get("$ref") or prop["allOf"][0]["$ref"]
    return list(schema["definitions"][ref.rsplit("/", 1)[-1]]["properties"])


def test_the_run_form_has_few_top_level_fields_and_sections() -> None:
    schema = _schema(generate_talking_videos)
    top = list(schema["properties"])
    assert top == [
        "inputs",
        "output_uri",
        "credentials",
        "max_concurrency",
        "max_wait_s",
        "storage_options",
        "staging_uri",
        "inline_media",
        "spending",
        "media",
        "waiting",
        "concurrency",
        "artifact_key",
        "shard",
    ]
    assert schema["required"] == ["inputs", "output_uri"]  # the common call: (inputs, output_uri)
    assert _section_fields(schema, "spending") == [
        "max_submits",
        "max_cost_usd",
        "allow_failed_rows",
        "retry_failed",
        "resubmit_unknown",
    ]
    assert _section_fields(schema, "media") == [
        "on_invalid",
        "input_storage_options",
        "staging_storage_options",
    ]
    assert _section_fields(schema, "waiting") == [
        "poll_initial_s",
        "poll_max_s",
        "not_found_grace_s",
        "poll_strategy",
        "cancel_queued_at_deadline",
    ]
    assert _section_fields(schema, "concurrency") == ["limit", "single_writer"]
    # the internal knobs are not parameters any more
    for gone in ("model_id", "manifest_name", "heartbeat_name", "heartbeat_s", "poll_max_s"):
        assert gone not in top
    # every field of a section says what it is for, in the form
    spending = schema["definitions"]["Spending"]["properties"]
    assert all(field.get("description") for field in spending.values())
    # output and staging locations may be filesystem blocks
    assert "RemoteFileSystem" in str(schema["properties"]["output_uri"])
    assert "LocalFileSystem" in str(schema["properties"]["staging_uri"])


def test_collect_and_sharded_share_the_sections() -> None:
    collect = _schema(collect_outstanding_requests)
    assert len(collect["properties"]) <= 10
    assert _section_fields(collect, "waiting") == _section_fields(
        _schema(generate_talking_videos), "waiting"
    )
    sharded = _schema(generate_talking_videos_sharded)
    assert "shard_parameters" not in sharded["properties"]
    assert {"spending", "media", "waiting", "concurrency", "shard_watch"} <= set(
        sharded["properties"]
    )
    assert len(sharded["properties"]) <= 15


def test_sections_take_json_objects_and_refuse_unknown_fields() -> None:
    assert Spending.model_validate({"max_submits": 3}).max_submits == 3
    with pytest.raises(ValueError, match="max_submit"):
        Spending.model_validate({"max_submit": 3})  # a typo must not mean "no limit"
    assert Concurrency(limit="x").limit == "x" and MediaOptions().on_invalid == "continue"


def test_a_location_block_is_a_uri_and_its_settings(tmp_path: Path) -> None:
    remote = RemoteFileSystem(basepath="s3://bucket/videos", settings={"key": "k", "anon": False})
    assert storage_location(remote, {"anon": True}) == (
        "s3://bucket/videos",
        {"key": "k", "anon": True},
    )
    local = LocalFileSystem(basepath=str(tmp_path / "o"))
    assert storage_location(local, None) == (str(tmp_path / "o"), None)
    assert storage_location("memory://x", {"a": 1}) == ("memory://x", {"a": 1})


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


@pytest.mark.usefixtures("prefect_api")
async def test_output_to_filesystem_blocks_keeps_their_settings_out_of_the_run(
    sb: Sandbox, tmp_path: Path
) -> None:
    creds = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)
    table = [dict(r, id=f"b{i}") for i, r in enumerate(sample_inputs(sb.base_url)[:1])]
    local = LocalFileSystem(basepath=str(tmp_path / "local"))
    manifest = await generate_talking_videos(table, local, creds, **FAST)
    assert list(manifest["status"]) == ["succeeded"]
    assert (tmp_path / "local" / "b0.mp4").stat().st_size > 1000

    remote = RemoteFileSystem(
        basepath="memory://block-test/remote", settings={"use_listings_cache": False}
    )
    state = await generate_talking_videos(
        table,
        remote,
        creds,
        spending=Spending(max_submits=1),
        return_state=True,
        **FAST,
    )
    assert state.is_completed(), state.message
    assert fsspec.filesystem("memory").exists("/block-test/remote/manifest.parquet")
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    stored = run.parameters["output_uri"]
    assert stored["basepath"].endswith("remote") and "use_listings_cache" not in str(stored)
    assert run.parameters["spending"]["max_submits"] == 1
