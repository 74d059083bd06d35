"""The per-row ledger: money is never spent twice by accident.

RunComfy has no idempotency key, so the only protection against paying twice for one row is a
record, written *before* each POST, of what was sent and what came back. It lives under the
output location, one small JSON file per row:

```
<output_uri>/_ledger/<id>.json
```

One file per row means no shared file, so concurrent tasks (or processes) never conflict.
Every write goes through `OutputStore.write_json`, which is atomic. On a local disk the writes
that money depends on (before a POST, the request id after it, and anything written before a
request id is known) are also synced to disk; a later state of a request whose id is already
on disk is not: losing it to a power cut only means the next run looks at that request again
(it never submits it again), and it saves half of a row's disk syncs.

`plan_row` reads a row's entry and decides what a (re-)run may do with it; it is a pure
function so every rule can be tested and explained. A submitted row's entry keeps enough of
its record (`submitted_fields`) for `outcome_from_entry` to finish the row without the table.

```python
ledger = Ledger(OutputStore("s3://bkt/out"))
decision = plan_row(ledger.get("alice"), row.fingerprint,
                    output_exists=store.exists("alice.mp4"),
                    resubmit_unknown=False, retry_failed=False)
if decision.plan is RowPlan.SUBMIT:
    ledger.mark_submitting("alice", row.fingerprint, flow_run_id)
    answer = await client.submit(payload)          # only now is money at stake
    ledger.mark_submitted("alice", answer.request_id)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefect_runcomfy.engine.inputs.ids import safe_name
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.hints import RESUBMIT_UNKNOWN, RETRY_FAILED
from prefect_runcomfy.engine.record.outcome import RowOutcome, utc_now
from prefect_runcomfy.engine.record.status import LedgerState, RowPlan

LEDGER_DIR = "_ledger"
"""The folder under the output location that holds one `<id>.json` per row."""

_FORGET = object()
"""A field value that removes the field from the entry."""

_NOT_READ = object()
"""`Ledger.hold` without an entry: the row's entry was not read."""

_ALWAYS_SYNCED = frozenset(
    {LedgerState.SUBMITTING, LedgerState.SUBMITTED, LedgerState.OUTCOME_UNKNOWN}
)

HISTORY_LIMIT = 50
"""How many earlier states an entry keeps (the oldest are dropped)."""


def _iso(value: str | datetime | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


class LedgerEntry(BaseModel):
    """One row's record in the ledger (`_ledger/<id>.json`).

    Unknown fields are kept (`extra="allow"`), so newer versions can add to the record without
    older ones losing it.
    """

    model_config = ConfigDict(extra="allow", use_enum_values=False)

    id: str
    state: LedgerState
    payload_sha256: str | None = None
    request_id: str | None = None
    submitted_at: str | None = None
    updated_at: str = Field(default_factory=utc_now)
    attempts: int = Field(default=0, description="How many POSTs were ever started for this row.")
    error: str | None = None
    flow_run_id: str | None = None
    claim: int = Field(
        default=0,
        description="The claim generation (`engine.claims.claim`) of the run that last acted on the row.",
    )
    video_uris: list[str] = Field(default_factory=list)
    metadata_uri: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (what is written to the ledger file)."""
        return self.model_dump(mode="json")


def submitted_fields(outcome: RowOutcome) -> dict[str, Any]:
    """What the ledger keeps of a submitted row, so collecting it needs no table."""
    return {
        "request_id": outcome.request_id,
        "submitted_at": outcome.submitted_at,
        "inputs": outcome.sent,
        "row": outcome.row,
        "friendly_inputs": dict(outcome.inputs),
        "extras": {k: _jsonable(v) for k, v in outcome.extras.items()},
    }


def outcome_from_entry(entry: LedgerEntry, **facts: Any) -> RowOutcome:
    """The record of a row known only from its ledger entry (what `collect` works from), with
    `facts` set besides."""
    extra = entry.model_extra or {}
    return RowOutcome(
        id=entry.id,
        row=extra.get("row"),
        inputs=extra.get("friendly_inputs") or {},
        extras=extra.get("extras") or {},
        request_id=entry.request_id,
        submitted_at=entry.submitted_at,
        attempts=entry.attempts,
        sent=extra.get("inputs"),
        **facts,
    )


def _jsonable(value: Any) -> Any:
    """`value` if JSON can hold it, else its text (a user's column may hold any object)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class RowDecision:
    """`plan_row`'s answer: the plan, a reason in words, and whether the payload changed.

    A run's plan adds what a row to submit is estimated to cost (`estimated_cost_usd`, from
    the catalog's price; None when unknown or not submitted)."""

    plan: RowPlan
    reason: str
    payload_changed: bool = False
    estimated_cost_usd: float | None = None


_FAILED_STATES = frozenset({LedgerState.FAILED, LedgerState.CANCELLED, LedgerState.INVALID})
_MAY_BE_RUNNING = frozenset(
    {
        LedgerState.SUBMITTED,
        LedgerState.TIMED_OUT,
        LedgerState.SUBMITTING,
        LedgerState.OUTCOME_UNKNOWN,
        LedgerState.OUTPUT_REFUSED,
    }
)


def plan_row(
    entry: LedgerEntry | None,
    payload_sha256: str,
    *,
    output_exists: bool,
    resubmit_unknown: bool,
    retry_failed: bool,
) -> RowDecision:
    """Decide what a run may do with a row, from its ledger entry. Pure: no I/O.

    Every rule exists because a POST costs money and RunComfy cannot deduplicate them:

    1. No entry → `SUBMIT`: the row was never sent.
    2. `stored`, same payload, output present → `SKIP_STORED`: it is paid for and delivered.
    3. `stored`, same payload, output gone → `RESUME` when the request id is known (collecting
       again is free while RunComfy keeps the result), else `SUBMIT`.
    4. `stored` with a different payload → `SUBMIT`: the user changed the row, so the stored
       video answers an older question; paying again is what they asked for.
    5. `failed` with `billed=False` (RunComfy refused the submit outright: bad token, no
       balance, rejected input; no job was created), or `cancelled` with `billed=False` (the
       job was cancelled while queued: by a stop, at `max_wait_s`, or by hand) → `SUBMIT`:
       nothing was paid.
       Other `failed`/`cancelled`/`invalid` → `SUBMIT` when `retry_failed` or the payload changed
       (the user fixed the row), else `KEEP_FAILED`: the same input would most likely fail
       (and be billed) again, so a retry is only made on request.
    6. `submitted`/`timed_out` with a request id → `RESUME`: the job exists and may still
       finish; submitting again would pay twice. `output_refused` (the job succeeded, its
       output's host, type or size was refused) → `RESUME` too, whatever `retry_failed` says:
       it is paid for, and collecting it again stores it once the output is allowed. If the payload changed meanwhile the old job
       is still collected (it is paid for) and `payload_changed=True` is flagged so the caller
       can warn; the next run then sees `stored` with another payload and submits (rule 4).
    7. `submitting` without a request id, or `outcome_unknown` → `UNKNOWN`: a POST may have
       reached RunComfy and be running (and billed) with no way to find it; only
       `resubmit_unknown=True` turns this into `SUBMIT`, because that may pay twice.
       (With a request id the job is known, so `RESUME`.)
    8. A state this version does not know → `UNKNOWN` (or `SUBMIT` with `resubmit_unknown`):
       when in doubt, do not spend.

    Example:
        ```python
        plan_row(None, "ab12", output_exists=False, resubmit_unknown=False,
                 retry_failed=False).plan   # RowPlan.SUBMIT
        ```
    """
    if entry is None:
        return RowDecision(RowPlan.SUBMIT, "new row: never submitted")
    changed = entry.payload_sha256 is not None and entry.payload_sha256 != payload_sha256
    if entry.state == LedgerState.STORED:
        return _plan_stored(entry, changed, output_exists)
    if entry.state in _FAILED_STATES:
        return _plan_failed(entry, changed, retry_failed)
    if entry.state in _MAY_BE_RUNNING and entry.request_id:
        note = " (the row changed since; collecting the job already paid for)" if changed else ""
        return RowDecision(
            RowPlan.RESUME,
            f"{entry.state.value} as request {entry.request_id}; waiting for it again{note}",
            payload_changed=changed,
        )
    return _plan_unknown(entry, changed, resubmit_unknown)


def _plan_stored(entry: LedgerEntry, changed: bool, output_exists: bool) -> RowDecision:
    """Rules 2-4: a stored row."""
    if changed:
        return RowDecision(
            RowPlan.SUBMIT,
            "the row changed since its video was stored; generating it again",
            payload_changed=True,
        )
    if output_exists:
        return RowDecision(RowPlan.SKIP_STORED, "already stored")
    if entry.request_id:
        return RowDecision(
            RowPlan.RESUME, f"stored output is missing; collecting request {entry.request_id} again"
        )
    return RowDecision(RowPlan.SUBMIT, "stored output is missing and no request id is recorded")


def _plan_failed(entry: LedgerEntry, changed: bool, retry_failed: bool) -> RowDecision:
    """Rule 5: a row that failed, was cancelled or was refused."""
    state = entry.state.value
    if (entry.model_extra or {}).get("billed") is False:
        what = "cancelled" if entry.state is LedgerState.CANCELLED else "refused by RunComfy"
        return RowDecision(
            RowPlan.SUBMIT,
            f"previously {what} before any job ran ({entry.error}); "
            "nothing was paid, so submitting again",
            payload_changed=changed,
        )
    if retry_failed:
        return RowDecision(
            RowPlan.SUBMIT,
            f"previously {state}; retrying because retry_failed=True",
            payload_changed=changed,
        )
    if changed:
        return RowDecision(
            RowPlan.SUBMIT,
            f"previously {state}; the row changed since, so submitting the new input",
            payload_changed=True,
        )
    detail = f": {entry.error}" if entry.error else ""
    return RowDecision(
        RowPlan.KEEP_FAILED,
        f"previously {state}{detail} (pass {RETRY_FAILED} to pay for another try)",
    )


def _plan_unknown(entry: LedgerEntry, changed: bool, resubmit_unknown: bool) -> RowDecision:
    """Rules 7-8: a POST may have been sent and nobody knows its request id."""
    state = entry.state.value
    if resubmit_unknown:
        return RowDecision(
            RowPlan.SUBMIT,
            f"{state} without a request id; submitting again because resubmit_unknown=True",
            payload_changed=changed,
        )
    return RowDecision(
        RowPlan.UNKNOWN,
        f"{state} without a request id: an earlier submit may be running and billed; "
        f"check the RunComfy dashboard, or pass {RESUBMIT_UNKNOWN} to submit again",
        payload_changed=changed,
    )


class Ledger:
    """Read and write the per-row ledger under an `OutputStore`.

    Not safe for two writers of the *same* row at once: a run writes a row's entry only while
    it holds the row's claim (`engine.claims.claim`), so two runs never do; different rows never
    touch the same file.

    Example:
        ```python
        ledger = Ledger(OutputStore("out"))
        ledger.mark_submitting("alice", "ab12...", flow_run_id="...")
        ledger.mark_submitted("alice", "req-123")
        ledger.mark("alice", LedgerState.STORED, video_uris=["out/alice.mp4"])
        ledger.get("alice").state   # LedgerState.STORED
        ```
    """

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        # What this ledger last wrote for each row: a transition starts from it instead of
        # reading the file it just wrote back (one GET less per transition on object stores).
        # Safe because one task owns a row while it runs.
        self._written: dict[str, LedgerEntry | None] = {}
        # The claim generation this run holds each row under (`engine.claims.claim`): every write
        # while it holds the row records it, so others can tell the row is at rest under it.
        self._held: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Ledger({self.store.uri(LEDGER_DIR)!r})"

    @staticmethod
    def name_for(id: str) -> str:
        """The ledger file of row `id`, relative to the output root (`_ledger/<id>.json`)."""
        return f"{LEDGER_DIR}/{safe_name(id)}.json"

    def uri(self, id: str) -> str:
        """The full URI of row `id`'s ledger file."""
        return self.store.uri(self.name_for(id))

    def _parse(self, id: str, data: bytes) -> LedgerEntry:
        raw: Any = None
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError(f"holds {type(raw).__name__}, not an object")
            # The file name is the row's identity; an `id` inside that disagrees is ignored.
            return LedgerEntry.model_validate({**raw, "id": id})
        except (ValueError, ValidationError) as exc:
            # An unreadable record may stand for a POST that was sent; treating it as unknown
            # is the only reading that cannot pay twice.
            rid = raw.get("request_id") if isinstance(raw, dict) else None
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return LedgerEntry.model_validate(
                {
                    "id": id,
                    "state": LedgerState.OUTCOME_UNKNOWN,
                    "request_id": rid if isinstance(rid, str) and rid else None,
                    "error": f"ledger record {self.uri(id)} could not be read ({problem})",
                    "unreadable_record": data.decode("utf-8", "replace")[:2000],
                }
            )

    def get(self, id: str) -> LedgerEntry | None:
        """Row `id`'s entry, or None if the row was never recorded.

        A record that cannot be read comes back as `outcome_unknown` (never as "absent"), so a
        damaged ledger can never cause a second payment.
        """
        data = self.store.read_bytes(self.name_for(id))
        return None if data is None else self._parse(id, data)

    def get_many(self, ids: list[str]) -> dict[str, LedgerEntry]:
        """The entries of `ids` that exist, keyed by id: one concurrent read (`get`'s rules)."""
        names = {self.name_for(i): i for i in ids}
        raw = self.store.read_many_bytes(names)
        return {names[name]: self._parse(names[name], data) for name, data in raw.items()}

    def load_all(self) -> dict[str, LedgerEntry]:
        """Every entry, keyed by id: one listing, then one concurrent read of all files."""
        names = [
            n
            for n in self.store.list(f"{LEDGER_DIR}/")
            if n.endswith(".json") and n.count("/") == 1
        ]
        raw = self.store.read_many_bytes(names)
        entries: dict[str, LedgerEntry] = {}
        for name, data in raw.items():
            id = name[len(LEDGER_DIR) + 1 : -len(".json")]
            entries[id] = self._parse(id, data)
        return entries

    def hold(self, id: str, generation: int, entry: Any = _NOT_READ) -> None:
        """Record that this run holds row `id` under claim `generation`: its next writes of
        the row say so (`claim`). `entry`: the row's entry (or None: no entry) as just read,
        the base of the next write (saves reading it again)."""
        self._held[id] = generation
        if entry is not _NOT_READ:
            self._written[id] = entry

    def held(self, id: str) -> int | None:
        """The claim generation this run holds row `id` under, if it holds it."""
        return self._held.get(id)

    def _latest(self, id: str) -> LedgerEntry | None:
        if id in self._written:
            return self._written[id]
        return self.get(id)

    def _write(self, entry: LedgerEntry, *, durable: bool = True) -> LedgerEntry:
        self.store.write_json(self.name_for(entry.id), entry.to_json(), durable=durable)
        if entry.state in (LedgerState.SUBMITTING, LedgerState.SUBMITTED):
            self._written[entry.id] = entry
        else:
            # A row at rest is not moved again by this run: forget it (about 3 KiB a row,
            # which adds up over a 100,000-row table).
            self._written.pop(entry.id, None)
            self._held.pop(entry.id, None)
        return entry

    def _transition(
        self,
        previous: LedgerEntry | None,
        id: str,
        state: LedgerState,
        fields: dict[str, Any],
    ) -> LedgerEntry:
        now = utc_now()
        if previous is None:
            data: dict[str, Any] = {"id": id}
        else:
            data = previous.model_dump(mode="json")
            step = {
                "state": previous.state.value,
                "at": previous.updated_at,
                "request_id": previous.request_id,
                "error": previous.error,
            }
            data["history"] = [*previous.history, step][-HISTORY_LIMIT:]
        data.update({k: _iso(v) if isinstance(v, datetime) else v for k, v in fields.items()})
        for key in [k for k, v in fields.items() if v is _FORGET]:
            del data[key]
        if id in self._held:
            data["claim"] = self._held[id]
        data["id"] = id
        data["state"] = LedgerState(state)
        data["updated_at"] = now
        # Synced when money depends on it (see the module docstring): the request id is not
        # on disk yet, or this write is about the POST itself.
        durable = state in _ALWAYS_SYNCED or previous is None or not previous.request_id
        return self._write(LedgerEntry.model_validate(data), durable=durable)

    def mark_submitting(
        self,
        id: str,
        payload_sha256: str,
        flow_run_id: str | None = None,
    ) -> LedgerEntry:
        """Record that a POST is about to be sent; call it *before* the POST, and only POST if
        it returned (the write is durable when it returns).

        Increments `attempts` and clears the previous request id and error (they stay in
        `history`).
        """
        previous = self._latest(id)
        attempts = (previous.attempts if previous else 0) + 1
        return self._transition(
            previous,
            id,
            LedgerState.SUBMITTING,
            {
                "payload_sha256": payload_sha256,
                "flow_run_id": flow_run_id,
                "attempts": attempts,
                "request_id": None,
                "submitted_at": None,
                "error": None,
                "video_uris": [],
                "metadata_uri": None,
                # A refusal's "nothing was paid" belongs to that attempt, not to this one.
                "billed": _FORGET,
            },
        )

    def mark_submitted(
        self,
        id: str,
        request_id: str,
        submitted_at: str | datetime | None = None,
    ) -> LedgerEntry:
        """Record RunComfy's request id for the POST just answered (`submitted_at`: now if omitted)."""
        return self._transition(
            self._latest(id),
            id,
            LedgerState.SUBMITTED,
            {"request_id": request_id, "submitted_at": _iso(submitted_at) or utc_now()},
        )

    def mark(self, id: str, state: LedgerState | str, **fields: Any) -> LedgerEntry:
        """Move row `id` to `state`, setting any other fields given; creates the entry if needed.

        Example:
            ```python
            ledger.mark("alice", LedgerState.FAILED, error="face not found")
            ledger.mark("bob", "stored", video_uris=[uri], metadata_uri=meta)
            ```
        """
        return self._transition(self._latest(id), id, LedgerState(state), fields)


__all__ = [
    "HISTORY_LIMIT",
    "LEDGER_DIR",
    "Ledger",
    "LedgerEntry",
    "LedgerState",
    "RowDecision",
    "RowPlan",
    "outcome_from_entry",
    "plan_row",
    "submitted_fields",
]
