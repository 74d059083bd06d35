"""Benchmark 1: orchestration efficiency of `generate_talking_videos` against the sandbox.

Three clients drive three identical sandboxes (same config, same seed, hence the same drawn
queue delay and run time for the n-th submitted job), each in its own process:

- the flow: `generate_talking_videos` on a real Prefect API (`prefect_test_harness`: a local
  Prefect server on SQLite in a temporary PREFECT_HOME), with its poll settings scaled;
- a plain asyncio script: submit everything (same concurrency bound), poll `/result` every
  2 s of real time (scaled like everything else: 2 s x `--scale`), download;
- a sequential script: submit one row, poll every 5 s, download, next row. It runs on a subset
  of the rows, at the same time as the others (it is idle nearly all the time), and is
  extrapolated to all rows.

Definitions (all times from the sandbox's own records, on one monotonic clock):

- makespan: wall time of the whole call (flow: from calling the flow to its return, which
  includes checking the table, the Prefect task runs, every download and the manifest).
- ideal makespan: what K workers could do with the recorded schedule if every job had been
  submitted at time 0 and every result noticed at once: the sandbox's own dispatch rule
  (a free worker takes the first job, in submission order, whose queue delay has passed)
  simulated with each job's recorded `queue_delay_s` and its recorded run time
  (`finished_mono - started_mono`). This is a lower bound for any client.
- detection lag: `first_download_mono - finished_mono` per job (the job finished → its
  output file was first requested).
- requests per job: every HTTP request the sandbox received (submit, status, result,
  files) divided by the number of jobs.

    .venv/bin/python benchmarks/orchestration.py            # 200 rows, K=16 (about 5 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, machine, quiet_prefect_env, rows, sandbox_process, save

quiet_prefect_env()

import httpx  # noqa: E402

from prefect_runcomfy.api.models import MODEL_ID  # noqa: E402

FINISHED = {"succeeded", "failed", "cancelled", "canceled"}


def ideal_makespan(jobs: list[dict[str, Any]], workers: int) -> float:
    """List-schedule the recorded jobs as if all were submitted at t=0 (sandbox's FIFO rule)."""
    pending = sorted(jobs, key=lambda j: j["seq"])
    free = [0.0] * workers  # when each worker is free
    heapq.heapify(free)
    end = 0.0
    waiting = [(j["queue_delay_s"], j["finished_mono"] - j["started_mono"]) for j in pending]
    while waiting:
        now = heapq.heappop(free)
        # the first job in submission order that is eligible now; else the earliest eligible
        pick = next((i for i, (q, _) in enumerate(waiting) if q <= now), None)
        if pick is None:
            pick = min(range(len(waiting)), key=lambda i: waiting[i][0])
            now = waiting[pick][0]
        _, run = waiting.pop(pick)
        finish = now + run
        end = max(end, finish)
        heapq.heappush(free, finish)
    return end


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 3),
        "p50": round(ordered[len(ordered) // 2], 3),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
        "max": round(ordered[-1], 3),
    }


def schedule_facts(sb: Any, workers: int, makespan: float, started: float) -> dict[str, Any]:
    jobs = [j for j in sb.requests() if j["state"] == "succeeded"]
    stats = sb.stats()
    ideal = ideal_makespan(jobs, workers)
    lags = [j["first_download_mono"] - j["finished_mono"] for j in jobs if j["first_download_mono"]]
    first_submit = min(j["submitted_mono"] for j in jobs)
    last_finish = max(j["finished_mono"] for j in jobs)
    by_endpoint = stats["requests_by_endpoint"]
    n = len(jobs)
    return {
        "jobs_succeeded": n,
        "makespan_s": round(makespan, 2),
        "ideal_makespan_s": round(ideal, 2),
        "makespan_over_ideal": round(makespan / ideal, 4),
        "sandbox_first_submit_to_last_finish_s": round(last_finish - first_submit, 2),
        "start_to_first_submit_s": round(first_submit - started, 2),
        "last_finish_to_return_s": round(started + makespan - last_finish, 2),
        "requests_per_job": round(
            sum(by_endpoint.get(k, 0) for k in ("submit", "status", "result", "files")) / n, 2
        ),
        "requests_by_endpoint": by_endpoint,
        "detection_lag_s": summarize(lags),
        "duplicate_submits": stats["duplicate_submits"],
        "sum_queue_plus_run_s": round(
            sum(j["queue_delay_s"] + j["finished_mono"] - j["started_mono"] for j in jobs), 2
        ),
    }


# --- the baselines ------------------------------------------------------------------------------


async def _submit(http: httpx.AsyncClient, row: dict[str, Any]) -> str:
    payload = {
        "241_positive_prompt": row["prompt"],
        "284_image": row["image"],
        "125_audio": row["audio"],
        "245_valuex246_value": "480x480 (1:1)",
        "270_value": 125,
    }
    answer = await http.post(f"/v1/models/{MODEL_ID}", json=payload)
    answer.raise_for_status()
    return str(answer.json()["request_id"])


async def _download(http: httpx.AsyncClient, url: str, path: Path) -> None:
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        with path.open("wb") as handle:
            async for chunk in response.aiter_bytes(1 << 20):
                handle.write(chunk)


async def _one_row(
    http: httpx.AsyncClient, files: httpx.AsyncClient, row: dict[str, Any], out: Path, every: float
) -> None:
    request_id = await _submit(http, row)
    while True:
        await asyncio.sleep(every)
        body = (await http.get(f"/v1/requests/{request_id}/result")).json()
        if body.get("status") in FINISHED:
            break
    url = (body.get("output") or {}).get("video")
    if url:
        await _download(files, url, out / f"{row['id']}.mp4")


def _clients(base_url: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100)
    api = httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
        limits=limits,
        trust_env=False,
    )
    return api, httpx.AsyncClient(timeout=60, limits=limits, trust_env=False)


async def asyncio_baseline(
    base_url: str, table: list[dict[str, Any]], concurrency: int, every: float
) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-asyncio-"))
    api, files = _clients(base_url)
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(row: dict[str, Any]) -> None:
        async with semaphore:
            await _one_row(api, files, row, out, every)

    started = time.monotonic()
    async with api, files:
        await asyncio.gather(*(bounded(r) for r in table))
    return time.monotonic() - started


def sequential_baseline(base_url: str, table: list[dict[str, Any]], result: dict[str, Any]) -> None:
    async def run() -> None:
        out = Path(tempfile.mkdtemp(prefix="bench-sequential-"))
        api, files = _clients(base_url)
        started = time.monotonic()
        async with api, files:
            for row in table:
                await _one_row(api, files, row, out, 5.0)
        result["makespan_s"] = time.monotonic() - started

    asyncio.run(run())


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16, help="K: sandbox workers")
    parser.add_argument("--concurrency", type=int, default=32, help="the flow's max_concurrency")
    parser.add_argument("--queue", default="0-3", help="queue delay range, seconds")
    parser.add_argument("--run", default="4-8", help="run time range, seconds")
    parser.add_argument(
        "--scale",
        type=float,
        default=1 / 30,
        help="time scale of the schedule vs real RunComfy; the flow's PollPolicy is scaled by it",
    )
    parser.add_argument("--sequential-rows", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-asyncio", action="store_true")
    parser.add_argument("--poll-strategy", choices=["learned", "doubling"], default="learned")
    parser.add_argument("--name", default="orchestration")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos

    def rng(text: str) -> list[float]:
        low, high = text.split("-")
        return [float(low), float(high)]

    config = {
        "workers": args.workers,
        "queue_seconds": rng(args.queue),
        "run_seconds": rng(args.run),
        "seed": args.seed,
        "render": "tiny",
    }
    poll = {
        "poll_initial_s": 2.0 * args.scale,
        "poll_max_s": 30.0 * args.scale,
        "poll_strategy": args.poll_strategy,
    }
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/orchestration.py " + " ".join(sys.argv[1:]),
        "sandbox": config,
        "flow_poll": poll,
        "flow_max_concurrency": args.concurrency,
        "prefect_api": "prefect_test_harness (local Prefect server, SQLite, temp PREFECT_HOME)",
    }
    with (
        prefect_test_harness(server_startup_timeout=60),
        sandbox_process(**config) as sb_flow,
        sandbox_process(**config) as sb_async,
        sandbox_process(**config) as sb_seq,
    ):
        seq_result: dict[str, Any] = {}
        seq_rows = rows(sb_seq.base_url, args.sequential_rows)
        seq_thread = threading.Thread(
            target=sequential_baseline, args=(sb_seq.base_url, seq_rows, seq_result)
        )
        seq_thread.start()

        table = rows(sb_flow.base_url, args.rows)
        creds = RunComfyCredentials(api_token=TOKEN, base_url=sb_flow.base_url)
        out = tempfile.mkdtemp(prefix="bench-flow-")
        started = time.monotonic()
        manifest = generate_talking_videos(
            table,
            out,
            creds,
            max_concurrency=args.concurrency,
            max_wait_s=3600,
            waiting=Waiting(**poll),
        )
        flow_makespan = time.monotonic() - started
        statuses = manifest["status"].value_counts().to_dict()
        report["flow"] = {
            "statuses": statuses,
            **schedule_facts(sb_flow, args.workers, flow_makespan, started),
        }
        print("flow:", report["flow"], flush=True)

        if not args.skip_asyncio:
            async_started = time.monotonic()
            async_makespan = asyncio.run(
                asyncio_baseline(
                    sb_async.base_url,
                    rows(sb_async.base_url, args.rows),
                    args.concurrency,
                    2.0 * args.scale,  # 2 s of real time, scaled (before 2026-12-04: 2 s scaled)
                )
            )
            report["asyncio_2s"] = schedule_facts(
                sb_async, args.workers, async_makespan, async_started
            )
            print("asyncio:", report["asyncio_2s"], flush=True)

        seq_thread.join()
        seq_jobs = [j for j in sb_seq.requests() if j["state"] == "succeeded"]
        seq_work = sum(
            j["queue_delay_s"] + j["finished_mono"] - j["started_mono"] for j in seq_jobs
        )
        per_row_overhead = (seq_result["makespan_s"] - seq_work) / len(seq_jobs)
        flow_jobs_work = report["flow"]["sum_queue_plus_run_s"]
        extrapolated = flow_jobs_work + per_row_overhead * args.rows
        seq_stats = sb_seq.stats()["requests_by_endpoint"]
        report["sequential_5s"] = {
            "rows_run": len(seq_jobs),
            "makespan_s_measured": round(seq_result["makespan_s"], 2),
            "per_row_overhead_s": round(per_row_overhead, 3),
            "extrapolated_makespan_s": round(extrapolated, 1),
            "extrapolation": (
                "sum over all rows of the flow sandbox's recorded queue+run (same seed, same "
                "schedule) + rows x the measured per-row overhead (makespan - queue - run)"
            ),
            "naive_extrapolation_s": round(seq_result["makespan_s"] * args.rows / len(seq_jobs), 1),
            "requests_per_job": round(
                sum(seq_stats.get(k, 0) for k in ("submit", "status", "result", "files"))
                / len(seq_jobs),
                2,
            ),
        }
        report["speedup_flow_vs_sequential"] = round(extrapolated / flow_makespan, 1)
        if "asyncio_2s" in report:
            report["flow_vs_asyncio_makespan"] = round(
                flow_makespan / report["asyncio_2s"]["makespan_s"], 3
            )
        print("sequential:", report["sequential_5s"], flush=True)
    path = save(args.name, report)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
