"""One way to run a table: plan it, run its rows, hand back their records.

The flows call these and nothing else of the run (`prefect_runcomfy.flows` keeps Prefect's
concerns: parameters, credentials, tags, hooks, artifacts):

```python
store = await open_output(output_uri, storage_options)
planned = await plan_run(inputs, store, settings, media, make_client=make_client)
outcomes = await run_table(planned, store, settings, hooks)      # one record per row

left = await plan_collect(store)                                 # what earlier runs left
outcomes = await collect_table(left, store, settings, hooks, cancel=False)
```

A run's `RunSettings` are frozen; what changes while it runs is its `RunState`, built here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from prefect.logging import get_run_logger

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, InvalidInputError
from prefect_runcomfy.engine.claims.claim import open_claims
from prefect_runcomfy.engine.inputs.table import RowProblem, TableLike, invalid_outcome
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry, outcome_from_entry
from prefect_runcomfy.engine.plan.planning import MediaSettings, TablePlan, api_payload, plan_table
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.record.status import LedgerState, RowStatus
from prefect_runcomfy.engine.run.phases import claims_for, execute
from prefect_runcomfy.engine.run.row import RowCell, collect_request, in_row_task, run_row
from prefect_runcomfy.engine.run.settings import RunHooks, RunSettings
from prefect_runcomfy.engine.run.state import RunState
from prefect_runcomfy.engine.run.turn import take_entry


async def open_output(output_uri: str, storage_options: dict[str, Any] | None) -> OutputStore:
    """The output location, checked writable before anything is paid for, and cleared of the
    temp files killed runs left there."""
    store = OutputStore(output_uri, storage_options)
    await asyncio.to_thread(store.check_writable)
    await asyncio.to_thread(store.remove_stale_temp_files)
    return store


async def plan_run(
    inputs: TableLike,
    store: OutputStore,
    settings: RunSettings,
    media: MediaSettings,
    *,
    on_invalid: Literal["continue", "stop"] = "continue",
    make_client: Callable[[], RunComfyClient] | None = None,
    table_storage_options: dict[str, Any] | None = None,
) -> TablePlan:
    """The run's plan (`engine.plan.planning.plan_table`: the plan `prefect-runcomfy plan`
    shows), its invalid rows logged, refused with `on_invalid="stop"`, its `Plan:` line
    logged (rows whose media failed are not in it), and held to the spending limits."""
    spending = settings.spending
    planned = await plan_table(
        inputs,
        store,
        settings.model,
        media=media,
        resubmit_unknown=spending.resubmit_unknown,
        retry_failed=spending.retry_failed,
        make_client=make_client,
        table_storage_options=table_storage_options,
    )
    refusal = _refusal(planned, settings, on_invalid)
    if refusal is not None:
        # Prefect keeps a failed flow run's exception in memory after the run (its result
        # store's cache, which the context of its log worker's task keeps alive), and with
        # it the frames of its traceback: this one's must not hold the plan (a 100,000-row
        # plan is some 100 MB).
        del planned
        raise refusal
    get_run_logger().info(
        "%d rows, %d invalid; outputs go to %s",
        planned.total,
        len(planned.invalid),
        store.output_uri,
    )
    return planned


def _refusal(
    planned: TablePlan, settings: RunSettings, on_invalid: Literal["continue", "stop"]
) -> InvalidInputError | ConfigurationError | None:
    """Why the run may not go on with its plan (invalid rows with `on_invalid="stop"`, over
    a spending limit), without the traceback that holds the plan; None when it may. Logs
    the invalid rows and the `Plan:` line."""
    spending = settings.spending
    try:
        refuse_invalid(planned.invalid, planned.total, on_invalid)
        get_run_logger().info("Plan: %s", planned.plan_line())
        planned.check_limits(spending.max_submits, spending.max_cost_usd)
    except (InvalidInputError, ConfigurationError) as exc:
        return exc.with_traceback(None)
    return None


def refuse_invalid(
    invalid: list[RowProblem], total: int, on_invalid: Literal["continue", "stop"]
) -> None:
    """Log every invalid row; with `on_invalid="stop"` refuse the run before any submit."""
    logger = get_run_logger()
    for problem in invalid:
        logger.warning("Invalid %s", problem.message)
    if invalid and on_invalid == "stop":
        raise InvalidInputError(
            f"{len(invalid)} of {total} rows are invalid; nothing was submitted "
            "(on_invalid='stop'):\n" + "\n".join(p.message for p in invalid),
            problems=[(p.message, "") for p in invalid],
        )


async def run_table(
    planned: TablePlan, store: OutputStore, settings: RunSettings, hooks: RunHooks
) -> list[RowOutcome]:
    """Run every row of a plan at once, within the run's places, and return every row's
    record in table order (the invalid rows' too). Each record is handed to
    `hooks.on_row_done` as its row ends."""
    resolver = planned.resolver
    state = RunState(
        settings,
        hooks,
        store,
        Ledger(store),
        claims=await claims_for(
            store,
            planned,
            flow_run_id=settings.flow_run_id,
            single_writer=settings.concurrency.single_writer,
        ),
        build_payload=(lambda row: api_payload(row, resolver, planned.model))
        if resolver is not None
        else None,
    )
    outcomes = [await state.done(invalid_outcome(p)) for p in planned.invalid]
    jobs = [
        run_row(state, row, decision, planned.entries.get(row.id))
        for row, decision in zip(planned.rows, planned.decisions, strict=True)
    ]
    outcomes += await execute(state, jobs)
    outcomes.sort(key=lambda o: o.row if o.row is not None else -1)
    return outcomes


async def plan_whole_table(
    inputs: TableLike,
    store: OutputStore,
    settings: RunSettings,
    *,
    make_client: Callable[[], RunComfyClient] | None = None,
    table_storage_options: dict[str, Any] | None = None,
) -> TablePlan:
    """A sharded parent's plan of the whole table, its invalid rows logged: the ledger is
    read, and the table held to `max_submits` and `max_cost_usd`, only when they are set
    (the media are its shards' to check, each in its own run's plan)."""
    spending = settings.spending
    limited = spending.max_submits is not None or spending.max_cost_usd is not None
    planned = await plan_table(
        inputs,
        store if limited else None,
        settings.model,
        resubmit_unknown=spending.resubmit_unknown,
        retry_failed=spending.retry_failed,
        make_client=make_client if spending.max_cost_usd is not None else None,
        table_storage_options=table_storage_options,
    )
    for problem in planned.invalid:
        get_run_logger().warning("Invalid %s", problem.message)
    if limited:
        planned.check_limits(spending.max_submits, spending.max_cost_usd)
    return planned


@dataclass(frozen=True)
class LeftBehind:
    """What earlier runs left under an output location: requests to collect (submitted, timed
    out, output refused), and rows whose submit got no answer (no request id to collect)."""

    outstanding: list[LedgerEntry]
    unknown: list[LedgerEntry]

    @property
    def total(self) -> int:
        """Rows a collect reports."""
        return len(self.outstanding) + len(self.unknown)


async def plan_collect(store: OutputStore) -> LeftBehind:
    """Read the ledger under `store` for what is left to collect, and log it."""
    entries = list((await asyncio.to_thread(Ledger(store).load_all)).values())
    collectable = (LedgerState.SUBMITTED, LedgerState.TIMED_OUT, LedgerState.OUTPUT_REFUSED)
    unanswered = (LedgerState.SUBMITTING, LedgerState.OUTCOME_UNKNOWN)
    left = LeftBehind(
        outstanding=[e for e in entries if e.state in collectable and e.request_id],
        unknown=[e for e in entries if e.state in unanswered and not e.request_id],
    )
    get_run_logger().info(
        "%d outstanding requests under %s; %d rows with an unknown submit outcome",
        len(left.outstanding),
        store.output_uri,
        len(left.unknown),
    )
    return left


async def collect_table(
    left: LeftBehind,
    store: OutputStore,
    settings: RunSettings,
    hooks: RunHooks,
    *,
    cancel: bool = False,
) -> list[RowOutcome]:
    """Collect (or with `cancel`, first try to cancel) every request earlier runs left, and
    report the rows whose submit got no answer; nothing is submitted. A request a live run
    is waiting for (it holds the row's claim) is left to it. Stopped, it leaves the requests
    as they were: they belong to earlier runs."""
    claims = None
    if left.outstanding:
        claims = await asyncio.to_thread(
            open_claims,
            store,
            flow_run_id=settings.flow_run_id,
            single_writer=settings.concurrency.single_writer,
        )
    state = RunState(settings, hooks, store, Ledger(store), claims=claims)
    jobs = [_collect_one(state, entry, cancel=cancel) for entry in left.outstanding]
    outcomes = await execute(state, jobs, cancel_on_stop=False)
    for entry in left.unknown:
        error = entry.error or "a submit was sent but its answer was lost"
        outcome = outcome_from_entry(entry).ended(RowStatus.OUTCOME_UNKNOWN, error)
        outcomes.append(await state.done(outcome))
    return outcomes


async def _collect_one(state: RunState, entry: LedgerEntry, *, cancel: bool) -> RowOutcome | None:
    """Collect (or with `cancel`, first try to cancel) one request the ledger holds; None
    when a live run holds the row."""
    settings = state.settings
    start = outcome_from_entry(
        entry, model_id=settings.model_id, flow_run_id=settings.flow_run_id
    ).noted("collected by collect-outstanding-requests")
    request_id = entry.request_id
    assert request_id is not None
    held = await take_entry(state, entry)
    if held is not None:
        get_run_logger().info(
            "%s: request %s is being collected by %s; left to it",
            entry.id,
            request_id,
            held.claim.describe(),
        )
        return None
    async with state.places.row() as place, place.job():
        if cancel:
            cancel_job = state.hooks.cancel_job or place.client.cancel
            if (await cancel_job(request_id)).cancelled:
                error = "cancelled on request"
                await state.write_ledger(
                    lambda: state.ledger.mark(entry.id, LedgerState.CANCELLED, error=error)
                )
                return await state.done(start.ended(RowStatus.CANCELLED, error))
        cell = RowCell(start)
        outcome = await in_row_task(cell, lambda: collect_request(state, place.client, cell))
    return await state.done(outcome)


__all__ = [
    "LeftBehind",
    "collect_table",
    "open_output",
    "plan_collect",
    "plan_run",
    "plan_whole_table",
    "refuse_invalid",
    "run_table",
]
