"""One summary of a manifest (`prefect_runcomfy.report.summary`): counts, what this run spent
apart from what earlier runs paid, seconds of video and run time, and that the markdown
artifact, the review page's tiles and the command line's closing lines all say the same."""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
import pytest

from prefect_runcomfy.engine.outputs.manifest import RowStatus, build_manifest
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.artifacts import (
    TABLE_MAX_ROWS,
    spending,
    summary_markdown,
    summary_table,
    table_description,
)
from prefect_runcomfy.report.review import render_review_html
from prefect_runcomfy.report.summary import RunSummary, summarize


def row(row_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"id": row_id, "status": status, **fields}


def a_night() -> pd.DataFrame:
    """Two jobs paid for tonight (one without a reported cost), one stored by an earlier run,
    one invalid row, one timed-out job and one status that is none of ours."""
    return build_manifest(
        [
            row("a", "succeeded", cost_usd=0.1, duration_s=5.0, run_seconds=40.0,
                submitted_by_this_run=True),
            row("b", "succeeded", cost_usd=0.2, duration_s=2.5, run_seconds=20.0,
                submitted_by_this_run=True),
            row("c", "failed", run_seconds=3.0, submitted_by_this_run=True),
            row("d", "succeeded", cost_usd=0.5, duration_s=4.0),
            row("e", "invalid", error="steps: too many"),
            row("f", "timed_out", run_seconds=60.0, duration_s=9.0),
            row("g", "something new"),
        ], INFINITE_TALK
    )  # fmt: skip


def test_counts_every_status_then_the_unknown_ones() -> None:
    summary = summarize(a_night())
    assert list(summary.counts) == [*(s.value for s in RowStatus), "something new"]
    assert dict(summary.counts) == {
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "invalid": 1,
        "timed_out": 1,
        "outcome_unknown": 0,
        "something new": 1,
    }
    assert summary.nonzero_counts == {
        "succeeded": 3,
        "failed": 1,
        "invalid": 1,
        "timed_out": 1,
        "something new": 1,
    }
    assert (summary.succeeded, summary.total) == (3, 7)
    with pytest.raises(TypeError):
        summary.counts["failed"] = 9  # type: ignore[index]


def test_costs_this_run_apart_from_earlier_runs() -> None:
    summary = summarize(a_night())
    assert summary.jobs_this_run == 3
    assert summary.cost_this_run == pytest.approx(0.3)
    assert (summary.rows_earlier, summary.cost_earlier) == (1, pytest.approx(0.5))
    assert summary.total_cost == pytest.approx(0.8)
    # c (paid tonight, no cost reported), f and g; the invalid row cost nothing
    assert summary.unknown_cost == 3
    assert summary.spending == [
        "Jobs this run submitted: 3, cost reported by RunComfy $0.3000",
        "Rows submitted by earlier runs (stored or collected now): 1, cost $0.5000 "
        "(not spent by this run)",
    ]
    assert spending(a_night()) == summary.spending


def test_seconds_of_video_count_succeeded_rows_and_run_time_every_row() -> None:
    summary = summarize(a_night())
    assert summary.video_seconds == pytest.approx(11.5), "the timed-out row's 9 s are no video"
    assert summary.run_seconds == pytest.approx(123.0)


@pytest.mark.parametrize(
    ("manifest", "sentences"),
    [
        (pd.DataFrame(columns=["id", "status"]), ["Jobs this run submitted: 0"]),
        (build_manifest([], INFINITE_TALK), ["Jobs this run submitted: 0"]),
        (
            pd.DataFrame({"id": ["a"], "status": ["succeeded"], "cost_usd": [0.25]}),
            [
                "Jobs this run submitted: 0",
                "Rows submitted by earlier runs (stored or collected now): 1, cost $0.2500 "
                "(not spent by this run)",
            ],
        ),
        (
            build_manifest([row("a", "failed", submitted_by_this_run=True)], INFINITE_TALK),
            ["Jobs this run submitted: 1, cost not reported"],
        ),
        (
            pd.DataFrame(
                {
                    "id": ["a", "b"],
                    "status": ["succeeded", "succeeded"],
                    "cost_usd": ["0.1", None],
                    "submitted_by_this_run": [True, None],
                }
            ),
            ["Jobs this run submitted: 1, cost reported by RunComfy $0.1000"],
        ),
    ],
    ids=["empty", "built-empty", "old-manifest", "no-cost", "text-and-missing"],
)
def test_spending_sentences(manifest: pd.DataFrame, sentences: list[str]) -> None:
    assert spending(manifest) == sentences == summarize(manifest).spending


def test_an_empty_or_sparse_manifest_gives_zeros_and_nothing_known() -> None:
    summary = summarize(pd.DataFrame(columns=["id", "status"]))
    assert isinstance(summary, RunSummary)
    assert (summary.total, summary.succeeded, summary.nonzero_counts) == (0, 0, {})
    assert summary.total_cost is summary.video_seconds is summary.run_seconds is None
    assert summarize(pd.DataFrame({"id": ["a"]})).counts["succeeded"] == 0


def test_markdown_page_and_command_line_say_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect_runcomfy import cli

    manifest = a_night()
    summary = summarize(manifest)

    markdown = summary_markdown(manifest, output_uri="out", manifest_uri="out/manifest.parquet")
    assert "**3 of 7 rows succeeded.**" in markdown
    for status, n in summary.nonzero_counts.items():
        assert f"| {status} | {n} |" in markdown
    assert "| cancelled |" not in markdown
    assert "- Video produced: 11.5 s" in markdown
    assert all(f"- {sentence}" in markdown for sentence in summary.spending)

    page = render_review_html(manifest, INFINITE_TALK, sidecars={}, title="t", generated_at="now")
    tiles = re.findall(r'<span class="n">([^<]+)</span><span class="l">([^<]+)</span>', page)
    assert tiles == [
        ("3", "succeeded"),
        ("1", "failed"),
        ("1", "invalid"),
        ("1", "timed out"),
        ("1", "something new"),
        ("$0.8", "total cost · 3 unknown"),
        ("11.5 s", "of video"),
        ("2 min 03 s", "run time (sum)"),
    ]

    cli._summary(manifest, "out")
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "3 succeeded, 1 failed, 1 invalid, 1 timed_out, 1 something new" in printed
    assert all(sentence in printed for sentence in summary.spending)


def many(n: int, every: int) -> pd.DataFrame:
    """`n` rows; every `every`th needs a person (cycling through the statuses that do), the
    rest succeeded or (every 7th) cancelled."""
    attention = ["failed", "invalid", "timed_out", "outcome_unknown"]
    statuses = [
        attention[i // every % 4] if i % every == 0 else "cancelled" if i % 7 == 0 else "succeeded"
        for i in range(n)
    ]
    return build_manifest(
        [row(f"r{i:05d}", status, error="boom") for i, status in enumerate(statuses)],
        INFINITE_TALK,
    )


def test_the_table_artifact_is_bounded_and_lists_the_rows_that_need_a_person_first() -> None:
    manifest = many(20_000, every=50)  # 400 rows need a person
    table = summary_table(manifest)
    assert len(table) == TABLE_MAX_ROWS == 500
    statuses = [r["status"] for r in table]
    needing = [r["id"] for r in table[:400]]
    by_status = sorted(range(0, 20_000, 50), key=lambda i: (i // 50 % 4, i))
    assert needing == [f"r{i:05d}" for i in by_status], "by status, the manifest's order within"
    assert (
        statuses[:400]
        == ["failed"] * 100 + ["invalid"] * 100 + ["timed_out"] * 100 + ["outcome_unknown"] * 100
    )
    assert statuses[400:] == sorted(statuses[400:], key=["cancelled", "succeeded"].index)
    assert len(json.dumps(table)) < 100_000
    described = table_description(manifest, "s3://b/v/manifest.parquet", len(table))
    assert "500 of 20,000" in described and "s3://b/v/manifest.parquet" in described

    crowded = summary_table(many(3_000, every=2))  # 1,500 need a person: only they are listed
    assert len(crowded) == 500 and {r["status"] for r in crowded} <= {
        "failed", "invalid", "timed_out", "outcome_unknown"
    }  # fmt: skip
    small = summary_table(a_night())
    assert [r["id"] for r in small] == ["c", "e", "f", "g", "a", "b", "d"]
    assert summary_table(build_manifest([], INFINITE_TALK)) == []
