"""The path of one row through a batch: ledger → submit → wait → store → manifest record.

`generate_talking_videos` and `collect_outstanding_requests` (in `flows.py`) are thin: they
build a `Batch` and hand it rows. Everything a row needs to end in exactly one manifest
status lives here. HTTP goes only through the steps in `steps.py` (what the tasks wrap).

A row that needs RunComfy runs as one Prefect task run named after the row (`r00042`), which
does the submit, the wait and the store over the client its concurrency slot lends it: one
task run per row instead of three halves the client's CPU per row and makes the Prefect
database a third of the size (`benchmarks/scale.py`). The run's state is the row's:
Completed when its video is stored, Failed (or Cancelled) with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Cancelled, State
from prefect.utilities.annotations import quote

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.downloads import short_url
from prefect_runcomfy.api.exceptions import (
    AuthenticationError,
    DownloadError,
    InsufficientBalanceError,
    RequestNotFoundError,
    RowNotStoredError,
    RunCancelledError,
    RunComfyAPIError,
    RunComfyError,
    RunFailedError,
    RunTimedOutError,
    StorageError,
    SubmitOutcomeUnknownError,
    TransportError,
)
from prefect_runcomfy.api.models import MODEL_ID, InfiniteTalkInput
from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.engine.ledger import Ledger, LedgerEntry, LedgerState, RowDecision, RowPlan
from prefect_runcomfy.engine.manifest import RowStatus
from prefect_runcomfy.engine.steps import (
    STORE_RETRY_DELAYS_S,
    StoredOutputs,
    store_is_worth_retrying,
    store_job_outputs,
    submit_job,
    utc_now,
    wait_for_job,
)
from prefect_runcomfy.engine.storage import OutputStore
from prefect_runcomfy.engine.table import PreparedRow, RowProblem
from prefect_runcomfy.engine.waiting import PollPolicy
from prefect_runcomfy.report.artifacts import Progress
from prefect_runcomfy.tasks import client_for

LEDGER_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0)
"""Pauses before writing a ledger entry again after the output location failed."""

UNKNOWN_ADVICE = (
    "an earlier submit of this row got no answer, so a job may have run and been billed; "
    "check your RunComfy dashboard, then run again with resubmit_unknown=True to submit it anew"
)


@dataclass
class Batch:
    """Everything the rows of one run share: credentials, storage, ledger, limits, progress."""

    credentials: RunComfyCredentials | None
    store: OutputStore
    ledger: Ledger
    max_concurrency: int = 8
    concurrency_limit: str | None = None
    max_wait_s: float = 3600.0
    poll: PollPolicy = field(default_factory=PollPolicy)
    cancel_queued_at_deadline: bool = True
    model_id: str = MODEL_ID
    flow_run_id: str | None = None
    progress: Progress | None = None
    resolve_payload: Callable[[PreparedRow], Awaitable[dict[str, Any]]] | None = None
    """Builds a row's API payload with its media as URLs RunComfy can fetch."""
    stop_reason: str | None = None
    _semaphore: asyncio.Semaphore | None = None
    _idle_clients: list[RunComfyClient] = field(default_factory=list)
    _all_clients: list[RunComfyClient] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[RunComfyClient]:
        """Hold one in-flight job's place (this run's bound, and the account-wide limit if
        named) and lend it a client.

        Each place has its own client, handed from row to row: a row's submit, polls and
        download reuse the connections the place's previous row opened, and each pool stays
        one connection small (httpcore scans its whole pool on every request).
        """
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(max(1, self.max_concurrency))
        async with self._semaphore:
            if self.concurrency_limit:
                from prefect.concurrency.asyncio import concurrency

                async with (
                    concurrency(self.concurrency_limit, occupy=1, strict=True),
                    self._lend_client() as client,
                ):
                    yield client
            else:
                async with self._lend_client() as client:
                    yield client

    @contextlib.asynccontextmanager
    async def _lend_client(self) -> AsyncIterator[RunComfyClient]:
        if self._idle_clients:
            client = self._idle_clients.pop()
        else:
            client = client_for(self.credentials)
            self._all_clients.append(client)
        try:
            yield client
        finally:
            self._idle_clients.append(client)

    async def aclose(self) -> None:
        """Close every client this batch opened."""
        clients, self._all_clients, self._idle_clients = self._all_clients, [], []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def ledger_call(self, method: str, *args: Any, **kwargs: Any) -> LedgerEntry:
        """Run a ledger write off the event loop (fsspec is blocking), trying again after a
        pause when the output location fails (a write is an atomic replace: safe to repeat)."""
        call = getattr(self.ledger, method)
        for delay in (*LEDGER_RETRY_DELAYS_S, None):
            try:
                return await asyncio.to_thread(call, *args, **kwargs)
            except StorageError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def record_paid(
        self,
        record: dict[str, Any],
        row_id: str,
        request_id: str,
        state: LedgerState,
        **fields: Any,
    ) -> None:
        """Write a submitted request's next state to the ledger, never losing the row over it.

        The job is paid for: when the output location cannot be written even after retries,
        the row goes on (its video or its reason still reaches the manifest), the request id
        is logged, and the record says what the ledger is missing.
        """
        try:
            await self.ledger_call("mark", row_id, state, request_id=request_id, **fields)
        except StorageError as exc:
            get_run_logger().warning(
                "%s: request %s is %s, but the ledger could not record it: %s",
                row_id,
                request_id,
                state.value,
                exc,
            )
            note = f"the ledger could not record request {request_id} as {state.value}: {exc}"
            record["note"] = f"{record['note']}; {note}" if record.get("note") else note

    async def done(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.progress is not None:
            await self.progress.row_done(str(record.get("status")))
        return record


def input_columns(job: InfiniteTalkInput) -> dict[str, Any]:
    """The inputs by friendly name, as the user gave them (for the manifest)."""
    return job.model_dump()


def sanitize_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as sent, safe to store: no pre-signed queries, no inline media bytes."""
    clean: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and value.startswith("data:"):
            head = value.split(",", 1)[0]
            clean[key] = f"{head},<{len(value)} characters inline>"
        elif isinstance(value, str) and "://" in value:
            clean[key] = short_url(value)
        else:
            clean[key] = value
    return clean


def base_record(row: PreparedRow | RowProblem) -> dict[str, Any]:
    """The manifest record of a row before anything happens to it."""
    record: dict[str, Any] = {"id": row.id, "row": row.row, "extras": dict(row.extras)}
    if isinstance(row, PreparedRow):
        record.update(input_columns(row.job))
    else:
        # As given, but short: a rejected row may hold a megabyte prompt or an inline file.
        record.update(
            {
                k: v[:300] + "…" if isinstance(v, str) and len(v) > 300 else v
                for k, v in row.inputs.items()
            }
        )
    return record


def invalid_record(problem: RowProblem) -> dict[str, Any]:
    """The manifest record of a row rejected before anything was submitted."""
    record = base_record(problem)
    record.update({"status": RowStatus.INVALID.value, "error": problem.message, "attempts": 0})
    return record


def _files_facts(stored_files: list[dict[str, Any]]) -> dict[str, Any]:
    if not stored_files:
        return {}
    first = stored_files[0]
    video = first.get("video") or {}
    return {
        "video_uri": first.get("uri"),
        "video_uris": [f.get("uri") for f in stored_files],
        "size_bytes": first.get("size"),
        "sha256": first.get("sha256"),
        "duration_s": video.get("duration_s"),
        "width": video.get("width"),
        "height": video.get("height"),
    }


def record_from_sidecar(record: dict[str, Any], sidecar: dict[str, Any]) -> dict[str, Any]:
    """Fill a manifest record from a stored row's sidecar JSON."""
    record.update(_files_facts(sidecar.get("files") or []))
    record.update(
        {
            "status": RowStatus.SUCCEEDED.value,
            "request_id": sidecar.get("request_id"),
            "queue_seconds": sidecar.get("queue_seconds"),
            "run_seconds": sidecar.get("run_seconds"),
            "total_seconds": sidecar.get("total_seconds"),
            "cost_usd": sidecar.get("cost_usd"),
            "submitted_at": sidecar.get("submitted_at"),
            "finished_at": sidecar.get("finished_at"),
        }
    )
    return record


async def run_row(
    batch: Batch, row: PreparedRow, decision: RowDecision, entry: LedgerEntry | None
) -> dict[str, Any]:
    """Take one valid row to its end and return its manifest record. Never raises for the row's
    own trouble: that becomes the record's status and error."""
    record = base_record(row)
    record["attempts"] = entry.attempts if entry else 0
    if decision.plan is RowPlan.SKIP_STORED:
        sidecar = await asyncio.to_thread(batch.store.read_json, f"{row.id}.json")
        record_from_sidecar(record, sidecar or {})
        record["metadata_uri"] = batch.store.uri(f"{row.id}.json")
        record["note"] = "already stored by an earlier run; not paid again"
        return await batch.done(record)
    if decision.plan is RowPlan.UNKNOWN:
        record.update(
            status=RowStatus.OUTCOME_UNKNOWN.value,
            request_id=entry.request_id if entry else None,
            error=f"not submitted: {UNKNOWN_ADVICE}",
        )
        return await batch.done(record)
    if decision.plan is RowPlan.KEEP_FAILED:
        state = entry.state if entry else LedgerState.FAILED
        status = RowStatus.CANCELLED if state is LedgerState.CANCELLED else RowStatus.FAILED
        record.update(
            status=status.value,
            request_id=entry.request_id if entry else None,
            error=(entry.error if entry else None) or decision.reason,
            note="failed in an earlier run; run with retry_failed=True to pay for another try",
        )
        return await batch.done(record)
    try:
        async with batch.slot() as client:
            await in_row_task(
                row.id,
                record,
                lambda: _submit_wait_store(batch, client, row, decision, entry, record),
            )
    except Exception as exc:  # no place to run in (a missing global concurrency limit, ...)
        get_run_logger().error("%s: not run: %s", row.id, exc)
        record.update(status=RowStatus.FAILED.value, error=f"{type(exc).__name__}: {exc}")
    return await batch.done(record)


@task(
    name="talking-video",
    task_run_name="{name}",
    retries=0,  # it submits: a retry could pay twice
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def _row_task(
    name: str, record: dict[str, Any], body: Callable[[], Awaitable[None]]
) -> State[Any] | None:
    try:
        await body()
    except StorageError as exc:
        record.update(status=RowStatus.FAILED.value, error=str(exc))
    except Exception as exc:  # a bug must not lose the other rows' records
        get_run_logger().exception("%s: unexpected error", name)
        record.update(
            status=record.get("status") or RowStatus.FAILED.value,
            error=f"{type(exc).__name__}: {exc}",
        )
        if record["status"] == RowStatus.SUCCEEDED.value:
            record["status"] = RowStatus.FAILED.value
    status = str(record.get("status"))
    if status == RowStatus.SUCCEEDED.value:
        return None
    if status == RowStatus.CANCELLED.value:
        return Cancelled(message=f"{name} ended cancelled: {record.get('error')}")
    raise RowNotStoredError(name, status, record.get("error"))


async def in_row_task(
    name: str, record: dict[str, Any], body: Callable[[], Awaitable[None]]
) -> None:
    """Run `body` (which fills `record`) as the row's task run named `name`.

    The task run ends Completed when the record says succeeded, Cancelled when cancelled, and
    Failed with `RowNotStoredError` (the row's status and error) otherwise. The caller gets
    the record, never an exception: one row's trouble does not stop the others.
    """
    # quote: Prefect need not walk these looking for upstream futures.
    state = await _row_task(name, quote(record), quote(body), return_state=True)  # type: ignore[misc]
    if not record.get("status"):
        # The body never ran to its end (Prefect itself failed around it): say so.
        record.update(
            status=RowStatus.FAILED.value,
            error=f"the row's task run ended {state.type.value}: {state.message}",
        )


async def _submit_wait_store(
    batch: Batch,
    client: RunComfyClient,
    row: PreparedRow,
    decision: RowDecision,
    entry: LedgerEntry | None,
    record: dict[str, Any],
) -> None:
    logger = get_run_logger()
    first_note = None
    if decision.plan is RowPlan.RESUME and entry is not None and entry.request_id:
        request_id = entry.request_id
        submitted_at = entry.submitted_at
        record["note"] = "collected a request submitted by an earlier run"
        if decision.payload_changed:
            logger.warning(
                "%s: the row's inputs changed since request %s was submitted; collecting it "
                "anyway (it is paid for); the next run submits the new inputs",
                row.id,
                request_id,
            )
        inputs = entry.model_extra.get("inputs") if entry.model_extra else None
    else:
        if batch.stop_reason:
            record.update(
                status=RowStatus.FAILED.value, error=f"not submitted: {batch.stop_reason}"
            )
            return
        if batch.resolve_payload is None:
            raise RuntimeError("a batch that submits needs resolve_payload")
        payload = await batch.resolve_payload(row)
        inputs = sanitize_payload(payload)
        await batch.ledger_call(
            "mark_submitting",
            row.id,
            row.fingerprint,
            batch.flow_run_id,
        )
        record["attempts"] = (entry.attempts if entry else 0) + 1
        record["submitted_by_this_run"] = True
        try:
            request_id = await submit_job(
                client, payload, model_id=batch.model_id, row_id=row.id, log=False
            )
        except SubmitOutcomeUnknownError as exc:
            await batch.ledger_call("mark", row.id, LedgerState.OUTCOME_UNKNOWN, error=str(exc))
            record.update(status=RowStatus.OUTCOME_UNKNOWN.value, error=str(exc))
            return
        except (AuthenticationError, InsufficientBalanceError) as exc:
            # Every later submit would be refused the same way: stop submitting, keep the rest.
            batch.stop_reason = batch.stop_reason or str(exc)
            await batch.ledger_call(
                "mark", row.id, LedgerState.FAILED, error=str(exc), billed=False
            )
            record.update(status=RowStatus.FAILED.value, error=str(exc))
            return
        except (RunComfyAPIError, TransportError) as exc:
            # Refused outright, or never reached RunComfy: nothing was created or billed.
            await batch.ledger_call(
                "mark", row.id, LedgerState.FAILED, error=str(exc), billed=False
            )
            record.update(status=RowStatus.FAILED.value, error=str(exc))
            return
        submitted_at = utc_now()
        # Said with the row's next state change: one log line fewer per row.
        first_note = f"submitted as request {request_id}"
        try:
            await batch.ledger_call(
                "mark",
                row.id,
                LedgerState.SUBMITTED,
                **_submitted_fields(row, request_id, submitted_at, inputs),
            )
        except StorageError as exc:
            # Paid for, and its id is known only here: say it now, and wait for it anyway.
            logger.warning(
                "%s: submitted as request %s, but the ledger could not record it (%s); "
                "waiting for it anyway. If this run stops first, the request id is here and "
                "in the manifest: `prefect-runcomfy status %s`.",
                row.id,
                request_id,
                exc,
                request_id,
            )
            record["note"] = f"the ledger could not record request {request_id}: {exc}"
            first_note = None
    record.update(request_id=request_id, submitted_at=submitted_at)
    await collect_request(
        batch,
        client,
        row.id,
        request_id,
        submitted_at,
        record,
        inputs=inputs,
        job=row.job,
        first_note=first_note,
    )


def _submitted_fields(
    row: PreparedRow, request_id: str, submitted_at: str, inputs: dict[str, Any]
) -> dict[str, Any]:
    # The ledger keeps what the collecting flow needs to finish this row without the table.
    return {
        "request_id": request_id,
        "submitted_at": submitted_at,
        "inputs": inputs,
        "row": row.row,
        "friendly_inputs": input_columns(row.job),
        "extras": {k: _jsonable(v) for k, v in row.extras.items()},
    }


def _jsonable(value: Any) -> Any:
    try:
        import json

        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


async def collect_request(
    batch: Batch,
    client: RunComfyClient,
    row_id: str,
    request_id: str,
    submitted_at: str | None,
    record: dict[str, Any],
    *,
    inputs: dict[str, Any] | None,
    job: InfiniteTalkInput | None = None,
    first_note: str | None = None,
) -> None:
    """Wait for a known request, store its outputs, and write the ledger and the record.

    Logs the row's state changes and, at the end, one line with the request id and where the
    video went; `first_note` starts the first line (see `wait_for_job`)."""
    submitted_epoch = _epoch(submitted_at)
    fresh = submitted_epoch is not None and time.time() - submitted_epoch < 60
    metadata: dict[str, Any] = {
        "id": row_id,
        "model_id": batch.model_id,
        "request_id": request_id,
        "inputs": inputs,
        "submitted_at": submitted_at,
        "flow_run_id": batch.flow_run_id,
        "prefect_runcomfy_version": __version__,
    }
    if job is not None:
        metadata["sources"] = {"image": _source(job.image), "audio": _source(job.audio)}
    try:
        finished = await wait_for_job(
            client,
            request_id,
            max_wait_s=batch.max_wait_s,
            poll=batch.poll,
            cancel_queued_at_deadline=batch.cancel_queued_at_deadline,
            submitted_at=submitted_epoch if fresh else None,
            row_id=row_id,
            log_success=False,  # one line below, once the video is stored
            first_note=first_note,
        )
    except (RunFailedError, RunCancelledError) as exc:
        cancelled = isinstance(exc, RunCancelledError)
        details = exc.details or {}
        result = details.get("result") or {}
        error = str(exc)
        record.update(
            status=(RowStatus.CANCELLED if cancelled else RowStatus.FAILED).value,
            error=error,
            queue_seconds=details.get("queue_seconds"),
            run_seconds=details.get("run_seconds"),
            cost_usd=result.get("cost"),
            finished_at=utc_now(),
        )
        metadata.update(
            status=record["status"],
            error=error,
            api_error=result.get("error") or result.get("failure_reason"),
            api_result=result,
            queue_seconds=details.get("queue_seconds"),
            run_seconds=details.get("run_seconds"),
            cost_usd=result.get("cost"),
            finished_at=record["finished_at"],
        )
        uri = await asyncio.to_thread(batch.store.write_json, f"{row_id}.json", metadata)
        record["metadata_uri"] = uri
        await batch.record_paid(
            record,
            row_id,
            request_id,
            LedgerState.CANCELLED if cancelled else LedgerState.FAILED,
            error=error,
            metadata_uri=uri,
        )
        return
    except RunTimedOutError as exc:
        state = LedgerState.CANCELLED if exc.cancelled else LedgerState.TIMED_OUT
        what = (
            "cancelled while still queued; nothing was billed"
            if exc.cancelled
            else "still running on RunComfy; collect it later with collect_outstanding_requests"
        )
        error = f"{exc} ({what})"
        record.update(status=RowStatus.TIMED_OUT.value, error=error)
        await batch.record_paid(record, row_id, request_id, state, error=error)
        return
    except RequestNotFoundError as exc:
        error = f"request {request_id} is unknown or its record expired: {exc}"
        record.update(status=RowStatus.FAILED.value, error=error)
        await batch.record_paid(record, row_id, request_id, LedgerState.FAILED, error=error)
        return
    except RunComfyError as exc:
        record.update(status=RowStatus.FAILED.value, error=str(exc))
        await batch.record_paid(record, row_id, request_id, LedgerState.TIMED_OUT, error=str(exc))
        return

    result = finished.result
    finished_at = utc_now()
    metadata.update(
        status=RowStatus.SUCCEEDED.value,
        error=None,
        queue_seconds=finished.queue_seconds,
        run_seconds=finished.run_seconds,
        total_seconds=finished.total_seconds,
        cost_usd=result.cost,
        created_at=result.created_at,
        api_finished_at=result.finished_at,
        finished_at=finished_at,
    )
    try:
        stored = await _store_with_retries(batch, client, result, row_id, metadata)
    except DownloadError as exc:
        error = f"the video could not be downloaded: {exc}"
        record.update(status=RowStatus.FAILED.value, error=error, request_id=request_id)
        await batch.record_paid(record, row_id, request_id, LedgerState.FAILED, error=error)
        return
    files = [f.model_dump(mode="json") for f in stored.files]
    record.update(_files_facts(files))
    record.update(
        status=RowStatus.SUCCEEDED.value,
        error=None,
        metadata_uri=stored.metadata_uri,
        queue_seconds=finished.queue_seconds,
        run_seconds=finished.run_seconds,
        total_seconds=finished.total_seconds,
        cost_usd=result.cost,
        finished_at=finished_at,
    )
    await batch.record_paid(
        record,
        row_id,
        request_id,
        LedgerState.STORED,
        video_uris=stored.video_uris,
        metadata_uri=stored.metadata_uri,
        error=None,
    )
    get_run_logger().info(
        "%s: request %s succeeded after %.0f s; stored %s",
        row_id,
        request_id,
        finished.total_seconds or 0.0,
        ", ".join(stored.video_uris),
    )


async def _store_with_retries(
    batch: Batch,
    client: RunComfyClient,
    result: Any,
    row_id: str,
    metadata: dict[str, Any],
) -> StoredOutputs:
    """Store a row's outputs; tried again after a pause unless the output is gone for good
    (storing is idempotent: it overwrites)."""
    for delay in (*STORE_RETRY_DELAYS_S, None):
        try:
            return await store_job_outputs(
                result,
                row_id,
                batch.store,
                metadata=metadata,
                http=client.output_http,
                log_success=False,
            )
        except Exception as exc:
            if delay is None or not store_is_worth_retrying(exc):
                raise
            get_run_logger().warning(
                "%s: storing failed (%s); trying again in %g s", row_id, exc, delay
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _source(value: str) -> str:
    if value.startswith("data:"):
        return value.split(",", 1)[0] + ",<inline>"
    return short_url(value)


async def cancel_queued_requests(
    ledger: Ledger,
    credentials: RunComfyCredentials | None,
    *,
    flow_run_id: str | None = None,
) -> list[str]:
    """Best effort: cancel this run's requests that are still queued; return their ids.

    Running requests cannot be cancelled; they stay `submitted` in the ledger so
    `collect_outstanding_requests` can collect them.
    """
    entries = await asyncio.to_thread(ledger.load_all)
    pending = [
        e
        for e in entries.values()
        if e.state in (LedgerState.SUBMITTED, LedgerState.SUBMITTING)
        and e.request_id
        and (flow_run_id is None or e.flow_run_id == flow_run_id)
    ]
    cancelled: list[str] = []
    if not pending:
        return cancelled
    async with client_for(credentials) as client:
        for entry in pending:
            assert entry.request_id is not None
            try:
                answer = await client.cancel(entry.request_id)
            except RunComfyError:
                continue
            if answer.cancelled:
                cancelled.append(entry.request_id)
                await asyncio.to_thread(
                    ledger.mark,
                    entry.id,
                    LedgerState.CANCELLED,
                    error="cancelled because its flow run stopped before it started",
                )
    return cancelled
