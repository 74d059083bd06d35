"""A run's state: what its rows share and what changes while they run.

`engine.run.row` takes one row through a `RunState`; `engine.run.runner` builds it from the
run's frozen `RunSettings` and the face's `RunHooks` and hands it rows. What changes while a
run goes (its places, the jobs it submitted, its stop reason, what it learned of job
durations) lives here; what a person chose lives in `settings`, never here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.logging import get_run_logger

from prefect_runcomfy.api.backoff import retrying
from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import StorageError
from prefect_runcomfy.engine.claims.claim import RowClaims
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState
from prefect_runcomfy.engine.run.cancels import mark_cancelled, send_cancels
from prefect_runcomfy.engine.run.durations import RunEstimator
from prefect_runcomfy.engine.run.places import Places
from prefect_runcomfy.engine.run.settings import RunHooks, RunSettings

LEDGER_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0)
"""Pauses before writing a ledger entry again after the output location failed."""


@dataclass
class RunState:
    """One run's rows' shared state: storage, ledger, claims, places, how a row's API body is
    built, the jobs it submitted, its stop reason, and what it learned of how long its jobs
    take."""

    settings: RunSettings
    hooks: RunHooks
    store: OutputStore
    ledger: Ledger
    claims: RowClaims | None = None
    """The run's claims on rows (`engine.claims.claim`); None in single-writer mode."""
    build_payload: Callable[[Any], Awaitable[dict[str, Any]]] | None = None
    """Builds a row's API body at its submit, with the plan's resolver (which remembers the
    media it staged and signed): no body is held per row between plan and POST."""
    estimator: RunEstimator = field(default_factory=RunEstimator)
    """The run's one estimator: its finished jobs' durations tell the others when to look
    (used when the poll strategy is "learned")."""
    stop_reason: str | None = None
    """Set when every later submit would be refused the same way (bad token, no balance),
    or when the run was stopped."""
    submitted: dict[str, str] = field(default_factory=dict)
    """Row id → request id of each job this run submitted and has not seen finish: what a
    stopped run cancels (`engine.run.stopping`), known without reading the ledger back."""
    posting: set[asyncio.Task[str]] = field(default_factory=set)
    """The submits sent and not answered yet (`send_submit`)."""
    places: Places = field(init=False)
    """The run's row and job places, and the clients its rows borrow (`engine.run.places`)."""

    def __post_init__(self) -> None:
        self.places = Places(
            max_concurrency=self.settings.max_concurrency,
            concurrency_limit=self.settings.concurrency.limit,
            make_client=self.hooks.make_client,
        )

    @property
    def make_client(self) -> Callable[[], RunComfyClient]:
        """A new client of the run's account (for calls outside a row: cancels on a stop)."""
        return self.hooks.make_client

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
        """Close every client the run's rows borrowed."""
        await self.places.aclose()

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
        if self.hooks.on_row_done is not None:
            await self.hooks.on_row_done(outcome)
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


__all__ = ["LEDGER_RETRY_DELAYS_S", "RunState", "cancel_queued_requests", "queued_requests"]
