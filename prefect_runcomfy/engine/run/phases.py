"""The phases every flow is made of: prepare → plan → resolve media → execute.

`generate_talking_videos` runs all four; `generate_talking_videos_sharded` prepares and
plans the whole table, then hands shards to other flow runs; `collect_outstanding_requests`
executes what the ledger holds. Each phase logs what it decided, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prefect.logging import get_run_logger

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.models import MEDIA_COLUMNS, MODEL_ID
from prefect_runcomfy.engine.claims.claim import RowClaims, open_claims
from prefect_runcomfy.engine.inputs.media import MediaResolver
from prefect_runcomfy.engine.inputs.table import (
    PreparedRow,
    RowProblem,
    TableLike,
    check_table,
    read_table,
)
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import LedgerEntry, RowDecision
from prefect_runcomfy.engine.plan.planning import (
    check_submit_limit,
    describe_plan,
    ids_to_submit,
    output_state,
    plan_rows,
)
from prefect_runcomfy.engine.plan.pricing import (
    CostEstimate,
    Price,
    check_cost_limit,
    estimate_cost,
    price_rows,
)
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState, RowPlan, RowStatus
from prefect_runcomfy.engine.run.batch import Batch
from prefect_runcomfy.engine.run.stopping import (
    STOPS,
    StopReport,
    cancelled_here,
    say_stopped,
    stop_batch,
)

RESOLVE_AT_ONCE = 16
"""Rows whose media are resolved at the same time (uploads and signatures are blocking I/O)."""


@dataclass(frozen=True)
class PreparedTable:
    """A table read and checked: its valid rows, and the rows that are not, by position."""

    frame: pd.DataFrame
    valid: list[PreparedRow]
    invalid: list[RowProblem]


@dataclass(frozen=True)
class RunPlan:
    """Each valid row with its decision, the ledger entries the decisions came from, and what
    the price of the model is (None when it was not read)."""

    rows: list[PreparedRow]
    decisions: list[RowDecision]
    entries: dict[str, LedgerEntry]
    price: Price | None = None
    audio_seconds: dict[str, float] = field(default_factory=dict)
    """Lengths of the local audio files of rows to submit, which cap their estimates."""

    def without(self, ids: set[str]) -> RunPlan:
        """The plan without the rows in `ids` (rows found invalid after planning)."""
        kept = [(r, d) for r, d in zip(self.rows, self.decisions, strict=True) if r.id not in ids]
        return dataclasses.replace(self, rows=[r for r, _ in kept], decisions=[d for _, d in kept])

    def estimate(self) -> CostEstimate | None:
        """The estimated cost of the rows this plan submits (None when no price was read)."""
        if self.price is None:
            return None
        submit = set(ids_to_submit(self.rows, self.decisions))
        rows = [r for r in self.rows if r.id in submit]
        return estimate_cost(rows, self.price, self.audio_seconds)


async def prepare(inputs: TableLike, *, storage_options: dict[str, Any] | None) -> PreparedTable:
    """Read the table and check every row; nothing is sent anywhere."""
    frame = await asyncio.to_thread(read_table, inputs, storage_options=storage_options)
    check = check_table(frame)
    return PreparedTable(frame, check.valid, check.invalid)


async def plan(
    store: OutputStore,
    rows: list[PreparedRow],
    *,
    resubmit_unknown: bool,
    retry_failed: bool,
    max_submits: int | None,
    make_client: Callable[[], RunComfyClient] | None = None,
    model_id: str = MODEL_ID,
    media_base_dir: str | None = None,
) -> RunPlan:
    """Decide each row's plan from the ledger under `store` (raises `SubmitLimitError` before
    anything is paid when `max_submits` would be passed) and log it.

    With `make_client`, the model's price is read from RunComfy's catalog (a free read) when
    any row is to be submitted, each such row's decision carries its estimated cost, and the
    plan line says the estimate (`Plan: 3 to submit; estimated cost $0.2250 ...`). Local audio
    files (read against `media_base_dir`) cap the seconds a row is estimated at."""
    entries, present = await asyncio.to_thread(output_state, store)
    decisions = plan_rows(
        rows,
        entries,
        present,
        resubmit_unknown=resubmit_unknown,
        retry_failed=retry_failed,
        max_submits=max_submits,
    )
    run_plan = RunPlan(rows, decisions, entries)
    if make_client is not None:
        run_plan = await priced(run_plan, make_client, model_id, media_base_dir)
    estimate = run_plan.estimate()
    line = describe_plan(run_plan.decisions)
    get_run_logger().info("Plan: %s%s", line, f"; {estimate.describe()}" if estimate else "")
    return run_plan


async def priced(
    run_plan: RunPlan,
    make_client: Callable[[], RunComfyClient],
    model_id: str,
    media_base_dir: str | None = None,
) -> RunPlan:
    """`run_plan` with the model's price and each row to submit's estimated cost."""
    submit = set(ids_to_submit(run_plan.rows, run_plan.decisions))
    if not submit:
        return run_plan
    to_submit = [r for r in run_plan.rows if r.id in submit]
    estimate, lengths = await price_rows(make_client, model_id, to_submit, media_base_dir)
    price = estimate.price
    decisions = [
        dataclasses.replace(d, estimated_cost_usd=estimate.per_row.get(r.id))
        if r.id in submit
        else d
        for r, d in zip(run_plan.rows, run_plan.decisions, strict=True)
    ]
    return dataclasses.replace(run_plan, decisions=decisions, price=price, audio_seconds=lengths)


async def api_payload(row: PreparedRow, resolver: MediaResolver) -> dict[str, Any]:
    """The row's API body, its media made fetchable (raises `MediaError` naming what is wrong)."""
    resolved = {
        kind: (await resolver.resolve(getattr(row.job, kind), kind)).url  # type: ignore[arg-type]
        for kind in MEDIA_COLUMNS
    }
    return row.job.model_copy(update=resolved).to_api_payload()


async def resolve_media(
    run_plan: RunPlan, resolver: MediaResolver
) -> tuple[dict[str, dict[str, Any]], list[RowProblem]]:
    """Make the media of the rows to submit fetchable, once each: their API payloads, and the
    rows whose media cannot be (invalid). Rows that are stored, collected or reported again
    need no media, so a portrait deleted after its video was made is no problem.

    Inline media (`data:` URIs, megabytes a row) are only checked here: holding every row's
    bytes until its turn would not fit a large table in memory, so `submit_row` builds
    those payloads again at its POST (`Batch.build_payload`)."""
    semaphore = asyncio.Semaphore(RESOLVE_AT_ONCE)
    payloads: dict[str, dict[str, Any]] = {}
    problems: list[RowProblem] = []

    async def one(row: PreparedRow) -> None:
        resolved: dict[str, str] = {}
        failed: list[tuple[str, str]] = []
        async with semaphore:
            for kind in MEDIA_COLUMNS:
                try:
                    media = await resolver.resolve(getattr(row.job, kind), kind)  # type: ignore[arg-type]
                    resolved[kind] = media.url
                except Exception as exc:
                    failed.append((kind, str(exc)))
        if not failed and not resolver.inline_media:
            payloads[row.id] = row.job.model_copy(update=resolved).to_api_payload()
        if failed:
            problems.append(RowProblem(row.row, row.id, failed, row.extras, row.job.model_dump()))

    to_submit = [
        r
        for r, d in zip(run_plan.rows, run_plan.decisions, strict=True)
        if d.plan is RowPlan.SUBMIT
    ]
    await asyncio.gather(*(one(r) for r in to_submit))
    return payloads, sorted(problems, key=lambda p: p.row)


def check_limit(
    run_plan: RunPlan, max_submits: int | None, max_cost_usd: float | None = None
) -> None:
    """`max_submits` and `max_cost_usd` applied to the rows that will really be submitted
    (after media checks): `SubmitLimitError` or `CostLimitError` before any POST. A plan
    without a price read cannot meet a `max_cost_usd`: it is refused too."""
    check_submit_limit(run_plan.rows, run_plan.decisions, max_submits)
    if max_cost_usd is None:
        return
    estimate = run_plan.estimate()
    if estimate is None:
        no_price = Price(model_id="?", problem="the catalog's price was not read")
        submit = set(ids_to_submit(run_plan.rows, run_plan.decisions))
        estimate = estimate_cost([r for r in run_plan.rows if r.id in submit], no_price)
    check_cost_limit(estimate, max_cost_usd)


async def claims_for(
    store: OutputStore, run_plan: RunPlan, *, flow_run_id: str | None, single_writer: bool
) -> RowClaims | None:
    """The run's claims (`engine.claims.claim.open_claims`: the storage is checked for exclusive
    create first), when any row is to be submitted or collected, or may be being submitted
    by another run right now (`submitting`); else None."""
    acting = (RowPlan.SUBMIT, RowPlan.RESUME)
    submitting = {i for i, e in run_plan.entries.items() if e.state is LedgerState.SUBMITTING}
    if not any(
        d.plan in acting or r.id in submitting
        for r, d in zip(run_plan.rows, run_plan.decisions, strict=True)
    ):
        return None
    return await asyncio.to_thread(
        open_claims, store, flow_run_id=flow_run_id, single_writer=single_writer
    )


def invalid_outcome(problem: RowProblem) -> RowOutcome:
    """The record of a row rejected before anything was submitted."""
    return RowOutcome.start(problem).ended(RowStatus.INVALID, problem.message)


async def execute(
    batch: Batch,
    jobs: Sequence[Awaitable[RowOutcome | None]],
    *,
    cancel_on_stop: bool = True,
) -> list[RowOutcome]:
    """Run the rows' jobs at once (bounded by the batch's slots) and return their records
    (a job that answers None left its row to another run). The run's claim lease lives
    while they run.

    Stopped from outside (a cancellation: Ctrl-C, SIGTERM, a Prefect cancel), it stops its
    rows, and with `cancel_on_stop` cancels first the jobs this run submitted that are
    still queued (`engine.run.stopping.stop_batch`, within `STOP_GRACE_S`); what it left is said
    in one line (`say_stopped`), and the stop goes on.
    """
    lease = batch.claims.lease if batch.claims is not None else None
    if lease is not None:
        await asyncio.to_thread(lease.start)
    everything = asyncio.gather(*jobs)
    try:
        # `wait` and not the gather itself: a stop that lands here leaves the rows running
        # until their queued jobs are cancelled, which is what decides what is billed.
        await asyncio.wait([everything])
        return [o for o in everything.result() if o is not None]
    except STOPS:
        report = await _stop(batch, everything, cancel=cancel_on_stop)
        if report is not None:
            if cancel_on_stop and batch.flow_run_id:
                cancelled_here.add(batch.flow_run_id)
            say_stopped(report)
        raise
    finally:
        everything.cancel()  # a no-op once they ended; else a second stop cut the first short
        if lease is not None:
            # Ended, the lease frees this run's claims at once (run again? nothing waits).
            await asyncio.to_thread(lease.stop)
        await batch.aclose()


async def _stop(batch: Batch, rows: asyncio.Future[Any], *, cancel: bool) -> StopReport | None:
    """The stop's work (`stop_batch`), shielded from the cancellation that asked for it (its
    own calls must not be cut); None, said in a warning, when it failed: the stop goes on
    all the same, and the flows' hook or `collect` can finish it."""
    work = asyncio.ensure_future(
        stop_batch(batch, cancel=cancel, stop_rows=lambda seconds: _stop_rows(rows, seconds))
    )
    try:
        return await asyncio.shield(work)
    except Exception as exc:
        get_run_logger().warning("Could not finish cancelling the queued jobs: %r", exc)
        return None


async def _stop_rows(rows: asyncio.Future[Any], seconds: float) -> None:
    """Cancel the rows still under way and give them `seconds` to end (each row's task run
    reports its state to Prefect as it ends)."""
    rows.cancel()
    await asyncio.wait([rows], timeout=seconds)
    if rows.done():  # taken, so that asyncio does not log it as never retrieved
        with contextlib.suppress(BaseException):
            rows.exception()


__all__ = [
    "PreparedTable",
    "RunPlan",
    "api_payload",
    "check_limit",
    "claims_for",
    "execute",
    "invalid_outcome",
    "plan",
    "prepare",
    "priced",
    "resolve_media",
]
