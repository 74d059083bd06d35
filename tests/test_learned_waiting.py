"""End to end: a batch of similar jobs is read on the schedule the run learned.

The real flow on a real Prefect API, the sandbox over HTTP on 127.0.0.1. The same table
runs twice against the same sandbox, once with the learned schedule (the default) and once
with the doubling one; the sandbox counts the status and result reads of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos
from prefect_runcomfy.sandbox import Sandbox, run_sandbox, sample_inputs

pytestmark = pytest.mark.usefixtures("prefect_api")

JOBS, WORKERS, RUN_S = 6, 2, 0.5


def reads_per_job(sb: Sandbox) -> tuple[float, list[dict[str, Any]]]:
    by_endpoint = sb.stats()["requests_by_endpoint"]
    jobs = [j for j in sb.requests() if j["state"] == "succeeded"]
    reads = by_endpoint.get("status", 0) + by_endpoint.get("result", 0)
    return reads / len(jobs), jobs


def table(sb: Sandbox) -> list[dict[str, Any]]:
    samples = sample_inputs(sb.base_url)
    rows = []
    for i in range(JOBS):
        row = dict(samples[0])
        row.update(id=f"r{i}", prompt=f"{row['prompt']} #{i}", resolution="480x480", frames=125)
        rows.append(row)
    return rows


def test_a_batch_of_similar_jobs_is_read_where_the_run_expects_them_to_finish(
    tmp_path: Path,
) -> None:
    with run_sandbox(workers=WORKERS, queue_seconds=0.0, run_seconds=RUN_S, render="tiny") as sb:
        creds = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url)
        figures = {}
        for strategy in ("doubling", "learned"):
            sb.reset()
            manifest = generate_talking_videos(
                table(sb),
                str(tmp_path / strategy),
                creds,
                max_concurrency=WORKERS,  # the account's limit binds
                waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.8, poll_strategy=strategy),
            )
            assert list(manifest["status"]) == ["succeeded"] * JOBS
            figures[strategy] = reads_per_job(sb)
    doubling, _ = figures["doubling"]
    learned, jobs = figures["learned"]
    # doubling: reads at 0, 0.1, 0.3, 0.7 s... of each 0.5 s job, the queued ones on /status
    # and then /result; learned: after the first two, about one or two reads a job
    assert learned < doubling - 1.0, figures
    assert learned <= 3.5, figures
    # the later jobs' outputs were fetched soon after they finished
    lags = [j["first_download_mono"] - j["finished_mono"] for j in jobs[WORKERS:]]
    assert sum(lags) / len(lags) < 0.25 * RUN_S, lags
