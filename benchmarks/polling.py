"""Benchmark 2: what waiting costs as jobs get longer (10 s to 10 min).

The wait loop itself (`prefect_runcomfy.engine.run.waiting.wait_until_finished` with `PollPolicy`), with a
`RunComfyClient`, without Prefect. The sandbox runs every duration scaled by `--scale`
(`time_scale`), and the PollPolicy is scaled by the same factor (initial 2 s, max 30 s,
not-found grace 30 s, all times `--scale`), so a 5-minute job takes 15 s at the default 1/20
and is polled exactly as a real one would be, in compressed time. Figures are reported in real
(unscaled) seconds: lag / scale.

Per job: requests made by the wait (status + result calls), requests in total for the row
(+1 submit, +1 download), and the detection lag: the moment the wait returned minus the
sandbox's `finished_mono` of the job (one monotonic clock across processes).

    .venv/bin/python benchmarks/polling.py          # about 40 s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, machine, rows, sandbox_process, save

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.engine.run.waiting import PollPolicy, wait_until_finished

DURATIONS = [10, 30, 60, 120, 300, 600]


async def one(base_url: str, row: dict[str, Any], policy: PollPolicy, scale: float) -> dict:
    async with RunComfyClient(api_token=TOKEN, base_url=base_url) as client:
        submitted = await client.submit(
            {
                "241_positive_prompt": row["prompt"],
                "284_image": row["image"],
                "125_audio": row["audio"],
                "245_valuex246_value": "480x480 (1:1)",
                "270_value": 125,
            }
        )
        sent_before = client.requests_sent
        outcome = await wait_until_finished(
            client,
            submitted.request_id,
            max_wait_s=3600 * scale * 2,
            policy=policy,
            submitted_monotonic=time.monotonic(),
        )
        return {
            "request_id": submitted.request_id,
            "wait_requests": client.requests_sent - sent_before,
            "polls": outcome.polls,
            "detected_mono": outcome.finished,
        }


async def run(base_url: str, scale: float, repeat: int) -> list[dict]:
    policy = PollPolicy(initial_s=2.0 * scale, max_s=30.0 * scale, not_found_grace_s=30.0 * scale)
    table = rows(base_url, len(DURATIONS) * repeat)
    jobs = []
    for i, row in enumerate(table):
        duration = DURATIONS[i % len(DURATIONS)]
        row["prompt"] += f" [sandbox:run={duration}]"
        jobs.append((duration, one(base_url, row, policy, scale)))
    results = await asyncio.gather(*(job for _, job in jobs))
    return [{"duration_s": d, **r} for (d, _), r in zip(jobs, results, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1 / 20)
    parser.add_argument("--repeat", type=int, default=5, help="jobs per duration")
    parser.add_argument("--name", default="polling")
    args = parser.parse_args()
    config = {
        "workers": 256,
        "queue_seconds": 0.0,
        "run_seconds": 1.0,
        "time_scale": args.scale,
        "render": "tiny",
    }
    with sandbox_process(**config) as sb:
        measured = asyncio.run(run(sb.base_url, args.scale, args.repeat))
        jobs = {j["request_id"]: j for j in sb.requests()}
    per_duration: dict[int, dict[str, Any]] = {}
    for duration in DURATIONS:
        mine = [m for m in measured if m["duration_s"] == duration]
        lags = [
            (m["detected_mono"] - jobs[m["request_id"]]["finished_mono"]) / args.scale for m in mine
        ]
        waits = [m["wait_requests"] for m in mine]
        target = 0.10 * duration + 2.0
        per_duration[duration] = {
            "jobs": len(mine),
            "wait_requests_mean": round(statistics.fmean(waits), 2),
            "wait_requests_max": max(waits),
            "row_requests_max": max(waits) + 2,
            "lag_s_mean": round(statistics.fmean(lags), 2),
            "lag_s_max": round(max(lags), 2),
            "lag_target_s": round(target, 1),
            "lag_max_over_duration_pct": round(100 * max(lags) / duration, 1),
        }
        print(duration, per_duration[duration], flush=True)
    report = {
        "machine": machine(),
        "command": "benchmarks/polling.py " + " ".join(sys.argv[1:]),
        "scale": args.scale,
        "policy_real_seconds": {"initial_s": 2.0, "max_s": 30.0, "multiplier": 2.0, "jitter": 0.1},
        "per_duration": per_duration,
    }
    print(f"saved {save(args.name, report)}")


if __name__ == "__main__":
    main()
