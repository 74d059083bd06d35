"""The per-row ledger: transitions, durability, corrupt records, `plan_row`'s every rule."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from prefect_runcomfy.engine.inputs.table import payload_fingerprint
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.plan.ledger import (
    HISTORY_LIMIT,
    Ledger,
    LedgerEntry,
    LedgerState,
    RowPlan,
    plan_row,
)
from prefect_runcomfy.exceptions import InvalidInputError
from prefect_runcomfy.models import INFINITE_TALK

OLD = "a" * 64
NEW = "b" * 64


@pytest.fixture
def store() -> OutputStore:
    return OutputStore(f"memory://ledger-{uuid.uuid4().hex}/out")


@pytest.fixture
def ledger(store: OutputStore) -> Ledger:
    return Ledger(store)


def test_payload_fingerprint_is_canonical() -> None:
    a = {"241_positive_prompt": "hi", "270_value": 125, "nested": {"y": 1, "x": [1, 2]}}
    b = {"nested": {"x": [1, 2], "y": 1}, "270_value": 125, "241_positive_prompt": "hi"}
    assert payload_fingerprint(a) == payload_fingerprint(b)
    assert payload_fingerprint(a) != payload_fingerprint({**a, "270_value": 250})
    assert payload_fingerprint({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert len(payload_fingerprint({})) == 64
    # Non-ASCII text is hashed as JSON escapes, so the value never depends on an encoding.
    assert payload_fingerprint({"p": "é"}) == hashlib.sha256(b'{"p":"\\u00e9"}').hexdigest()


def test_a_ledger_remembers_only_rows_still_in_flight(ledger: Ledger, store: OutputStore) -> None:
    # A 100,000-row run must not keep every row's entry in memory once the row is at rest.
    ledger.mark_submitting("alice", OLD)
    ledger.mark_submitted("alice", "req-1", dt.datetime.now(dt.UTC))
    assert set(ledger._written) == {"alice"}
    entry = ledger.mark("alice", LedgerState.STORED, video_uris=["alice.mp4"])
    assert ledger._written == {}
    # still correct afterwards: the next transition reads the file
    assert ledger.get("alice") == entry
    again = ledger.mark("alice", LedgerState.FAILED, error="x")
    assert again.request_id == "req-1" and again.attempts == 1


def test_transitions_are_recorded_in_order(ledger: Ledger, store: OutputStore) -> None:
    assert ledger.get("alice") is None

    entry = ledger.mark_submitting("alice", OLD, flow_run_id="flow-1")
    assert entry.state is LedgerState.SUBMITTING
    assert entry.attempts == 1
    assert entry.request_id is None
    # Durable before the POST: a fresh reader (another process) already sees it.
    fresh = Ledger(OutputStore(store.uri(""))).get("alice")
    assert fresh is not None
    assert fresh.state is LedgerState.SUBMITTING
    assert fresh.payload_sha256 == OLD
    assert fresh.flow_run_id == "flow-1"
    assert store.exists("_ledger/alice.json")

    submitted_at = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    entry = ledger.mark_submitted("alice", "req-1", submitted_at)
    assert entry.state is LedgerState.SUBMITTED
    assert entry.request_id == "req-1"
    assert entry.submitted_at == "2026-03-04T05:06:07.000+00:00"
    assert entry.attempts == 1
    assert entry.payload_sha256 == OLD

    entry = ledger.mark(
        "alice",
        LedgerState.STORED,
        video_uris=[store.uri("alice.mp4")],
        metadata_uri=store.uri("alice.json"),
        cost=0.42,  # extra fields are kept
    )
    got = ledger.get("alice")
    assert got == entry
    assert got.state is LedgerState.STORED
    assert got.video_uris == [store.uri("alice.mp4")]
    assert got.metadata_uri == store.uri("alice.json")
    assert got.model_extra == {"cost": 0.42}
    assert [h["state"] for h in got.history] == ["submitting", "submitted"]
    assert got.history[1]["request_id"] == "req-1"
    updated = dt.datetime.fromisoformat(got.updated_at)
    assert updated.tzinfo is not None
    assert updated.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - updated).total_seconds()) < 60


def test_a_new_submit_counts_attempts_and_clears_the_old_request(ledger: Ledger) -> None:
    ledger.mark_submitting("bob", OLD)
    ledger.mark_submitted("bob", "req-1")
    ledger.mark("bob", "failed", error="face not found")
    entry = ledger.mark_submitting("bob", NEW, flow_run_id="flow-2")
    assert entry.attempts == 2
    assert entry.request_id is None
    assert entry.error is None
    assert entry.submitted_at is None
    assert entry.payload_sha256 == NEW
    assert [h["state"] for h in entry.history] == ["submitting", "submitted", "failed"]
    assert entry.history[-1]["error"] == "face not found"
    assert entry.history[-1]["request_id"] == "req-1"
    # Marks other than mark_submitting never count as a POST.
    ledger.mark("bob", LedgerState.OUTCOME_UNKNOWN, error="connection dropped")
    assert ledger.get("bob").attempts == 2


def test_mark_creates_an_entry(ledger: Ledger) -> None:
    entry = ledger.mark("carol", LedgerState.INVALID, error="audio: is required but missing")
    assert entry.state is LedgerState.INVALID
    assert entry.attempts == 0
    assert entry.history == []
    assert ledger.get("carol").error == "audio: is required but missing"
    with pytest.raises(ValueError, match="not-a-state"):
        ledger.mark("carol", "not-a-state")


def test_history_is_bounded(ledger: Ledger) -> None:
    ledger.mark_submitting("dave", OLD)
    for i in range(HISTORY_LIMIT + 10):
        ledger.mark("dave", LedgerState.TIMED_OUT, request_id=f"req-{i}")
    entry = ledger.get("dave")
    assert len(entry.history) == HISTORY_LIMIT
    assert entry.history[-1]["request_id"] == f"req-{HISTORY_LIMIT + 8}"
    assert entry.request_id == f"req-{HISTORY_LIMIT + 9}"


def test_ids_must_be_safe_file_names(ledger: Ledger) -> None:
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(InvalidInputError):
            ledger.mark_submitting(bad, OLD)
        with pytest.raises(InvalidInputError):
            ledger.get(bad)


def test_an_unreadable_record_counts_as_unknown(ledger: Ledger, store: OutputStore) -> None:
    store.write_bytes("_ledger/eve.json", b'{"id": "eve", "state": "submitt')  # truncated
    store.write_json("_ledger/frank.json", {"id": "frank", "state": "from-the-future"})
    store.write_json("_ledger/gina.json", {"state": "weird", "request_id": "req-9"})
    for row in ("eve", "frank"):
        entry = ledger.get(row)
        assert entry.state is LedgerState.OUTCOME_UNKNOWN
        assert "could not be read" in entry.error
        decision = plan_row(
            entry, OLD, output_exists=False, resubmit_unknown=False, retry_failed=False
        )
        assert decision.plan is RowPlan.UNKNOWN
    # A recoverable request id is kept, so the job can still be collected.
    assert ledger.get("gina").request_id == "req-9"
    assert set(ledger.load_all()) == {"eve", "frank", "gina"}


def test_concurrent_rows_do_not_conflict(tmp_path: Path) -> None:
    ledger = Ledger(OutputStore(str(tmp_path / "out")))

    def run(i: int) -> None:
        ledger.mark_submitting(f"row-{i}", OLD)
        ledger.mark_submitted(f"row-{i}", f"req-{i}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(run, range(64)))
    entries = ledger.load_all()
    assert len(entries) == 64
    assert all(e.state is LedgerState.SUBMITTED for e in entries.values())
    assert entries["row-7"].request_id == "req-7"


def test_load_all_200_entries_on_s3(s3_server: Any, s3_bucket: str) -> None:
    store = OutputStore(f"s3://{s3_bucket}/batch", s3_server.storage_options)
    ledger = Ledger(store)
    states = list(LedgerState)

    def record(i: int) -> None:
        row = LedgerEntry(
            id=f"row-{i:03d}", state=states[i % len(states)], request_id=f"req-{i}", attempts=1
        )
        store.write_json(ledger.name_for(row.id), row.to_json())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range(200)))
    ledger.mark("row-000", LedgerState.STORED)  # and one through the public API
    store.write_json("_ledger/nested/ignored.json", {"id": "x", "state": "stored"})
    store.write_json("row-000.json", {"not": "a ledger entry"})

    started = time.monotonic()
    entries = Ledger(OutputStore(f"s3://{s3_bucket}/batch", s3_server.storage_options)).load_all()
    elapsed = time.monotonic() - started
    assert len(entries) == 200
    assert sorted(entries) == [f"row-{i:03d}" for i in range(200)]
    assert entries["row-013"].state is states[13 % len(states)]
    assert entries["row-000"].state is LedgerState.STORED
    assert entries["row-000"].history[0]["state"] == states[0].value
    assert entries["row-199"].request_id == "req-199"
    assert all(isinstance(e, LedgerEntry) for e in entries.values())
    assert elapsed < 10, f"load_all took {elapsed:.1f}s: reads are not concurrent"


def test_load_all_on_an_empty_location(ledger: Ledger) -> None:
    assert ledger.load_all() == {}


# --- plan_row: every rule ------------------------------------------------------------------------


def entry(state: str, *, rid: str | None = None, sha: str | None = OLD, **kw: Any) -> LedgerEntry:
    return LedgerEntry(id="row", state=LedgerState(state), request_id=rid, payload_sha256=sha, **kw)


P = RowPlan
CASES: list[tuple[str, LedgerEntry | None, str, dict[str, bool], RowPlan, bool]] = [
    # (why, entry, payload, flags, plan, payload_changed)
    ("never submitted", None, OLD, {}, P.SUBMIT, False),
    ("stored, output present", entry("stored", rid="r"), OLD, {"out": True}, P.SKIP_STORED, False),
    (
        "stored, output present, even with every retry flag",
        entry("stored", rid="r"),
        OLD,
        {"out": True, "unknown": True, "failed": True},
        P.SKIP_STORED,
        False,
    ),
    ("stored, output gone, request known", entry("stored", rid="r"), OLD, {}, P.RESUME, False),
    ("stored, output gone, no request id", entry("stored"), OLD, {}, P.SUBMIT, False),
    ("stored, row changed", entry("stored", rid="r"), NEW, {"out": True}, P.SUBMIT, True),
    ("failed, no retry", entry("failed", rid="r"), OLD, {}, P.KEEP_FAILED, False),
    ("cancelled, no retry", entry("cancelled", rid="r"), OLD, {}, P.KEEP_FAILED, False),
    ("invalid, no retry", entry("invalid"), OLD, {}, P.KEEP_FAILED, False),
    ("failed, retry_failed", entry("failed", rid="r"), OLD, {"failed": True}, P.SUBMIT, False),
    ("cancelled, retry_failed", entry("cancelled"), OLD, {"failed": True}, P.SUBMIT, False),
    ("invalid, retry_failed", entry("invalid"), OLD, {"failed": True}, P.SUBMIT, False),
    ("failed, row fixed", entry("failed", rid="r"), NEW, {}, P.SUBMIT, True),
    ("invalid, row fixed", entry("invalid"), NEW, {}, P.SUBMIT, True),
    ("failed, resubmit_unknown is not retry", entry("failed"), OLD, {"unknown": True}, P.KEEP_FAILED, False),
    ("submitted", entry("submitted", rid="r"), OLD, {}, P.RESUME, False),
    ("submitted, with retry flags", entry("submitted", rid="r"), OLD, {"unknown": True, "failed": True}, P.RESUME, False),
    ("submitted, row changed in flight", entry("submitted", rid="r"), NEW, {}, P.RESUME, True),
    ("timed out, request known", entry("timed_out", rid="r"), OLD, {}, P.RESUME, False),
    ("timed out, row changed", entry("timed_out", rid="r"), NEW, {}, P.RESUME, True),
    ("submitting, no answer recorded", entry("submitting"), OLD, {}, P.UNKNOWN, False),
    ("submitting, output exists elsewhere", entry("submitting"), OLD, {"out": True}, P.UNKNOWN, False),
    ("submitting, resubmit_unknown", entry("submitting"), OLD, {"unknown": True}, P.SUBMIT, False),
    ("submitting, retry_failed is not enough", entry("submitting"), OLD, {"failed": True}, P.UNKNOWN, False),
    ("submitting, row changed", entry("submitting"), NEW, {}, P.UNKNOWN, True),
    ("outcome unknown", entry("outcome_unknown"), OLD, {}, P.UNKNOWN, False),
    ("outcome unknown, resubmit_unknown", entry("outcome_unknown"), OLD, {"unknown": True}, P.SUBMIT, False),
    ("outcome unknown but request id found", entry("outcome_unknown", rid="r"), OLD, {}, P.RESUME, False),
    ("submitted without request id", entry("submitted"), OLD, {}, P.UNKNOWN, False),
    ("old entry without a fingerprint", entry("stored", rid="r", sha=None), NEW, {"out": True}, P.SKIP_STORED, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "row_entry", "payload", "flags", "plan", "changed"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_plan_row(
    why: str,
    row_entry: LedgerEntry | None,
    payload: str,
    flags: dict[str, bool],
    plan: RowPlan,
    changed: bool,
) -> None:
    decision = plan_row(
        row_entry,
        payload,
        output_exists=flags.get("out", False),
        resubmit_unknown=flags.get("unknown", False),
        retry_failed=flags.get("failed", False),
    )
    assert decision.plan is plan, f"{why}: {decision.reason}"
    assert decision.payload_changed is changed, why
    assert decision.reason
    if plan is RowPlan.RESUME:  # the reason names the request that will be collected
        assert "request r" in decision.reason


def test_plan_reasons_tell_the_user_what_to_do() -> None:
    unknown = plan_row(
        entry("outcome_unknown"),
        OLD,
        output_exists=False,
        resubmit_unknown=False,
        retry_failed=False,
    )
    assert "resubmit_unknown=True" in unknown.reason
    kept = plan_row(
        entry("failed", error="no face"),
        OLD,
        output_exists=False,
        resubmit_unknown=False,
        retry_failed=False,
    )
    assert "retry_failed=True" in kept.reason
    assert "no face" in kept.reason


def test_ledger_round_trip_drives_plan(ledger: Ledger) -> None:
    """The states the tasks write lead to the plans a re-run needs."""
    ledger.mark_submitting("row", OLD)
    flags = {"output_exists": False, "resubmit_unknown": False, "retry_failed": False}
    assert plan_row(ledger.get("row"), OLD, **flags).plan is RowPlan.UNKNOWN
    ledger.mark_submitted("row", "req-1")
    assert plan_row(ledger.get("row"), OLD, **flags).plan is RowPlan.RESUME
    ledger.mark("row", LedgerState.STORED)
    assert plan_row(ledger.get("row"), OLD, **{**flags, "output_exists": True}).plan is (
        RowPlan.SKIP_STORED
    )


def test_describe_plan_counts_each_kind_in_words() -> None:
    from prefect_runcomfy.engine.plan.ledger import RowDecision
    from prefect_runcomfy.engine.plan.planning import describe_plan

    decisions = [
        RowDecision(RowPlan.SUBMIT, "new"),
        RowDecision(RowPlan.SUBMIT, "new"),
        RowDecision(RowPlan.SKIP_STORED, "stored"),
        RowDecision(RowPlan.UNKNOWN, "lost answer"),
    ]
    assert describe_plan(decisions) == (
        "2 to submit, 1 already stored, 1 with an unknown earlier submit (not sent again)"
    )
    assert describe_plan([]) == "no valid rows"


def test_a_refusal_does_not_outlive_the_next_submit(tmp_path: Path) -> None:
    # billed=False says one refused POST created no job; a later, billed attempt that fails
    # must not inherit it, or every run would pay for the row again without retry_failed.
    ledger = Ledger(OutputStore(str(tmp_path)))
    ledger.mark_submitting("row", OLD)
    ledger.mark("row", LedgerState.FAILED, error="no balance", billed=False)
    ledger.mark_submitting("row", OLD)
    ledger.mark_submitted("row", "req-2")
    ledger.mark("row", LedgerState.FAILED, request_id="req-2", error="face not found")
    entry = ledger.get("row")
    assert entry is not None and "billed" not in (entry.model_extra or {})
    decision = plan_row(entry, OLD, output_exists=False, resubmit_unknown=False, retry_failed=False)
    assert decision.plan is RowPlan.KEEP_FAILED, decision.reason


def test_manifests_merge_with_list_columns_read_back_from_parquet(tmp_path: Path) -> None:
    import pandas as pd

    from prefect_runcomfy.engine.outputs.manifest import (
        build_manifest,
        merge_manifests,
        parquet_safe,
    )

    store = OutputStore(str(tmp_path))
    earlier = build_manifest(
        [
            {"id": "one", "status": "succeeded", "video_uris": ["one.mp4"]},
            {"id": "two", "status": "succeeded", "video_uris": ["two-1.mp4", "two-2.mp4"]},
        ],
        INFINITE_TALK,
    )
    store.write_manifest(parquet_safe(earlier))
    now = build_manifest(
        [{"id": "new", "status": "succeeded", "video_uris": ["new.mp4"]}], INFINITE_TALK
    )
    merged = parquet_safe(merge_manifests(store.read_manifest(), now))
    store.write_manifest(merged)
    back = pd.read_parquet(tmp_path / "manifest.parquet").set_index("id")["video_uris"]
    assert list(back["two"]) == ["two-1.mp4", "two-2.mp4"]
    assert list(back["one"]) == ["one.mp4"] and list(back["new"]) == ["new.mp4"]


def test_only_the_writes_money_depends_on_are_synced_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the POST, the request id after it, and anything written while no request id is
    on disk are synced; a later state of a known request is not (losing it to a power cut
    means the request is looked at again, never paid again). The real writes still happen:
    this only records the flag each one was given."""
    synced: list[tuple[str, bool]] = []
    real = OutputStore.write_json

    def write_json(self: OutputStore, name: str, obj: Any, *, durable: bool = True) -> str:
        synced.append((obj["state"], durable))
        return real(self, name, obj, durable=durable)

    monkeypatch.setattr(OutputStore, "write_json", write_json)
    ledger = Ledger(OutputStore(str(tmp_path / "out")))
    ledger.mark_submitting("a", OLD)
    ledger.mark_submitted("a", "req-1")
    ledger.mark("a", LedgerState.STORED, video_uris=["a.mp4"])
    ledger.mark_submitting("b", OLD)
    ledger.mark("b", LedgerState.FAILED, error="refused", billed=False)
    ledger.mark_submitting("c", OLD)
    ledger.mark("c", LedgerState.OUTCOME_UNKNOWN, error="no answer")
    ledger.mark("d", LedgerState.INVALID, error="bad row")
    ledger.mark_submitting("e", OLD)
    ledger.mark_submitted("e", "req-2")
    ledger.mark("e", LedgerState.TIMED_OUT, error="still running")
    ledger.mark("e", LedgerState.FAILED, error="failed on RunComfy")
    assert synced == [
        ("submitting", True),
        ("submitted", True),
        ("stored", False),
        ("submitting", True),
        ("failed", True),
        ("submitting", True),
        ("outcome_unknown", True),
        ("invalid", True),
        ("submitting", True),
        ("submitted", True),
        ("timed_out", False),
        ("failed", False),
    ]
    assert Ledger(OutputStore(str(tmp_path / "out"))).get("a").state is LedgerState.STORED
