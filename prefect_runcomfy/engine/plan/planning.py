"""What a run will do with each row, decided from the ledger and the rows' media before
anything is paid for: the one plan of a table, for a run and for `prefect-runcomfy plan` and
`validate` alike, so that a dry run cannot disagree with a real one about a row.

`plan_table` reads and checks the table, decides each valid row from the ledger under the
output location (`plan_rows`, `ledger.plan_row`), checks the media of the rows to submit with
the run's own rules (`MediaResolver`; a dry run uploads nothing, and `validate` reads no
network), leaves out the rows whose media fail, and prices the rest from RunComfy's catalog.
`TablePlan.check_limits` then holds it to `max_submits` and `max_cost_usd`.

```python
plan = await plan_table("rows.csv", store, INFINITE_TALK,
                        media=MediaSettings(staging_uri="s3://b/stage",
                        mode="check"), make_client=RunComfyClient)
print(plan.describe())   # '480 to submit, 3 to collect from earlier runs, 17 already stored'
print(plan.estimate().describe())  # 'estimated cost $36.0000 for 480 jobs (...)'
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, SubmitLimitError
from prefect_runcomfy.engine.inputs.media import LocalFiles, MediaResolver
from prefect_runcomfy.engine.inputs.table import (
    PreparedRow,
    RowProblem,
    TableLike,
    check_table,
    is_local_uri,
    read_table,
    table_folder,
)
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry, RowDecision, RowPlan, plan_row
from prefect_runcomfy.engine.plan.pricing import (
    CostEstimate,
    Price,
    check_cost_limit,
    estimate_cost,
    price_rows,
)
from prefect_runcomfy.models.base import ModelSpec

RESOLVE_AT_ONCE = 16
"""Rows whose media are resolved at the same time (uploads and signatures are blocking I/O)."""

MediaMode = Literal["resolve", "check", "offline"]
"""How a plan treats the media of the rows to submit: "resolve" makes them fetchable (a run:
local files staged, remote objects signed); "check" applies the same rules and writes
nothing (`prefect-runcomfy plan`); "offline" also reads no network (`validate`: remote
objects are not looked at)."""


def plan_rows(
    rows: list[PreparedRow],
    entries: dict[str, LedgerEntry],
    present: set[str],
    *,
    resubmit_unknown: bool,
    retry_failed: bool,
    max_submits: int | None = None,
) -> list[RowDecision]:
    """Decide each valid row's plan from the ledger (`plan_row`) and enforce `max_submits`.

    `present` holds the names listed under the output location: a stored row whose video or
    sidecar is gone is collected again rather than skipped. Raises `SubmitLimitError`, before
    anything is sent, when more rows would be submitted than `max_submits` allows.
    """
    decisions: list[RowDecision] = []
    alike: dict[RowDecision, RowDecision] = {}
    for row in rows:
        entry = entries.get(row.id)
        outputs = entry.video_uris if entry else []
        output_exists = (
            bool(outputs)
            and all(uri.rsplit("/", 1)[-1] in present for uri in outputs)
            and f"{row.id}.json" in present
        )
        decision = plan_row(
            entry,
            row.fingerprint,
            output_exists=output_exists,
            resubmit_unknown=resubmit_unknown,
            retry_failed=retry_failed,
        )
        # Equal decisions as one object: a plan holds one per row until its run ends, and
        # most rows of a table are decided alike ("new row", "already stored").
        decisions.append(alike.setdefault(decision, decision))
    check_submit_limit(rows, decisions, max_submits)
    return decisions


def check_submit_limit(
    rows: list[PreparedRow], decisions: list[RowDecision], max_submits: int | None
) -> None:
    """Raise `SubmitLimitError`, before anything is sent, when more rows would be submitted
    than `max_submits` allows (None: no limit)."""
    if max_submits is not None and max_submits < 0:
        raise ConfigurationError(f"max_submits must be 0 or more, not {max_submits}.")
    new = ids_to_submit(rows, decisions)
    if max_submits is not None and len(new) > max_submits:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        raise SubmitLimitError(
            f"This run would submit {len(new)} new jobs, more than max_submits={max_submits}; "
            f"nothing was submitted. Rows to submit: {shown}. Check the table (did it grow by "
            "mistake, or did its ids change?) or raise max_submits.",
            would_submit=len(new),
            limit=max_submits,
        )


def ids_to_submit(rows: list[PreparedRow], decisions: list[RowDecision]) -> list[str]:
    """Ids of the rows whose plan is to submit (and pay for) a new job."""
    return [r.id for r, d in zip(rows, decisions, strict=True) if d.plan is RowPlan.SUBMIT]


def output_state(store: OutputStore) -> tuple[dict[str, LedgerEntry], set[str]]:
    """What a plan needs from the output location: every ledger entry, and the names there.

    Blocking I/O (one listing of the ledger and its reads, one listing of everything)."""
    return Ledger(store).load_all(), set(store.list())


def describe_plan(decisions: list[RowDecision]) -> str:
    """Say in words how many rows a run submits, collects, skips and reports again."""
    words = {
        RowPlan.SUBMIT: "to submit",
        RowPlan.RESUME: "to collect from earlier runs",
        RowPlan.SKIP_STORED: "already stored",
        RowPlan.UNKNOWN: "with an unknown earlier submit (not sent again)",
        RowPlan.KEEP_FAILED: "failed earlier (not retried)",
    }
    counts = {plan: 0 for plan in words}
    for decision in decisions:
        counts[decision.plan] += 1
    parts = [f"{counts[plan]} {text}" for plan, text in words.items() if counts[plan]]
    return ", ".join(parts) or "no valid rows"


@dataclass(frozen=True)
class MediaSettings:
    """Where a table's media come from and how RunComfy gets them.

    `staging_uri` and `inline_media` say where local files go; when neither is set and a row
    to submit names a local file, `unset_local` is asked, once per plan (a run's, `plan`'s
    and `validate`'s alike: `prefect_runcomfy.local_media` reads the deployment's Prefect
    Variables, then takes the sandbox's default). Without it such a row is invalid."""

    staging_uri: str | None = None
    inline_media: bool = False
    storage_options: dict[str, Any] | None = None
    staging_storage_options: dict[str, Any] | None = None
    mode: MediaMode = "resolve"
    unset_local: Callable[[], Awaitable[LocalFiles]] | None = None

    @property
    def sends_local_files(self) -> bool:
        """Whether local media files have somewhere to go (`staging_uri` or `inline_media`)."""
        return self.inline_media or bool(self.staging_uri)

    def with_local(self, local: LocalFiles) -> MediaSettings:
        """These settings with local files sent as `local` says."""
        return dataclasses.replace(
            self, staging_uri=local.staging_uri, inline_media=local.inline, unset_local=None
        )

    def resolver(self, table_uri: str | None) -> MediaResolver:
        """The resolver of a table read from `table_uri` (relative paths are read there)."""
        return MediaResolver(
            base_uri=table_folder(table_uri),
            staging_uri=self.staging_uri,
            inline_media=self.inline_media,
            storage_options=self.storage_options,
            staging_storage_options=self.staging_storage_options,
            check_only=self.mode != "resolve",
            offline=self.mode == "offline",
        )


@dataclass(frozen=True)
class PreparedTable:
    """A table read and checked: its valid rows, and the rows that are not, by position."""

    frame: pd.DataFrame
    valid: list[PreparedRow]
    invalid: list[RowProblem]


async def prepare(
    inputs: TableLike, model: ModelSpec, *, storage_options: dict[str, Any] | None
) -> PreparedTable:
    """Read the table and check every row as a job of `model`; nothing is sent anywhere."""
    frame = await asyncio.to_thread(read_table, inputs, storage_options=storage_options)
    check = check_table(frame, model)
    return PreparedTable(frame, check.valid, check.invalid)


@dataclass(frozen=True, repr=False)
class TablePlan:
    """A table's plan: each row to run with its decision, the ledger entries the decisions
    came from, the rows that are invalid (by their values or their media), the model's price
    (None when it was not read), and the resolver the media were checked with."""

    frame: pd.DataFrame
    """The table as read (every row, valid or not)."""
    rows: list[PreparedRow]
    decisions: list[RowDecision]
    model: ModelSpec
    """The model the rows are jobs of."""
    entries: dict[str, LedgerEntry] = field(default_factory=dict)
    invalid: list[RowProblem] = field(default_factory=list)
    price: Price | None = None
    media_seconds: dict[str, float] = field(default_factory=dict)
    """Lengths of the local media of rows to submit that cap their estimates (the model's
    `length_from`)."""
    resolver: MediaResolver | None = None
    """The resolver the media were checked with (made fetchable, when it resolves): a run
    builds each row's API body with it at the row's POST (`api_payload`)."""

    def __repr__(self) -> str:
        # Short: Python 3.11's asyncio.run reprs its coroutine's result when it puts the
        # SIGINT handler back (`signal.signal` names the old one), and a plan's field-by-field
        # repr is every row of the table (for 100,000 rows, seconds and ~100 MB for nothing).
        return f"<TablePlan of {self.total} rows: {self.describe()}>"

    @property
    def total(self) -> int:
        """The table's number of rows."""
        return len(self.frame)

    @property
    def to_submit(self) -> list[str]:
        """Ids of the rows a run would submit (and pay for)."""
        return ids_to_submit(self.rows, self.decisions)

    def estimate(self) -> CostEstimate | None:
        """The estimated cost of the rows this plan submits (None when no price was read)."""
        if self.price is None:
            return None
        submit = set(self.to_submit)
        rows = [r for r in self.rows if r.id in submit]
        return estimate_cost(rows, self.price, self.model, self.media_seconds)

    def describe(self) -> str:
        """The plan in words, invalid rows included."""
        text = describe_plan(self.decisions)
        return f"{text}, {len(self.invalid)} invalid" if self.invalid else text

    def plan_line(self) -> str:
        """What a run logs as its plan, after the media checks: `3 to submit, 2 invalid;
        estimated cost $0.2250 ...` (a row whose media fail is invalid, never to submit)."""
        estimate = self.estimate()
        return self.describe() + (f"; {estimate.describe()}" if estimate else "")

    def check_limits(self, max_submits: int | None, max_cost_usd: float | None = None) -> None:
        """`max_submits` and `max_cost_usd` applied to the rows that will really be submitted:
        `SubmitLimitError` or `CostLimitError` before any POST. A plan without a price read
        cannot meet a `max_cost_usd`: it is refused too."""
        check_submit_limit(self.rows, self.decisions, max_submits)
        if max_cost_usd is None:
            return
        estimate = self.estimate()
        if estimate is None:
            no_price = Price(model_id="?", problem="the catalog's price was not read")
            submit = set(self.to_submit)
            estimate = estimate_cost([r for r in self.rows if r.id in submit], no_price, self.model)
        check_cost_limit(estimate, max_cost_usd)


async def plan_table(
    inputs: TableLike,
    store: OutputStore | None,
    model: ModelSpec,
    *,
    media: MediaSettings | None = None,
    resubmit_unknown: bool = False,
    retry_failed: bool = False,
    make_client: Callable[[], RunComfyClient] | None = None,
    table_storage_options: dict[str, Any] | None = None,
) -> TablePlan:
    """Plan `inputs`, jobs of `model`, against the ledger under `store` (None: no output
    yet, every row new).

    The media of the rows to submit are checked by `media`'s rules (None: not checked, as a
    sharded parent leaves them to its shards); a row whose media fail is invalid, never
    counted as to submit. With `make_client`, the model's price is read from RunComfy's
    catalog (a free read) when any row is to be submitted, and each such row's decision
    carries its estimated cost; a catalog that cannot be read gives an estimate that says so.
    Local media files (the model's `length_from`) cap the seconds a row is estimated at.
    """
    table_uri = inputs if isinstance(inputs, str) else None
    options = table_storage_options
    if options is None and media is not None:
        options = media.storage_options
    table = await prepare(inputs, model, storage_options=options)
    entries, present = await asyncio.to_thread(output_state, store) if store else ({}, set())
    decisions = plan_rows(
        table.valid,
        entries,
        present,
        resubmit_unknown=resubmit_unknown,
        retry_failed=retry_failed,
    )
    planned = TablePlan(table.frame, table.valid, decisions, model, entries, list(table.invalid))
    if media is not None:
        media = await _settled(planned, media, table_uri)
        planned = await _with_media(planned, media.resolver(table_uri))
    if make_client is not None:
        base_dir = table_folder(table_uri) if table_uri and is_local_uri(table_uri) else None
        planned = await _priced(planned, make_client, base_dir)
    return planned


async def _settled(
    planned: TablePlan, media: MediaSettings, table_uri: str | None
) -> MediaSettings:
    """`media`, with where local files go asked of `media.unset_local` when nothing set it
    and a row to submit names a local file (a table of URLs asks nothing: no Prefect API
    call for `validate`)."""
    if media.sends_local_files or media.unset_local is None:
        return media
    resolver = media.resolver(table_uri)
    submit = set(planned.to_submit)
    kinds = planned.model.media

    def names_one() -> bool:
        return any(
            resolver.names_local_file(row.input(name))
            for row in planned.rows
            if row.id in submit
            for name in kinds
        )

    if not await asyncio.to_thread(names_one):
        return media
    return media.with_local(await media.unset_local())


async def _with_media(planned: TablePlan, resolver: MediaResolver) -> TablePlan:
    """The plan with the media of its rows to submit checked (made fetchable when the
    resolver resolves): the rows whose media fail moved to the invalid ones. Rows that are
    stored, collected or reported again need no media, so a portrait deleted after its video
    was made is no problem.

    The API bodies are not kept: a run builds each at its row's POST (`api_payload`) with
    this resolver, which remembers what it staged and signed (no second upload). A body per
    row held from the plan to the POST would be a dict for each row of a 100,000-row table,
    and megabytes a row with inline media."""
    submit = set(planned.to_submit)
    to_check = (r for r in planned.rows if r.id in submit)
    problems: list[RowProblem] = []

    async def checker() -> None:
        # RESOLVE_AT_ONCE checkers share one iterator: no task per row (a 100,000-row table
        # would make 100,000 at once), at most RESOLVE_AT_ONCE rows in hand.
        for row in to_check:
            problem = await _media_problem(row, planned.model, resolver)
            if problem is not None:
                problems.append(problem)

    await asyncio.gather(*(checker() for _ in range(RESOLVE_AT_ONCE)))
    failed_ids = {p.id for p in problems}
    kept = [
        (r, d)
        for r, d in zip(planned.rows, planned.decisions, strict=True)
        if r.id not in failed_ids
    ]
    return dataclasses.replace(
        planned,
        rows=[r for r, _ in kept],
        decisions=[d for _, d in kept],
        invalid=sorted([*planned.invalid, *problems], key=lambda p: p.row),
        resolver=resolver,
    )


async def _media_problem(
    row: PreparedRow, model: ModelSpec, resolver: MediaResolver
) -> RowProblem | None:
    """Why the row's media (`model.media`) cannot be made fetchable, or None when they can."""
    failed: list[tuple[str, str]] = []
    for name, kind in model.media.items():
        try:
            await resolver.resolve(row.input(name), kind)
        except Exception as exc:
            failed.append((name, str(exc)))
    if not failed:
        return None
    return RowProblem(row.row, row.id, failed, row.extras, row.job.model_dump())


async def _priced(
    planned: TablePlan,
    make_client: Callable[[], RunComfyClient],
    media_base_dir: str | None,
) -> TablePlan:
    """The plan with the model's price and each row to submit's estimated cost."""
    submit = set(planned.to_submit)
    if not submit:
        return planned
    to_submit = [r for r in planned.rows if r.id in submit]
    estimate, lengths = await price_rows(make_client, planned.model, to_submit, media_base_dir)
    alike: dict[RowDecision, RowDecision] = {}  # equal decisions as one object (`plan_rows`)
    decisions = [
        alike.setdefault(new, new)
        for new in (
            dataclasses.replace(d, estimated_cost_usd=estimate.per_row.get(r.id))
            if r.id in submit
            else d
            for r, d in zip(planned.rows, planned.decisions, strict=True)
        )
    ]
    return dataclasses.replace(
        planned, decisions=decisions, price=estimate.price, media_seconds=lengths
    )


async def api_payload(
    row: PreparedRow, resolver: MediaResolver, model: ModelSpec
) -> dict[str, Any]:
    """The row's API body, its media (`model.media`) made fetchable (raises `MediaError`
    naming what is wrong)."""
    resolved = {
        name: (await resolver.resolve(row.input(name), kind)).url
        for name, kind in model.media.items()
    }
    return row.job.model_copy(update=resolved).to_api_payload()


def planning_store(output_uri: str, storage_options: dict[str, Any] | None) -> OutputStore | None:
    """The output location to plan against, None when it is a local folder that does not
    exist yet (every row new; a plan creates nothing)."""
    if is_local_uri(output_uri) and not os.path.exists(output_uri.removeprefix("file://")):
        return None
    return OutputStore(output_uri, storage_options)


__all__ = [
    "MediaMode",
    "MediaSettings",
    "PreparedTable",
    "TablePlan",
    "api_payload",
    "check_submit_limit",
    "describe_plan",
    "ids_to_submit",
    "output_state",
    "plan_rows",
    "plan_table",
    "planning_store",
    "prepare",
]
