"""Benchmark (issue 22): what a night of thousands of rows costs a shared Prefect server.

A table of `--rows` rows in shards of `--shard-size` on a PostgreSQL-backed `prefect server
start`, a process work pool with two workers (`--worker-limit` shard runs each), one
account-wide global concurrency limit (`--limit`), and the sandbox with as many parallel jobs
of `--run` seconds. The parent (`generate_talking_videos_sharded`) runs in this process.

Reported (`results/<name>.json`):

- wall time, and its ratio to the ideal: the same jobs (their recorded run times) list-scheduled
  in submission order on the sandbox's parallel jobs, with no lag;
- events per row, by event name (the server's `events` table), and Prefect API calls per row,
  by route (the server's access log);
- CPU per row: the server, PostgreSQL, the workers with their flow-run processes, this
  process (the parent);
- peak RSS of any flow-run process, sampled every second;
- the review page's and the artifacts' sizes;
- duplicate POSTs, and whether the row task runs' final states agree with the manifest.

Installs nothing; needs Debian's `postgresql` package (see `_cluster.py`).

    .venv/bin/python benchmarks/scale_server.py --rows 4000 --name scale_server_4000   # ~20 min
    .venv/bin/python benchmarks/scale_server.py --rows 400 --shard-size 100 --name scale_server_400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, quiet_prefect_env, rows, sandbox_process, save

HOME = quiet_prefect_env()
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

import pandas as pd  # noqa: E402
from _cluster import (  # noqa: E402
    LIMIT_NAME,
    deploy,
    descendants,
    postgres,
    prefect_env,
    prefect_server,
    start_worker,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)[^"]*" (\d{3})')
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --- processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of `pid` (and of its waited-for children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu(pid: int) -> float:
    """CPU of a process, its waited-for children and its live descendants."""
    return cpu_seconds(pid) + sum(cpu_seconds(p) for p in descendants(pid))


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class FlowRssSampler:
    """The peak RSS of any process below the workers, sampled every second in a thread."""

    def __init__(self, workers: list[subprocess.Popen[bytes]]) -> None:
        self.workers = workers
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for worker in self.workers:
                for pid in descendants(worker.pid):
                    self.peak = max(self.peak, rss_of(pid))

    def __enter__(self) -> FlowRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def pid_of(command_part: str) -> int:
    """The oldest process whose command line holds `command_part`."""
    found = subprocess.run(["pgrep", "-of", "--", command_part], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def postmaster_pid(database_url: str) -> int:
    """The PostgreSQL server's pid, found by its port."""
    return pid_of(f"-p {database_url.rsplit(':', 1)[1].split('/')[0]} ")


# --- measuring ----------------------------------------------------------------------------------


def ideal_makespan(jobs: list[dict[str, Any]], parallel: int) -> float:
    """The recorded jobs list-scheduled in submission order on `parallel` places, no lag."""
    free = [0.0] * parallel
    for job in sorted(jobs, key=lambda j: j["submitted_mono"]):
        run = job["finished_mono"] - job["started_mono"]
        heapq.heappush(free, heapq.heappop(free) + run)
    return max(free)


PSQL = ["psql", "-h", "127.0.0.1", "-U", "prefect", "-d", "prefect", "-AtF\t"]


def psql(database_url: str, query: str) -> list[list[str]]:
    port = database_url.rsplit(":", 1)[1].split("/")[0]
    done = subprocess.run(
        [*PSQL, "-p", port, "-c", query],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def api_calls(server_log: Path) -> Counter[str]:
    """Prefect API requests by route (ids replaced by `{id}`), from the server's access log."""
    calls: Counter[str] = Counter()
    for line in server_log.read_text(errors="replace").splitlines():
        match = ACCESS.search(line)
        if match:
            calls[f"{match.group(1)} {UUID.sub('{id}', match.group(2))}"] += 1
    return calls


def server_database(database_url: str, n: int) -> dict[str, Any]:
    """Events, task runs, logs and artifacts as the server stored them."""
    events = {name: int(c) for name, c in psql(database_url, EVENTS_SQL)}
    states = psql(database_url, TASK_STATES_SQL)
    artifacts = [
        {"key": k, "type": t, "bytes": int(b)} for k, t, b in psql(database_url, ARTIFACTS_SQL)
    ]
    logs = int(psql(database_url, "select count(*) from log")[0][0])
    return {
        "events_total": sum(events.values()),
        "events_per_row": round(sum(events.values()) / n, 3),
        "events_by_name": dict(sorted(events.items(), key=lambda kv: -kv[1])),
        "task_run_states": {name: state for name, state in states},
        "logs_per_row": round(logs / n, 3),
        "artifacts": sorted(artifacts, key=lambda a: -a["bytes"])[:20],
        "artifacts_total_bytes": sum(a["bytes"] for a in artifacts),
    }


EVENTS_SQL = "select event, count(*) from events group by event"
TASK_STATES_SQL = "select name, state_type from task_run"
ARTIFACTS_SQL = (
    "select coalesce(key, '-'), type, length(coalesce(data::text, '')) + "
    "length(coalesce(description, '')) from artifact"
)


def agreement(task_states: dict[str, str], manifest: pd.DataFrame) -> dict[str, Any]:
    """Whether every row's task run ended as the manifest says."""
    done = {name for name, state in task_states.items() if state == "COMPLETED"}
    succeeded = set(manifest.loc[manifest["status"] == "succeeded", "id"])
    rows_with_task = succeeded & set(task_states)
    return {
        "rows_succeeded": len(succeeded),
        "row_task_runs": len(rows_with_task),
        "succeeded_rows_whose_task_run_is_not_completed": len(rows_with_task - done),
        "succeeded_rows_without_task_run": len(succeeded - set(task_states)),
    }


def page_sizes(out: Path) -> dict[str, Any]:
    pages = sorted(out.glob("*.html")) + sorted(out.glob("_review/**/*.html"))
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in pages}
    return {"files": len(sizes), "largest_bytes": max(sizes.values(), default=0), "bytes": sizes}


# --- the run ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--limit", type=int, default=16, help="account-wide slots = sandbox jobs")
    parser.add_argument("--per-shard", type=int, default=8, help="max_concurrency_per_shard")
    parser.add_argument("--worker-limit", type=int, default=2, help="shard runs per worker")
    parser.add_argument("--run", default="1-3", help="job run time range, seconds")
    parser.add_argument("--name", default="scale_server_4000")
    return parser.parse_args()


async def run(args: argparse.Namespace, db: str, api: str, work: Path) -> dict[str, Any]:
    from prefect_runcomfy import Concurrency, Spending, Waiting, generate_talking_videos_sharded

    low, high = (float(x) for x in args.run.split("-"))
    config = {"workers": args.limit, "run_seconds": [low, high], "render": "tiny", "seed": 7}
    env = {
        **prefect_env(api, HOME),
        "PREFECT_WORKER_QUERY_SECONDS": "5",
        "RUNCOMFY_INPUTS": str(work / "table.parquet"),
        "RUNCOMFY_OUTPUT_URI": str(work / "out"),
        "RUNCOMFY_CREDENTIALS": "bench",
    }
    server_pid = pid_of(f"server start --host 127.0.0.1 --port {api.rsplit(':', 1)[1][:-4]}")
    with sandbox_process(**config) as sb:
        await deploy(env, sb.base_url, args.limit)
        table = work / "table.parquet"
        pd.DataFrame(rows(sb.base_url, args.rows)).to_parquet(table, index=False)
        out = work / "out"
        workers = [start_worker(env, work / f"worker-{i}.log", args.worker_limit) for i in (1, 2)]
        pg = postmaster_pid(db)
        before = {"server": tree_cpu(server_pid), "postgres": tree_cpu(pg)}
        self_before = time.process_time()
        started = time.monotonic()
        with FlowRssSampler(workers) as rss:
            manifest = await generate_talking_videos_sharded(
                str(table),
                str(out),
                deployment="generate-talking-videos/shard",
                shard_size=args.shard_size,
                credentials="bench",
                concurrency=Concurrency(limit=LIMIT_NAME),
                max_concurrency_per_shard=args.per_shard,
                waiting=Waiting(poll_initial_s=0.5, poll_max_s=2.0),
                spending=Spending(allow_failed_rows=True),
            )
        wall = time.monotonic() - started
        cpu = {
            "server": tree_cpu(server_pid) - before["server"],
            "postgres": tree_cpu(pg) - before["postgres"],
            # a worker's waited-for children are its flow-run processes (read before it ends)
            "workers_and_flows": sum(tree_cpu(w.pid) for w in workers),
            "parent": time.process_time() - self_before,
        }
        for worker in workers:
            worker.send_signal(signal.SIGINT)
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=60)
        jobs = sb.requests()
        stats = sb.stats()
    n = args.rows
    ideal = ideal_makespan(jobs, args.limit)
    database = server_database(db, n)
    calls = api_calls(work / "server.log")
    # Prefect's in-memory broker holds 10,000 messages per subscriber and drops the rest:
    # a dropped event can be a task run's state the server never records.
    dropped = (work / "server.log").read_text(errors="replace").count("dropping message")
    return {
        "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "over_ideal": round(wall / ideal, 3),
        "statuses": manifest["status"].value_counts().to_dict(),
        "posts": stats["submits_accepted"],
        "duplicate_posts": stats["duplicate_submit_jobs"],
        "server_messages_dropped": dropped,
        "api_calls_total": sum(calls.values()),
        "api_calls_per_row": round(sum(calls.values()) / n, 3),
        "api_calls_by_route": dict(calls.most_common(25)),
        "cpu_ms_per_row": {k: round(v * 1000 / n, 1) for k, v in cpu.items()},
        "flow_process_peak_rss_mib": round(rss.peak / 2**20, 1),
        "agreement": agreement(database.pop("task_run_states"), manifest),
        "server": database,
        "page": page_sizes(out),
    }


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-server-"))
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/scale_server.py " + " ".join(sys.argv[1:]),
        "setup": vars(args) | {"workers": 2, "sandbox_parallel_jobs": args.limit},
    }
    with (
        postgres() as (database_url, _commands),
        prefect_server(database_url, work / "server.log", HOME) as api,
    ):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            report["result"] = asyncio.run(run(args, database_url, api, work))
    path = save(args.name, report)
    print(json.dumps({k: v for k, v in report["result"].items() if k != "server"}, indent=2))
    print(f"saved {path}; logs in {work}")


if __name__ == "__main__":
    main()
