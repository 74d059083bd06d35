"""Claims on a real local folder and moto's S3: who may act on a row, and when a holder let go."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_runcomfy.engine.claims.claim import (
    LEASE_ENV,
    OWNERS_DIR,
    Held,
    OwnerLease,
    RowClaims,
    Taken,
    lease_seconds,
    open_claims,
)
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.status import LedgerState
from prefect_runcomfy.exceptions import ConfigurationError


def _claims(store: OutputStore, **lease: Any) -> RowClaims:
    owner = OwnerLease(store, flow_run_id=None, **lease)
    owner.renew()
    return RowClaims(store, owner)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStore:
    if request.param == "local":
        return OutputStore(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return OutputStore(f"s3://{bucket}/out", server.storage_options)


def test_the_first_run_takes_a_row_and_a_second_live_run_is_told_who_holds_it(
    store: OutputStore,
) -> None:
    first, second = _claims(store), _claims(store)
    assert first.take("r1", 0, "p") == Taken(1)
    held = second.take("r1", 0, "p")
    assert isinstance(held, Held)
    assert held.claim.owner == first.lease.record.token and held.claim.payload_sha256 == "p"
    assert "process" in held.claim.describe()
    # The ledger says claim 1 (in flight): a later snapshot is held too, not given claim 2.
    in_flight = lambda _id: (LedgerState.SUBMITTED, 1)  # noqa: E731
    assert isinstance(second.take("r1", 1, "p", in_flight), Held)


def test_a_row_at_rest_under_its_claim_is_free_for_the_next_generation(
    store: OutputStore,
) -> None:
    first, second = _claims(store), _claims(store)
    assert first.take("r1", 0, "p") == Taken(1)
    # Before the holder wrote anything under its claim, the row is still its own.
    not_written = lambda _id: (LedgerState.FAILED, 0)  # noqa: E731
    assert isinstance(second.take("r1", 0, "p", not_written), Held)
    at_rest = lambda _id: (LedgerState.FAILED, 1)  # noqa: E731
    assert second.take("r1", 1, "p", at_rest) == Taken(
        2, at_rest_under=1
    )  # its live holder finished with it


def test_an_ended_or_lapsed_lease_lets_go_and_a_given_back_claim_is_free(
    store: OutputStore,
) -> None:
    first, second = _claims(store, lease_s=2.0), _claims(store)
    assert first.take("r1", 0, "p") == Taken(1)
    assert first.take("r2", 0, "p") == Taken(1)
    first.lease.stop()  # ended: every claim of the run is free at once
    assert second.take("r1", 1, "p") == Taken(2)
    first.release("r2", 1)
    assert second.take("r2", 0, "p") == Taken(1)
    third = _claims(store, lease_s=2.0)
    third.lease.record = third.lease.record.model_copy(update={"host": "elsewhere"})
    third.lease.renew()
    assert third.take("r3", 0, "p") == Taken(1)
    assert isinstance(second.take("r3", 0, "p"), Held)
    time.sleep(2.2)  # its lease (never renewed: no thread) lapses
    assert second.take("r3", 0, "p") == Taken(2)


def test_a_claim_of_a_dead_process_on_this_host_is_free_at_once(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _claims(store)
    dead.lease.record = dead.lease.record.model_copy(update={"pid": gone.pid})
    dead.lease.renew()
    assert dead.take("r1", 0, "p") == Taken(1)
    assert _claims(store).take("r1", 0, "p") == Taken(2)


def test_a_claim_whose_prefect_flow_run_is_final_is_free(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    holder = OwnerLease(store, flow_run_id="flow-run-1")
    holder.record = holder.record.model_copy(update={"host": "elsewhere"})
    holder.renew()
    assert RowClaims(store, holder).take("r1", 0, "p") == Taken(1)
    asked: list[str] = []

    def over(flow_run_id: str) -> bool:
        asked.append(flow_run_id)
        return True

    me = _claims(store)
    assert RowClaims(store, me.lease, over).take("r1", 0, "p") == Taken(2)
    assert asked == ["flow-run-1"]


def test_the_lease_is_renewed_from_a_thread_and_marked_ended(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    lease = OwnerLease(store, flow_run_id="f", lease_s=2.0)
    lease.start()
    try:
        first = store.read_json(lease.name)
        time.sleep(1.2)
        assert store.read_json(lease.name) != first, "renewed every quarter lease"
        assert lease.fresh()
    finally:
        lease.stop()
    record = store.read_json(lease.name)
    assert record and record["ended_at"] and record["flow_run_id"] == "f"
    assert store.list(f"{OWNERS_DIR}/") == [lease.name]


def test_the_lease_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEASE_ENV, "7.5")
    assert lease_seconds() == 7.5
    monkeypatch.setenv(LEASE_ENV, "0.1")
    assert lease_seconds() == 2.0
    monkeypatch.setenv(LEASE_ENV, "soon")
    assert lease_seconds() == 60.0


def test_single_writer_takes_no_claims_and_a_claimable_store_gets_them(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    assert open_claims(store, flow_run_id=None, single_writer=True) is None
    claims = open_claims(store, flow_run_id=None, single_writer=False)
    assert isinstance(claims, RowClaims)
    assert not store.list("_claims/"), "the probe removed its file"


def test_an_unclaimable_store_is_refused_naming_the_way_out(tmp_path: Path) -> None:
    class NoExclusive(OutputStore):
        def create_exclusive(self, name: str, data: bytes) -> bool:
            self.write_bytes(name, data)
            return True

    with pytest.raises(ConfigurationError, match="single_writer=True") as caught:
        open_claims(NoExclusive(str(tmp_path / "o")), flow_run_id=None, single_writer=False)
    assert "created twice" in str(caught.value)


def test_a_holder_learns_before_its_post_that_another_run_took_the_row_over(
    store: OutputStore,
) -> None:
    first, second = _claims(store), _claims(store)
    assert first.take("r1", 0, "p") == Taken(1)
    assert not first.superseded("r1", 1)
    first.lease.stop()  # judged gone (here: ended) while it still meant to POST
    assert second.take("r1", 0, "p") == Taken(2)
    assert first.superseded("r1", 1)
