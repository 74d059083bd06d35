"""A row's record and its formats: the record is data, imported by every stage and importing
none; each format writes a record and reads it back with the facts it keeps, tolerant of
files written by older versions or by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from prefect_runcomfy.engine.outputs.manifest import (
    build_manifest,
    manifest_row,
    outcome_from_manifest_row,
)
from prefect_runcomfy.engine.outputs.sidecar import sidecar_of, with_sidecar
from prefect_runcomfy.engine.plan.ledger import LedgerEntry, outcome_from_entry, submitted_fields
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile
from prefect_runcomfy.engine.record.status import LedgerState, RowStatus
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.review import read_rows

RECORD_DIR = Path(__file__).resolve().parents[1] / "prefect_runcomfy" / "engine" / "record"


def stored_row() -> RowOutcome:
    video = {"duration_s": 5.0, "width": 480, "height": 720, "fps": 25.0}
    return RowOutcome(
        id="ada",
        row=3,
        inputs={"prompt": "hello", "image": "s3://b/ada.png", "frames": 125},
        extras={"customer": "c-1"},
        request_id="req-1",
        attempts=1,
        queue_seconds=1.5,
        run_seconds=40.0,
        cost_usd=0.075,
        sent={"241_positive_prompt": "hello", "270_value": 125},
        sources={"image": "s3://b/ada.png"},
        metadata_uri="/out/ada.json",
        files=(
            StoredFile(uri="/out/ada.mp4", source_url="u", size=10, sha256="ab", video=video),
            StoredFile(uri="/out/ada-1.mp4", source_url="v", size=11, sha256="cd"),
        ),
    ).ended(RowStatus.SUCCEEDED)


def test_the_record_imports_nothing_else_of_the_engine() -> None:
    for path in RECORD_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("prefect_runcomfy.engine"):
                    assert name.startswith("prefect_runcomfy.engine.record"), (path.name, name)
                assert not name.startswith("prefect_runcomfy.report"), (path.name, name)


def test_a_manifest_row_reads_back_into_the_same_facts() -> None:
    outcome = stored_row()
    record = build_manifest([outcome], INFINITE_TALK).to_dict(orient="records")[0]
    back = outcome_from_manifest_row(record, INFINITE_TALK.input_names)
    assert back.status is RowStatus.SUCCEEDED
    assert (back.id, back.row, back.request_id, back.attempts) == ("ada", 3, "req-1", 1)
    assert back.inputs == {"prompt": "hello", "image": "s3://b/ada.png", "frames": 125}
    assert back.extras == {"customer": "c-1"}
    assert back.video_uris == ["/out/ada.mp4", "/out/ada-1.mp4"]
    assert back.files[0].video == {"duration_s": 5.0, "width": 480, "height": 720}
    assert manifest_row(back)["size_bytes"] == 10


def test_a_manifest_row_of_odd_values_reads_as_much_as_it_says() -> None:
    back = outcome_from_manifest_row(
        {
            "id": 7.0,
            "status": "<b>done</b>",
            "error": 404,
            "row": "not a row",
            "attempts": None,
            "queue_seconds": "1.5",
            "video_uris": '["/o/a.mp4", "/o/b.mp4"]',
        },
        INFINITE_TALK.input_names,
    )
    assert (back.id, back.status, back.error, back.row, back.attempts) == (
        "7",
        None,
        "404",
        None,
        0,
    )
    assert back.queue_seconds == 1.5
    assert back.video_uris == ["/o/a.mp4", "/o/b.mp4"], "a CSV copy keeps the list as JSON"


def test_a_sidecar_reads_back_into_the_facts_it_keeps() -> None:
    outcome = stored_row()
    back = with_sidecar(RowOutcome(id="ada"), sidecar_of(outcome))
    assert back.status is RowStatus.SUCCEEDED
    assert (back.request_id, back.cost_usd, back.run_seconds) == ("req-1", 0.075, 40.0)
    assert back.sent == outcome.sent and back.sources == outcome.sources
    assert back.files == outcome.files
    failed = outcome.ended(RowStatus.FAILED, "OOM", api_error={"code": 1})
    assert "files" not in sidecar_of(failed) and sidecar_of(failed)["api_error"] == {"code": 1}


@pytest.mark.parametrize(
    ("entry", "kept"),
    [
        ({"video": {"fps": 25}}, StoredFile(uri="", source_url="", size=0, sha256="")),
        (
            {"uri": "/o/a.mp4", "size": 3},
            StoredFile(uri="/o/a.mp4", source_url="", size=3, sha256=""),
        ),
        ("not a file", None),
        ({"uri": "/o/a.mp4", "size": "big"}, None),
    ],
)
def test_a_sidecar_file_entry_keeps_what_it_says(entry: object, kept: StoredFile | None) -> None:
    back = with_sidecar(RowOutcome(id="a"), {"files": [entry]})
    if kept is None:
        assert back.files == ()
    else:
        assert back.files[0].model_copy(update={"video": None}) == kept


def test_a_ledger_entry_keeps_what_collecting_needs() -> None:
    outcome = stored_row().evolve(extras={"customer": "c-1", "when": pd.Timestamp("2026-01-01")})
    entry = LedgerEntry(
        id="ada", state=LedgerState.SUBMITTED, attempts=1, **submitted_fields(outcome)
    )
    back = outcome_from_entry(LedgerEntry.model_validate(entry.to_json()), model_id="m")
    assert (back.id, back.row, back.request_id, back.attempts) == ("ada", 3, "req-1", 1)
    assert back.inputs == outcome.inputs and back.sent == outcome.sent
    assert back.extras == {"customer": "c-1", "when": "2026-01-01 00:00:00"}, "kept as text"
    assert back.model_id == "m"


def test_statuses_are_parsed_and_said_in_words() -> None:
    assert RowStatus.parse("timed_out") is RowStatus.TIMED_OUT
    assert RowStatus.parse("nope") is None and RowStatus.parse(3) is None
    assert [s.label for s in RowStatus][-2:] == ["timed out", "outcome unknown"]


def test_the_review_reads_the_manifest_first_and_the_sidecar_for_what_it_lacks() -> None:
    manifest = build_manifest(
        [stored_row().evolve(request_id="req-manifest", files=(), queue_seconds=None)],
        INFINITE_TALK,
    )
    sidecar = sidecar_of(stored_row())
    (row,) = read_rows(manifest, {"ada": sidecar}, INFINITE_TALK)
    assert row.request_id == "req-manifest", "the manifest speaks first"
    assert row.queue_s == 1.5, "the sidecar fills what the manifest lacks"
    assert row.videos == ["ada.mp4", "ada-1.mp4"], "the sidecar names the videos"
    assert (row.duration, row.width, row.video_facts) == (5.0, 480, "25 fps")
    assert ("frames", "125") in row.parameters and row.prompt == "hello"
    assert row.metadata == "ada.json"
