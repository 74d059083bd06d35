"""The steps of one job as plain async functions over a client the caller owns.

`prefect_runcomfy.tasks` wraps each of them in a Prefect task that opens its own client; a
batch (`generate_talking_videos`) runs all three inside one task run per row over one shared
client, which is what keeps thousands of rows cheap. Use these when you write your own task
and already hold a `RunComfyClient`.

Example:
    ```python
    from prefect import task
    from prefect_runcomfy import RunComfyClient
    from prefect_runcomfy.engine.steps import store_job_outputs, submit_job, wait_for_job
    from prefect_runcomfy.engine.storage import OutputStore

    @task
    async def one_video(job, row_id: str) -> str:
        async with RunComfyClient() as client:
            request_id = await submit_job(client, job, row_id=row_id)
            finished = await wait_for_job(client, request_id, row_id=row_id)
            stored = await store_job_outputs(finished.result, row_id, OutputStore("out/"))
        return stored.video_uris[0]
    ```
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.downloads import download_output, output_http_client, short_url
from prefect_runcomfy.api.exceptions import (
    DownloadError,
    RunCancelledError,
    RunFailedError,
    RunTimedOutError,
)
from prefect_runcomfy.api.models import (
    MODEL_ID,
    InfiniteTalkInput,
    RequestResult,
    RequestStatus,
)
from prefect_runcomfy.engine.storage import OutputStore, staging_folder
from prefect_runcomfy.engine.waiting import PollPolicy, wait_until_finished

STORE_RETRY_DELAYS_S: tuple[float, ...] = (2.0, 10.0)
"""Pauses before the second and third try of storing a row's outputs."""


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current Prefect run's logger, or this package's logger outside a run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_runcomfy")


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what the ledger and sidecars store)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def label(row_id: str | None, request_id: str | None = None) -> str:
    """How log lines name a job: its row id, else the start of its request id."""
    return row_id or (request_id[:13] if request_id else "request")


# --- submit ----------------------------------------------------------------------------------


async def submit_job(
    client: RunComfyClient,
    inputs: InfiniteTalkInput | dict[str, Any],
    *,
    model_id: str = MODEL_ID,
    row_id: str | None = None,
    log: bool = True,
) -> str:
    """Submit one job and return its `request_id` (logged unless `log=False`, when the caller
    says it in its next line). Never re-POSTs after an unclear answer: that raises
    `SubmitOutcomeUnknownError` (see `RunComfyClient.submit`)."""
    submitted = await client.submit(inputs, model_id=model_id)
    if log:
        run_logger().info("Submitted %s as request %s", label(row_id), submitted.request_id)
    return submitted.request_id


# --- wait ------------------------------------------------------------------------------------


class FinishedRequest(BaseModel):
    """A request that succeeded: its result and how long it queued and ran (seconds)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    result: RequestResult
    queue_seconds: float | None = Field(
        default=None, description="Submit (or start of waiting) to first seen running."
    )
    run_seconds: float | None = Field(
        default=None, description="First seen running to seen finished."
    )
    total_seconds: float | None = Field(
        default=None, description="Submit (or start of waiting) to seen finished."
    )
    wait_seconds: float = Field(description="How long this wait took.")
    polls: int = Field(description="How many times RunComfy was asked.")


async def wait_for_job(
    client: RunComfyClient,
    request_id: str,
    *,
    max_wait_s: float = 3600.0,
    poll: PollPolicy | None = None,
    cancel_queued_at_deadline: bool = True,
    submitted_at: float | None = None,
    row_id: str | None = None,
    log_success: bool = True,
    first_note: str | None = None,
) -> FinishedRequest:
    """Wait for a request to finish; the body of `tasks.wait_for_request` (see its docstring).

    Logs state changes only. With `log_success=False` the caller logs the success itself
    (a batch logs one line per row once its video is stored). `first_note` starts the first
    line logged (a batch passes "submitted as request ..." instead of a line of its own).

    Raises:
        RunFailedError: the job failed (`error` holds RunComfy's reason).
        RunCancelledError: the job was cancelled.
        RunTimedOutError: the deadline passed (`cancelled` says whether it was cancelled).
        RequestNotFoundError: the request is unknown or its record expired.
    """
    logger = run_logger()
    pending_note = [first_note]

    def line_start() -> str:
        note, pending_note[0] = pending_note[0], None
        name = label(row_id, request_id)
        return f"{name}: {note}, " if note else f"{name}: "

    policy = poll or PollPolicy()
    started = time.monotonic()
    submitted_mono = None
    if submitted_at is not None:
        submitted_mono = started - max(0.0, time.time() - submitted_at)

    def on_change(status: RequestStatus, raw: str | None, position: int | None) -> None:
        if status is RequestStatus.IN_QUEUE:
            where = f" at position {position}" if position is not None else ""
            logger.info("%squeued%s", line_start(), where)
        elif status is RequestStatus.UNKNOWN:
            logger.info("%sRunComfy says %r (not finished yet)", line_start(), raw)
        elif not status.is_terminal:
            logger.info("%s%s", line_start(), (raw or status.value).replace("_", " "))

    try:
        outcome = await wait_until_finished(
            client,
            request_id,
            max_wait_s=max_wait_s,
            policy=policy,
            submitted_monotonic=submitted_mono,
            on_change=on_change,
        )
    except RunTimedOutError as exc:
        if cancel_queued_at_deadline and exc.last_status in (
            RequestStatus.IN_QUEUE.value,
            RequestStatus.UNKNOWN.value,
        ):
            try:
                answer = await client.cancel(request_id)
                exc.cancelled = answer.cancelled
            except Exception as cancel_error:  # best effort; the ledger keeps the id
                logger.warning("%scould not cancel at the deadline: %s", line_start(), cancel_error)
        what = "cancelled while still queued" if exc.cancelled else "left running; collect it later"
        logger.warning("%sgave up after %g s (%s)", line_start(), max_wait_s, what)
        raise
    end = outcome.finished or time.monotonic()
    base = submitted_mono if submitted_mono is not None else outcome.started_waiting
    queue_s = (outcome.first_running - base) if outcome.first_running is not None else None
    run_s = (end - outcome.first_running) if outcome.first_running is not None else None
    result = outcome.result
    if result.status is RequestStatus.SUCCEEDED:
        if log_success:
            logger.info("%ssucceeded after %.0f s", line_start(), end - base)
        return FinishedRequest(
            request_id=request_id,
            result=result,
            queue_seconds=_round(queue_s),
            run_seconds=_round(run_s),
            total_seconds=_round(end - base),
            wait_seconds=round(end - started, 3),
            polls=outcome.polls,
        )
    details = {
        "queue_seconds": _round(queue_s),
        "run_seconds": _round(run_s),
        "polls": outcome.polls,
        "result": result.model_dump(mode="json"),
    }
    if result.status is RequestStatus.CANCELLED:
        logger.warning("%scancelled", line_start())
        raise RunCancelledError(
            f"Request {request_id} was cancelled.", request_id=request_id, details=details
        )
    reason = result.error_message or "RunComfy gave no reason"
    logger.warning("%sfailed: %s", line_start(), reason)
    raise RunFailedError(
        f"Request {request_id} failed: {reason}",
        request_id=request_id,
        error=result.error if result.error is not None else result.failure_reason,
        details=details,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- store -----------------------------------------------------------------------------------


class StoredFile(BaseModel):
    """One stored output: where it is, and what was checked about it."""

    uri: str
    source_url: str
    size: int
    sha256: str
    content_type: str | None = None
    video: dict[str, Any] | None = Field(default=None, description="Probed properties (PyAV).")


class StoredOutputs(BaseModel):
    """What storing wrote for one row: the outputs and the sidecar JSON (written last)."""

    row_id: str
    video_uris: list[str]
    metadata_uri: str
    files: list[StoredFile]


def output_names(row_id: str, urls: list[str]) -> list[str]:
    """File names for a row's outputs: `<id>.mp4`, or `<id>-1.mp4`, `<id>-2.png`, ... for several."""
    names = []
    for number, url in enumerate(urls, start=1):
        suffix = Path(short_url(url)).suffix.lower()
        if not suffix or len(suffix) > 6 or not suffix[1:].isalnum():
            suffix = ".mp4"
        names.append(f"{row_id}{suffix}" if len(urls) == 1 else f"{row_id}-{number}{suffix}")
    return names


def store_is_worth_retrying(error: BaseException) -> bool:
    """False for an output that is gone for good (403/404/410); anything else (a broken stream,
    a rate limit, a storage hiccup) may pass on another try, and storing is idempotent."""
    if isinstance(error, DownloadError):
        return not error.expired
    return isinstance(error, Exception)


def _keep_file(
    store: OutputStore, local: str, name: str, row_id: str, tmp: str, with_poster: bool
) -> tuple[str, dict[str, Any] | None]:
    """Probe a downloaded output, make the row's poster from it, upload both (one thread hop)."""
    from prefect_runcomfy.engine.media import probe_video
    from prefect_runcomfy.report.previews import poster_name, probe_with_poster

    if with_poster:
        # The review page's poster, made while the video is on local disk anyway.
        poster = os.path.join(tmp, poster_name(row_id))
        video, has_poster = probe_with_poster(local, poster)
        if has_poster:
            store.put_file(poster, poster_name(row_id))
    else:
        video = probe_video(local)
    uri = store.put_file(local, name)
    os.remove(local)  # keep at most one output on local disk at a time
    return uri, video


async def store_job_outputs(
    result: RequestResult,
    row_id: str,
    store: OutputStore,
    *,
    metadata: dict[str, Any] | None = None,
    http: httpx.AsyncClient | None = None,
    log_success: bool = True,
) -> StoredOutputs:
    """Download every output of a finished request into `store`; the body of
    `tasks.store_outputs` (see its docstring). `http` is a client for output hosts (one
    without the API token); a new one is opened when none is given."""
    urls = result.output_urls
    if not urls:
        raise DownloadError(f"Request {result.request_id} succeeded but listed no output URL.")
    names = output_names(row_id, urls)
    files: list[StoredFile] = []
    own_http = http is None
    client = http or output_http_client()
    try:
        with staging_folder() as tmp:
            for url, name in zip(urls, names, strict=True):
                local = os.path.join(tmp, name)
                downloaded = await download_output(url, local, http=client)
                uri, video = await asyncio.to_thread(
                    _keep_file, store, local, name, row_id, tmp, not files
                )
                files.append(
                    StoredFile(
                        uri=uri,
                        source_url=short_url(url),
                        size=downloaded.size,
                        sha256=downloaded.sha256,
                        content_type=downloaded.content_type,
                        video=video,
                    )
                )
    finally:
        if own_http:
            await client.aclose()
    sidecar = dict(metadata or {})
    sidecar.update(
        {
            "id": row_id,
            "request_id": result.request_id,
            "status": "succeeded",
            "output_urls": [short_url(u) for u in urls],
            "files": [f.model_dump(mode="json") for f in files],
            "stored_at": utc_now(),
        }
    )
    metadata_uri = await asyncio.to_thread(store.write_json, f"{row_id}.json", sidecar)
    if log_success:
        run_logger().info("%s: stored %s", row_id, ", ".join(f.uri for f in files))
    return StoredOutputs(
        row_id=row_id,
        video_uris=[f.uri for f in files],
        metadata_uri=metadata_uri,
        files=files,
    )


__all__ = [
    "STORE_RETRY_DELAYS_S",
    "FinishedRequest",
    "StoredFile",
    "StoredOutputs",
    "label",
    "output_names",
    "run_logger",
    "store_is_worth_retrying",
    "store_job_outputs",
    "submit_job",
    "utc_now",
    "wait_for_job",
]
