"""Benchmark: does the flow's process hold up on a 100,000-row table (issue 22, point 4)?

For each table size N (`--rows`, default 10,000 and 100,000) a table of N distinct valid rows
(the sandbox's sample media, `_common.rows`) is written as Parquet; then each stage runs in a
fresh process of its own (`child` mode of this script), so that one stage's peak does not
hide in another's:

- `read`: the table read alone (`engine.inputs.table.read_table`: pandas and pyarrow), the
  baseline every other stage starts with.
- `validate`: what `prefect-runcomfy validate TABLE` does (`cli._planned` with
  `MediaSettings(mode="offline")`: `plan_table` with no output location, no network).
- `plan`: what `prefect-runcomfy plan TABLE --output OUT` does (`plan_table` against an
  empty output folder, media checked with `mode="check"`, the price read from the sandbox's
  catalog).
- `flow`: `generate_talking_videos(table, out, creds, spending=Spending(max_submits=0))` on
  `prefect_test_harness` against the sandbox. Nothing is paid: every row is planned, and the
  run is refused by the submit budget (`SubmitLimitError`) before any POST. Recorded too: the
  flow runs and task runs the Prefect API holds afterwards, and the HTTP requests this
  process sent to the Prefect API and to the sandbox.

Per stage: wall time, RSS before the stage (its imports, the harness's client, ...), the peak
RSS of the measuring process (VmHWM, reset just before the stage), RSS right after (the
stage's result still held), and growth per row = (peak - before) / N. `table_bytes_per_row`
is the table's own size in memory (`DataFrame.memory_usage(deep=True)` of the Parquet read
back) / N. `marginal` is the growth per row between the smallest and the largest table, where
a stage's fixed costs cancel out: it should be of the order of the table's own bytes per row
and of what reading the table alone (`read`) costs.

    .venv/bin/python benchmarks/scale_memory.py                      # 10k and 100k (~5 min)
    .venv/bin/python benchmarks/scale_memory.py --rows 10000 --stages flow

`--profile` runs each stage under tracemalloc instead (slower, and its own bookkeeping
inflates RSS: not for the figures) and prints the traced peak and the 25 lines that hold the
most memory at the stage's end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    TOKEN,
    machine,
    peak_rss_bytes,
    quiet_prefect_env,
    reset_peak_rss,
    rows,
    rss_bytes,
    sandbox_process,
    save,
)

MiB = 1 << 20
STAGES = ("read", "validate", "plan", "flow")
RESULT_MARK = "SCALE_MEMORY_RESULT "


# -- the measuring process (one per stage and size) ------------------------------------------


def _count_http(counts: Counter[str]) -> None:
    """Count every request this process sends through httpx, by host:port."""
    import httpx

    original = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        counts[f"{request.url.host}:{request.url.port}"] += 1
        return await original(self, request, **kwargs)

    httpx.AsyncClient.send = send  # type: ignore[method-assign]


async def _validate(table: str) -> Any:
    from prefect_runcomfy.engine.plan.planning import MediaSettings, plan_table
    from prefect_runcomfy.models import INFINITE_TALK

    media = MediaSettings(mode="offline")
    return await plan_table(table, None, INFINITE_TALK, media=media)


async def _plan(table: str, out: str, base_url: str) -> Any:
    from prefect_runcomfy.api.client import RunComfyClient
    from prefect_runcomfy.engine.plan.planning import MediaSettings, plan_table, planning_store
    from prefect_runcomfy.models import INFINITE_TALK

    return await plan_table(
        table,
        planning_store(out, None),
        INFINITE_TALK,
        media=MediaSettings(mode="check"),
        make_client=lambda: RunComfyClient(api_token=TOKEN, base_url=base_url),
    )


def _flow(table: str, out: str, base_url: str) -> Any:
    from prefect_runcomfy import RunComfyCredentials, Spending, generate_talking_videos

    creds = RunComfyCredentials(api_token=TOKEN, base_url=base_url)
    try:
        return generate_talking_videos(table, out, creds, spending=Spending(max_submits=0))
    except Exception as exc:  # the expected end: refused by the submit budget
        # said, not kept: its traceback's frames would keep the run's plan alive
        return f"{type(exc).__name__}: {str(exc)[:200]}"


async def _prefect_records() -> dict[str, Any]:
    """What the run left in the harness's (fresh) Prefect API: flow runs, task runs, logs."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        task_runs = (await client._client.post("/task_runs/count", json={})).json()
        logs = await client.read_logs(limit=200)
    state = runs[0].state if runs else None
    return {
        "flow_runs": [{"name": r.name, "state": r.state_name} for r in runs],
        "task_runs": task_runs,
        "log_lines_first_200": len(logs),
        "last_state_message": ((state.message or "") if state else "")[:300],
    }


def _run_stage(stage: str, table: str, out: str, base_url: str) -> tuple[Any, float]:
    started = time.monotonic()
    if stage == "read":
        from prefect_runcomfy.engine.inputs.table import read_table

        result = read_table(table)
    elif stage == "validate":
        result = asyncio.run(_validate(table))
    elif stage == "plan":
        result = asyncio.run(_plan(table, out, base_url))
    else:
        result = _flow(table, out, base_url)
    return result, time.monotonic() - started


def _describe(result: Any) -> dict[str, Any]:
    import pandas as pd

    if isinstance(result, str):
        return {"ended": result}
    if isinstance(result, pd.DataFrame):
        return {"ended": f"read {len(result)} rows"}
    if hasattr(result, "describe"):
        return {"ended": "planned", "plan": result.describe()}
    return {"ended": type(result).__name__}


def child(stage: str, table: str, out: str, base_url: str, profile: bool) -> None:
    """Measure one stage in this fresh process; print the figures as one JSON line."""
    quiet_prefect_env()
    from prefect.testing.utilities import prefect_test_harness

    import prefect_runcomfy.cli  # noqa: F401  (everything a stage imports, before "before")

    http: Counter[str] = Counter()
    _count_http(http)
    harness = (
        prefect_test_harness(server_startup_timeout=120)
        if stage == "flow"
        else contextlib.nullcontext()
    )
    with harness:
        gc.collect()
        before = rss_bytes()
        was_reset = reset_peak_rss()
        if profile:
            import tracemalloc

            tracemalloc.start(1)
        result, wall = _run_stage(stage, table, out, base_url)
        peak = peak_rss_bytes()
        if profile:
            _print_profile()
        gc.collect()
        after = rss_bytes()
        figures: dict[str, Any] = {
            "wall_s": round(wall, 2),
            "rss_before_bytes": before,
            "peak_rss_bytes": peak if was_reset else max(peak, after),
            "peak_is_vmhwm_after_reset": was_reset,
            "rss_after_bytes": after,
            "http_requests": dict(http),
            **_describe(result),
        }
        if stage == "flow":
            figures["prefect"] = asyncio.run(_prefect_records())
    print(RESULT_MARK + json.dumps(figures, default=str), flush=True)


def _print_profile() -> None:
    import tracemalloc

    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    print(f"tracemalloc: now {current / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB", flush=True)
    for stat in snapshot.statistics("lineno")[:25]:
        print(f"  {stat.size / MiB:8.1f} MiB {stat.count:9d} blocks  {stat.traceback}")
    tracemalloc.stop()


# -- the parent: tables, sandbox, one child per stage and size -------------------------------


def _write_table(base_url: str, n: int, folder: Path) -> tuple[Path, int]:
    """The table of `n` rows as Parquet, and its size in memory as read back."""
    import pandas as pd

    path = folder / f"rows_{n}.parquet"
    pd.DataFrame(rows(base_url, n)).to_parquet(path)
    frame = pd.read_parquet(path)
    return path, int(frame.memory_usage(deep=True).sum())


def _measure(stage: str, table: Path, out: Path, base_url: str, profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "child", stage, str(table), str(out), base_url]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if profile:
        print(done.stdout, flush=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    raise RuntimeError(f"{stage} on {table.name} gave no result:\n{done.stderr[-3000:]}")


def _per_row(figures: dict[str, Any], n: int, table_bytes: int) -> dict[str, Any]:
    growth = figures["peak_rss_bytes"] - figures["rss_before_bytes"]
    held = figures["rss_after_bytes"] - figures["rss_before_bytes"]
    return {
        **figures,
        "rss_before_mib": round(figures["rss_before_bytes"] / MiB, 1),
        "peak_rss_mib": round(figures["peak_rss_bytes"] / MiB, 1),
        "growth_mib": round(growth / MiB, 1),
        "growth_bytes_per_row": round(growth / n),
        "held_after_bytes_per_row": round(held / n),
        "growth_vs_table": round(growth / table_bytes, 2),
        "wall_ms_per_row": round(1000 * figures["wall_s"] / n, 3),
    }


def _marginal(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Growth per row between the smallest and the largest table (the fixed costs of a
    stage cancel out), by stage, beside the table's own bytes per row."""
    if len(sizes) < 2:
        return {}
    small, large = sorted(sizes, key=int)[0], sorted(sizes, key=int)[-1]
    rows = int(large) - int(small)
    table = (sizes[large]["table_bytes"] - sizes[small]["table_bytes"]) / rows
    out: dict[str, Any] = {"between": [int(small), int(large)], "table_bytes_per_row": round(table)}
    for stage in STAGES:
        if stage in sizes[small] and stage in sizes[large]:
            grew = sizes[large][stage]["peak_rss_bytes"] - sizes[large][stage]["rss_before_bytes"]
            grew -= sizes[small][stage]["peak_rss_bytes"] - sizes[small][stage]["rss_before_bytes"]
            out[stage] = {
                "growth_bytes_per_row": round(grew / rows),
                "vs_table": round(grew / rows / table, 1),
            }
    return out


def main() -> None:
    """Parse the command line; run the parent (or, in `child` mode, one stage)."""
    if len(sys.argv) >= 6 and sys.argv[1] == "child":
        child(*sys.argv[2:6], profile="--profile" in sys.argv[6:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--name", default="scale_memory")
    parser.add_argument("--profile", action="store_true", help="tracemalloc; nothing saved")
    args = parser.parse_args()
    quiet_prefect_env()
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/scale_memory.py " + " ".join(sys.argv[1:]),
        "flow_call": "generate_talking_videos(table.parquet, out, creds, "
        "spending=Spending(max_submits=0)) under prefect_test_harness",
        "sizes": {},
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-memory-"))
    with sandbox_process(workers=4, run_seconds=0.0, queue_seconds=0.0, render="tiny") as sb:
        for n in args.rows:
            table, table_bytes = _write_table(sb.base_url, n, folder)
            size: dict[str, Any] = {
                "table_bytes": table_bytes,
                "table_bytes_per_row": round(table_bytes / n),
                "parquet_bytes": table.stat().st_size,
            }
            for stage in args.stages:
                out = folder / f"out_{n}_{stage}"
                if stage == "plan":  # an empty output location: its (empty) ledger is read
                    out.mkdir()
                figures = _measure(stage, table, out, sb.base_url, args.profile)
                size[stage] = _per_row(figures, n, table_bytes)
                print(f"{n} rows, {stage}: {json.dumps(size[stage])}", flush=True)
            report["sizes"][str(n)] = size
        report["sandbox_requests_total"] = sb.stats()["requests_total"]
    report["marginal"] = _marginal(report["sizes"])
    print(f"marginal: {json.dumps(report['marginal'])}")
    if not args.profile:
        print(f"saved {save(args.name, report)}")


if __name__ == "__main__":
    main()
