"""Benchmark 5: how long a batch leaves a paid slot idle, per waiting policy, side by side.

Scenarios (real RunComfy time, everything scaled by `--scale`): jobs of about 1, 2 and 5
minutes (+-15 %), and a mixed batch (480x480 and 720x720, 125 and 250 frames, run time in
proportion to pixels x frames: 1, 2, 2.25 and 4.5 minutes, +-15 %); each with a queue delay of
0-5 s before a worker picks a job up. Two regimes: the account's limit binds (the client's
concurrency = RunComfy's workers) and RunComfy's queue absorbs (concurrency = 2 x workers).

Policies, each against its own sandbox (same config, same seed: the n-th submitted job draws
the same queue delay and run time; the mixed batch's run times belong to the rows):

- `flow_learned`: `generate_talking_videos(poll_strategy="learned")`, poll settings scaled;
- `flow_doubling`: the same flow with the previous policy (`poll_strategy="doubling"`);
- `cli_2s`: RunComfy's CLI loop: `/status` at once and every 2 s, `/result` once finished;
- `mcp_3s`: runcomfy-mcp's loop: the same every 3 s;
- `nodes_5s`: the ComfyUI partner nodes' loop: `/result?include_cost=true` every 5 s.

The peers are re-implemented from what their code does (`/work/shared/runcomfy-api.md`),
each as a plain asyncio script with the same concurrency bound; the flows run one after the
other, then the four peers together (they are idle nearly all the time).

Figures (all from the sandbox's records on one monotonic clock):

- `over_ideal`: the batch's span (first submit to the last output's first download) over the
  ideal span: the same jobs (recorded queue delays and run times, submission order) on the
  same concurrency and workers with every finish noticed and the next job submitted at
  once. The fixed cost of a flow run (start-up before the first submit, manifest and
  artifacts after the last download) does not shrink with scaled time, so it is reported
  apart (`flow_setup_s`, `flow_closing_s`, unscaled seconds).
- `reads_per_job`: status + result reads / jobs (a row adds one submit and one download).
- `lag`: first download - finish, in real seconds (/ scale) and as % of the job's run time.

    .venv/bin/python benchmarks/batch_waiting.py --regime binds     # about 10 minutes
    .venv/bin/python benchmarks/batch_waiting.py --regime absorbs   # about 10 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, machine, quiet_prefect_env, rows, sandbox_process, save

quiet_prefect_env()

import httpx  # noqa: E402

from prefect_runcomfy.api.models import MODEL_ID, InfiniteTalkInput  # noqa: E402

FINISHED = {"succeeded", "failed", "cancelled", "canceled", "completed"}
MIXED_KINDS = {  # (resolution, frames): minutes of run time
    ("480x480", 125): 1.0,
    ("480x480", 250): 2.0,
    ("720x720", 125): 2.25,
    ("720x720", 250): 4.5,
}
PEERS = {"cli_2s": ("status", 2.0), "mcp_3s": ("status", 3.0), "nodes_5s": ("result", 5.0)}
FLOWS = ("flow_learned", "flow_doubling")


# --- the ideal -------------------------------------------------------------------------------


def ideal_span(jobs: list[dict[str, Any]], workers: int, concurrency: int) -> float:
    """The span of a client that notices each finish at once and submits the next job then.

    Jobs in submission order, each with its recorded queue delay and run time; the sandbox's
    rule: a free worker takes the first submitted job whose queue delay has passed.
    """
    order = sorted(jobs, key=lambda j: j["seq"])
    todo = [(j["queue_delay_s"], j["finished_mono"] - j["started_mono"]) for j in order]
    todo.reverse()
    waiting: list[tuple[int, float, float]] = []  # (seq, eligible at, run)
    running: list[float] = []  # finish times
    seq, now, in_flight, end = 0, 0.0, 0, 0.0
    while todo or waiting or running:
        while todo and in_flight < concurrency:
            queue, run = todo.pop()
            waiting.append((seq, now + queue, run))
            seq, in_flight = seq + 1, in_flight + 1
        started = True
        while started and len(running) < workers:
            ready = [w for w in waiting if w[1] <= now + 1e-12]
            started = bool(ready)
            if ready:
                pick = min(ready)
                waiting.remove(pick)
                heapq.heappush(running, now + pick[2])
        moments = [running[0]] if running else []
        if len(running) < workers and waiting:
            moments.append(min(w[1] for w in waiting))
        if not moments:
            break
        now = min(moments)
        while running and running[0] <= now + 1e-12:
            end = max(end, heapq.heappop(running))
            in_flight -= 1
    return end


# --- the peers' loops ----------------------------------------------------------------------


def payload(row: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in row.items() if k != "id"}
    return InfiniteTalkInput.model_validate(fields).to_api_payload()


async def peer_row(
    api: httpx.AsyncClient, files: httpx.AsyncClient, row: dict[str, Any], mode: str, every: float
) -> None:
    answer = await api.post(f"/v1/models/{MODEL_ID}", json=payload(row))
    answer.raise_for_status()
    request_id = answer.json()["request_id"]
    while True:
        if mode == "status":
            state = (await api.get(f"/v1/requests/{request_id}/status")).json()
            if state.get("status") in FINISHED:
                body = (await api.get(f"/v1/requests/{request_id}/result")).json()
                break
        else:
            body = (
                await api.get(f"/v1/requests/{request_id}/result", params={"include_cost": "true"})
            ).json()
            if body.get("status") in FINISHED:
                break
        await asyncio.sleep(every)
    url = (body.get("output") or {}).get("video")
    if url:
        async with files.stream("GET", url) as response:
            async for _ in response.aiter_bytes(1 << 20):
                pass


async def peer_batch(base_url: str, table: list[dict[str, Any]], mode: str, every: float, c: int):
    limits = httpx.Limits(max_connections=100)
    api = httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
        limits=limits,
        trust_env=False,
    )
    files = httpx.AsyncClient(timeout=60, limits=limits, trust_env=False)
    semaphore = asyncio.Semaphore(c)

    async def bounded(row: dict[str, Any]) -> None:
        async with semaphore:
            await peer_row(api, files, row, mode, every)

    started = time.monotonic()
    async with api, files:
        await asyncio.gather(*(bounded(r) for r in table))
    return started, time.monotonic() - started


# --- one scenario ----------------------------------------------------------------------------


def scenario_table(base_url: str, name: str, n: int, seed: int) -> list[dict[str, Any]]:
    table = rows(base_url, n)
    if name != "mixed":
        return table
    rng = random.Random(seed)
    kinds = [list(MIXED_KINDS)[i % len(MIXED_KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    for row, (resolution, frames) in zip(table, kinds, strict=True):
        seconds = 60.0 * MIXED_KINDS[(resolution, frames)] * rng.uniform(0.85, 1.15)
        row.update(resolution=resolution, frames=frames)
        row["prompt"] += f" [sandbox:run={seconds:.2f}]"
    return table


def facts(
    sb: Any, workers: int, concurrency: int, scale: float, started: float, wall: float
) -> dict[str, Any]:
    jobs = [j for j in sb.requests() if j["state"] == "succeeded"]
    by_endpoint = sb.stats()["requests_by_endpoint"]
    first_submit = min(j["submitted_mono"] for j in jobs)
    last_download = max(j["first_download_mono"] for j in jobs)
    last_finish = max(j["finished_mono"] for j in jobs)
    span = last_download - first_submit
    ideal = ideal_span(jobs, workers, concurrency)
    lags = [(j["first_download_mono"] - j["finished_mono"]) / scale for j in jobs]
    runs = [(j["finished_mono"] - j["started_mono"]) / scale for j in jobs]
    lag_pct = [100 * lag / run for lag, run in zip(lags, runs, strict=True)]
    reads = by_endpoint.get("status", 0) + by_endpoint.get("result", 0)
    ordered = sorted(lags)
    # the client's turnaround: a download starts -> the next submit it lets in (unscaled ms)
    downloads = sorted(j["first_download_mono"] for j in jobs)[: max(0, len(jobs) - concurrency)]
    submits = sorted(j["submitted_mono"] for j in jobs)[concurrency:]
    turnaround = [1000 * (b - a) for a, b in zip(downloads, submits, strict=False)]
    return {
        "jobs": len(jobs),
        "over_ideal": round(span / ideal, 4),
        "span_s": round(span, 3),
        "ideal_span_s": round(ideal, 3),
        "reads_per_job": round(reads / len(jobs), 2),
        "status_reads": by_endpoint.get("status", 0),
        "result_reads": by_endpoint.get("result", 0),
        "lag_real_s_mean": round(statistics.fmean(lags), 2),
        "lag_real_s_p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "lag_real_s_max": round(ordered[-1], 2),
        "lag_pct_of_run_mean": round(statistics.fmean(lag_pct), 2),
        "mean_run_real_s": round(statistics.fmean(runs), 1),
        "turnaround_ms_mean": round(statistics.fmean(turnaround), 1) if turnaround else None,
        "setup_s": round(first_submit - started, 2),
        "closing_s": round(started + wall - last_finish, 2),
        "wall_s": round(wall, 2),
        "duplicate_submits": sb.stats()["duplicate_submits"],
        "lag_real_s_by_submit": [
            round((j["first_download_mono"] - j["finished_mono"]) / scale, 1)
            for j in sorted(jobs, key=lambda j: j["seq"])
        ],
    }


def run_scenario(
    name: str, sandboxes: dict[str, Any], args: argparse.Namespace, concurrency: int
) -> dict[str, Any]:
    from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos

    minutes = 2.0 if name == "mixed" else float(name)
    config = {
        "workers": args.workers,
        "queue_seconds": [0.0, args.queue],
        "run_seconds": [60 * minutes * 0.85, 60 * minutes * 1.15],
        "time_scale": args.scale,
        "seed": args.seed,
        "render": "tiny",
    }
    n = args.waves * args.workers
    for sb in sandboxes.values():
        sb.post("/_sandbox/config", config)
        sb.post("/_sandbox/reset", {})
    out: dict[str, Any] = {"sandbox": config, "rows": n, "concurrency": concurrency}
    s = args.scale
    for policy in [p for p in FLOWS if p in sandboxes]:
        sb = sandboxes[policy]
        table = scenario_table(sb.base_url, name, n, args.seed)
        creds = RunComfyCredentials(api_token=TOKEN, base_url=sb.base_url)
        started = time.monotonic()
        manifest = generate_talking_videos(
            table,
            tempfile.mkdtemp(prefix=f"bench-{policy}-"),
            creds,
            max_concurrency=concurrency,
            max_wait_s=3600,
            waiting=Waiting(
                poll_initial_s=2.0 * s,
                poll_max_s=30.0 * s,
                not_found_grace_s=30.0 * s,
                poll_strategy=policy.removeprefix("flow_"),
            ),
        )
        wall = time.monotonic() - started
        assert set(manifest["status"]) == {"succeeded"}, manifest["status"].value_counts()
        out[policy] = facts(sb, args.workers, concurrency, s, started, wall)
        print(name, policy, out[policy], flush=True)

    async def peers() -> dict[str, tuple[float, float]]:
        names = [p for p in PEERS if p in sandboxes]
        done = await asyncio.gather(
            *(
                peer_batch(
                    sandboxes[p].base_url,
                    scenario_table(sandboxes[p].base_url, name, n, args.seed),
                    PEERS[p][0],
                    PEERS[p][1] * s,
                    concurrency,
                )
                for p in names
            )
        )
        return dict(zip(names, done, strict=True))

    for policy, (started, wall) in asyncio.run(peers()).items():
        out[policy] = facts(sandboxes[policy], args.workers, concurrency, s, started, wall)
        print(name, policy, out[policy], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regime", choices=["binds", "absorbs"], default="binds")
    parser.add_argument("--scenarios", default="1,2,5,mixed")
    parser.add_argument("--workers", type=int, default=4, help="RunComfy's workers (K)")
    parser.add_argument("--waves", type=int, default=8, help="rows = waves x workers")
    parser.add_argument("--queue", type=float, default=5.0, help="queue delay 0..Q real s")
    parser.add_argument("--scale", type=float, default=1 / 30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policies", default=",".join([*FLOWS, *PEERS]))
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    concurrency = args.workers if args.regime == "binds" else 2 * args.workers

    from prefect.testing.utilities import prefect_test_harness

    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/batch_waiting.py " + " ".join(sys.argv[1:]),
        "regime": args.regime,
        "workers": args.workers,
        "concurrency": concurrency,
        "scale": args.scale,
        "flow_poll_real_s": {"initial_s": 2.0, "max_s": 30.0, "not_found_grace_s": 30.0},
        "peers_every_real_s": {p: every for p, (_, every) in PEERS.items()},
        "prefect_api": "prefect_test_harness (local Prefect server, SQLite, temp PREFECT_HOME)",
        "scenarios": {},
    }
    base = {"workers": args.workers, "render": "tiny", "seed": args.seed}
    chosen = args.policies.split(",")
    with prefect_test_harness(server_startup_timeout=60), contextlib.ExitStack() as stack:
        sandboxes = {p: stack.enter_context(sandbox_process(**base)) for p in chosen}
        for name in args.scenarios.split(","):
            report["scenarios"][name] = run_scenario(name, sandboxes, args, concurrency)
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"saved {save(args.name or f'batch_waiting_{args.regime}', report)}")


if __name__ == "__main__":
    main()
