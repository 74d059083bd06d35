"""Cancelling a run's queued jobs: the calls to RunComfy, and what the ledger then says.

Used by a stop (`run.stopping`) and by the best-effort cancel of a cancelled or crashed run
(`run.state.cancel_queued_requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import RunComfyError
from prefect_runcomfy.engine.record.status import LedgerState

if TYPE_CHECKING:
    from prefect_runcomfy.engine.plan.ledger import Ledger

CANCEL_AT_ONCE = 16
"""Cancel calls sent at the same time: a stop of a big run must not queue them one by one
while queued jobs start (and are billed)."""
CANCELLED_ON_STOP = "cancelled while queued because its run was stopped; nothing was billed"
"""The ledger's error for a job a stop cancelled (a re-run submits the row again)."""


async def send_cancels(
    make_client: Callable[[], RunComfyClient],
    requests: Mapping[str, str],
    answers: dict[str, bool],
) -> None:
    """Ask RunComfy to cancel each request (row id → request id), `CANCEL_AT_ONCE` at a
    time; `answers` gets each row whose cancel was answered, as it is: True when the job was
    cancelled (it was queued), False when it runs on. A failed cancel gets no answer."""
    limit = asyncio.Semaphore(CANCEL_AT_ONCE)
    async with make_client() as client:

        async def one(row_id: str, request_id: str) -> None:
            async with limit:
                with contextlib.suppress(RunComfyError):
                    answers[row_id] = (await client.cancel(request_id)).cancelled

        await asyncio.gather(*(one(r, q) for r, q in requests.items()))


def mark_cancelled(ledger: Ledger, row_id: str, request_id: str) -> None:
    """Record job `request_id` cancelled while queued: nothing billed, so a re-run submits
    the row again. The id is written too: the stop may have cut the row's own write of it."""
    ledger.mark(
        row_id,
        LedgerState.CANCELLED,
        request_id=request_id,
        error=CANCELLED_ON_STOP,
        billed=False,
    )


__all__ = ["CANCELLED_ON_STOP", "CANCEL_AT_ONCE", "mark_cancelled", "send_cancels"]
