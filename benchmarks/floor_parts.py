"""What the floor of `scale.py --floor` is made of: a Prefect task run, and an HTTP request.

Measured in this process, one after the other, as CPU time (user + system) per item:

- `task_run`: N task runs of an async task that does nothing (same settings as the batch's
  row task: `cache_policy=NO_CACHE`, `persist_result=False`, named after the row), 32 at a
  time in one flow, on a local Prefect server (`prefect_test_harness`);
- `task_run_with_log_line`: the same, each task logging one line with `get_run_logger()` (what
  a row's "stored" line costs through Prefect's console and API log handlers);
- `httpx_get`: N sequential GETs of the sandbox's health page with a plain `httpx.AsyncClient`
  (one kept-alive connection);
- `client_result`: N sequential `RunComfyClient.result()` calls (the same request plus this
  library's error check and model validation).

    .venv/bin/python benchmarks/floor_parts.py
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, machine, quiet_prefect_env, rows, sandbox_process, save

quiet_prefect_env()


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _per_item(n: int, run: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    user0, sys0 = _cpu()
    await run()
    user1, sys1 = _cpu()
    return {
        "cpu_ms": round(1000 * (user1 - user0 + sys1 - sys0) / n, 2),
        "user_ms": round(1000 * (user1 - user0) / n, 2),
        "system_ms": round(1000 * (sys1 - sys0) / n, 2),
    }


def _task_runs(n: int, *, log_line: bool) -> Callable[[], Awaitable[Any]]:
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NO_CACHE

    @task(task_run_name="{row_id}", retries=0, cache_policy=NO_CACHE, persist_result=False)
    async def bare(row_id: str) -> str:
        if log_line:
            get_run_logger().info("%s: done", row_id)
        return row_id

    @flow(name="floor-parts")
    async def many() -> int:
        semaphore = asyncio.Semaphore(32)

        async def one(i: int) -> str:
            async with semaphore:
                return await bare(f"r{i:05d}")

        return len(await asyncio.gather(*(one(i) for i in range(n))))

    return many


async def _http(n: int, base_url: str) -> dict[str, Any]:
    import httpx

    from prefect_runcomfy import RunComfyClient
    from prefect_runcomfy.api.models import InfiniteTalkInput

    found: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url) as http:
        for _ in range(20):  # warm up: connection, imports
            await http.get("/_sandbox/health")

        async def gets() -> None:
            for _ in range(n):
                await http.get("/_sandbox/health")

        found["httpx_get"] = await _per_item(n, gets)

    async with RunComfyClient(TOKEN, base_url) as client:
        sample = {k: v for k, v in rows(base_url, 1)[0].items() if k != "id"}
        request_id = (await client.submit(InfiniteTalkInput.model_validate(sample))).request_id
        await client.result(request_id)

        async def results() -> None:
            for _ in range(n):
                await client.result(request_id)

        found["client_result"] = await _per_item(n, results)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/floor_parts.py " + " ".join(sys.argv[1:]),
        "n": args.n,
    }
    with prefect_test_harness(server_startup_timeout=60):
        asyncio.run(_task_runs(200, log_line=True)())  # warm up: imports, server caches
        for key, log_line in (("task_run", False), ("task_run_with_log_line", True)):
            many = _task_runs(args.n, log_line=log_line)
            report[key] = asyncio.run(_per_item(args.n, many))
    with sandbox_process(workers=4, run_seconds=0.0, queue_seconds=0.0, render="tiny") as sb:
        report.update(asyncio.run(_http(args.n, sb.base_url)))
    print(report, flush=True)
    print(f"saved {save('floor_parts', report)}")


if __name__ == "__main__":
    main()
