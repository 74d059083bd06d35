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

A job place is an object of its own, handed from row to row through a queue, so that what a
place holds can outlive one row (say, its slot of the account-wide limit, kept while rows
wait for places); today the slot is taken and given back with each row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prefect_runcomfy.api.client import RunComfyClient

SLOT_LEASE_S = 60.0
"""The lease of a slot of the account-wide concurrency limit. Prefect renews it every 45 s
while the job is held; a killed process stops renewing, so its slots come back at most a
minute (plus the server's 15 s sweep) after it died, not after Prefect's default 300 s. 60 s
is the shortest lease Prefect's server accepts. A renewal that fails is logged by Prefect
and the job goes on."""


@dataclass(eq=False)
class JobPlace:
    """One of the run's `max_concurrency` places for a job at RunComfy."""

    number: int


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
        self._jobs: asyncio.Queue[JobPlace] | None = None
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
        """Hold a job place: this run's bound, and the account-wide limit if named."""
        if self._jobs is None:
            self._jobs = asyncio.Queue()
            for number in range(self.max_concurrency):
                self._jobs.put_nowait(JobPlace(number))
        place = await self._jobs.get()
        try:
            async with self._account_slot():
                yield place
        finally:
            self._jobs.put_nowait(place)

    @contextlib.asynccontextmanager
    async def _account_slot(self) -> AsyncIterator[None]:
        if not self.concurrency_limit:
            yield
            return
        from prefect.concurrency.asyncio import concurrency

        async with concurrency(
            self.concurrency_limit,
            occupy=1,
            strict=True,
            lease_duration=SLOT_LEASE_S,
            # A renewal that fails (the API busy for a moment) must not stop the wait for a
            # job that is paid for: at worst the slot lapses early.
            raise_on_lease_renewal_failure=False,
        ):
            yield

    def _new_client(self) -> RunComfyClient:
        client = self._make_client()
        self._all_clients.append(client)
        return client

    async def aclose(self) -> None:
        """Close every client the run's rows borrowed."""
        clients, self._all_clients, self._idle_clients = self._all_clients, [], []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


__all__ = ["SLOT_LEASE_S", "JobPlace", "Places", "RowPlace"]
