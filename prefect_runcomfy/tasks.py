"""Prefect tasks: one per RunComfy call, one that waits for a request, one that stores outputs.

Every task creates its own `RunComfyClient` (Prefect may run each async task in its own event
loop), reads with `NO_CACHE` (a cached status would never change), returns small values (ids,
URIs, small models) and never video bytes. `submit_request` is never retried by Prefect: a
submit whose answer was lost may have created a billed job. Their bodies are the plain
functions of `prefect_runcomfy.engine.run.steps`, which a batch runs in one task run per row.

Example:
    ```python
    from prefect import flow
    from prefect_runcomfy import InfiniteTalkInput, RunComfyCredentials
    from prefect_runcomfy.tasks import submit_request, wait_for_request, store_outputs

    @flow
    def one_video(image_url: str, audio_url: str) -> str:
        credentials = RunComfyCredentials.load("runcomfy")
        job = InfiniteTalkInput(prompt="a woman talks", image=image_url, audio=audio_url)
        request_id = submit_request(job, credentials, row_id="ada")
        finished = wait_for_request(request_id, credentials, row_id="ada")
        stored = store_outputs(
            finished.result, "ada", "s3://bucket/videos", credentials=credentials
        )
        return stored.video_uris[0]
    ```

    In an async flow, await each call (`request_id = await submit_request(...)`);
    `.submit()` and `.map()` work from both.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from prefect_runcomfy.api.client import RunComfyClient, resolve_base_url
from prefect_runcomfy.api.hosts import OutputPolicy
from prefect_runcomfy.api.models import (
    CancelOutcome,
    InfiniteTalkInput,
    RequestResult,
    RequestState,
)
from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.run.steps import (
    STORE_RETRY_DELAYS_S,
    FinishedRequest,
    StoredFile,
    StoredOutputs,
    output_names,
    store_is_worth_retrying,
    store_job_outputs,
    submit_job,
    utc_now,
    wait_for_job,
)
from prefect_runcomfy.engine.run.waiting import PollPolicy
from prefect_runcomfy.models.infinite_talk import INFINITE_TALK, MODEL_ID
from prefect_runcomfy.sync_or_async import sync_or_async_task

Credentials = RunComfyCredentials | None


def client_for(credentials: Credentials) -> RunComfyClient:
    """A new client from a credentials block, or from the environment when there is none
    (`RUNCOMFY_API_TOKEN`, then `RUNCOMFY_TOKEN`, then `RUNCOMFY_API_KEY`)."""
    return credentials.get_client() if credentials is not None else RunComfyClient()


def output_policy_for(credentials: Credentials) -> OutputPolicy:
    """Where outputs may be downloaded from: the block's policy, or the environment's."""
    if credentials is not None:
        return credentials.output_policy()
    return OutputPolicy.build(resolve_base_url(None))


# --- one task per API call ---------------------------------------------------------------------


@sync_or_async_task(
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
        return await submit_job(client, inputs, model_id=model_id, row_id=row_id)


@sync_or_async_task(
    name="get-request-status", task_run_name="status {request_id}", cache_policy=NO_CACHE
)
async def get_request_status(request_id: str, credentials: Credentials = None) -> RequestState:
    """Read a request's state (`in_queue` with its position, `in_progress`, `completed`, ...)."""
    async with client_for(credentials) as client:
        return await client.status(request_id)


@sync_or_async_task(
    name="get-request-result", task_run_name="result {request_id}", cache_policy=NO_CACHE
)
async def get_request_result(
    request_id: str, credentials: Credentials = None, *, include_cost: bool = True
) -> RequestResult:
    """Read a request's result: outputs when it succeeded, else its current state."""
    async with client_for(credentials) as client:
        return await client.result(request_id, include_cost=include_cost)


@sync_or_async_task(
    name="cancel-request", task_run_name="cancel {request_id}", cache_policy=NO_CACHE
)
async def cancel_request(request_id: str, credentials: Credentials = None) -> CancelOutcome:
    """Cancel a queued request. A running one cannot be cancelled: it runs to the end, billed."""
    async with client_for(credentials) as client:
        outcome = await client.cancel(request_id)
    get_run_logger().info("Cancel %s: %s", request_id, outcome.outcome or outcome.status)
    return outcome


# --- waiting ---------------------------------------------------------------------------------


@sync_or_async_task(name="wait-for-request", task_run_name="wait {row_id}", cache_policy=NO_CACHE)
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
    async with client_for(credentials) as client:
        return await wait_for_job(
            client,
            request_id,
            max_wait_s=max_wait_s,
            poll=poll,
            cancel_queued_at_deadline=cancel_queued_at_deadline,
            submitted_at=submitted_at,
            row_id=row_id,
        )


# --- storing ---------------------------------------------------------------------------------


def _should_retry_store(task: Any, task_run: Any, state: Any) -> bool:
    # Prefect hands over a Failed state whose data is the exception (state.result() would be
    # a coroutine here, in an async engine).
    error = getattr(state, "data", None)
    return store_is_worth_retrying(error) if isinstance(error, BaseException) else True


@sync_or_async_task(
    name="store-outputs",
    task_run_name="store {row_id}",
    cache_policy=NO_CACHE,
    retries=len(STORE_RETRY_DELAYS_S),
    retry_delay_seconds=list(STORE_RETRY_DELAYS_S),
    retry_condition_fn=_should_retry_store,
)
async def store_outputs(
    result: RequestResult,
    row_id: str,
    output_uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    credentials: Credentials = None,
) -> StoredOutputs:
    """Download every output of a finished request and store it under `output_uri`.

    Each output is streamed to a local temporary file (its size checked against
    Content-Length), hashed with sha256, probed with PyAV when installed, and uploaded through
    fsspec, with a poster frame (`<id>.poster.jpg`) for the review page. The row's JSON
    sidecar (`<id>.json`: `metadata` plus what was stored) is written last, so a row with a
    sidecar is complete. Safe to run again: it overwrites. Retried twice unless the output is
    gone for good (403/404/410).

    Outputs are downloaded only from RunComfy's output domains, the API's own host and the
    hosts `credentials` (or `RUNCOMFY_OUTPUT_HOSTS`) add; pass the credentials the request was
    made with (without them the API host is `RUNCOMFY_BASE_URL`'s).
    """
    store = OutputStore(output_uri, storage_options)
    policy = output_policy_for(credentials)
    return await store_job_outputs(
        result,
        row_id,
        store,
        suffix=INFINITE_TALK.output_suffix,
        metadata=metadata,
        policy=policy,
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
    "output_policy_for",
    "store_outputs",
    "submit_request",
    "utc_now",
    "wait_for_request",
]
