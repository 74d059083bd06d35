"""The Prefect UI leads to the videos (issue 23, point 2).

- A run into S3 (moto on loopback, the real Prefect API of the test harness): its artifacts,
  read back from the Prefect API, link each video and a copy of the review by pre-signed
  URLs that, fetched with httpx, return the stored bytes; they say how long the links live.
  moto checks no signatures: the fetch proves each link names the right object, and the
  query proves it carries a signature, not that AWS would accept it.
- A local run: no `file://` link anywhere in its artifacts; paths to copy instead.
- The signed copy of the review in headless Chromium: every video and picture loads through
  its signed link (skipped, with the reason, when Chromium cannot be had).
- Every succeeded row has its timings or a note that says why not (never seen running;
  collected after it finished; re-run), and the rows table shows every error whole.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sandbox_helpers import manifest_of

from prefect_runcomfy import RunComfyCredentials, Spending, Waiting, generate_talking_videos
from prefect_runcomfy.api.models import RequestResult
from prefect_runcomfy.engine.outputs.manifest import build_manifest
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.engine.run.steps import job_timing
from prefect_runcomfy.engine.run.waiting import WaitOutcome
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.artifacts import artifact_row, summary_markdown
from prefect_runcomfy.report.links import LINK_EXPIRES_ENV
from prefect_runcomfy.report.review.rows import short_source
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.timeout(600)]

FAST = {
    "waiting": Waiting(poll_initial_s=0.1, poll_max_s=0.5),
    "spending": Spending(allow_failed_rows=True),
}
_MD_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")
_SRC = re.compile(r'\s(?:src|poster|href)="([^"]+)"')


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def creds(sb: Sandbox) -> RunComfyCredentials:
    return RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)


def rows(sb: Sandbox, n: int = 2) -> list[dict[str, Any]]:
    samples = sample_inputs(sb.base_url)
    return [{**samples[i % len(samples)], "id": f"r{i}"} for i in range(n)]


async def artifacts_of(state: Any) -> dict[str, Any]:
    """The run's artifacts by type, read back from the Prefect API."""
    flow_run_id = state.state_details.flow_run_id
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


def table_rows(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


# --- S3 -------------------------------------------------------------------------------------


async def test_s3_artifacts_link_each_video_and_the_review_by_signed_urls(
    sb: Sandbox, s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LINK_EXPIRES_ENV, "3600")
    options = s3_server.storage_options
    uri = f"s3://{s3_bucket}/nightly"
    state = await generate_talking_videos(
        rows(sb), uri, creds(sb), storage_options=options, return_state=True, **FAST
    )
    fs = fsspec.filesystem("s3", **options)
    kinds = await artifacts_of(state)

    table = table_rows(kinds["table"])
    assert [r["status"] for r in table] == ["succeeded", "succeeded"]
    assert "1 hour" in (kinds["table"].description or "")
    async with httpx.AsyncClient(timeout=30) as http:
        for row in table:
            (name, url), *_ = _MD_LINK.findall(row["video"])
            assert name == f"{row['id']}.mp4"
            assert url.startswith(s3_server.endpoint_url) and "Signature" in url, url
            got = await http.get(url)
            assert got.status_code == 200
            assert got.content == fs.cat(f"{s3_bucket}/nightly/{name}")

        markdown = kinds["markdown"].data
        assert "file://" not in markdown and "1 hour" in markdown, markdown
        links = dict(_MD_LINK.findall(markdown))
        review = await http.get(links["open the review"])
        assert review.status_code == 200 and "<video" in review.text
        assert "_review/signed-index.html" in links["open the review"]
        manifest = await http.get(links["download"])
        assert manifest.content == fs.cat(f"{s3_bucket}/nightly/manifest.parquet")
        # Every link of the signed review is signed and reaches its object.
        targets = [html.unescape(u) for u in _SRC.findall(review.text) if "://" in u]
        assert targets and all("Signature" in u for u in targets), targets
        videos = {u for u in targets if ".mp4?" in u}  # each card's player and download link
        assert {u.split("?", 1)[0].rsplit("/", 1)[1] for u in videos} == {"r0.mp4", "r1.mp4"}
        for url in videos:
            key = url.split("?", 1)[0].split(f"/{s3_bucket}/", 1)[1]
            assert (await http.get(url)).content == fs.cat(f"{s3_bucket}/{key}")
        relative = [u for u in _SRC.findall(review.text) if "://" not in u]
        assert all(u.startswith(("#", "data:")) for u in relative), relative
    # The lasting review keeps its relative links.
    lasting = fs.cat(f"{s3_bucket}/nightly/index.html").decode()
    assert 'src="r0.mp4"' in lasting and "Signature" not in lasting


# --- a local folder -------------------------------------------------------------------------


async def test_local_artifacts_hold_paths_to_copy_and_no_file_links(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    table = [*rows(sb), {**rows(sb)[0], "id": "bad", "cfg": 9}]
    state = await generate_talking_videos(table, str(out), creds(sb), return_state=True, **FAST)
    kinds = await artifacts_of(state)
    markdown = kinds["markdown"].data
    every = json.dumps([markdown, table_rows(kinds["table"]), kinds["table"].description])
    assert "file://" not in every
    assert f"`{out / 'index.html'}`" in markdown
    assert "local folder" in markdown  # what to do with the paths
    videos = {r["id"]: r["video"] for r in table_rows(kinds["table"])}
    assert videos["bad"] == ""
    assert videos["r0"] == f"`{out / 'r0.mp4'}`" and (out / "r0.mp4").exists()


# --- the signed review in a browser ---------------------------------------------------------


async def test_the_signed_review_loads_every_video_and_picture_in_chromium(
    sb: Sandbox, s3_server: Any, s3_bucket: str
) -> None:
    pytest.importorskip("playwright.async_api", reason="the Python `playwright` package")
    from test_review_browser import CHROMIUM_ARGS, find_or_install_chromium

    chromium, why = find_or_install_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium for the browser test: {why}")
    from playwright.async_api import async_playwright

    uri = f"s3://{s3_bucket}/shared"
    state = await generate_talking_videos(
        rows(sb, 3),
        uri,
        creds(sb),
        storage_options=s3_server.storage_options,
        return_state=True,
        **FAST,
    )
    markdown = (await artifacts_of(state))["markdown"].data
    review_url = dict(_MD_LINK.findall(markdown))["open the review"]
    failed: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            await page.goto(review_url, wait_until="load")
            seen = await page.evaluate(
                """async () => {
                  const vids = [...document.querySelectorAll("video")];
                  await Promise.all(vids.map((v) => new Promise((ok) => {
                    if (v.readyState >= 1) return ok();
                    v.addEventListener("loadedmetadata", ok, {once: true});
                    v.addEventListener("error", ok, {once: true});
                    setTimeout(ok, 15000);
                  })));
                  const imgs = [...document.querySelectorAll("img")];
                  imgs.forEach((i) => { i.loading = "eager"; });
                  await Promise.all(imgs.map((i) => i.decode().catch(() => null)));
                  return {
                    videos: vids.map((v) => ({ready: v.readyState, error: !!v.error})),
                    images: imgs.map((i) => i.naturalWidth),
                    note: document.querySelector(".links-note")?.textContent || "",
                  };
                }"""
            )
        finally:
            await browser.close()
    assert len(seen["videos"]) == 3 and all(v["ready"] >= 1 for v in seen["videos"]), seen
    assert seen["images"] and all(w > 0 for w in seen["images"]), seen
    assert "7 days" in seen["note"], seen
    assert not failed, failed


# --- timings --------------------------------------------------------------------------------


def _result(**facts: Any) -> RequestResult:
    return RequestResult.model_validate({"request_id": "req-1", "status": "succeeded", **facts})


def test_a_job_never_seen_running_is_timed_by_its_last_queued_read() -> None:
    seen = WaitOutcome(result=_result(), polls=3, started_waiting=10.0, last_queued=14.0)
    timing, total, note = job_timing(seen, 10.0, 20.0, fresh=True)
    assert timing == {"queue_seconds": 4.0, "run_seconds": 6.0} and total == 10.0
    assert note and "not seen running" in note and "at least 4.0 s" in note


def test_a_job_finished_at_its_first_read_takes_runcomfys_total_and_says_why() -> None:
    result = _result(created_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:01:30Z")
    timing, total, note = job_timing(
        WaitOutcome(result=result, polls=1, started_waiting=50.0), 50.0, 50.2, fresh=False
    )
    assert timing == {"queue_seconds": None, "run_seconds": None} and total == 90.0
    assert note and "finished before its first read" in note and "90.0 s" in note


async def test_collected_and_rerun_rows_have_timings_or_say_why(
    sb: Sandbox, tmp_path: Path
) -> None:
    from prefect_runcomfy import collect_outstanding_requests

    sb.set(run_seconds=1.0)
    out = str(tmp_path / "o")
    first = await manifest_of(
        generate_talking_videos(rows(sb), out, creds(sb), max_wait_s=0.3, **FAST)
    )
    assert set(first["status"]) == {"timed_out"}
    await asyncio.sleep(2.5)  # both jobs finish before the collector's first read
    started = time.monotonic()
    collected = await collect_outstanding_requests(out, creds(sb), waiting=FAST["waiting"])
    assert time.monotonic() - started < 60
    again = await manifest_of(generate_talking_videos(rows(sb), out, creds(sb), **FAST))
    for manifest in (collected, again):
        for record in manifest.to_dict(orient="records"):
            assert record["status"] == "succeeded"
            timed = pd.notna(record["queue_seconds"]) and pd.notna(record["run_seconds"])
            assert timed or "finished before its first read" in (record["note"] or ""), record
            assert pd.notna(record["total_seconds"]) and record["total_seconds"] >= 0.9, record
    row = artifact_row(
        RowOutcome(id="r0", status=RowStatus.SUCCEEDED, notes=("finished before its first read",))
    )
    assert row["queue_s"] == "unknown" and "first read" in row["note"]


# --- whole errors ---------------------------------------------------------------------------


def test_the_rows_table_and_the_summary_show_every_error_whole() -> None:
    error = "RunComfy said: " + " | ".join(f"part {i} *of* the_reason" for i in range(60))
    outcome = RowOutcome(id="r_1", status=RowStatus.FAILED, error=error + "\nlast line")
    cell = artifact_row(outcome)["error"]
    shown = re.sub(r"\\(.)", r"\1", cell)  # what the UI shows of the escaped markdown
    assert shown == error + " last line"
    assert "|" not in cell.replace("\\|", "")  # no bare pipe to break a markdown table
    manifest = build_manifest([outcome], INFINITE_TALK)
    markdown = summary_markdown(manifest, output_uri="out", manifest_uri="out/m.parquet")
    assert "part 59 \\*of\\* the\\_reason last line" in markdown


def test_a_stored_video_of_a_local_run_is_a_path_to_copy() -> None:
    stored = StoredFile(uri="/data/out/a b.mp4", source_url="", size=1, sha256="")
    outcome = RowOutcome(id="a", status=RowStatus.SUCCEEDED, files=(stored,))
    assert artifact_row(outcome)["video"] == "`/data/out/a b.mp4`"


def test_a_review_card_names_a_loopback_input_instead_of_its_dead_address() -> None:
    shown = short_source("http://127.0.0.1:40123/samples/portrait.png")
    assert shown is not None and "127.0.0.1" not in shown and "portrait.png" in shown
    assert short_source("https://cdn.example.com/p.png?sig=x") == "https://cdn.example.com/p.png"
