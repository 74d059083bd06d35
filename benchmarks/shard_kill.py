"""Benchmark (issue 20, point 9): a sharded run loses a worker's machine mid-run.

A 4,000-row table in 8 shards of 500 on a Postgres-backed `prefect server start`, two process
workers (`--limit 4` each: all 8 shards run at once), one account-wide global concurrency
limit (32). When `--kill-at` of the rows have been POSTed, the first worker and every process
it started are SIGKILLed (its machine dies: the flow-run processes of a process worker live
in their own sessions, so a kill of the worker's process group would miss them), and the
parent is re-run at once, next to the first. Once both parents have ended, the parent is run
a third time to finish what the dead shards left.

Reported (`results/<name>.json`):

- duplicate POSTs: jobs the sandbox created more than once for one payload;
- rows lost: table rows missing from the merged manifest after the two parents, rows neither
  stored nor reported `outcome_unknown` after the third run, and paid jobs (sandbox request
  ids) that no ledger entry knows;
- when each parent ended after the kill, and when each dead shard was taken as dead;
- how long the killed processes' concurrency slots stayed taken: from the Prefect server's
  log of expired leases it revoked (`Revoking lease ...`), and the slots the surviving shards
  could hold, second by second (sandbox jobs in flight of shards that were not killed).

Installs nothing. Needs Debian's `postgresql` package (`apt-get install -y postgresql`): the
script runs `initdb` and `pg_ctl` from `/usr/lib/postgresql/*/bin` (as the `postgres` user
when run as root) on 127.0.0.1 in a temporary folder, and stops and deletes it at the end.

    .venv/bin/python benchmarks/shard_kill.py                                   # ~15 min
    .venv/bin/python benchmarks/shard_kill.py --rows 800 --shard-size 100 --name shard_kill_800
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, quiet_prefect_env, rows, sandbox_process, save

HOME = quiet_prefect_env()
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # the parents' warnings (dead shards) only

import pandas as pd  # noqa: E402
from _cluster import (  # noqa: E402
    LIMIT_NAME,
    deploy,
    kill_machine,
    postgres,
    prefect_env,
    prefect_server,
    start_worker,
)

# --- measuring ----------------------------------------------------------------------------------


def lease_revocations(server_log: Path, day: str) -> list[tuple[float, int]]:
    """(wall time, slots) of every expired lease on a concurrency limit that the server
    revoked, from its log. (Leases on no limit, `for 0 concurrency limits`, are Prefect's own
    for tagged task runs when no tag limit exists: not slots of ours.)"""
    found = []
    pattern = re.compile(
        r"^(\d\d:\d\d:\d\d\.\d+) .*Revoking lease \S+ for [1-9]\d* concurrency limits with (\d+) slots"
    )
    for line in server_log.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if match:
            when = datetime.fromisoformat(f"{day}T{match.group(1)}").timestamp()
            found.append((when, int(match.group(2))))
    return found


def row_of(prompt: str) -> int:
    return int(prompt.rsplit("#", 1)[1].split()[0])


def in_flight(jobs: list[dict[str, Any]], rows_of: set[int], at: float) -> int:
    """Jobs of these rows submitted and not finished at monotonic time `at`."""
    return sum(
        1
        for j in jobs
        if row_of(j["prompt"]) in rows_of
        and j["submitted_mono"] <= at
        and (j["finished_mono"] is None or j["finished_mono"] > at)
    )


def ledger_states(out: Path) -> tuple[dict[str, int], set[str]]:
    states: dict[str, int] = {}
    request_ids: set[str] = set()
    for path in (out / "_ledger").glob("*.json"):
        entry = json.loads(path.read_text())
        states[entry["state"]] = states.get(entry["state"], 0) + 1
        request_ids.update(
            h.get("request_id") for h in [entry, *entry.get("history", [])] if h.get("request_id")
        )
    return states, request_ids


async def sample_slots(samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                limit = await client.read_global_concurrency_limit_by_name(LIMIT_NAME)
                samples.append((time.monotonic(), limit.active_slots))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


# --- the run ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--limit", type=int, default=32, help="the account-wide slots")
    parser.add_argument("--per-shard", type=int, default=8, help="max_concurrency_per_shard")
    parser.add_argument("--worker-limit", type=int, default=4, help="shard runs per worker")
    parser.add_argument("--run", default="2-4", help="job run time range, seconds")
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of rows POSTed")
    parser.add_argument("--name", default="shard_kill_4000")
    return parser.parse_args()


async def run(args: argparse.Namespace, api_url: str, work: Path, report: dict[str, Any]) -> None:
    from prefect_runcomfy import Concurrency, Spending, Waiting, generate_talking_videos_sharded

    low, high = (float(x) for x in args.run.split("-"))
    config = {"workers": 4 * args.limit, "run_seconds": [low, high], "render": "tiny", "seed": 7}
    report["sandbox"] = config
    env = {
        **prefect_env(api_url, HOME),
        "PREFECT_WORKER_QUERY_SECONDS": "5",
        # prefect.yaml's templated values (only the `shard` deployment is deployed here)
        "RUNCOMFY_INPUTS": str(work / "table.parquet"),
        "RUNCOMFY_OUTPUT_URI": str(work / "out"),
        "RUNCOMFY_CREDENTIALS": "bench",
    }
    with sandbox_process(**config) as sb:
        await deploy(env, sb.base_url, args.limit)
        table_path = work / "table.parquet"
        pd.DataFrame(rows(sb.base_url, args.rows)).to_parquet(table_path, index=False)
        out = work / "out"
        options: dict[str, Any] = {
            "deployment": "generate-talking-videos/shard",
            "shard_size": args.shard_size,
            "credentials": "bench",
            "concurrency": Concurrency(limit=LIMIT_NAME),
            "max_concurrency_per_shard": args.per_shard,
            "waiting": Waiting(poll_initial_s=0.5, poll_max_s=2.0),
            "spending": Spending(allow_failed_rows=True),
        }
        workers = [start_worker(env, work / f"worker-{i}.log", args.worker_limit) for i in (1, 2)]
        slots: list[tuple[float, int]] = []
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_slots(slots, stop_sampling))
        ended: dict[str, float] = {}

        async def parent(name: str) -> pd.DataFrame:
            try:
                return await generate_talking_videos_sharded(str(table_path), str(out), **options)
            finally:
                ended[name] = time.monotonic()

        started = time.monotonic()
        first = asyncio.create_task(parent("first"))
        while sb.stats()["submits_accepted"] < args.kill_at * args.rows:
            if first.done():
                raise SystemExit(f"the first parent ended before the kill: {first.exception()}")
            await asyncio.sleep(0.5)
        killed_tree = kill_machine(workers[0])
        killed_at, killed_wall = time.monotonic(), time.time()
        posted_at_kill = sb.stats()["submits_accepted"]
        print(
            f"killed worker 1 ({len(killed_tree)} processes) at {killed_at - started:.0f} s, "
            f"{posted_at_kill} rows POSTed; re-running the parent",
            flush=True,
        )
        again = asyncio.create_task(parent("again"))
        manifests = await asyncio.gather(first, again)
        print(
            f"both parents ended {max(ended.values()) - killed_at:.0f} s after the kill", flush=True
        )
        stop_sampling.set()
        await sampler
        report["first_two_parents"] = await measure_parents(
            args, out, sb, manifests, ended, started, killed_at, killed_wall, killed_tree, slots
        )
        report["posted_at_kill"] = posted_at_kill

        third_started = time.monotonic()
        final = await generate_talking_videos_sharded(str(table_path), str(out), **options)
        report["third_parent"] = {
            "wall_s": round(time.monotonic() - third_started, 1),
            "statuses": final["status"].value_counts().to_dict(),
            "submitted_by_this_run": int(final["submitted_by_this_run"].sum()),
        }
        print("third parent:", report["third_parent"], flush=True)
        report["end"] = final_accounting(args, out, sb, final)
        workers[1].send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers[1].wait(timeout=30)


async def measure_parents(
    args: argparse.Namespace,
    out: Path,
    sb: Any,
    manifests: list[pd.DataFrame],
    ended: dict[str, float],
    started: float,
    killed_at: float,
    killed_wall: float,
    killed_tree: list[int],
    slots: list[tuple[float, int]],
) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("generate-talking-videos/shard")
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    dead_rows: set[int] = set()
    shards = []
    for run in sorted(runs, key=lambda r: r.name):
        beat_file = out / run.parameters["shard"]["heartbeat_name"]
        beat = json.loads(beat_file.read_text()) if beat_file.exists() else {}
        killed = beat.get("pid") in killed_tree
        ids = pd.read_parquet(run.parameters["inputs"])["id"]
        if killed:
            dead_rows.update(int(i[1:]) for i in ids)
        state = run.state
        shards.append(
            {
                "name": run.name,
                "on_killed_worker": killed,
                "state": state.name if state else None,
                # when it was taken as dead (killed) or ended (the others)
                "state_after_kill_s": round(state.timestamp.timestamp() - killed_wall, 1)
                if state
                else None,
                "message": (state.message or "")[:200] if state and killed else None,
            }
        )
    jobs = sb.requests()
    live_rows = set(range(args.rows)) - dead_rows
    live_in_flight = [
        (round(t - killed_at), in_flight(jobs, live_rows, t))
        for t in [killed_at + s for s in range(-10, 121, 5)]
    ]
    day = datetime.fromtimestamp(killed_wall).date().isoformat()
    revoked = [
        (round(w - killed_wall, 1), n)
        for w, n in lease_revocations(out.parent / "server.log", day)
        if w > killed_wall
    ]
    table_ids = {f"r{i:05d}" for i in range(args.rows)}
    return {
        "parents_end_after_kill_s": {k: round(v - killed_at, 1) for k, v in ended.items()},
        "killed_after_start_s": round(killed_at - started, 1),
        "shard_runs": shards,
        "shard_runs_count": len(runs),
        "rows_missing_from_manifests": [len(table_ids - set(m["id"])) for m in manifests],
        "statuses": [m["status"].value_counts().to_dict() for m in manifests],
        "slots": {
            "limit": args.limit,
            "expired_leases_revoked_after_kill": len(revoked),
            "slots_revoked": sum(n for _, n in revoked),
            "revoked_s_after_kill_first_last": [revoked[0][0], revoked[-1][0]] if revoked else None,
            "active_slots_around_kill": [
                (round(t - killed_at), n) for t, n in slots if -10 <= t - killed_at <= 120
            ][::5],
            "live_shards_jobs_in_flight_by_s_after_kill": live_in_flight,
        },
    }


def final_accounting(
    args: argparse.Namespace, out: Path, sb: Any, final: pd.DataFrame
) -> dict[str, Any]:
    stats = sb.stats()
    states, known = ledger_states(out)
    paid = {j["request_id"] for j in sb.requests()}
    statuses = final["status"].value_counts().to_dict()
    stored = statuses.get("succeeded", 0)
    unknown = statuses.get("outcome_unknown", 0)
    return {
        "rows": args.rows,
        "posts": stats["submits_accepted"],
        "duplicate_posts": stats["duplicate_submit_jobs"],
        "payloads_posted_more_than_once": stats["duplicate_submits"],
        "rows_stored": stored,
        "rows_outcome_unknown": unknown,
        "rows_lost": args.rows - stored - unknown,
        "paid_jobs_no_ledger_entry_knows": len(paid - known),
        "ledger_states": states,
        "cancels": stats["cancels"],
    }


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shard-kill-"))
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/shard_kill.py " + " ".join(sys.argv[1:]),
        "setup": {
            "rows": args.rows,
            "shard_size": args.shard_size,
            "workers": 2,
            "worker_limit": args.worker_limit,
            "account_limit": args.limit,
            "max_concurrency_per_shard": args.per_shard,
            "kill_at_share_posted": args.kill_at,
            "heartbeat_s": 10.0,
            "stale_after_s": 60.0,
            "slot_lease_s": 60.0,
        },
    }
    began = time.monotonic()
    with (
        postgres() as (database_url, commands),
        prefect_server(database_url, work / "server.log", HOME) as api,
    ):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        report["postgres_commands"] = [" ".join(c) for c in commands]
        with temporary_settings(updates={PREFECT_API_URL: api}):
            asyncio.run(run(args, api, work, report))
    report["wall_s"] = round(time.monotonic() - began, 1)
    path = save(args.name, report)
    print(json.dumps(report["end"], indent=2))
    print(f"saved {path}; logs in {work}")


if __name__ == "__main__":
    main()
