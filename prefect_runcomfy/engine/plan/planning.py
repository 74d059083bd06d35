"""What a run will do with each row, decided from the ledger before anything is paid for.

`plan_rows` applies `ledger.plan_row` to every valid row and enforces `max_submits`;
`plan_table` does the same for a whole table and an output location without running a flow
or submitting anything (the `prefect-runcomfy plan` command): only RunComfy's catalog is read,
for the model's price, so a night's spending can be read before it happens.

```python
plan = await plan_table("rows.csv", "s3://bucket/videos", make_client=RunComfyClient)
print(plan.describe())   # '480 to submit, 3 to collect from earlier runs, 17 already stored'
print(plan.estimate.describe())  # 'estimated cost $36.0000 for 480 jobs (...)'
```
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, SubmitLimitError
from prefect_runcomfy.api.models import MODEL_ID
from prefect_runcomfy.engine.inputs.table import (
    PreparedRow,
    RowProblem,
    TableCheck,
    TableLike,
    check_local_media,
    check_table,
    is_local_uri,
    read_table,
    table_folder,
)
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger, LedgerEntry, RowDecision, RowPlan, plan_row
from prefect_runcomfy.engine.plan.pricing import (
    CostEstimate,
    price_rows,
)


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
    decisions = []
    for row in rows:
        entry = entries.get(row.id)
        outputs = entry.video_uris if entry else []
        output_exists = (
            bool(outputs)
            and all(uri.rsplit("/", 1)[-1] in present for uri in outputs)
            and f"{row.id}.json" in present
        )
        decisions.append(
            plan_row(
                entry,
                row.fingerprint,
                output_exists=output_exists,
                resubmit_unknown=resubmit_unknown,
                retry_failed=retry_failed,
            )
        )
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
class TablePlan:
    """A table's plan: each valid row with its decision, the rows that are invalid, and the
    estimated cost of the rows to submit (None when no price was asked for)."""

    rows: list[PreparedRow]
    decisions: list[RowDecision]
    invalid: list[RowProblem]
    estimate: CostEstimate | None = None

    @property
    def to_submit(self) -> list[str]:
        """Ids of the rows a run would submit (and pay for)."""
        return ids_to_submit(self.rows, self.decisions)

    def describe(self) -> str:
        """The plan in words, invalid rows included."""
        text = describe_plan(self.decisions)
        return f"{text}, {len(self.invalid)} invalid" if self.invalid else text


async def plan_table(
    inputs: TableLike,
    output_uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    input_storage_options: dict[str, Any] | None = None,
    resubmit_unknown: bool = False,
    retry_failed: bool = False,
    make_client: Callable[[], RunComfyClient] | None = None,
    model_id: str = MODEL_ID,
) -> TablePlan:
    """Plan `inputs` against the ledger under `output_uri`, as `generate_talking_videos` would.

    Reads only: no Prefect flow run, no submit, nothing written (a local output folder that
    does not exist yet means every row is new). With `make_client`, the model's catalog entry
    is read (when any row is to be submitted) and the plan carries the cost estimate; a
    catalog that cannot be read (no token, say) gives an estimate that says so. Local media
    files of the rows to submit are checked to exist (a stored row needs no media); remote
    media are checked by the run itself.
    """
    table_uri = inputs if isinstance(inputs, str) else None
    df = await asyncio.to_thread(read_table, inputs, storage_options=input_storage_options)
    local_table = table_uri is not None and is_local_uri(table_uri)
    base_dir = table_folder(table_uri) if local_table else None
    check = check_table(df)
    entries, present = await asyncio.to_thread(_read_output, output_uri, storage_options)
    decisions = plan_rows(
        check.valid,
        entries,
        present,
        resubmit_unknown=resubmit_unknown,
        retry_failed=retry_failed,
    )
    submit = [r for r, d in zip(check.valid, decisions, strict=True) if d.plan is RowPlan.SUBMIT]
    media = check_local_media(TableCheck(valid=submit, invalid=[]), base_dir=base_dir)
    missing = {p.id for p in media.invalid}
    kept = [(r, d) for r, d in zip(check.valid, decisions, strict=True) if r.id not in missing]
    invalid = sorted([*check.invalid, *media.invalid], key=lambda p: p.row)
    estimate = None
    if make_client is not None:
        estimate, _ = await price_rows(make_client, model_id, list(media.valid), base_dir)
    return TablePlan(
        rows=[r for r, _ in kept],
        decisions=[d for _, d in kept],
        invalid=invalid,
        estimate=estimate,
    )


def _read_output(
    output_uri: str, storage_options: dict[str, Any] | None
) -> tuple[dict[str, LedgerEntry], set[str]]:
    if is_local_uri(output_uri) and not os.path.exists(output_uri.removeprefix("file://")):
        return {}, set()  # OutputStore would create the folder; a plan writes nothing
    return output_state(OutputStore(output_uri, storage_options))


__all__ = [
    "TablePlan",
    "check_submit_limit",
    "describe_plan",
    "ids_to_submit",
    "output_state",
    "plan_rows",
    "plan_table",
]
