"""What the rows of one run share: storage, the ledger, limits, clients, the stop signal, and
the estimator of its jobs' durations.

`engine.run.row` takes one row through a `Batch`; the flows build the batch and hand it rows.
A batch gets its clients from `make_client` (the Prefect face decides where the token comes
from) and says each finished row to `on_row_done` (the face keeps the progress artifact), so
the engine imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.logging import get_run_logger

from prefect_runcomfy.api.backoff import retrying
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import StorageError
from prefect_runcomfy.api.models import MODEL_ID
from prefect_runcomfy.engine.claims.claim import RowClaims
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState
from prefect_runcomfy.engine.run.durations import RunEstimator
from prefect_runcomfy.engine.run.stopping import mark_cancelled, send_cancels
from prefect_runcomfy.engine.run.waiting import PollPolicy

LEDGER_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0)
"""Pauses before writing a ledger entry again after the output location failed."""

SLOT_LEASE_S = 60.0
"""The lease of a slot of the account-wide concurrency limit. Prefect renews it every 45 s
while the job is held; a killed process stops renewing, so its slots come back at most a
minute (plus the server's 15 s sweep) after it died, not after Prefect's default 300 s. 60 s
is the shortest lease Prefect's server accepts. A renewal that fails is logged by Prefect
and the job goes on."""


@dataclass
class Batch:
    """Everything the rows of one run share: storage, ledger, limits, clients, progress, and
    what the run learned about how long its jobs take (`estimator`)."""

    store: OutputStore
    ledger: Ledger
    make_client: Callable[[], RunComfyClient] = RunComfyClient
    max_concurrency: int = 8
    concurrency_limit: str | None = None
    max_wait_s: float = 3600.0
    poll: PollPolicy = field(default_factory=PollPolicy)
    estimator: RunEstimator = field(default_factory=RunEstimator)
    """The run's one estimator: its finished jobs' durations tell the others when to look
    (used when `poll.strategy` is "learned")."""
    cancel_queued_at_deadline: bool = True
    model_id: str = MODEL_ID
    flow_run_id: str | None = None
    on_row_done: Callable[[RowOutcome], Awaitable[None]] | None = None
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each row to submit's API body, its media already resolved (`engine.run.phases`)."""
    build_payload: Callable[[Any], Awaitable[dict[str, Any]]] | None = None
    """Builds a row's API body at its submit when `payloads` has none (inline media)."""
    claims: RowClaims | None = None
    """The run's claims on rows (`engine.claims.claim`); None in single-writer mode."""
    resubmit_unknown: bool = False
    retry_failed: bool = False
    """The run's plan flags, to decide a row again from the ledger as it is at its turn."""
    stop_reason: str | None = None
    """Set when every later submit would be refused the same way (bad token, no balance),
    or when the run was stopped."""
    submitted: dict[str, str] = field(default_factory=dict)
    """Row id → request id of each job this run submitted and has not seen finish: what a
    stopped run cancels (`engine.run.stopping`), known without reading the ledger back."""
    posting: set[asyncio.Task[str]] = field(default_factory=set)
    """The submits sent and not answered yet (`send_submit`)."""
    _semaphore: asyncio.Semaphore | None = None
    _rows: asyncio.Semaphore | None = None
    _idle_clients: list[RunComfyClient] = field(default_factory=list)
    _all_clients: list[RunComfyClient] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[RunComfyClient]:
        """Hold one in-flight job's place (`job_slot`) and lend it a client (`lend_client`)."""
        async with self.job_slot(), self.lend_client() as client:
            yield client

    @contextlib.asynccontextmanager
    async def job_slot(self) -> AsyncIterator[None]:
        """Hold one in-flight job's place: this run's bound (`max_concurrency`), and the
        account-wide limit if named. A row holds it from its submit until its job is seen
        finished: storing the outputs occupies no place at RunComfy."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(max(1, self.max_concurrency))
        async with self._semaphore:
            if self.concurrency_limit:
                from prefect.concurrency.asyncio import concurrency

                async with concurrency(
                    self.concurrency_limit,
                    occupy=1,
                    strict=True,
                    lease_duration=SLOT_LEASE_S,
                    # A renewal that fails (the API busy for a moment) must not stop the wait
                    # for a job that is paid for: at worst the slot lapses early.
                    raise_on_lease_renewal_failure=False,
                ):
                    yield
            else:
                yield

    @contextlib.asynccontextmanager
    async def row_place(self) -> AsyncIterator[None]:
        """Hold one of the places of rows under way: the rows with a job at RunComfy, the
        rows storing outputs, and up to `max_concurrency` more whose task runs are open and
        ready to submit the moment a job's place frees (their start-up, a Prefect API call
        or two, then costs no idle place)."""
        if self._rows is None:
            self._rows = asyncio.Semaphore(2 * max(1, self.max_concurrency))
        async with self._rows:
            yield

    @contextlib.asynccontextmanager
    async def lend_client(self) -> AsyncIterator[RunComfyClient]:
        """Lend a client for one row's calls, handed from row to row.

        A row's submit, polls and download reuse the connections the client's previous row
        opened, and each pool stays one connection small (httpcore scans its whole pool on
        every request).
        """
        if self._idle_clients:
            client = self._idle_clients.pop()
        else:
            client = self.make_client()
            self._all_clients.append(client)
        try:
            yield client
        finally:
            self._idle_clients.append(client)

    async def send_submit(self, row_id: str, submit: Awaitable[str]) -> str:
        """Send a row's submit (`submit` returns the request id) so that a stop cannot cut
        it in half: a POST that reached RunComfy creates a job, and only its request id lets
        a stop cancel it. The id goes into `submitted` as soon as it is known."""

        async def send() -> str:
            request_id = await submit
            self.submitted[row_id] = request_id
            return request_id

        task = asyncio.ensure_future(send())
        self.posting.add(task)
        task.add_done_callback(self.posting.discard)
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Close every client this batch opened."""
        clients, self._all_clients, self._idle_clients = self._all_clients, [], []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def write_ledger(self, write: Callable[[], LedgerEntry]) -> LedgerEntry:
        """Run a ledger write off the event loop (fsspec is blocking), trying again after a
        pause when the output location fails (a write is an atomic replace: safe to repeat)."""
        return await retrying(
            lambda: asyncio.to_thread(write),
            delays=LEDGER_RETRY_DELAYS_S,
            retry_if=lambda exc: isinstance(exc, StorageError),
        )

    async def record_paid(
        self, outcome: RowOutcome, state: LedgerState, **fields: Any
    ) -> RowOutcome:
        """Write a submitted request's next state to the ledger, never losing the row over it.

        The job is paid for: when the output location cannot be written even after retries,
        the row goes on (its video or its reason still reaches the manifest), the request id
        is logged, and the record says what the ledger is missing.
        """
        request_id = outcome.request_id
        try:
            await self.write_ledger(
                lambda: self.ledger.mark(outcome.id, state, request_id=request_id, **fields)
            )
        except StorageError as exc:
            get_run_logger().warning(
                "%s: request %s is %s, but the ledger could not record it: %s",
                outcome.id,
                request_id,
                state.value,
                exc,
            )
            return outcome.noted(
                f"the ledger could not record request {request_id} as {state.value}: {exc}"
            )
        return outcome

    async def done(self, outcome: RowOutcome) -> RowOutcome:
        """Say that a row ended (progress) and hand its record back."""
        if self.on_row_done is not None:
            await self.on_row_done(outcome)
        return outcome


async def _in_flight(ledger: Ledger, flow_run_id: str | None) -> list[LedgerEntry]:
    entries = await asyncio.to_thread(ledger.load_all)
    return [
        e
        for e in entries.values()
        if e.state in (LedgerState.SUBMITTED, LedgerState.SUBMITTING)
        and e.request_id
        and (flow_run_id is None or e.flow_run_id == flow_run_id)
    ]


async def queued_requests(ledger: Ledger, *, flow_run_id: str | None = None) -> list[str]:
    """The request ids of a run that the ledger holds as submitted and not finished: those a
    stopped run may have left queued."""
    return [e.request_id for e in await _in_flight(ledger, flow_run_id) if e.request_id]


async def cancel_queued_requests(
    ledger: Ledger,
    make_client: Callable[[], RunComfyClient],
    *,
    flow_run_id: str | None = None,
) -> list[str]:
    """Best effort: cancel this run's requests that are still queued; return their ids.

    Running requests cannot be cancelled; they stay `submitted` in the ledger so
    `collect_outstanding_requests` can collect them. Cancelled ones are recorded as not
    billed, so that running the table again submits them again.
    """
    pending = {e.id: e.request_id for e in await _in_flight(ledger, flow_run_id) if e.request_id}
    answers: dict[str, bool] = {}
    if pending:
        await send_cancels(make_client, pending, answers)
    cancelled = [row_id for row_id, done in answers.items() if done]
    for row_id in cancelled:
        await asyncio.to_thread(mark_cancelled, ledger, row_id, pending[row_id])
    return [pending[row_id] for row_id in cancelled]


__all__ = ["LEDGER_RETRY_DELAYS_S", "Batch", "cancel_queued_requests", "queued_requests"]
