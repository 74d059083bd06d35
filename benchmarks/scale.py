"""Benchmark 4: many rows against an instant sandbox (run_seconds=0, render tiny).

The flow runs in this process on a real Prefect API: `prefect_test_harness`, i.e. a local
Prefect server (a child process, SQLite in a temporary PREFECT_HOME). The sandbox runs in its
own process with enough workers that jobs never queue, so nearly all the time is the client's.

Reported: wall time of the flow call, CPU seconds of this (the flow's) process and of the
Prefect server process, client-side overhead per row = flow-process CPU seconds / rows (and
wall / rows), peak RSS of the flow process (VmHWM), the size of the Prefect SQLite database
(with its -wal/-shm files), and HTTP requests to the sandbox per row.

    .venv/bin/python benchmarks/scale.py --rows 2000
    .venv/bin/python benchmarks/scale.py --rows 10000
    .venv/bin/python benchmarks/scale.py --rows 2000 --floor

`--floor` runs, in the same setup, the least any flow with a visible Prefect task run per row
must do: per row one task run (same settings as the batch's row task) that makes the same
three HTTP calls (submit, result, download of the video into memory) with one shared
`RunComfyClient`, and nothing else (no checks, ledger, files, probe, poster, sidecar, logs of
its own, manifest). The flow's CPU per row minus the floor's is what this library itself adds.
`--floor --tags` gives the floor's task runs the row task runs' tags (`runcomfy` and the
model's): Prefect then asks its API for tag concurrency slots at every task run's start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    TOKEN,
    machine,
    peak_rss_bytes,
    quiet_prefect_env,
    rows,
    rss_bytes,
    sandbox_process,
    save,
)

quiet_prefect_env()

import pandas as pd  # noqa: E402

MiB = 1 << 20


def _children() -> list[tuple[int, str]]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _db_size() -> tuple[str, int]:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    db = Path((url.get_secret_value() if url else "").split("///")[-1])
    files = list(db.parent.glob(db.name + "*"))
    return str(db), sum(f.stat().st_size for f in files)


def _floor_flow() -> Any:
    """The floor flow (built on first use: Prefect must be imported after `quiet_prefect_env`)."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.utilities.annotations import quote

    from prefect_runcomfy.api.models import InfiniteTalkInput

    @task(task_run_name="{row_id}", retries=0, cache_policy=NO_CACHE, persist_result=False)
    async def bare_row(row_id: str, payload: dict[str, Any], client: Any) -> str:
        submitted = await client.submit(payload)
        while True:
            result = await client.result(submitted.request_id)
            if result.status.is_terminal:
                break
            await asyncio.sleep(0.05)
        chunks = 0
        async with client.output_http.stream("GET", result.output_urls[0]) as answer:
            async for chunk in answer.aiter_bytes():
                chunks += len(chunk)
        return submitted.request_id

    @flow(name="scale-floor")
    async def floor(
        table: str, credentials: Any, max_concurrency: int = 32, tagged: bool = False
    ) -> pd.DataFrame:
        frame = pd.read_parquet(table)
        payloads = [
            (
                row.pop("id"),
                InfiniteTalkInput.model_validate(row).to_api_payload(),
            )
            for row in frame.to_dict("records")
        ]
        clients = [credentials.get_client() for _ in range(max_concurrency)]
        semaphore = asyncio.Semaphore(max_concurrency)

        async def one(row_id: str, payload: dict[str, Any]) -> str:
            async with semaphore:
                client = clients.pop()
                try:
                    return await bare_row(row_id, quote(payload), quote(client))
                finally:
                    clients.append(client)

        from prefect import tags

        from prefect_runcomfy.api.models import MODEL_ID
        from prefect_runcomfy.report.naming import run_tags

        with tags(*(run_tags(MODEL_ID) if tagged else ())):
            done = await asyncio.gather(*(one(i, p) for i, p in payloads))
        for client in clients:
            await client.aclose()
        return pd.DataFrame({"id": [i for i, _ in payloads], "request_id": done}).assign(
            status="succeeded"
        )

    return floor


def floor_flow(table: str, credentials: Any, *, max_concurrency: int, tagged: bool = False) -> Any:
    """Run the floor flow (see the module docstring)."""
    return _floor_flow()(table, credentials, max_concurrency=max_concurrency, tagged=tagged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--floor", action="store_true", help="run the bare floor flow instead (see above)"
    )
    parser.add_argument("--tags", action="store_true", help="the floor's task runs tagged")
    parser.add_argument(
        "--call",
        choices=("sync", "async"),
        default="sync",
        help="call the flow from plain code (sync, the default) or await it in a coroutine, "
        "as the floor flow is",
    )
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from prefect_runcomfy import RunComfyCredentials, Waiting, generate_talking_videos

    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "max_concurrency": args.concurrency,
        "prefect_api": "prefect_test_harness (local Prefect server, SQLite, temp PREFECT_HOME)",
        "call": "async (asyncio.run)" if args.floor else args.call,
        "flow": ("floor (one task run + 3 HTTP calls per row" + (", tagged)" if args.tags else ")"))
        if args.floor
        else "generate_talking_videos",
    }
    config = {"workers": 256, "run_seconds": 0.0, "queue_seconds": 0.0, "render": "tiny"}
    with (
        prefect_test_harness(server_startup_timeout=60),
        sandbox_process(**config) as sb,
    ):
        servers = [pid for pid, cmd in _children() if "_common.py sandbox" not in cmd]
        server_cpu_before = sum(_cpu_seconds(p) for p in servers)
        # a file path, not a list of dicts: Prefect refuses flow parameters over 512 KiB
        # (about 2,300 rows like these; see benchmarks/FINDINGS.md)
        folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        table = folder / "rows.parquet"
        pd.DataFrame(rows(sb.base_url, args.rows)).to_parquet(table)
        creds = RunComfyCredentials(api_token=TOKEN, base_url=sb.base_url)
        out = str(folder / "out")
        rss_before = rss_bytes()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        if args.floor:
            manifest = asyncio.run(
                floor_flow(str(table), creds, max_concurrency=args.concurrency, tagged=args.tags)
            )
        else:
            kwargs: dict[str, Any] = {
                "max_concurrency": args.concurrency,
                "waiting": Waiting(poll_initial_s=0.05, poll_max_s=1.0),
            }
            if args.call == "async":

                async def from_async_code() -> Any:
                    return await generate_talking_videos(str(table), out, creds, **kwargs)

                manifest = asyncio.run(from_async_code())
            else:
                manifest = generate_talking_videos(str(table), out, creds, **kwargs)
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        server_cpu = sum(_cpu_seconds(p) for p in servers) - server_cpu_before
        _db_path, db_bytes = _db_size()
        stats = sb.stats()
        report.update(
            {
                "statuses": manifest["status"].value_counts().to_dict(),
                "wall_s": round(wall, 1),
                "wall_ms_per_row": round(1000 * wall / args.rows, 2),
                "flow_process_cpu_s": round(cpu, 1),
                "client_overhead_ms_per_row": round(1000 * cpu / args.rows, 2),
                # user: Python and C code of this process; system: the kernel working for it
                # (loopback TCP, file writes, fsync, thread wake-ups)
                "user_ms_per_row": round(
                    1000 * (cpu_after.ru_utime - cpu_before.ru_utime) / args.rows, 2
                ),
                "system_ms_per_row": round(
                    1000 * (cpu_after.ru_stime - cpu_before.ru_stime) / args.rows, 2
                ),
                "prefect_server_cpu_s": round(server_cpu, 1),
                "prefect_server_cpu_ms_per_row": round(1000 * server_cpu / args.rows, 2),
                "rss_before_mib": round(rss_before / MiB, 1),
                "peak_rss_mib": round(peak_rss_bytes() / MiB, 1),
                "prefect_db_mib": round(db_bytes / MiB, 1),
                "prefect_db_kib_per_row": round(db_bytes / 1024 / args.rows, 1),
                "sandbox_requests_per_row": round(stats["requests_total"] / args.rows, 2),
                "duplicate_submits": stats["duplicate_submits"],
                "output_files": sum(1 for _ in Path(out).rglob("*") if _.is_file()),
            }
        )
        print(report, flush=True)
    default_name = f"scale_{args.rows}" + ("_floor" if args.floor else "")
    default_name += "_tagged" if args.floor and args.tags else ""
    print(f"saved {save(args.name or default_name, report)}")


if __name__ == "__main__":
    main()
