"""Issue 23, point 3: how long `prefect-runcomfy --help`, `validate` and `status` take to start.

Each command runs `--rounds` times, each in a fresh process (the console script of this
checkout's `.venv`), against a sandbox in its own process for `status`; the wall time of the
whole process is what a user waits for. `validate` reads a 4-row CSV whose media are URLs
(no network: validate never calls out); `status` asks the sandbox about an unknown request
(one HTTP call, exit 4). Also recorded: `python -X importtime` of the CLI module, its largest
imports.

    .venv/bin/python benchmarks/cli_startup.py --name cli_startup_after --rounds 5

`--code DIR` runs the commands with `PYTHONPATH=DIR`: another version of the package (e.g.
`git archive main prefect_runcomfy | tar -x -C DIR`), measured in the same session, so that
before and after share the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import TOKEN, machine, quiet_prefect_env, sandbox_process, save

CLI = str(Path(sys.executable).parent / "prefect-runcomfy")


def _table(folder: Path) -> str:
    path = folder / "rows.csv"
    lines = ["id,prompt,image,audio"]
    lines += [f"r{i},hello,https://x.test/{i}.png,https://x.test/{i}.mp3" for i in range(4)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _time(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, capture_output=True, check=False)
    return time.perf_counter() - start, done.returncode


def _imports(limit: int = 8) -> list[dict[str, Any]]:
    """The largest cumulative imports of `prefect_runcomfy.cli` (microseconds)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import prefect_runcomfy.cli"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = []
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            found.append({"module": parts[2], "cumulative_us": int(parts[1])})
    return sorted(found, key=lambda f: -f["cumulative_us"])[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="cli_startup")
    parser.add_argument("--code", help="PYTHONPATH of the package version to measure")
    args = parser.parse_args()
    if args.code:
        os.environ["PYTHONPATH"] = args.code
    quiet_prefect_env()
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    with sandbox_process(workers=1) as sb:
        env = {**os.environ, "RUNCOMFY_API_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": sb.base_url}
        commands = {
            "--help": ["--help"],
            "validate": ["validate", _table(folder)],
            "status": ["status", "00000000-0000-0000-0000-000000000000"],
        }
        results: dict[str, Any] = {}
        for name, argv in commands.items():
            _time(argv, env)  # a first run warms the OS's file cache; not counted
            runs = [_time(argv, env) for _ in range(args.rounds)]
            seconds = [round(s, 3) for s, _ in runs]
            results[name] = {
                "argv": argv,
                "exit_codes": sorted({code for _, code in runs}),
                "seconds": seconds,
                "median_s": round(statistics.median(seconds), 3),
                "min_s": min(seconds),
            }
            print(f"{name:>10}: median {results[name]['median_s']:.2f} s, min {min(seconds):.2f} s")
    path = save(
        args.name,
        {
            "command": " ".join(sys.argv),
            "code": args.code or "this checkout",
            "machine": info,
            "commands": results,
            "largest_imports_of_the_cli_module": _imports(),
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
