"""The steps of one job as plain async functions over a client the caller owns.

`prefect_runcomfy.tasks` wraps each of them in a Prefect task that opens its own client; a
batch (`generate_talking_videos`) runs all three inside one task run per row over one shared
client, which is what keeps thousands of rows cheap. Use these when you write your own task
and already hold a `RunComfyClient`.

Example:
    ```python
    from prefect import task
    from prefect_runcomfy import RunComfyClient
    from prefect_runcomfy.engine.run.steps import store_job_outputs, submit_job, wait_for_job
    from prefect_runcomfy.engine.outputs.store import OutputStore

    @task
    async def one_video(job, model: ModelSpec, row_id: str) -> str:
        async with RunComfyClient() as client:
            request_id = await submit_job(client, job, model_id=model.model_id, row_id=row_id)
            finished = await wait_for_job(client, request_id, row_id=row_id)
            stored = await store_job_outputs(
                finished.result, row_id, OutputStore("out/"), suffix=model.output_suffix
            )
        return stored.video_uris[0]
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.download_deadline import DownloadProgress, ProgressListener
from prefect_runcomfy.api.downloads import download_output, output_http_client, short_url
from prefect_runcomfy.api.exceptions import (
    DownloadError,
    DownloadTimedOutError,
    OutputRefusedError,
    RunCancelledError,
    RunFailedError,
    RunTimedOutError,
)
from prefect_runcomfy.api.hosts import OutputPolicy
from prefect_runcomfy.api.models import RequestResult, RequestStatus
from prefect_runcomfy.engine.outputs.scratch import staging_folder
from prefect_runcomfy.engine.outputs.sidecar import sidecar_of
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile, utc_now
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.engine.run.durations import JobKind, RunEstimator
from prefect_runcomfy.engine.run.waiting import PollPolicy, WaitOutcome, wait_until_finished
from prefect_runcomfy.models.base import ModelInput

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


def label(row_id: str | None, request_id: str | None = None) -> str:
    """How log lines name a job: its row id, else the start of its request id."""
    return row_id or (request_id[:13] if request_id else "request")


# --- submit ----------------------------------------------------------------------------------


async def submit_job(
    client: RunComfyClient,
    inputs: ModelInput | dict[str, Any],
    *,
    model_id: str,
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
    timing_note: str | None = Field(
        default=None,
        description="Why the queue and run times are bounds or unknown (None when seen).",
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
    estimator: RunEstimator | None = None,
    kind: JobKind = None,
) -> FinishedRequest:
    """Wait for a request to finish; the body of `tasks.wait_for_request` (see its docstring).

    Logs state changes only. With `log_success=False` the caller logs the success itself
    (a batch logs one line per row once its video is stored). `first_note` starts the first
    line logged (a batch passes "submitted as request ..." instead of a line of its own).
    `estimator` and `kind`: the run's shared experience of its jobs' durations and this
    job's kind (`engine.run.durations`); a batch passes them, a single wait need not.

    Raises:
        RunFailedError: the job failed (`error` holds RunComfy's reason).
        RunCancelledError: the job was cancelled.
        RunTimedOutError: the deadline passed (`cancelled` says whether it was cancelled).
        RequestNotFoundError: the request is unknown or its record expired.
    """
    speaker = _StateSpeaker(row_id, request_id, first_note)
    started = time.monotonic()
    submitted_mono = None
    if submitted_at is not None:
        submitted_mono = started - max(0.0, time.time() - submitted_at)
    try:
        outcome = await wait_until_finished(
            client,
            request_id,
            max_wait_s=max_wait_s,
            policy=poll or PollPolicy(),
            submitted_monotonic=submitted_mono,
            on_change=speaker.on_change,
            estimator=estimator,
            kind=kind,
        )
    except RunTimedOutError as exc:
        await _at_deadline(client, request_id, exc, speaker, cancel_queued_at_deadline)
        what = "cancelled while still queued" if exc.cancelled else "left running; collect it later"
        speaker.warning("gave up after %g s (%s)", max_wait_s, what)
        raise
    end = outcome.finished or time.monotonic()
    base = submitted_mono if submitted_mono is not None else outcome.started_waiting
    timing, total, timing_note = job_timing(outcome, base, end, fresh=submitted_mono is not None)
    result = outcome.result
    if result.status is not RequestStatus.SUCCEEDED:
        raise _ended_without_outputs(request_id, result, speaker, timing, outcome.polls)
    if log_success:
        speaker.info("succeeded after %.0f s", end - base)
    return FinishedRequest(
        request_id=request_id,
        result=result,
        total_seconds=total,
        timing_note=timing_note,
        wait_seconds=round(end - started, 3),
        polls=outcome.polls,
        **timing,
    )


class _StateSpeaker:
    """Says a job's state changes, one line each, the first one led by the caller's note."""

    def __init__(self, row_id: str | None, request_id: str, first_note: str | None) -> None:
        self.name = label(row_id, request_id)
        self.note = first_note
        self.logger = run_logger()

    def _start(self) -> str:
        note, self.note = self.note, None
        return f"{self.name}: {note}, " if note else f"{self.name}: "

    def info(self, message: str, *args: Any) -> None:
        self.logger.info(self._start() + message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.logger.warning(self._start() + message, *args)

    def on_change(self, status: RequestStatus, raw: str | None, position: int | None) -> None:
        """What `wait_until_finished` calls when the state (or queue position) changes."""
        if status is RequestStatus.IN_QUEUE:
            self.info("queued%s", f" at position {position}" if position is not None else "")
        elif status is RequestStatus.UNKNOWN:
            self.info("RunComfy says %r (not finished yet)", raw)
        elif not status.is_terminal:
            self.info("%s", (raw or status.value).replace("_", " "))


async def _at_deadline(
    client: RunComfyClient,
    request_id: str,
    exc: RunTimedOutError,
    speaker: _StateSpeaker,
    cancel_queued: bool,
) -> None:
    """Cancel a job still queued at the deadline (nothing is billed); best effort."""
    queued = exc.last_status in (RequestStatus.IN_QUEUE.value, RequestStatus.UNKNOWN.value)
    if not (cancel_queued and queued):
        return
    try:
        answer = await client.cancel(request_id)
        exc.cancelled = answer.cancelled
    except Exception as cancel_error:  # the ledger keeps the id
        speaker.warning("could not cancel at the deadline: %s", cancel_error)


def _ended_without_outputs(
    request_id: str,
    result: RequestResult,
    speaker: _StateSpeaker,
    timing: dict[str, float | None],
    polls: int,
) -> RunCancelledError | RunFailedError:
    """The error for a job that finished cancelled or failed, its details kept."""
    details = {**timing, "polls": polls, "result": result.model_dump(mode="json")}
    if result.status is RequestStatus.CANCELLED:
        speaker.warning("cancelled")
        return RunCancelledError(
            f"Request {request_id} was cancelled.", request_id=request_id, details=details
        )
    reason = result.error_message or "RunComfy gave no reason"
    speaker.warning("failed: %s", reason)
    return RunFailedError(
        f"Request {request_id} failed: {reason}",
        request_id=request_id,
        error=result.error if result.error is not None else result.failure_reason,
        details=details,
    )


def job_timing(
    outcome: WaitOutcome, base: float, end: float, *, fresh: bool
) -> tuple[dict[str, float | None], float | None, str | None]:
    """A finished job's queue and run seconds, its total, and why they are not measured when
    they are not. `base` is the submit (`fresh`) or the start of this wait.

    - Seen running: queue = base → first seen running, run = that → seen finished.
    - Seen queued, never running (it started and ended between two reads): the queue is at
      least base → last seen queued, the run at most that → seen finished; said so.
    - Finished at the first read (collected by a later run, or quicker than a read): the
      split was not seen (None); the total is RunComfy's created_at → finished_at when it
      gives them, else base → seen finished when base is the submit; said so."""
    running, queued = outcome.first_running, outcome.last_queued
    if running is not None:
        timing = {"queue_seconds": _round(running - base), "run_seconds": _round(end - running)}
        return timing, _round(end - base), None
    if queued is not None:
        timing = {"queue_seconds": _round(queued - base), "run_seconds": _round(end - queued)}
        note = (
            f"not seen running (it started and ended between two reads): queued at least "
            f"{queued - base:.1f} s, ran at most {end - queued:.1f} s"
        )
        return timing, _round(end - base), note
    api_total = _api_seconds(outcome.result)
    total = api_total if api_total is not None else (_round(end - base) if fresh else None)
    said = (
        f"RunComfy's created_at to finished_at: {api_total:.1f} s in all"
        if api_total is not None
        else "RunComfy gave no created_at and finished_at"
    )
    note = f"finished before its first read: queue and run times not seen ({said})"
    return {"queue_seconds": None, "run_seconds": None}, total, note


def _api_seconds(result: RequestResult) -> float | None:
    """created_at → finished_at as RunComfy says them (ISO-8601 or epoch seconds), or None."""
    ends = [_moment(result.created_at), _moment(result.finished_at)]
    if ends[0] is None or ends[1] is None or ends[1] < ends[0]:
        return None
    return _round(ends[1] - ends[0])


def _moment(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- store -----------------------------------------------------------------------------------


class StoredOutputs(BaseModel):
    """What storing wrote for one row: the outputs and the sidecar JSON (written last)."""

    row_id: str
    video_uris: list[str]
    metadata_uri: str
    files: list[StoredFile]


def output_names(row_id: str, urls: list[str], suffix: str) -> list[str]:
    """File names for a row's outputs: `<id>.mp4`, or `<id>-1.mp4`, `<id>-2.png`, ... for
    several; `suffix` (the model's `output_suffix`) where a URL names none."""
    names = []
    for number, url in enumerate(urls, start=1):
        given = Path(short_url(url)).suffix.lower()
        if not given or len(given) > 6 or not given[1:].isalnum():
            given = suffix
        names.append(f"{row_id}{given}" if len(urls) == 1 else f"{row_id}-{number}{given}")
    return names


def store_is_worth_retrying(error: BaseException) -> bool:
    """False for an output that is gone for good (403/404/410), refused by the output policy
    (its host, type or size) or past its download deadline (the deadline covers every try);
    anything else (a broken stream, a rate limit, a storage hiccup) may pass on another try,
    and storing is idempotent."""
    if isinstance(error, OutputRefusedError | DownloadTimedOutError):
        return False
    if isinstance(error, DownloadError):
        return not error.expired
    return isinstance(error, Exception)


def _keep_file(
    store: OutputStore, local: str, name: str, row_id: str, tmp: str | None, with_poster: bool
) -> tuple[str, dict[str, Any] | None]:
    """Probe a downloaded output, make the row's poster from it, store both (one thread hop).

    `local` is a `store.local_temp` file renamed into place when the store is a local folder
    (`tmp` None), else a staging file uploaded from `tmp` and removed."""
    from prefect_runcomfy.engine.outputs.previews import store_poster
    from prefect_runcomfy.engine.outputs.probe import probe_video

    if with_poster:
        # The review page's poster, made while the video is on local disk anyway.
        video, _ = store_poster(store, local, row_id, tmp, probe=True)
    else:
        video = probe_video(local)
    if tmp is None:
        return store.commit_local(local, name), video
    uri = store.put_file(local, name)
    os.remove(local)  # keep at most one output on local disk at a time
    return uri, video


def progress_line(row_id: str, name: str) -> ProgressListener:
    """Says a long download's progress on the run's logger, naming the row and the file."""
    logger = run_logger()

    def say(progress: DownloadProgress) -> None:
        logger.info("%s: downloading %s: %s", row_id, name, progress.describe())

    return say


async def store_files(
    result: RequestResult,
    row_id: str,
    store: OutputStore,
    *,
    http: httpx.AsyncClient,
    suffix: str,
    policy: OutputPolicy | None = None,
    download_started: dict[str, float] | None = None,
) -> tuple[StoredFile, ...]:
    """Download every output of a finished request and upload it into `store` (with the
    row's poster made from the first); no sidecar. Idempotent: it overwrites. `suffix` (the
    model's `output_suffix`) names an output whose URL names no suffix.

    Every URL is checked against `policy` (the client's `output_policy`; RunComfy's output
    domains only when None) before anything is fetched: `OutputRefusedError` otherwise.
    Each download has a deadline (`DownloadTimedOutError`) and logs its progress when long
    (`prefect_runcomfy.api.download_deadline`). `download_started` keeps when each output's
    first try began (`time.monotonic()`, filled in here): pass the same dict to a retry so
    it does not restart the outputs' deadlines."""
    urls = result.output_urls
    if not urls:
        raise DownloadError(f"Request {result.request_id} succeeded but listed no output URL.")
    files: list[StoredFile] = []
    # A local folder takes each download in place (a hidden file renamed when complete): no
    # staging copy of every video. Other stores get it uploaded from a local staging folder.
    with contextlib.nullcontext(None) if store.is_local else staging_folder() as tmp:
        for url, name in zip(urls, output_names(row_id, urls, suffix), strict=True):
            local = store.local_temp(name) if tmp is None else os.path.join(tmp, name)
            started = (
                None
                if download_started is None
                else download_started.setdefault(url, time.monotonic())
            )
            try:
                downloaded = await download_output(
                    url,
                    local,
                    http=http,
                    policy=policy,
                    started=started,
                    on_progress=progress_line(row_id, name),
                )
                uri, video = await asyncio.to_thread(
                    _keep_file, store, local, name, row_id, tmp, not files
                )
            finally:
                if tmp is None and os.path.exists(local):  # noqa: ASYNC240 - one stat
                    os.remove(local)  # a broken download: never left beside the videos
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
    return tuple(files)


def stored_outcome(
    outcome: RowOutcome, result: RequestResult, files: tuple[StoredFile, ...]
) -> RowOutcome:
    """`outcome` once `result`'s outputs are stored as `files`."""
    return outcome.ended(
        RowStatus.SUCCEEDED,
        request_id=outcome.request_id or result.request_id,
        cost_usd=result.cost if result.cost is not None else outcome.cost_usd,
        created_at=result.created_at,
        api_finished_at=result.finished_at,
        output_urls=tuple(short_url(u) for u in result.output_urls),
        files=files,
        stored_at=utc_now(),
    )


async def write_sidecar(store: OutputStore, outcome: RowOutcome) -> RowOutcome:
    """Write the row's `<id>.json` from its record; the record comes back with its URI."""
    uri = await asyncio.to_thread(store.write_json, f"{outcome.id}.json", sidecar_of(outcome))
    return outcome.evolve(metadata_uri=uri)


async def store_job_outputs(
    result: RequestResult,
    row_id: str,
    store: OutputStore,
    *,
    suffix: str,
    metadata: dict[str, Any] | None = None,
    http: httpx.AsyncClient | None = None,
    log_success: bool = True,
    policy: OutputPolicy | None = None,
) -> StoredOutputs:
    """Download every output of a finished request into `store`; the body of
    `tasks.store_outputs` (see its docstring). `http` is a client for output hosts (one
    without the API token); a new one is opened when none is given. `policy` says which
    hosts it may download from, `suffix` what an output is named by when its URL names no
    suffix (see `store_files`). The sidecar is
    `metadata` with what was stored (the `RowOutcome` sidecar's facts) over it."""
    client = http or output_http_client()
    try:
        files = await store_files(result, row_id, store, http=client, suffix=suffix, policy=policy)
    finally:
        if http is None:
            await client.aclose()
    outcome = stored_outcome(RowOutcome(id=row_id), result, files)
    facts = {k: v for k, v in sidecar_of(outcome).items() if v is not None}
    sidecar = {**(metadata or {}), **facts}
    metadata_uri = await asyncio.to_thread(store.write_json, f"{row_id}.json", sidecar)
    if log_success:
        run_logger().info("%s: stored %s", row_id, ", ".join(f.uri for f in files))
    return StoredOutputs(
        row_id=row_id, video_uris=outcome.video_uris, metadata_uri=metadata_uri, files=list(files)
    )


__all__ = [
    "STORE_RETRY_DELAYS_S",
    "FinishedRequest",
    "StoredFile",
    "StoredOutputs",
    "label",
    "output_names",
    "progress_line",
    "run_logger",
    "store_files",
    "store_is_worth_retrying",
    "store_job_outputs",
    "stored_outcome",
    "submit_job",
    "utc_now",
    "wait_for_job",
    "write_sidecar",
]
