"""The one way a row holds a place in its run: a row place, and within it a job place.

A row under way holds a `RowPlace` (there are twice `max_concurrency`: the rows with a job at
RunComfy, the rows storing outputs, and as many more whose task runs are open and ready to
submit the moment a job place frees) and, with it, a client lent for its calls. From its
submit until its job is seen finished the row also holds a `JobPlace`, one of the run's
`max_concurrency`, and with it a slot of the account-wide limit when one is named: storing
the outputs occupies no place at RunComfy.

```python
async with run.places.row() as place:       # a row place and its client
    async with place.job():                 # a job place (and the account-wide slot)
        request_id = await submit(place.client, ...)
```

A job place is an object of its own, handed from row to row, and it keeps its slot of the
account-wide limit (`AccountSlot`) while it has work: a place given back while another row
waits for one goes to that row with its slot still held, so a run of thousands of rows takes
and gives back a slot (three Prefect API calls and two events) once per place's stretch of
work, not once per row. A place gives its slot back when no row waits for it, and after
holding it `SLOT_TENURE_S`, so that other runs and shards on the same limit get their turn:
Prefect grants a freed slot to the first request that asks, and a place whose tenure ended
asks again only after `SLOT_PAUSE_S`, the time a waiting shard's retry needs to arrive.
One place of a run asks for a slot at a time, and again every `SLOT_ASK_EVERY_S` while the
limit is full, so a run waiting on a full limit polls Prefect's server as one slow asker,
not as `max_concurrency` quick ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from prefect_runcomfy.api.client import RunComfyClient

SLOT_LEASE_S = 60.0
"""The lease of a slot of the account-wide concurrency limit. Prefect renews it every 45 s
while the job is held; a killed process stops renewing, so its slots come back at most a
minute (plus the server's 15 s sweep) after it died, not after Prefect's default 300 s. 60 s
is the shortest lease Prefect's server accepts. A renewal that fails is logged by Prefect
and the job goes on."""


SLOT_TENURE_S = 120.0
"""How long a job place keeps one slot of the account-wide limit across rows before it gives
it back for other runs and shards to take (and asks again)."""

SLOT_ASK_EVERY_S = 3.0
"""How often a run asks again for a slot while the account-wide limit is full (Prefect's own
retries came about once a second per asker; each is a write on the server)."""

SLOT_PAUSE_S = 1.0
"""How long a place whose tenure ended waits before asking for a slot again."""


class _QuietDeniedAsks(logging.Filter):
    """Drops the ERROR line Prefect's acquisition service logs for each of our asks that it
    could not grant (`max_retries=0`: a full limit is asked again by `Places`, at its own
    pace). The ask's outcome still reaches `Places`, which raises anything but "full" with its
    cause: nothing is hidden from the run. Other callers' records pass (they do not ask with
    `max_retries=0` and our lease)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg != "Service %r failed to process item %r" or len(args) != 2:
            return True
        service, item = args
        ours = (
            service == "ConcurrencySlotAcquisitionWithLeaseService"
            and isinstance(item, tuple)
            and len(item) > 4
            and item[3] == 0
            and item[4] == SLOT_LEASE_S
        )
        return not ours


_QUIET_DENIED_ASKS = _QuietDeniedAsks()


def _quiet_denied_asks() -> None:
    """Install `_QuietDeniedAsks` on Prefect's logger of that service (once)."""
    logger = logging.getLogger("prefect._internal.concurrency")
    if _QUIET_DENIED_ASKS not in logger.filters:
        logger.addFilter(_QUIET_DENIED_ASKS)


class AccountSlot:
    """One slot of a Prefect global concurrency limit, held by a job place across rows.

    Prefect's `concurrency()` holds a slot for one block of code in one task; a keeper task
    holds that block open from `take` to `give_back`, with Prefect's lease renewal running
    meanwhile. The keeper runs in the flow's context (`context`), not in the row's task run
    that happened to ask first: the slot outlives that row.
    """

    def __init__(self, limit: str, context: contextvars.Context) -> None:
        self.limit = limit
        self._context = context
        self._granted = asyncio.Event()
        self._release = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self.taken_at = 0.0

    async def take(self) -> None:
        """Wait until Prefect grants the slot (raises what the acquisition raised)."""
        keeper = asyncio.create_task(
            self._keep(), context=self._context.run(contextvars.copy_context)
        )
        self._keeper = keeper
        granted = asyncio.create_task(self._granted.wait())
        try:
            await asyncio.wait({keeper, granted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            keeper.cancel()  # Prefect releases a slot granted after its asker is gone
            raise
        finally:
            granted.cancel()
        if not self._granted.is_set():
            await keeper  # the acquisition failed: its error
        self.taken_at = time.monotonic()

    def tenure_over(self) -> bool:
        """Whether the slot was held `SLOT_TENURE_S` or longer."""
        return time.monotonic() - self.taken_at >= SLOT_TENURE_S

    async def give_back(self) -> None:
        """Release the slot (waits for Prefect's release call, even when cancelled)."""
        self._release.set()
        if self._keeper is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._keeper)

    async def _keep(self) -> None:
        from prefect.concurrency.asyncio import concurrency

        _quiet_denied_asks()
        async with concurrency(
            self.limit,
            occupy=1,
            strict=True,
            max_retries=0,  # a full limit is asked again by `Places`, at its own pace
            lease_duration=SLOT_LEASE_S,
            # A renewal that fails (the API busy for a moment) must not stop the wait for a
            # job that is paid for: at worst the slot lapses early.
            raise_on_lease_renewal_failure=False,
        ):
            self._granted.set()
            await self._release.wait()


def _full_limit_pause(error: BaseException) -> float | None:
    """How long to wait before asking again when Prefect said the limit is full (HTTP 423:
    its Retry-After, at least `SLOT_ASK_EVERY_S`); None for any other error."""
    cause = error.__cause__
    if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423:
        try:
            hint = float(cause.response.headers.get("Retry-After", 0))
        except ValueError:
            hint = 0.0
        return max(hint, SLOT_ASK_EVERY_S)
    return None


@dataclass(eq=False)
class JobPlace:
    """One of the run's `max_concurrency` places for a job at RunComfy, with the slot of the
    account-wide limit it holds while it has work (None without a limit, or between
    stretches of work)."""

    number: int
    slot: AccountSlot | None = None
    paused_until: float = 0.0


class RowPlace:
    """A row's place in its run, with the client lent to it for its calls."""

    def __init__(self, places: Places, client: RunComfyClient) -> None:
        self._places = places
        self.client = client

    def job(self) -> contextlib.AbstractAsyncContextManager[JobPlace]:
        """Hold a job place (and the account-wide slot) while the row's job is at RunComfy."""
        return self._places.job_place()


class Places:
    """The row and job places of one run, and the clients its rows borrow."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        concurrency_limit: str | None,
        make_client: Callable[[], RunComfyClient],
    ) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.concurrency_limit = concurrency_limit
        self._make_client = make_client
        self._rows: asyncio.Semaphore | None = None
        # Last in, first out: a row waiting for a place gets the one just given back, with
        # its slot still held, before the idle places that hold none.
        self._jobs: asyncio.LifoQueue[JobPlace] | None = None
        self._waiting = 0
        self._asking = asyncio.Lock()
        self._all_places: list[JobPlace] = []
        self._context = contextvars.copy_context()  # the flow's, for the slots' keepers
        self._idle_clients: list[RunComfyClient] = []
        self._all_clients: list[RunComfyClient] = []

    @contextlib.asynccontextmanager
    async def row(self) -> AsyncIterator[RowPlace]:
        """Hold a row place, lent a client handed from row to row: a row's submit, polls and
        download reuse the connections its client's previous row opened, and each pool stays
        one connection small (httpcore scans its whole pool on every request)."""
        if self._rows is None:
            self._rows = asyncio.Semaphore(2 * self.max_concurrency)
        async with self._rows:
            client = self._idle_clients.pop() if self._idle_clients else self._new_client()
            try:
                yield RowPlace(self, client)
            finally:
                self._idle_clients.append(client)

    @contextlib.asynccontextmanager
    async def job_place(self) -> AsyncIterator[JobPlace]:
        """Hold a job place: this run's bound, and a slot of the account-wide limit if one
        is named (the place's own, kept from its previous row, or taken now)."""
        place = await self._next_place()
        try:
            if self.concurrency_limit and place.slot is None:
                await self._take_slot(place, self.concurrency_limit)
            yield place
        finally:
            # Before the place goes back: is a row waiting that no free place will serve?
            wanted = self._waiting > self._free_places()
            self._places().put_nowait(place)
            if place.slot is not None and (not wanted or place.slot.tenure_over()):
                await self._give_back(place, paused=wanted)

    def _places(self) -> asyncio.LifoQueue[JobPlace]:
        if self._jobs is None:
            self._jobs = asyncio.LifoQueue()
            self._all_places = [JobPlace(n) for n in range(self.max_concurrency)]
            for place in reversed(self._all_places):
                self._jobs.put_nowait(place)
        return self._jobs

    def _free_places(self) -> int:
        return self._places().qsize()

    async def _next_place(self) -> JobPlace:
        self._waiting += 1
        try:
            return await self._places().get()
        finally:
            self._waiting -= 1

    async def _take_slot(self, place: JobPlace, limit: str) -> None:
        pause = place.paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        # One place of the run asks at a time: while the limit is full, every asker polls
        # Prefect's server (a denied increment, then another after its Retry-After), and
        # those calls cost the server more than the run's rows do.
        async with self._asking:
            place.slot = await self._ask_until_granted(limit)

    async def _ask_until_granted(self, limit: str) -> AccountSlot:
        while True:
            slot = AccountSlot(limit, self._context)
            try:
                await slot.take()
                return slot
            except Exception as exc:
                pause = _full_limit_pause(exc)
                if pause is None:
                    raise
            await asyncio.sleep(pause)

    @staticmethod
    async def _give_back(place: JobPlace, *, paused: bool) -> None:
        slot, place.slot = place.slot, None
        if paused:  # its tenure ended while rows wait: let another run or shard ask first
            place.paused_until = time.monotonic() + SLOT_PAUSE_S
        if slot is not None:
            await slot.give_back()

    def _new_client(self) -> RunComfyClient:
        client = self._make_client()
        self._all_clients.append(client)
        return client

    async def aclose(self) -> None:
        """Give back every slot the run's places still hold; close every client its rows
        borrowed."""
        for place in self._all_places:
            await self._give_back(place, paused=False)
        clients, self._all_clients, self._idle_clients = self._all_clients, [], []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


__all__ = [
    "SLOT_ASK_EVERY_S",
    "SLOT_LEASE_S",
    "SLOT_PAUSE_S",
    "SLOT_TENURE_S",
    "AccountSlot",
    "JobPlace",
    "Places",
    "RowPlace",
]
