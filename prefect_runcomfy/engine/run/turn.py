"""A row's turn: this run acts on a row only while it holds the row's claim.

`take_turn` takes the row's next claim (`engine.claims.claim`) and decides again, from the ledger as
it is *now*, what the row needs: the run's plan came from a snapshot taken before, and another
run may have submitted, stored or failed the row since. A row held by another live run is
followed (`follow_holder`): this run waits, holding no job place, until the holder lets go,
then takes its turn and usually finds the row stored.

```python
turn = await take_turn(batch, row, planned, snapshot)
if isinstance(turn, Held):
    if await follow_holder(batch, row, turn, cell):
        ...  # take the turn again: the holder let go
elif turn.decision.plan is RowPlan.SUBMIT:
    ...  # POST under claim turn.generation
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prefect.logging import get_run_logger

from prefect_runcomfy.engine.claims.claim import Claim, Held, Taken
from prefect_runcomfy.engine.inputs.table import PreparedRow
from prefect_runcomfy.engine.plan.ledger import LedgerEntry, RowDecision, plan_row
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState, RowPlan, RowStatus
from prefect_runcomfy.engine.run.state import RunState

FOLLOW_FIRST_S = 2.0
"""First pause between two looks at a row another run holds; it doubles up to `FOLLOW_MAX_S`."""
FOLLOW_MAX_S = 15.0


class RowCellLike(Protocol):
    """What `follow_holder` needs of a row's cell (`engine.run.row.RowCell`)."""

    latest: RowOutcome

    def keep(self, outcome: RowOutcome) -> RowOutcome: ...


@dataclass(frozen=True)
class RowTurn:
    """What this run may do with a row now: the decision from the ledger as it is now, the
    entry it came from, the claim generation held (0: claims are off), and why this run
    must not pay for the row although the ledger alone would let it (`refusal`)."""

    decision: RowDecision
    entry: LedgerEntry | None
    generation: int = 0
    refusal: str | None = None

    @property
    def acts(self) -> bool:
        """True when the row needs this run: a submit or a collect."""
        return self.refusal is None and self.decision.plan in (RowPlan.SUBMIT, RowPlan.RESUME)


async def take_turn(
    batch: RunState, row: PreparedRow, planned: RowDecision, snapshot: LedgerEntry | None
) -> RowTurn | Held:
    """Take row's claim and decide from the ledger as it is now; `Held` when another live run
    holds it. Without claims (single-writer mode) the plan stands as it was made."""
    claims = batch.claims
    if claims is None:
        return RowTurn(planned, snapshot)
    after = snapshot.claim if snapshot else 0
    seen: list[int] = [after]
    got = await asyncio.to_thread(
        claims.take, row.id, after, row.fingerprint, _ledger_probe(batch, seen)
    )
    if isinstance(got, Held):
        return got
    # The store reads from the backend, never a cached listing (`OutputStore._fresh`).
    fresh = await asyncio.to_thread(batch.ledger.get, row.id)
    decision = await asyncio.to_thread(_decide_again, batch, row, fresh)
    refusal = _inconsistent(row, got, fresh, max(seen))
    if decision.plan is RowPlan.SUBMIT and refusal is None:
        refusal = await asyncio.to_thread(_why_not_pay, batch, row, planned, snapshot, fresh)
        decision = dataclasses.replace(decision, estimated_cost_usd=planned.estimated_cost_usd)
    turn = RowTurn(decision, fresh, got.generation, refusal)
    if turn.acts:
        batch.ledger.hold(row.id, got.generation, fresh)
    else:
        await asyncio.to_thread(claims.release, row.id, got.generation)
    return turn


async def take_entry(batch: RunState, entry: LedgerEntry) -> Held | None:
    """Take the claim of a row the ledger holds as outstanding (`collect`): None when this
    run holds it now (its writes record the claim), `Held` when a live run works on it."""
    if batch.claims is None:
        return None
    got = await asyncio.to_thread(
        batch.claims.take, entry.id, entry.claim, entry.payload_sha256 or "", _ledger_probe(batch)
    )
    if isinstance(got, Held):
        return got
    batch.ledger.hold(entry.id, got.generation)
    return None


def _ledger_probe(
    batch: RunState, seen: list[int] | None = None
) -> Callable[[str], tuple[LedgerState | None, int]]:
    """Reads the row's (state, claim) for `RowClaims.take`; `seen` collects the claims read."""

    def probe(id: str) -> tuple[LedgerState | None, int]:
        entry = batch.ledger.get(id)
        if entry is not None and seen is not None:
            seen.append(entry.claim)
        return (entry.state, entry.claim) if entry else (None, 0)

    return probe


def _inconsistent(
    row: PreparedRow, got: Taken, fresh: LedgerEntry | None, seen_claim: int
) -> str | None:
    """Why the ledger as just read cannot be acted on, or None: it must show at least the
    claim the ledger showed a moment ago, and the claim a live run left the row at rest
    under (a read that came back older or empty must not turn into a second payment)."""
    expected = max(got.at_rest_under, seen_claim)
    if expected and (fresh is None or fresh.claim < expected):
        return (
            f"the ledger of {row.id!r} read back older than a moment before (claim "
            f"{fresh.claim if fresh else 'none'}, expected {expected}); nothing was done "
            "with the row: run again"
        )
    return None


def _decide_again(batch: RunState, row: PreparedRow, fresh: LedgerEntry | None) -> RowDecision:
    """`plan_row` on the ledger as it is now, with the run's flags."""
    return plan_row(
        fresh,
        row.fingerprint,
        output_exists=_outputs_present(batch, fresh),
        resubmit_unknown=batch.settings.spending.resubmit_unknown,
        retry_failed=batch.settings.spending.retry_failed,
    )


def _why_not_pay(
    batch: RunState,
    row: PreparedRow,
    planned: RowDecision,
    snapshot: LedgerEntry | None,
    fresh: LedgerEntry | None,
) -> str | None:
    """Why this run must not submit a row the ledger says to submit, or None.

    Only a run that planned the submit may make it, and only if no POST was started for the
    row since the plan was made: a retry or a changed row is never paid for twice because
    two runs both planned it. And a row stored from other inputs by a run that is still alive
    is another table's row under the same id, not a changed row: paying would overwrite it."""
    started_since = (fresh.attempts if fresh else 0) != (snapshot.attempts if snapshot else 0)
    if planned.plan is not RowPlan.SUBMIT or started_since:
        who = f"flow run {fresh.flow_run_id}" if fresh and fresh.flow_run_id else "another run"
        state = fresh.state.value if fresh else "gone from the ledger"
        return (
            f"{who} worked on this row while this run was planning (it is now {state}); "
            "this run did not pay for it again: run again to decide anew"
        )
    if fresh is None or fresh.payload_sha256 in (None, row.fingerprint) or not fresh.claim:
        return None
    assert batch.claims is not None
    holder = batch.claims.read(row.id, fresh.claim)
    if holder is None or batch.claims.owner_gone(holder):
        return None
    return _conflict(row, holder, "was generated by")


def _outputs_present(batch: RunState, entry: LedgerEntry | None) -> bool:
    if entry is None or entry.state is not LedgerState.STORED or not entry.video_uris:
        return False
    names = [uri.rsplit("/", 1)[-1] for uri in entry.video_uris] + [f"{entry.id}.json"]
    return all(batch.store.exists(name) for name in names)


async def follow_holder(batch: RunState, row: PreparedRow, held: Held, cell: RowCellLike) -> bool:
    """Wait while another live run works on the row, holding no job place. True once the
    holder let go (take the turn again); False when the row ended here instead (recorded in
    `cell`): the holder works from other inputs under the same id, or `max_wait_s` passed."""
    claim = held.claim
    log = get_run_logger()
    if claim.payload_sha256 and claim.payload_sha256 != row.fingerprint:
        cell.keep(cell.latest.ended(RowStatus.FAILED, _conflict(row, claim)))
        return False
    log.info(
        "%s: worked on by %s; waiting for it instead of paying again", row.id, claim.describe()
    )
    deadline = time.monotonic() + batch.settings.max_wait_s
    pause = FOLLOW_FIRST_S
    while time.monotonic() < deadline:
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, FOLLOW_MAX_S)
        assert batch.claims is not None
        if await asyncio.to_thread(batch.claims.let_go, claim, _ledger_probe(batch)):
            why = await asyncio.to_thread(batch.claims.why_gone, claim)
            log.info("%s: %s let go of it (%s)", row.id, claim.describe(), why or "at rest")
            return True
    cell.keep(
        cell.latest.ended(
            RowStatus.TIMED_OUT,
            f"still worked on by {claim.describe()} after {batch.settings.max_wait_s:g} s; this run did "
            "not submit it. Its video lands in the same place when that run stores it; run "
            "again later to report it.",
        )
    )
    return False


def _conflict(row: PreparedRow, claim: Claim, done: str = "is being generated by") -> str:
    return (
        f"id {row.id!r} {done} {claim.describe()} from different inputs; "
        "this run did not submit it, so neither video is paid twice or overwritten. Give the "
        "rows of different tables distinct ids, or run again after that run ended to replace "
        "its video (which pays for a new job)."
    )


__all__ = [
    "FOLLOW_FIRST_S",
    "FOLLOW_MAX_S",
    "RowTurn",
    "follow_holder",
    "take_entry",
    "take_turn",
]
