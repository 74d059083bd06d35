"""One row's path through a batch: ledger → submit → wait → store → its `RowOutcome`.

A row that needs RunComfy runs as one Prefect task run named after the row (`r00042`), which
does the submit, the wait and the store over the client its row place lends it: one task
run per row instead of three halves the client's CPU per row and makes the Prefect database a
third of the size (`benchmarks/scale.py`). The row holds a job place (`engine.run.places`:
`max_concurrency`, and the account-wide limit) from its submit until its job is seen
finished, not while it stores: the next row, its task run already open in its row place,
submits at once. The run's state is the row's:
Completed when its video is stored (the state's message, which Prefect logs as the run's last
line, names the request and the video), Failed (or Cancelled) with the reason otherwise.

Each step returns the row's next `RowOutcome`; a `RowCell` keeps the latest one, so a step
that raises still leaves what was known (the request id above all) to the row's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from prefect.utilities.annotations import quote

from prefect_runcomfy.api.backoff import retrying
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import (
    AuthenticationError,
    DownloadError,
    DownloadTimedOutError,
    InsufficientBalanceError,
    OutputRefusedError,
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
from prefect_runcomfy.api.models import RequestResult
from prefect_runcomfy.engine.claims.claim import Held
from prefect_runcomfy.engine.inputs.table import PreparedRow
from prefect_runcomfy.engine.outputs.sidecar import with_sidecar
from prefect_runcomfy.engine.plan.ledger import LedgerEntry, RowDecision, submitted_fields
from prefect_runcomfy.engine.record import hints
from prefect_runcomfy.engine.record.hints import RESUBMIT_UNKNOWN, RETRY_FAILED
from prefect_runcomfy.engine.record.outcome import (
    RowOutcome,
    epoch_of,
    media_source,
    sanitize_payload,
    utc_now,
)
from prefect_runcomfy.engine.record.status import LedgerState, RowPlan, RowStatus
from prefect_runcomfy.engine.run.places import RowPlace
from prefect_runcomfy.engine.run.state import RunState
from prefect_runcomfy.engine.run.steps import (
    STORE_RETRY_DELAYS_S,
    FinishedRequest,
    store_files,
    store_is_worth_retrying,
    stored_outcome,
    submit_job,
    wait_for_job,
    write_sidecar,
)
from prefect_runcomfy.engine.run.turn import RowTurn, follow_holder, take_turn

UNKNOWN_ADVICE = (
    "an earlier submit of this row got no answer, so a job may have run and been billed; "
    f"check your RunComfy dashboard, then run again with {RESUBMIT_UNKNOWN} to submit it anew"
)

FRESH_SUBMIT_S = 60.0
"""A request submitted this recently may briefly be unknown to RunComfy (not visible yet)."""


class RowCell:
    """Holds the latest `RowOutcome` of a row while its task run works on it, and the line
    that says how the row ended well (its task run's Completed state carries it)."""

    def __init__(self, outcome: RowOutcome) -> None:
        self.latest = outcome
        self.stored_line: str | None = None

    def keep(self, outcome: RowOutcome) -> RowOutcome:
        """Make `outcome` the latest and hand it back."""
        self.latest = outcome
        return outcome


# -- the row's way ----------------------------------------------------------------------------


async def run_row(
    batch: RunState, row: PreparedRow, decision: RowDecision, entry: LedgerEntry | None
) -> RowOutcome:
    """Take one valid row to its end and return its record. Never raises for the row's own
    trouble: that becomes the record's status and error."""
    start = RowOutcome.start(
        row,
        attempts=entry.attempts if entry else 0,
        model_id=batch.settings.model_id,
        flow_run_id=batch.settings.flow_run_id,
    )
    if decision.plan is RowPlan.SKIP_STORED:
        return await batch.done(await _already_stored(batch, start))
    if decision.plan is RowPlan.KEEP_FAILED or (
        decision.plan is RowPlan.UNKNOWN and not _maybe_being_submitted(batch, entry)
    ):
        return await batch.done(_reported_again(start, decision, entry))
    cell = RowCell(
        start.evolve(
            sources={
                name: media_source(getattr(row.job, name)) for name in batch.settings.model.media
            }
        )
    )
    if decision.plan is RowPlan.SUBMIT:
        cell.keep(cell.latest.evolve(estimated_cost_usd=decision.estimated_cost_usd))
    try:
        async with batch.places.row() as place:
            await in_row_task(
                cell, lambda: _submit_and_collect(batch, place, row, decision, entry, cell)
            )
    except Exception as exc:  # no place to run in (Prefect itself failed around the row, ...)
        get_run_logger().error("%s: not run: %s", row.id, exc)
        cell.keep(cell.latest.ended(RowStatus.FAILED, f"{type(exc).__name__}: {exc}"))
    return await batch.done(cell.latest)


def _maybe_being_submitted(batch: RunState, entry: LedgerEntry | None) -> bool:
    """A `submitting` entry may be another live run's POST right now: the row's turn (its
    claim) tells that apart from a POST whose run died without an answer."""
    return batch.claims is not None and entry is not None and entry.state is LedgerState.SUBMITTING


async def _already_stored(batch: RunState, start: RowOutcome) -> RowOutcome:
    sidecar = await asyncio.to_thread(batch.store.read_json, f"{start.id}.json")
    stored = with_sidecar(start, sidecar or {})
    if stored.queue_seconds is None and not stored.notes:  # stored by an older version
        stored = stored.noted("the run that stored it recorded no queue and run times")
    return stored.ended(
        RowStatus.SUCCEEDED,
        metadata_uri=batch.store.uri(f"{start.id}.json"),
        already_stored=True,
    ).noted("already stored by an earlier run; not paid again")


def _reported_again(
    start: RowOutcome, decision: RowDecision, entry: LedgerEntry | None
) -> RowOutcome:
    """A row this run does not pay for again: an unknown earlier submit, or an earlier failure."""
    request_id = entry.request_id if entry else None
    if decision.plan is RowPlan.UNKNOWN:
        return start.ended(
            RowStatus.OUTCOME_UNKNOWN, f"not submitted: {UNKNOWN_ADVICE}", request_id=request_id
        )
    state = entry.state if entry else LedgerState.FAILED
    status = RowStatus.CANCELLED if state is LedgerState.CANCELLED else RowStatus.FAILED
    return start.ended(
        status, (entry.error if entry else None) or decision.reason, request_id=request_id
    ).noted(f"failed in an earlier run; run with {RETRY_FAILED} to pay for another try")


async def _submit_and_collect(
    batch: RunState,
    place: RowPlace,
    row: PreparedRow,
    decision: RowDecision,
    entry: LedgerEntry | None,
    cell: RowCell,
) -> None:
    """The row's task run: its turn (the row's claim, or following the run that holds it),
    a job place from submit to finish, then its outputs stored (the job place already free
    for the next row)."""
    client = place.client
    while True:
        async with contextlib.AsyncExitStack() as held_place:
            try:
                await held_place.enter_async_context(place.job())
            except Exception as exc:  # no place to run in (a missing global limit, ...)
                get_run_logger().error("%s: not run: %s", row.id, exc)
                cell.keep(cell.latest.ended(RowStatus.FAILED, f"{type(exc).__name__}: {exc}"))
                return
            turn = await take_turn(batch, row, decision, entry)
            if not isinstance(turn, Held):
                finished = await _take_job_to_its_end(batch, client, row, turn, cell)
                break
        # Another live run works on the row: wait for it, holding no job place.
        if not await follow_holder(batch, row, turn, cell):
            return
    if finished is not None:
        await store_row_outputs(batch, client, cell, finished)


async def _take_job_to_its_end(
    batch: RunState, client: RunComfyClient, row: PreparedRow, turn: RowTurn, cell: RowCell
) -> FinishedRequest | None:
    """Submit or resume the row's job as its turn says and wait for it; None when the row
    ended without a job to store (its record in `cell`)."""
    decision, entry = turn.decision, turn.entry
    if turn.refusal is not None:
        cell.keep(cell.latest.ended(RowStatus.FAILED, turn.refusal))
        return None
    if decision.plan is RowPlan.RESUME and entry is not None and entry.request_id:
        outcome = _resumed(cell.latest, row, decision, entry)
        first_note = None
    elif decision.plan is RowPlan.SUBMIT:
        outcome = await submit_row(batch, client, row, entry, cell)
        first_note = f"submitted as request {outcome.request_id}"
        if outcome.status is not None:
            cell.keep(outcome)
            return None
        if outcome.notes:  # the ledger missed the id: the warning said it already
            first_note = None
    elif decision.plan is RowPlan.SKIP_STORED:
        cell.keep(await _already_stored(batch, cell.latest))
        return None
    else:
        cell.keep(_reported_again(cell.latest, decision, entry))
        return None
    cell.keep(outcome)
    return await wait_for_row_job(batch, client, cell, first_note=first_note)


def _resumed(
    outcome: RowOutcome, row: PreparedRow, decision: RowDecision, entry: LedgerEntry
) -> RowOutcome:
    if decision.payload_changed:
        get_run_logger().warning(
            "%s: the row's inputs changed since request %s was submitted; collecting it "
            "anyway (it is paid for); the next run submits the new inputs",
            row.id,
            entry.request_id,
        )
    return outcome.evolve(
        request_id=entry.request_id,
        submitted_at=entry.submitted_at,
        sent=(entry.model_extra or {}).get("inputs"),
    ).noted("collected a request submitted by an earlier run")


# -- submit -----------------------------------------------------------------------------------


async def submit_row(
    batch: RunState,
    client: RunComfyClient,
    row: PreparedRow,
    entry: LedgerEntry | None,
    cell: RowCell,
) -> RowOutcome:
    """POST the row once, the ledger written before and after. Returns the record with its
    request id, or ended (`failed`, `outcome_unknown`) when no job is known to exist; each
    version is kept in `cell` as soon as it exists (above all the request id)."""
    outcome = cell.latest
    if batch.stop_reason:
        return outcome.ended(RowStatus.FAILED, f"not submitted: {batch.stop_reason}")
    if batch.build_payload is None:
        raise RuntimeError(f"{row.id}: the run has no way to build a row's API body")
    payload = await batch.build_payload(row)
    if await _taken_over(batch, row.id):
        return outcome.ended(
            RowStatus.FAILED,
            "not submitted: another run took this row over just before its POST (it judged "
            "this run gone); run again to see what that run did with it",
        )
    if batch.claims is not None and not batch.claims.lease.fresh():
        # Others may take this run's rows once its lease lapses: paying now could pay twice.
        return outcome.ended(
            RowStatus.FAILED,
            "not submitted: this run could not renew its claim lease on the output location "
            f"{batch.store.uri('')} for half a lease; run again once the location is reachable",
        )
    await batch.write_ledger(
        lambda: batch.ledger.mark_submitting(row.id, row.fingerprint, batch.settings.flow_run_id)
    )
    outcome = cell.keep(
        outcome.evolve(
            sent=sanitize_payload(payload),
            attempts=(entry.attempts if entry else 0) + 1,
            submitted_by_this_run=True,
        )
    )
    try:
        request_id = await batch.send_submit(
            row.id,
            submit_job(client, payload, model_id=batch.settings.model_id, row_id=row.id, log=False),
        )
    except RunComfyError as exc:
        return await _refused(batch, outcome, exc)
    outcome = cell.keep(outcome.evolve(request_id=request_id, submitted_at=utc_now()))
    try:
        fields = submitted_fields(outcome)
        await batch.write_ledger(lambda: batch.ledger.mark(row.id, LedgerState.SUBMITTED, **fields))
    except StorageError as exc:
        # Paid for, and its id is known only here: say it now, and wait for it anyway.
        get_run_logger().warning(
            "%s: submitted as request %s, but the ledger could not record it (%s); "
            "waiting for it anyway. If this run stops first, the request id is here and "
            "in the manifest: `prefect-runcomfy status %s`.",
            row.id,
            request_id,
            exc,
            request_id,
        )
        outcome = outcome.noted(f"the ledger could not record request {request_id}: {exc}")
    return outcome


async def _taken_over(batch: RunState, id: str) -> bool:
    """True when a later claim than this run's exists on the row (one read, before a POST)."""
    generation = batch.ledger.held(id)
    if batch.claims is None or generation is None:
        return False
    return await asyncio.to_thread(batch.claims.superseded, id, generation)


async def _refused(batch: RunState, outcome: RowOutcome, exc: RunComfyError) -> RowOutcome:
    """A submit that raised: an unknown outcome, or refused with nothing created or billed."""
    if isinstance(exc, SubmitOutcomeUnknownError):
        await batch.write_ledger(
            lambda: batch.ledger.mark(outcome.id, LedgerState.OUTCOME_UNKNOWN, error=str(exc))
        )
        return outcome.ended(RowStatus.OUTCOME_UNKNOWN, str(exc))
    if not isinstance(exc, (RunComfyAPIError, TransportError)):
        raise exc
    if isinstance(exc, (AuthenticationError, InsufficientBalanceError)):
        # Every later submit would be refused the same way: stop submitting, keep the rest.
        batch.stop_reason = batch.stop_reason or str(exc)
    await batch.write_ledger(
        lambda: batch.ledger.mark(outcome.id, LedgerState.FAILED, error=str(exc), billed=False)
    )
    return outcome.ended(RowStatus.FAILED, str(exc))


# -- wait and store ---------------------------------------------------------------------------


async def collect_request(
    batch: RunState, client: RunComfyClient, cell: RowCell, *, first_note: str | None = None
) -> RowOutcome:
    """Wait for the row's known request, store its outputs, and write the ledger and the
    record (kept in `cell`, and returned).

    Logs the row's state changes; the line with the request id and where the video went is
    `cell.stored_line`, which the row's task run ends with (its Completed state's message);
    `first_note` starts the first line (see `wait_for_job`)."""
    finished = await wait_for_row_job(batch, client, cell, first_note=first_note)
    if finished is None:
        return cell.latest
    return await store_row_outputs(batch, client, cell, finished)


async def wait_for_row_job(
    batch: RunState, client: RunComfyClient, cell: RowCell, *, first_note: str | None = None
) -> FinishedRequest | None:
    """Wait for the row's known request: what it finished with when it succeeded, else None
    with the row ended (record in `cell`, ledger written)."""
    outcome = cell.latest
    assert outcome.request_id is not None
    submitted = epoch_of(outcome.submitted_at)
    fresh = submitted is not None and time.time() - submitted < FRESH_SUBMIT_S
    try:
        finished = await wait_for_job(
            client,
            outcome.request_id,
            max_wait_s=batch.settings.max_wait_s,
            poll=batch.settings.poll,
            cancel_queued_at_deadline=batch.settings.waiting.cancel_queued_at_deadline,
            submitted_at=submitted if fresh else None,
            row_id=outcome.id,
            log_success=False,  # one line once the video is stored
            first_note=first_note,
            estimator=batch.estimator,
            kind=batch.settings.model.job_kind(outcome.sent),
        )
    except RunComfyError as exc:
        batch.submitted.pop(outcome.id, None)
        cell.keep(await _ended_unstored(batch, outcome, exc))
        return None
    batch.submitted.pop(outcome.id, None)  # finished: nothing for a stop to cancel
    timed = outcome.evolve(
        queue_seconds=finished.queue_seconds,
        run_seconds=finished.run_seconds,
        total_seconds=finished.total_seconds,
        cost_usd=finished.result.cost,
        finished_at=utc_now(),
    )
    cell.keep(timed.noted(finished.timing_note) if finished.timing_note else timed)
    return finished


async def store_row_outputs(
    batch: RunState, client: RunComfyClient, cell: RowCell, finished: FinishedRequest
) -> RowOutcome:
    """Store a succeeded request's outputs and the row's sidecar; the ledger and the record
    (kept in `cell`, and returned) say where the video went."""
    stored = cell.keep(await _store(batch, client, cell.latest, finished))
    if stored.status is RowStatus.SUCCEEDED:
        # Said by the task run's final state ("Finished in state Completed('...')"): one log
        # line per row instead of two, and the same words on the task run in the UI.
        cell.stored_line = (
            f"{stored.id}: request {stored.request_id} succeeded after "
            f"{finished.total_seconds or 0.0:.0f} s; stored {', '.join(stored.video_uris)}"
        )
    return stored


async def _ended_unstored(batch: RunState, outcome: RowOutcome, exc: RunComfyError) -> RowOutcome:
    """The record and ledger entry of a request that produced no video."""
    if isinstance(exc, (RunFailedError, RunCancelledError)):
        return await _ended_on_runcomfy(batch, outcome, exc)
    if isinstance(exc, RunTimedOutError):
        what = (
            "cancelled while still queued; nothing was billed"
            if exc.cancelled
            else "still running on RunComfy; collect it later with "
            f"{hints.collect(batch.store.output_uri)}"
        )
        error = f"{exc} ({what})"
        if exc.cancelled:  # cancelled while queued: no job ran, so the next run submits it
            return await batch.record_paid(
                outcome.ended(RowStatus.TIMED_OUT, error),
                LedgerState.CANCELLED,
                error=error,
                billed=False,
            )
        return await batch.record_paid(
            outcome.ended(RowStatus.TIMED_OUT, error), LedgerState.TIMED_OUT, error=error
        )
    if isinstance(exc, RequestNotFoundError):
        error = f"request {outcome.request_id} is unknown or its record expired: {exc}"
        return await batch.record_paid(
            outcome.ended(RowStatus.FAILED, error), LedgerState.FAILED, error=error
        )
    # Anything else (RunComfy unreachable for the whole wait, ...): the job may still finish.
    return await batch.record_paid(
        outcome.ended(RowStatus.FAILED, str(exc)), LedgerState.TIMED_OUT, error=str(exc)
    )


async def _ended_on_runcomfy(
    batch: RunState, outcome: RowOutcome, exc: RunFailedError | RunCancelledError
) -> RowOutcome:
    cancelled = isinstance(exc, RunCancelledError)
    details = exc.details or {}
    result = details.get("result") or {}
    outcome = outcome.ended(
        RowStatus.CANCELLED if cancelled else RowStatus.FAILED,
        str(exc),
        queue_seconds=details.get("queue_seconds"),
        run_seconds=details.get("run_seconds"),
        cost_usd=result.get("cost"),
        finished_at=utc_now(),
        api_error=result.get("error") or result.get("failure_reason"),
        api_result=result,
    )
    outcome = await write_sidecar(batch.store, outcome)
    if cancelled:
        # RunComfy cancels only queued jobs: one that ends `cancelled` never ran and was not
        # billed, so the next run submits it without a flag (unless RunComfy reports a cost
        # for it: then it keeps the failed rows' rule). Its `run_seconds` says nothing here:
        # a job never seen running is given a bound from its last queued read.
        billed = bool(outcome.cost_usd)
        return await batch.record_paid(
            outcome,
            LedgerState.CANCELLED,
            error=outcome.error,
            metadata_uri=outcome.metadata_uri,
            **({} if billed else {"billed": False}),
        )
    return await batch.record_paid(
        outcome, LedgerState.FAILED, error=outcome.error, metadata_uri=outcome.metadata_uri
    )


async def _store(
    batch: RunState, client: RunComfyClient, outcome: RowOutcome, finished: FinishedRequest
) -> RowOutcome:
    try:
        stored = await _store_with_retries(batch, client, outcome, finished.result)
    except OutputRefusedError as exc:
        # Paid for: keep the request id collectable, never submit it again.
        error = (
            f"{exc} The job succeeded and is paid for: once its output is allowed, run again "
            f"(or {hints.collect(batch.store.output_uri)}) to store request {outcome.request_id} "
            "without submitting it again."
        )
        return await batch.record_paid(
            outcome.ended(RowStatus.FAILED, error), LedgerState.OUTPUT_REFUSED, error=error
        )
    except DownloadError as exc:
        return await _not_downloaded(batch, outcome, exc)
    stored = await batch.record_paid(
        stored,
        LedgerState.STORED,
        video_uris=stored.video_uris,
        metadata_uri=stored.metadata_uri,
        error=None,
    )
    return stored


async def _not_downloaded(batch: RunState, outcome: RowOutcome, exc: DownloadError) -> RowOutcome:
    """The record and ledger entry of a succeeded job whose video could not be downloaded."""
    error = f"the video could not be downloaded: {exc}"
    if exc.expired:  # the output is gone: nothing left to collect
        return await batch.record_paid(
            outcome.ended(RowStatus.FAILED, error), LedgerState.FAILED, error=error
        )
    # Paid for and maybe still there (a broken stream, 5xx, a sick CDN): keep it collectable,
    # so the next run or collect stores it instead of retry_failed paying for it again.
    error += (
        f" The job succeeded and is paid for: collect its video without paying again with "
        f"{hints.collect(batch.store.output_uri)} (or run the same table again), which "
        f"stores request {outcome.request_id}."
    )
    # Past its deadline the row is timed out, as a wait past max_wait_s is: the ledger's
    # word, so a later run reports it the same way, and the review page's advice is "collect".
    status = RowStatus.TIMED_OUT if isinstance(exc, DownloadTimedOutError) else RowStatus.FAILED
    return await batch.record_paid(outcome.ended(status, error), LedgerState.TIMED_OUT, error=error)


async def _store_with_retries(
    batch: RunState, client: RunComfyClient, outcome: RowOutcome, result: RequestResult
) -> RowOutcome:
    """Store a row's outputs and then its sidecar; tried again after a pause unless the
    output is gone for good or past its download deadline, which every try shares (storing
    is idempotent: it overwrites)."""

    started: dict[str, float] = {}  # each output's deadline runs across the tries

    async def once() -> RowOutcome:
        files = await store_files(
            result,
            outcome.id,
            batch.store,
            http=client.output_http,
            suffix=batch.settings.model.output_suffix,
            policy=client.output_policy,
            download_started=started,
        )
        return await write_sidecar(batch.store, stored_outcome(outcome, result, files))

    def say(exc: BaseException, tries: int, delay: float) -> None:
        get_run_logger().warning(
            "%s: storing failed (%s); trying again in %g s", outcome.id, exc, delay
        )

    return await retrying(
        once, delays=STORE_RETRY_DELAYS_S, retry_if=store_is_worth_retrying, on_retry=say
    )


# -- the row's task run -----------------------------------------------------------------------

ROW_TASK_NAME = "talking-video"


class _OneLinePerFailedRow(logging.Filter):
    """Drop Prefect's "Task run failed with state: Failed(...)" line of a row's task run: it
    comes with an empty traceback ("NoneType: None"), and the next line, "Finished in state
    Failed('...')", says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            getattr(record, "task_name", None) == ROW_TASK_NAME
            and str(record.msg).startswith("Task run failed with state:")
        )


def _one_line_per_failed_row() -> None:
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _OneLinePerFailedRow) for f in task_runs.filters):
        task_runs.addFilter(_OneLinePerFailedRow())


_one_line_per_failed_row()


@task(
    name=ROW_TASK_NAME,
    task_run_name="{name}",
    retries=0,  # it submits: a retry could pay twice
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def _row_task(
    name: str, cell: RowCell, body: Callable[[], Awaitable[Any]]
) -> State[Any] | None:
    try:
        await body()
    except StorageError as exc:
        cell.keep(cell.latest.ended(RowStatus.FAILED, str(exc)))
    except Exception as exc:  # a bug must not lose the other rows' records
        get_run_logger().exception("%s: unexpected error", name)
        status = cell.latest.status
        if status is None or status is RowStatus.SUCCEEDED:
            status = RowStatus.FAILED
        cell.keep(cell.latest.ended(status, f"{type(exc).__name__}: {exc}"))
    outcome = cell.latest
    if outcome.status is RowStatus.SUCCEEDED:
        return Completed(message=cell.stored_line) if cell.stored_line else None
    if outcome.status is RowStatus.CANCELLED:
        return Cancelled(message=f"{name} ended cancelled: {outcome.error}")
    # A returned Failed state, not a raised error: Prefect logs a raised one with its
    # traceback, which says nothing the row's error does not (the state's message says it).
    error = RowNotStoredError(name, str(outcome.status), outcome.error)
    return Failed(message=str(error), data=error)


async def in_row_task(cell: RowCell, body: Callable[[], Awaitable[Any]]) -> RowOutcome:
    """Run `body` (which keeps the row's versions in `cell`) as the row's task run.

    The task run ends Completed when the record says succeeded, Cancelled when cancelled, and
    Failed with `RowNotStoredError` (the row's status and error, the state's message)
    otherwise. The caller gets
    the record, never an exception: one row's trouble does not stop the others.
    """
    # quote: Prefect need not walk these looking for upstream futures.
    state = await _row_task(cell.latest.id, quote(cell), quote(body), return_state=True)  # type: ignore[misc]
    if cell.latest.status is None:
        # The body never ran to its end (Prefect itself failed around it): say so.
        cell.keep(
            cell.latest.ended(
                RowStatus.FAILED,
                f"the row's task run ended {state.type.value}: {state.message}",
            )
        )
    return cell.latest


__all__ = [
    "UNKNOWN_ADVICE",
    "RowCell",
    "collect_request",
    "in_row_task",
    "run_row",
    "store_row_outputs",
    "submit_row",
    "wait_for_row_job",
]
