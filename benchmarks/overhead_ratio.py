"""Per-row client overhead as a ratio to the floor, measured in one session (issue 13, point 4).

The machine's speed drifts by a third within an hour here (shared cores), so an absolute figure
per row says little; a ratio of two runs made back to back says more. This runs
`scale.py --rows N` (the flow) and `scale.py --rows N --floor --tags` (one task run per row
with the row task's tags, making the same three HTTP calls), alternately, `--rounds` times each,
each in a fresh process with its own Prefect server and sandbox, and reports the flow's CPU per
row over the floor's for every round and the median, with the untagged floor once for
reference (`--untagged`).

    .venv/bin/python benchmarks/overhead_ratio.py --rows 2000 --rounds 2
    .venv/bin/python benchmarks/overhead_ratio.py --rows 10000 --rounds 1

Results: `results/overhead_ratio_<rows>.json` (and each run's own `scale_*` JSON next to it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, save

HERE = Path(__file__).resolve().parent


def _scale(rows: int, name: str, *extra: str) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(HERE / "scale.py"), "--rows", str(rows), "--name", name, *extra],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return result


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {
        key: run[key]
        for key in (
            "client_overhead_ms_per_row",
            "user_ms_per_row",
            "system_ms_per_row",
            "wall_s",
            "statuses",
        )
    } | {"python_loop_ms": run["machine"].get("python_loop_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--untagged", action="store_true", help="also run the untagged floor once")
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        floor = _scale(args.rows, f"scale_{args.rows}_floor_tagged_r{i}", "--floor", "--tags")
        flow = _scale(args.rows, f"scale_{args.rows}_r{i}")
        ratio = flow["client_overhead_ms_per_row"] / floor["client_overhead_ms_per_row"]
        rounds.append({"floor_tagged": _brief(floor), "flow": _brief(flow), "ratio": ratio})
        print(
            f"round {i}: flow {_brief(flow)}\n         floor {_brief(floor)}\n  ratio {ratio:.2f}"
        )
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/overhead_ratio.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "rounds": rounds,
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
    }
    if args.untagged:
        untagged = _scale(args.rows, f"scale_{args.rows}_floor", "--floor")
        report["floor_untagged"] = _brief(untagged)
        report["ratio_to_untagged_floor"] = round(
            statistics.median(r["flow"]["client_overhead_ms_per_row"] for r in rounds)
            / untagged["client_overhead_ms_per_row"],
            3,
        )
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    print(f"saved {save(f'overhead_ratio_{args.rows}', report)}")


if __name__ == "__main__":
    main()
