"""Running the planned rows of a run at once: their claims, and a stop that cancels what is
queued (`engine.run.runner` calls these; the plan is `engine.plan.planning`'s)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

from prefect.logging import get_run_logger

from prefect_runcomfy.engine.claims.claim import RowClaims, open_claims
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.planning import TablePlan
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState, RowPlan
from prefect_runcomfy.engine.run.state import RunState
from prefect_runcomfy.engine.run.stopping import (
    STOPS,
    StopReport,
    cancelled_here,
    say_stopped,
    stop_batch,
)


async def claims_for(
    store: OutputStore, run_plan: TablePlan, *, flow_run_id: str | None, single_writer: bool
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


async def execute(
    batch: RunState,
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
            if cancel_on_stop and batch.settings.flow_run_id:
                cancelled_here.add(batch.settings.flow_run_id)
            say_stopped(report)
        raise
    finally:
        everything.cancel()  # a no-op once they ended; else a second stop cut the first short
        if lease is not None:
            # Ended, the lease frees this run's claims at once (run again? nothing waits).
            await asyncio.to_thread(lease.stop)
        await batch.aclose()


async def _stop(batch: RunState, rows: asyncio.Future[Any], *, cancel: bool) -> StopReport | None:
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


__all__ = ["claims_for", "execute"]
