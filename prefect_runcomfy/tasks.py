"""Prefect tasks: one per RunComfy call, one that waits for a request, one that stores outputs.

Every task creates its own `RunComfyClient` (Prefect may run each async task in its own event
loop), reads with `NO_CACHE` (a cached status would never change), returns small values (ids,
URIs, small models) and never video bytes. `submit_request` is never retried by Prefect: a
submit whose answer was lost may have created a billed job.

Example:
    ```python
    from prefect import flow
    from prefect_runcomfy import InfiniteTalkInput, RunComfyCredentials
    from prefect_runcomfy.tasks import submit_request, wait_for_request, store_outputs

    @flow
    async def one_video(image_url: str, audio_url: str) -> str:
        credentials = await RunComfyCredentials.load("runcomfy")
        job = InfiniteTalkInput(prompt="a woman talks", image=image_url, audio=audio_url)
        request_id = await submit_request(job, credentials, row_id="ada")
        finished = await wait_for_request(request_id, credentials, row_id="ada")
        stored = await store_outputs(finished.result, "ada", "s3://bucket/videos")
        return stored.video_uris[0]
    ```
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.client import RunComfyClient
from prefect_runcomfy.downloads import download_output, output_http_client, short_url
from prefect_runcomfy.exceptions import (
    DownloadError,
    RunCancelledError,
    RunFailedError,
    RunTimedOutError,
)
from prefect_runcomfy.models import (
    MODEL_ID,
    CancelOutcome,
    InfiniteTalkInput,
    RequestResult,
    RequestState,
    RequestStatus,
)
from prefect_runcomfy.storage import OutputStore
from prefect_runcomfy.waiting import PollPolicy, wait_until_finished

Credentials = RunComfyCredentials | None


def client_for(credentials: Credentials) -> RunComfyClient:
    """A new client from a credentials block, or from `RUNCOMFY_API_TOKEN` when there is none."""
    return credentials.get_client() if credentials is not None else RunComfyClient()


def _label(row_id: str | None, request_id: str | None = None) -> str:
    return row_id or (request_id[:13] if request_id else "request")


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what the ledger and sidecars store)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- one task per API call ---------------------------------------------------------------------


@task(
    name="submit-request",
    task_run_name="submit {row_id}",
    retries=0,  # a lost answer may mean a billed job: never re-POST blindly
    cache_policy=NO_CACHE,
)
async def submit_request(
    inputs: InfiniteTalkInput | dict[str, Any],
    credentials: Credentials = None,
    *,
    model_id: str = MODEL_ID,
    row_id: str | None = None,
) -> str:
    """Submit one job to RunComfy and return its `request_id`.

    Only requests that provably never reached RunComfy (or were refused with 429) are sent
    again, inside the client. Anything else raises `SubmitOutcomeUnknownError`.
    """
    async with client_for(credentials) as client:
        submitted = await client.submit(inputs, model_id=model_id)
    get_run_logger().info("Submitted %s as request %s", _label(row_id), submitted.request_id)
    return submitted.request_id


@task(name="get-request-status", task_run_name="status {request_id}", cache_policy=NO_CACHE)
async def get_request_status(request_id: str, credentials: Credentials = None) -> RequestState:
    """Read a request's state (`in_queue` with its position, `in_progress`, `completed`, ...)."""
    async with client_for(credentials) as client:
        return await client.status(request_id)


@task(name="get-request-result", task_run_name="result {request_id}", cache_policy=NO_CACHE)
async def get_request_result(
    request_id: str, credentials: Credentials = None, *, include_cost: bool = True
) -> RequestResult:
    """Read a request's result: outputs when it succeeded, else its current state."""
    async with client_for(credentials) as client:
        return await client.result(request_id, include_cost=include_cost)


@task(name="cancel-request", task_run_name="cancel {request_id}", cache_policy=NO_CACHE)
async def cancel_request(request_id: str, credentials: Credentials = None) -> CancelOutcome:
    """Cancel a queued request. A running one cannot be cancelled: it runs to the end, billed."""
    async with client_for(credentials) as client:
        outcome = await client.cancel(request_id)
    get_run_logger().info("Cancel %s: %s", request_id, outcome.outcome or outcome.status)
    return outcome


# --- waiting ---------------------------------------------------------------------------------


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


@task(name="wait-for-request", task_run_name="wait {row_id}", cache_policy=NO_CACHE)
async def wait_for_request(
    request_id: str,
    credentials: Credentials = None,
    *,
    max_wait_s: float = 3600.0,
    poll: PollPolicy | None = None,
    cancel_queued_at_deadline: bool = True,
    submitted_at: float | None = None,
    row_id: str | None = None,
) -> FinishedRequest:
    """Wait for a request to finish, polling inside this one task run.

    The interval starts near 2 s and doubles to about 30 s (with jitter); `Retry-After` is
    honoured; only state changes and queue-position changes are logged. `submitted_at` (epoch
    seconds) lets a wait that starts right after a submit treat a brief "not found" as "not
    visible yet".

    At the deadline a request still queued is cancelled (nothing is billed); a running one is
    left to finish and reported as timed out, so a later run can collect it.

    Raises:
        RunFailedError: the job failed (`error` holds RunComfy's reason).
        RunCancelledError: the job was cancelled.
        RunTimedOutError: the deadline passed (`cancelled` says whether it was cancelled).
        RequestNotFoundError: the request is unknown or its record expired.
    """
    logger = get_run_logger()
    label = _label(row_id, request_id)
    policy = poll or PollPolicy()
    started = time.monotonic()
    submitted_mono = None
    if submitted_at is not None:
        submitted_mono = started - max(0.0, time.time() - submitted_at)

    def on_change(status: RequestStatus, raw: str | None, position: int | None) -> None:
        if status is RequestStatus.IN_QUEUE:
            where = f" at position {position}" if position is not None else ""
            logger.info("%s: queued%s", label, where)
        elif status is RequestStatus.UNKNOWN:
            logger.info("%s: RunComfy says %r (not finished yet)", label, raw)
        elif not status.is_terminal:
            logger.info("%s: %s", label, (raw or status.value).replace("_", " "))

    async with client_for(credentials) as client:
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
                    logger.warning("%s: could not cancel at the deadline: %s", label, cancel_error)
            what = (
                "cancelled while still queued"
                if exc.cancelled
                else "left running; collect it later"
            )
            logger.warning("%s: gave up after %g s (%s)", label, max_wait_s, what)
            raise
    end = outcome.finished or time.monotonic()
    base = submitted_mono if submitted_mono is not None else outcome.started_waiting
    queue_s = (outcome.first_running - base) if outcome.first_running is not None else None
    run_s = (end - outcome.first_running) if outcome.first_running is not None else None
    details = {
        "queue_seconds": _round(queue_s),
        "run_seconds": _round(run_s),
        "polls": outcome.polls,
        "result": outcome.result.model_dump(mode="json"),
    }
    result = outcome.result
    if result.status is RequestStatus.SUCCEEDED:
        logger.info("%s: succeeded after %.0f s", label, end - base)
        return FinishedRequest(
            request_id=request_id,
            result=result,
            queue_seconds=_round(queue_s),
            run_seconds=_round(run_s),
            total_seconds=_round(end - base),
            wait_seconds=round(end - started, 3),
            polls=outcome.polls,
        )
    if result.status is RequestStatus.CANCELLED:
        logger.warning("%s: cancelled", label)
        raise RunCancelledError(
            f"Request {request_id} was cancelled.", request_id=request_id, details=details
        )
    reason = result.error_message or "RunComfy gave no reason"
    logger.warning("%s: failed: %s", label, reason)
    raise RunFailedError(
        f"Request {request_id} failed: {reason}",
        request_id=request_id,
        error=result.error if result.error is not None else result.failure_reason,
        details=details,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- storing ---------------------------------------------------------------------------------


class StoredFile(BaseModel):
    """One stored output: where it is, and what was checked about it."""

    uri: str
    source_url: str
    size: int
    sha256: str
    content_type: str | None = None
    video: dict[str, Any] | None = Field(default=None, description="Probed properties (PyAV).")


class StoredOutputs(BaseModel):
    """What `store_outputs` wrote for one row: the outputs and the sidecar JSON (written last)."""

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


def _should_retry_store(task: Any, task_run: Any, state: Any) -> bool:
    # An expired output (403/404/410) will not come back; anything else (a broken stream, a
    # rate limit, a storage hiccup) is worth another try, because storing is idempotent.
    # Prefect hands over a Failed state whose data is the exception (state.result() would be
    # a coroutine here, in an async engine).
    error = getattr(state, "data", None)
    if isinstance(error, DownloadError):
        return not error.expired
    return True


@task(
    name="store-outputs",
    task_run_name="store {row_id}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_should_retry_store,
)
async def store_outputs(
    result: RequestResult,
    row_id: str,
    output_uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> StoredOutputs:
    """Download every output of a finished request and store it under `output_uri`.

    Each output is streamed to a local temporary file (its size checked against
    Content-Length), hashed with sha256, probed with PyAV when installed, and uploaded through
    fsspec, with a poster frame (`<id>.poster.jpg`) for the review page. The row's JSON sidecar (`<id>.json`: `metadata` plus what was stored) is written
    last, so a row with a sidecar is complete. Safe to run again: it overwrites.
    """
    from prefect_runcomfy.media import probe_video
    from prefect_runcomfy.previews import poster_frame, poster_name

    logger = get_run_logger()
    urls = result.output_urls
    if not urls:
        raise DownloadError(f"Request {result.request_id} succeeded but listed no output URL.")
    store = OutputStore(output_uri, storage_options)
    names = output_names(row_id, urls)
    files: list[StoredFile] = []
    with tempfile.TemporaryDirectory(prefix="prefect-runcomfy-") as tmp:
        async with output_http_client() as http:
            for url, name in zip(urls, names, strict=True):
                local = os.path.join(tmp, name)
                downloaded = await download_output(url, local, http=http)
                video = await asyncio.to_thread(probe_video, local)
                if video and not files:
                    # The review page's poster, made while the video is on local disk anyway.
                    poster = os.path.join(tmp, poster_name(row_id))
                    if await asyncio.to_thread(poster_frame, local, poster):
                        await asyncio.to_thread(store.put_file, poster, poster_name(row_id))
                uri = await asyncio.to_thread(store.put_file, local, name)
                os.remove(local)  # keep at most one output on local disk at a time
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
    metadata_name = f"{row_id}.json"
    metadata_uri = await asyncio.to_thread(store.write_json, metadata_name, sidecar)
    logger.info("%s: stored %s", row_id, ", ".join(f.uri for f in files))
    return StoredOutputs(
        row_id=row_id,
        video_uris=[f.uri for f in files],
        metadata_uri=metadata_uri,
        files=files,
    )


__all__ = [
    "FinishedRequest",
    "StoredFile",
    "StoredOutputs",
    "cancel_request",
    "client_for",
    "get_request_result",
    "get_request_status",
    "output_names",
    "store_outputs",
    "submit_request",
    "wait_for_request",
]
