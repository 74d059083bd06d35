"""The flow runs of a sharded run's shards: started or found again, watched until each ends
or is found dead, cancelled with their parent, and read back into rows.

- **Found again, not duplicated.** Every flow run of a shard carries the idempotency key
  `runcomfy-shard/<shard key>/attempt-<n>` (the key: `sharding.shard_key`, from the output
  location, the shard's index and its ids). A parent first looks for the shard's newest run:
  one still under way is waited for, whoever started it; otherwise it starts attempt n + 1
  (0 for a new shard). Two parents starting at once ask for the same key, and Prefect's
  server makes one run of it. A finished run is never reused, so tonight's run of last
  night's table does tonight's work.
- **Found dead.** A started shard run writes a heartbeat (`engine.shards.heartbeat`); the parent
  reads every started shard's heartbeat and state once per `poll_s` (one Prefect call for all
  the shards, one storage read for all the heartbeats). A run whose state and heartbeat have
  not changed for `stale_after_s` on the parent's clock is taken as dead: the parent marks it
  `Crashed` in Prefect and reports its rows from the ledger. So a dead running shard is
  noticed at most `stale_after_s + poll_s` after its last sign of life (or after the parent
  started watching it); one whose process never started (`Pending` on a worker that died)
  after `START_GRACE` times as long, since starting a process takes tens of seconds on a
  busy machine.
- **Cancelled with the parent.** A parent that is cancelled, or stopped while it waits,
  cancels the shard runs it waits for; each shard's own cancellation hook then cancels its
  queued RunComfy jobs. A parent that dies without a word leaves them working: the next
  parent finds them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.logging import get_run_logger
from prefect.states import Cancelling, Crashed, State

from prefect_runcomfy.engine.outputs.manifest import outcome_from_manifest_row
from prefect_runcomfy.engine.outputs.sidecar import with_sidecar
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry, outcome_from_entry
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState, RowStatus
from prefect_runcomfy.engine.shards.split import SHARDS_DIR, ShardFiles, ShardSpec, write_shard
from prefect_runcomfy.models.base import ModelSpec

STALE_AFTER_S = 60.0
"""How long a started shard run may show no sign of life before its parent takes it as dead."""

KEY_PREFIX = "runcomfy-shard"
CANCEL_TIMEOUT_S = 15.0
"""How long a stopping parent spends cancelling its shard runs."""
_STARTS_AT_ONCE = 8
_READ_AT_ONCE = 200
START_GRACE = 4
"""A shard run not yet running may be quiet this many times `stale_after_s` (see
`ShardWatch.quiet_limit`)."""
_UNSTARTED = frozenset({StateType.SCHEDULED})
_SAID = frozenset(
    {
        StateType.RUNNING,
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.CRASHED,
        StateType.CANCELLING,
        StateType.CANCELLED,
    }
)


def idempotency_key(spec: ShardSpec, attempt: int) -> str:
    """The idempotency key of attempt `attempt` of shard `spec`."""
    return f"{KEY_PREFIX}/{spec.key}/attempt-{attempt:04d}"


def attempt_of(spec: ShardSpec, key: str | None) -> int | None:
    """The attempt number in `key` when it is a key of shard `spec`, else None."""
    prefix = f"{KEY_PREFIX}/{spec.key}/attempt-"
    if not key or not key.startswith(prefix) or not key[len(prefix) :].isdigit():
        return None
    return int(key[len(prefix) :])


def parents_record(parent_flow_run_id: str) -> str:
    """Where a parent writes the shard runs it waits for (read by its cancellation hook)."""
    return f"{SHARDS_DIR}/parents/{parent_flow_run_id}.json"


@dataclass
class ShardRun:
    """One shard's flow run as its parent follows it."""

    spec: ShardSpec
    attempt: int
    flow_run_id: UUID
    found: bool
    """An earlier parent's run, still under way, waited for instead of starting another."""
    state: State[Any] | None = None
    dead: str | None = None
    """Why the parent took the run as dead (None while it is not)."""
    sign: tuple[Any, ...] | None = None
    signed_at: float | None = None
    """When `sign` (its state and heartbeat) last changed, on the parent's monotonic clock."""
    beat: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> ShardFiles:
        return self.spec.files(self.attempt)

    @property
    def ended(self) -> bool:
        return self.dead is not None or (self.state is not None and self.state.is_final())

    @property
    def started(self) -> bool:
        return self.state is not None and self.state.type not in _UNSTARTED

    def describe(self) -> str:
        return f"shard {self.spec.index} (flow run {self.flow_run_id}, attempt {self.attempt})"


# --- starting or finding ----------------------------------------------------------------------


async def start_shards(
    store: OutputStore,
    deployment: str,
    specs: list[ShardSpec],
    parameters: Callable[[ShardFiles], dict[str, Any]],
) -> list[ShardRun]:
    """For every shard: its run still under way, or a new run of `deployment` (its rows file
    written first), with `parameters(files)` as the run's parameters. Stopped while starting
    them, cancel those already started or found, as `ShardWatch` does later."""
    started: list[ShardRun] = []
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        gate = asyncio.Semaphore(_STARTS_AT_ONCE)

        async def one(spec: ShardSpec) -> ShardRun:
            async with gate:
                run = await _start_or_find(client, store, target.id, spec, parameters)
            started.append(run)
            return run

        try:
            return list(await asyncio.gather(*(one(spec) for spec in specs)))
        except BaseException as exc:
            if started and not isinstance(exc, Exception):
                await cancel_runs(
                    [run.flow_run_id for run in started],
                    reason="its sharded parent run was stopped",
                )
            raise


async def _newest_run(client: PrefectClient, spec: ShardSpec) -> tuple[FlowRun, int] | None:
    """The shard's run with the highest attempt, among its newest runs."""
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[spec.run_name])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=20,
    )
    attempts = [(run, attempt_of(spec, run.idempotency_key)) for run in runs]
    mine = [(run, n) for run, n in attempts if n is not None]
    return max(mine, key=lambda pair: pair[1]) if mine else None


async def _start_or_find(
    client: PrefectClient,
    store: OutputStore,
    deployment_id: UUID,
    spec: ShardSpec,
    parameters: Callable[[ShardFiles], dict[str, Any]],
) -> ShardRun:
    from prefect.deployments import arun_deployment

    newest = await _newest_run(client, spec)
    if newest is not None and not (newest[0].state and newest[0].state.is_final()):
        run, attempt = newest
        get_run_logger().info(
            "Shard %d: its flow run %s (%s, attempt %d) is still under way: waiting for it "
            "instead of starting another",
            spec.index,
            run.name,
            run.state.name if run.state else "no state",
            attempt,
        )
        return ShardRun(spec, attempt, run.id, found=True, state=run.state)
    attempt = 0 if newest is None else newest[1] + 1
    files = spec.files(attempt)
    await asyncio.to_thread(write_shard, store, spec.frame, files.rows)
    created = await arun_deployment(
        deployment_id,
        client=client,
        parameters=parameters(files),
        flow_run_name=spec.run_name,
        idempotency_key=idempotency_key(spec, attempt),
        as_subflow=True,
        timeout=0,
    )
    return ShardRun(spec, attempt, created.id, found=False, state=created.state)


# --- watching -----------------------------------------------------------------------------------


@dataclass
class ShardWatch:
    """Follows shard runs until each has ended or is taken as dead (see the module's doc)."""

    store: OutputStore
    runs: list[ShardRun]
    poll_s: float
    stale_after_s: float = STALE_AFTER_S
    parent_flow_run_id: str | None = None
    clock: Callable[[], float] = time.monotonic
    _failing: bool = False

    async def until_ended(self) -> None:
        """Wait until every run has ended or is taken as dead. Stopped (cancelled, interrupted,
        terminated) while waiting, cancel the runs still under way, then stop."""
        try:
            async with get_client() as client:
                while True:
                    await self.look_once(client)
                    if all(run.ended for run in self.runs):
                        return
                    await asyncio.sleep(self.poll_s)
        except BaseException as exc:
            left = [run.flow_run_id for run in self.runs if not run.ended]
            if left and not isinstance(exc, Exception):
                await cancel_runs(left, reason="its sharded parent run was stopped")
            raise

    async def look_once(self, client: PrefectClient) -> None:
        """`look`, a failed round logged and skipped: a Prefect API or a storage that is briefly
        away must neither stop the parent nor count against a shard's signs of life (unreadable
        is not dead: every run's quiet time starts again)."""
        try:
            await self.look(client)
        except Exception as exc:
            if not self._failing:
                get_run_logger().warning("Could not look at the shard runs (will retry): %s", exc)
            self._failing = True
            for run in self.runs:
                run.signed_at = None
        else:
            self._failing = False

    async def look(self, client: PrefectClient) -> None:
        """One round: every waited-for run's state (one call per 200 runs) and started run's
        heartbeat (one read); say what changed, take as dead what shows no sign of life for
        too long."""
        waiting = [run for run in self.runs if not run.ended]
        states: dict[UUID, State[Any] | None] = {}
        for at in range(0, len(waiting), _READ_AT_ONCE):  # the API answers 200 at most
            ids = [run.flow_run_id for run in waiting[at : at + _READ_AT_ONCE]]
            found = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
            states.update({flow_run.id: flow_run.state for flow_run in found})
        for run in waiting:
            self._note_state(run, states.get(run.flow_run_id))
        started = [run for run in waiting if run.started and not run.ended]
        beats = await asyncio.to_thread(
            self.store.read_many_json, [run.files.heartbeat for run in started]
        )
        now = self.clock()
        for run in started:
            beat = beats.get(run.files.heartbeat) or {}
            run.beat = beat or run.beat
            sign = (run.state.type if run.state else None, *_beat_sign(beat))
            if sign != run.sign or run.signed_at is None:
                run.sign, run.signed_at = sign, now
            elif now - run.signed_at > self.quiet_limit(run):
                await self._take_as_dead(client, run, now - run.signed_at)

    def quiet_limit(self, run: ShardRun) -> float:
        """How long `run` may show no sign of life: `stale_after_s` once it beats or runs;
        `START_GRACE` times that while its worker starts its process (Pending: a Python
        process importing Prefect and this library, tens of seconds on a busy machine)."""
        beating = bool(run.beat) or (run.state is not None and run.state.is_running())
        return self.stale_after_s if beating else self.stale_after_s * START_GRACE

    def _note_state(self, run: ShardRun, state: State[Any] | None) -> None:
        before = run.state.type if run.state else None
        run.state = state or run.state
        # Running and the end are worth a line; Pending and its sub-states are not
        if run.state is not None and run.state.type != before and run.state.type in _SAID:
            get_run_logger().info("Shard %d: %s", run.spec.index, run.state.name)

    async def _take_as_dead(self, client: PrefectClient, run: ShardRun, quiet_s: float) -> None:
        """Mark the run Crashed in Prefect (unless it just ended) and stop waiting for it."""
        last = (
            f"its last heartbeat came from {run.beat.get('host')} (process "
            f"{run.beat.get('pid')}) at {run.beat.get('at')}"
            if run.beat
            else "it never wrote a heartbeat"
        )
        why = f"no sign of life for {quiet_s:.0f} s ({last})"
        by = (
            f" by its sharded parent run {self.parent_flow_run_id}"
            if self.parent_flow_run_id
            else ""
        )
        answer: OrchestrationResult[Any] = await client.set_flow_run_state(
            run.flow_run_id, Crashed(message=f"Taken as dead{by}: {why}"), force=False
        )
        if answer.status != SetStateStatus.ACCEPT and answer.state and answer.state.is_final():
            run.state = answer.state  # it ended on its own just now: its own state stands
            return
        run.state = answer.state if answer.status == SetStateStatus.ACCEPT else run.state
        run.dead = why
        get_run_logger().warning(
            "%s is taken as dead: %s. Marked Crashed in Prefect; its rows are reported "
            "from the ledger.",
            run.describe().capitalize(),
            why,
        )


def _beat_sign(beat: dict[str, Any]) -> tuple[Any, ...]:
    return (beat.get("flow_run_id"), beat.get("pid"), beat.get("count"))


async def cancel_runs(flow_run_ids: list[UUID], *, reason: str) -> list[UUID]:
    """Ask Prefect to cancel these flow runs (a run not started yet is cancelled at once; a
    started one is stopped by its worker, which runs its cancellation hooks); the ids of those
    now cancelling or cancelled. Bounded by `CANCEL_TIMEOUT_S`; never raises."""
    accepted: list[UUID] = []

    async def cancel_all() -> None:
        async with get_client() as client:
            for flow_run_id in flow_run_ids:
                answer: OrchestrationResult[Any] = await client.set_flow_run_state(
                    flow_run_id, Cancelling(message=reason), force=False
                )
                # a run not started yet is set Cancelled instead (the server's answer: REJECT)
                now = answer.state
                if answer.status == SetStateStatus.ACCEPT or (
                    now is not None and now.type is StateType.CANCELLED
                ):
                    accepted.append(flow_run_id)

    try:
        await asyncio.wait_for(cancel_all(), CANCEL_TIMEOUT_S)
    except Exception as exc:
        _logger().warning("Could not cancel every shard run (%s): %s", reason, exc)
    if accepted:
        _logger().warning("Cancelled %d shard runs: %s", len(accepted), reason)
    return accepted


def _logger() -> Any:
    from prefect.logging import get_logger
    from prefect.logging.loggers import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("prefect_runcomfy.shards")


async def record_parent(store: OutputStore, parent_flow_run_id: str, runs: list[ShardRun]) -> None:
    """Write down which shard runs this parent waits for: its cancellation hook, which may run
    in another process, reads them back (`cancel_recorded`)."""
    record = {
        "parent_flow_run_id": parent_flow_run_id,
        "shard_flow_run_ids": [str(run.flow_run_id) for run in runs],
    }
    await asyncio.to_thread(store.write_json, parents_record(parent_flow_run_id), record)


async def cancel_recorded(store: OutputStore, parent_flow_run_id: str) -> list[UUID]:
    """Cancel the shard runs a parent wrote down (`record_parent`); those accepted."""
    record = await asyncio.to_thread(store.read_json, parents_record(parent_flow_run_id)) or {}
    ids = [UUID(str(i)) for i in record.get("shard_flow_run_ids") or []]
    return await cancel_runs(
        ids, reason=f"their sharded parent run {parent_flow_run_id} was cancelled"
    )


# --- reading back -------------------------------------------------------------------------------


async def shard_outcomes(
    store: OutputStore, run: ShardRun, output_uri: str, model: ModelSpec
) -> list[RowOutcome]:
    """The rows of one shard (jobs of `model`): its manifest's, or, when it wrote none (it died, crashed or was
    cancelled first), what the ledger says of each row."""
    manifest = await asyncio.to_thread(store.read_manifest, run.files.manifest)
    if manifest is not None:
        records = manifest.to_dict("records")
        return [outcome_from_manifest_row(r, model.input_names) for r in records]
    entries = await asyncio.to_thread(Ledger(store).get_many, list(run.spec.ids))
    stored = [i for i, e in entries.items() if e.state is LedgerState.STORED]
    sidecars = await asyncio.to_thread(store.read_many_json, [f"{i}.json" for i in stored])
    why = run.dead or f"it ended {run.state.name if run.state else 'without a state'}"
    outcomes = [
        _unfinished_row(store, row_id, entries.get(row_id), sidecars, why, run, output_uri)
        for row_id in run.spec.ids
    ]
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[str(outcome.status)] = counts.get(str(outcome.status), 0) + 1
    _logger().warning(
        "%s wrote no manifest (%s). Its %d rows, from the ledger: %s. Paid jobs are "
        "collected by `prefect-runcomfy collect %s`; running this flow again does the rest "
        "(nothing is paid twice).",
        run.describe().capitalize(),
        why,
        len(outcomes),
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        output_uri,
    )
    return outcomes


def _unfinished_row(
    store: OutputStore,
    row_id: str,
    entry: LedgerEntry | None,
    sidecars: dict[str, dict[str, Any]],
    why: str,
    run: ShardRun,
    output_uri: str,
) -> RowOutcome:
    """One row of a shard run that wrote no manifest, as its ledger entry tells it."""
    lost = f"its shard's flow run {run.flow_run_id} stopped ({why})"
    if entry is None:
        return RowOutcome(id=row_id).ended(
            RowStatus.FAILED, f"not submitted: {lost}; run this flow again to do it"
        )
    start = outcome_from_entry(entry)
    if entry.state is LedgerState.STORED:
        sidecar = sidecars.get(f"{row_id}.json") or {}
        return with_sidecar(start, sidecar).ended(
            RowStatus.SUCCEEDED, metadata_uri=store.uri(f"{row_id}.json")
        )
    if entry.state in (LedgerState.SUBMITTED, LedgerState.TIMED_OUT) and entry.request_id:
        return start.ended(
            RowStatus.TIMED_OUT,
            f"request {entry.request_id} is paid but was not collected: {lost}. Collect it "
            f"with `prefect-runcomfy collect {output_uri}` or run this flow again",
        )
    if entry.state in (LedgerState.SUBMITTING, LedgerState.OUTCOME_UNKNOWN):
        return start.ended(
            RowStatus.OUTCOME_UNKNOWN,
            entry.error or f"a submit may have been sent when {lost}; its answer was not recorded",
        )
    return start.ended(entry.state.row_status, entry.error or lost)


__all__ = [
    "STALE_AFTER_S",
    "ShardRun",
    "ShardWatch",
    "attempt_of",
    "cancel_recorded",
    "cancel_runs",
    "idempotency_key",
    "parents_record",
    "record_parent",
    "shard_outcomes",
    "start_shards",
]
