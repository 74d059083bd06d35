"""Claims: a row is acted on (POSTed, or its request collected) only by the run that holds it.

The ledger says what happened to a row; a claim says who may act on it now. Both live under the
output location, so runs on different machines see the same ones:

```
_claims/<id>/<generation>.json   one file per claim, created exclusively: the first run wins
_claims/_owners/<token>.json     each run's lease, renewed while the run works
```

To act on a row a run creates the row's next claim generation (the ledger's `claim` + 1) with
an exclusive create (`OutputStore.create_exclusive`: `O_EXCL` locally, `If-None-Match: *` on
S3, GCS and Azure). Only one run can create a given generation. The winner reads the ledger
again and acts on what it says now (`engine.run.turn`), writing its generation into the
ledger with its first write. A run that finds the generation taken looks at the holder: while
the holder's run is alive and the row is not at rest under that claim, the row is the
holder's; once the holder let go (its row at rest, its run ended, its lease lapsed, its
process gone from this host, or its Prefect flow run final), the next generation is free to
take. A generation is never reused, so a run acting on an old snapshot of the ledger always
loses the race and re-reads.

A run's lease is one small file renewed from a thread every quarter lease
(`RUNCOMFY_CLAIM_LEASE_S`, default 60 s), not one write per claim. A run whose renewals failed
for half a lease stops submitting (`OwnerLease.fresh`): others may be about to take its rows.
Clocks of the machines that share an output location are assumed to agree within a few
seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from prefect_runcomfy.api.exceptions import StorageError
from prefect_runcomfy.engine.inputs.ids import safe_name
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.hints import SINGLE_WRITER
from prefect_runcomfy.engine.record.outcome import epoch_of, utc_now
from prefect_runcomfy.engine.record.status import LedgerState

logger = logging.getLogger(__name__)

CLAIMS_DIR = "_claims"
"""The folder under the output location that holds the claims and the runs' leases."""
OWNERS_DIR = f"{CLAIMS_DIR}/_owners"
"""Where each run's lease lives (`<token>.json`); row ids cannot start with `_`."""
LEASE_ENV = "RUNCOMFY_CLAIM_LEASE_S"
"""Environment variable: seconds a run's lease lasts without a renewal (default 60)."""
DEFAULT_LEASE_S = 60.0
MIN_LEASE_S = 2.0
OWNER_LOOK_S = 2.0
"""How long one look at a claim's owner (its lease, its flow run) serves other rows."""
MAX_GENERATIONS = 1000
"""A row whose claims pass this many generations is refused (something writes in a loop)."""

_IN_FLIGHT = frozenset({LedgerState.SUBMITTING, LedgerState.SUBMITTED})
"""Ledger states in which the claim's holder is still working on the row."""


def lease_seconds() -> float:
    """The lease from `RUNCOMFY_CLAIM_LEASE_S` (at least 2 s), else 60 s."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        logger.warning(
            "%s=%r is not a number of seconds; using %g", LEASE_ENV, raw, DEFAULT_LEASE_S
        )
        value = DEFAULT_LEASE_S
    return max(MIN_LEASE_S, value)


class OwnerRecord(BaseModel):
    """A run's lease (`_claims/_owners/<token>.json`): who it is and when it last said so."""

    model_config = ConfigDict(extra="allow")

    token: str
    flow_run_id: str | None = None
    host: str = ""
    pid: int = 0
    started_at: str | None = None
    renewed_at: str | None = None
    lease_s: float = DEFAULT_LEASE_S
    ended_at: str | None = None


class Claim(BaseModel):
    """One claim (`_claims/<id>/<generation>.json`): which run took the row, and for what input."""

    model_config = ConfigDict(extra="allow")

    id: str
    generation: int
    owner: str
    flow_run_id: str | None = None
    host: str = ""
    pid: int = 0
    payload_sha256: str | None = None
    claimed_at: str | None = None

    def describe(self) -> str:
        """Who holds it, in words: `flow run 5d1e… (host build-7, process 4242)`."""
        who = f"flow run {self.flow_run_id}" if self.flow_run_id else f"run {self.owner[:8]}"
        return f"{who} (host {self.host or '?'}, process {self.pid or '?'})"


@dataclass(frozen=True)
class Taken:
    """This run now holds the row's claim `generation`. `at_rest_under`: the latest earlier
    generation stepped over because its live holder had left the row at rest (0: none), so
    the ledger must show that generation or a later one."""

    generation: int
    at_rest_under: int = 0


@dataclass(frozen=True)
class Held:
    """Another run holds the row (`claim`); this run must not act on it."""

    claim: Claim


class OwnerLease:
    """This run's lease on its claims: written at `start`, renewed from a thread every quarter
    lease, marked ended at `stop` (which lets go of every claim at once).

    Example:
        ```python
        lease = OwnerLease(store, flow_run_id="...")
        lease.start()
        try:
            ...  # take claims, submit
        finally:
            lease.stop()
        ```
    """

    def __init__(
        self, store: OutputStore, *, flow_run_id: str | None, lease_s: float | None = None
    ) -> None:
        self.store = store
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.record = OwnerRecord(
            token=uuid.uuid4().hex,
            flow_run_id=flow_run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=utc_now(),
            lease_s=self.lease_s,
        )
        self._last_ok = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"OwnerLease({self.record.token[:8]}, lease_s={self.lease_s:g})"

    @property
    def name(self) -> str:
        """The lease's file under the output location."""
        return f"{OWNERS_DIR}/{self.record.token}.json"

    def renew(self) -> None:
        """Write the lease now (raises `StorageError` when the output location fails)."""
        self.record = self.record.model_copy(update={"renewed_at": utc_now()})
        self.store.write_json(self.name, self.record.model_dump(mode="json"), durable=False)
        self._last_ok = time.monotonic()

    def start(self) -> None:
        """Write the lease and start renewing it (a daemon thread: a killed process stops)."""
        self.renew()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._renew_until_stopped, name="runcomfy-claim-lease", daemon=True
            )
            self._thread.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.renew()
            except Exception as exc:  # the next renewal may work; `fresh` guards the submits
                logger.warning("Could not renew this run's claim lease: %s", exc)

    def fresh(self) -> bool:
        """True while the last renewal is younger than half the lease: safe to submit."""
        return time.monotonic() - self._last_ok < self.lease_s / 2

    def stop(self) -> None:
        """Stop renewing and mark the lease ended: this run's claims are free at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.record = self.record.model_copy(update={"ended_at": utc_now()})
            self.store.write_json(self.name, self.record.model_dump(mode="json"), durable=False)


LedgerProbe = Callable[[str], tuple[LedgerState | None, int]]
"""Reads a row's ledger entry as it is now: its (state, claim generation)."""

RunIsOver = Callable[[str], bool | None]
"""Asks Prefect whether a flow run is in a final state (None: cannot tell)."""


class RowClaims:
    """Take and inspect rows' claims under one output location, for one run's lease.

    Blocking I/O: async callers use `asyncio.to_thread`.
    """

    def __init__(
        self, store: OutputStore, lease: OwnerLease, run_is_over: RunIsOver | None = None
    ) -> None:
        self.store = store
        self.lease = lease
        self.run_is_over = run_is_over
        # token -> (when looked at, gone): rows followed at once ask about the same few
        # owners; one look serves them all for a moment (a storage read and a Prefect call).
        self._owners: dict[str, tuple[float, str | None]] = {}

    def __repr__(self) -> str:
        return f"RowClaims({self.store.uri(CLAIMS_DIR)!r}, {self.lease!r})"

    @staticmethod
    def name_for(id: str, generation: int) -> str:
        """The file of row `id`'s claim `generation`."""
        return f"{CLAIMS_DIR}/{safe_name(id)}/{generation}.json"

    def take(
        self,
        id: str,
        after: int,
        payload_sha256: str,
        ledger_claim: LedgerProbe | None = None,
    ) -> Taken | Held:
        """Take row `id`'s first free claim generation above `after` (the ledger's `claim`),
        or say who holds the row.

        The holder of generation `after` is asked first: while it works on the row, no later
        generation may be taken. A taken generation whose holder let go (`let_go`) is
        stepped over. `ledger_claim` reads the row's ledger (state, claim) when that must be
        known (without it, only a holder that is gone lets go).
        """
        generation = max(0, after)
        at_rest_under = 0
        for step in range(MAX_GENERATIONS):
            if step or generation:  # the first free generation is above `after`'s holder
                holder = self.read(id, generation)
                if holder is not None:
                    if not self.let_go(holder, ledger_claim):
                        return Held(holder)
                    if not self.owner_gone(holder):
                        at_rest_under = generation
            generation += 1
            if self.store.create_exclusive(
                self.name_for(id, generation), self._record(id, generation, payload_sha256)
            ):
                return Taken(generation, at_rest_under)
        raise StorageError(
            f"row {id!r} has more than {MAX_GENERATIONS} claims under "
            f"{self.store.uri(CLAIMS_DIR)}: something takes them in a loop"
        )

    def superseded(self, id: str, generation: int) -> bool:
        """True when a later claim than `generation` exists on row `id`: another run took the
        row over (it judged this run gone). Asked once more just before a POST."""
        return self.store.read_bytes(self.name_for(id, generation + 1)) is not None

    def _record(self, id: str, generation: int, payload_sha256: str) -> bytes:
        owner = self.lease.record
        facts = owner.model_dump(include={"flow_run_id", "host", "pid"})
        facts.update(id=id, generation=generation, owner=owner.token, payload_sha256=payload_sha256)
        claim = Claim(**facts, claimed_at=utc_now())
        return claim.model_dump_json(indent=2).encode()

    def read(self, id: str, generation: int) -> Claim | None:
        """Claim `generation` of row `id`, or None when there is none (never taken, or given
        back). One being written this instant (empty, or not yet readable) comes back as held
        by an unknown owner claimed now: the safe reading."""
        data = self.store.read_bytes(self.name_for(id, generation))
        if data is None:
            return None
        try:
            if data:
                return Claim.model_validate_json(data)
        except ValidationError:
            pass
        return Claim(id=id, generation=generation, owner="", claimed_at=utc_now())

    def release(self, id: str, generation: int) -> None:
        """Give back a claim this run took and did nothing under (the ledger already said
        the row needs nothing): others need not wait for this run to end."""
        with contextlib.suppress(StorageError):
            self.store.delete(self.name_for(id, generation))

    def let_go(self, claim: Claim, ledger_claim: LedgerProbe | None = None) -> bool:
        """True when `claim`'s holder no longer works on the row: the row is at rest in the
        ledger under this claim or a later one, or the holder is gone (`owner_gone`)."""
        if ledger_claim is not None:
            state, generation = ledger_claim(claim.id)
            if generation >= claim.generation and state not in _IN_FLIGHT:
                return True
        return self.owner_gone(claim)

    def owner_gone(self, claim: Claim) -> bool:
        """True when the run holding `claim` is gone (`why_gone` says why)."""
        return self.why_gone(claim) is not None

    def why_gone(self, claim: Claim) -> str | None:
        """Why the run holding `claim` is gone, or None while it may still work: its lease
        ended or lapsed, its process is no longer running on this host, or its Prefect flow
        run is in a final state. A claim being written this instant, or a lease that cannot
        be read, is not gone."""
        if not claim.owner or claim.owner == self.lease.record.token:
            return None
        seen = self._owners.get(claim.owner)
        if seen is not None and time.monotonic() - seen[0] < OWNER_LOOK_S:
            return seen[1]
        why = self._why_gone(claim)
        self._owners[claim.owner] = (time.monotonic(), why)
        return why

    def _why_gone(self, claim: Claim) -> str | None:
        data = self.store.read_json(f"{OWNERS_DIR}/{claim.owner}.json")
        if data is None:
            claimed = epoch_of(claim.claimed_at)
            if claimed is not None and time.time() - claimed > self.lease.lease_s:
                return "its run left no lease"
            return None
        try:
            owner = OwnerRecord.model_validate(data)
        except ValidationError:
            return None
        if owner.ended_at:
            return f"its run ended at {owner.ended_at}"
        renewed = epoch_of(owner.renewed_at)
        if renewed is None or time.time() - renewed > owner.lease_s:
            return f"its lease lapsed (last renewed {owner.renewed_at})"
        if owner.host == self.lease.record.host and owner.pid and not _process_runs(owner.pid):
            return f"its process {owner.pid} no longer runs"
        over = self.run_is_over
        if owner.flow_run_id and over is not None and over(owner.flow_run_id):
            return f"its flow run {owner.flow_run_id} is over"
        return None


def open_claims(
    store: OutputStore, *, flow_run_id: str | None, single_writer: bool
) -> RowClaims | None:
    """The run's claims under `store`, after checking that the storage creates files
    exclusively; None in single-writer mode (the user's promise that no other run writes
    there at the same time). Blocking I/O.

    Raises:
        ConfigurationError: the storage cannot create exclusively and `single_writer` is off:
            nothing may be submitted, since overlapping runs could each pay for a row.
    """
    from prefect_runcomfy.api.exceptions import ConfigurationError

    if single_writer:
        logger.warning(
            "single_writer=True: no claims are taken under %s; two runs writing there at the "
            "same time could each pay for the same rows",
            store.uri(""),
        )
        return None
    problem = store.supports_exclusive_create()
    if problem:
        raise ConfigurationError(
            f"The output location {store.uri('')} cannot claim rows: {problem}. Two runs "
            "writing there at once could each pay for the same rows, so this run submits "
            f"nothing. If only one run ever writes there at a time, pass {SINGLE_WRITER} to "
            "run without claims."
        )
    lease = OwnerLease(store, flow_run_id=flow_run_id)
    return RowClaims(store, lease, prefect_run_is_over)


def prefect_run_is_over(flow_run_id: str) -> bool | None:
    """Whether Prefect has flow run `flow_run_id` in a final state (Completed, Failed,
    Cancelled, Crashed); None when the Prefect API cannot tell (another server, no run)."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
    except Exception:
        return None
    return bool(run.state is not None and run.state.is_final())


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    except OSError:
        return True
    return True


__all__ = [
    "CLAIMS_DIR",
    "DEFAULT_LEASE_S",
    "LEASE_ENV",
    "OWNERS_DIR",
    "Claim",
    "Held",
    "OwnerLease",
    "OwnerRecord",
    "RowClaims",
    "Taken",
    "lease_seconds",
    "open_claims",
    "prefect_run_is_over",
]
