"""Crash and resume: the flow process is SIGKILLed at random points, then the table is run again.

Every repetition must end with every row succeeded or `outcome_unknown`, zero duplicate submits,
and no corrupt or partial output. A kill between the POST being accepted and the ledger
recording its request id leaves that row `outcome_unknown` by design (RunComfy has no
idempotency key and no request listing): that is counted and reported, not a failure.

`RELIABILITY_CRASH_REPS` sets the number of repetitions (default 4, for CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import FAST, TOKEN, check_outputs, config, creds, duplicate_submits, rows

from prefect_runcomfy import generate_talking_videos
from prefect_runcomfy.engine.outputs.store import TEMP_PREFIX
from prefect_runcomfy.sandbox import Sandbox, run_sandbox

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]

REPS = int(os.environ.get("RELIABILITY_CRASH_REPS", "4"))
ROWS = 8
RUNNER = Path(__file__).with_name("crash_runner.py")


@pytest.fixture(scope="module")
def crash_sandbox() -> Iterator[Sandbox]:
    with run_sandbox(config(workers=4, run_seconds=(0.2, 0.8))) as sandbox:
        yield sandbox


def _ledger(out: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in (out / "_ledger").glob("*.json"):
        if path.name.startswith(TEMP_PREFIX):
            continue  # a write in progress (or cut off by the kill): not an entry
        try:
            entries[path.stem] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
    return entries


async def _kill_at_random_point(
    sb: Sandbox, out: Path, args: Path, rng: random.Random, log: Path
) -> dict[str, Any]:
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "RELIABILITY_TOKEN": TOKEN,
    }
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(args)], env=env, stdout=sink, stderr=sink
        )
    mode = rng.choice(["submits", "submits", "stored", "time"])
    target = rng.randint(1, ROWS)
    try:
        for _ in range(600):
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            if proc.poll() is not None:
                break
            if mode == "submits" and sb.stats()["submits_accepted"] >= target:
                break
            if mode == "stored":
                states = [e.get("state") for e in _ledger(out).values()]
                if states.count("stored") >= min(target, ROWS - 1):
                    break
            if mode == "time" and _ledger(out):
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    states = [e.get("state") for e in _ledger(out).values()]
    return {
        "mode": mode,
        "target": target,
        "killed": proc.returncode == -signal.SIGKILL,
        "submitting_at_kill": states.count("submitting"),
        "stored_at_kill": states.count("stored"),
        "accepted_at_kill": sb.stats()["submits_accepted"],
    }


async def test_sigkill_at_random_points_then_rerun(
    crash_sandbox: Sandbox, tmp_path: Path, record_property: Any
) -> None:
    sb = crash_sandbox
    rng = random.Random(int(os.environ.get("RELIABILITY_CRASH_SEED", "20261125")))
    log = tmp_path / "runner.log"
    summary: list[dict[str, Any]] = []
    for rep in range(REPS):
        sb.reset()
        out = tmp_path / f"rep{rep}"
        table = rows(sb, ROWS, prefix=f"k{rep}-")
        args = tmp_path / f"args{rep}.json"
        args.write_text(
            json.dumps(
                {
                    "inputs": table,
                    "output_uri": str(out),
                    "max_concurrency": 4,
                    "base_url": sb.base_url,
                    **{name: section.model_dump() for name, section in FAST.items()},
                }
            )
        )
        facts = await _kill_at_random_point(sb, out, args, rng, log)
        # what a reader sees right after the crash: no partial file under a final name
        unfinished = 0
        if out.exists():
            unfinished = check_outputs_allowing_temps(out, unfinished_ok=True)["unfinished"]
        manifest = await generate_talking_videos(table, str(out), creds(sb), **FAST)
        statuses = list(manifest["status"])
        unknown = statuses.count("outcome_unknown")
        assert set(statuses) <= {"succeeded", "outcome_unknown"}, manifest[["id", "error"]]
        # only a row caught between "submitting" and "submitted" can be unknown
        assert unknown <= facts["submitting_at_kill"], (facts, statuses)
        assert duplicate_submits(sb) == 0, facts
        accepted = sb.stats()["submits_accepted"]
        assert accepted <= ROWS, facts
        leftover = check_outputs_allowing_temps(out)
        assert check_outputs_allowing_temps(out)["videos"] == statuses.count("succeeded")
        # a third run pays for nothing more
        again = await generate_talking_videos(table, str(out), creds(sb), **FAST)
        assert list(again["status"]) == statuses
        assert sb.stats()["submits_accepted"] == accepted
        facts.update(
            rep=rep,
            outcome_unknown=unknown,
            unknown_with_a_job=accepted - statuses.count("succeeded"),
            hidden_temp_files_left=leftover["temps"],
            whole_videos_without_sidecar_at_kill=unfinished,
        )
        summary.append(facts)
    total_unknown = sum(f["outcome_unknown"] for f in summary)
    line = (
        f"crash-and-resume: {REPS} repetitions, {REPS * ROWS} rows, "
        f"{total_unknown} rows outcome_unknown "
        f"({sum(f['unknown_with_a_job'] for f in summary)} of them had a job created), "
        f"0 duplicate submits, {sum(f['hidden_temp_files_left'] for f in summary)} hidden "
        f"temporary files left by kills, "
        f"{sum(f['whole_videos_without_sidecar_at_kill'] for f in summary)} whole videos "
        f"whose sidecar was not yet written at the kill; kills: {[f['mode'] for f in summary]}"
    )
    print(line)
    record_property("crash_summary", json.dumps(summary))
    assert all(f["killed"] or f["stored_at_kill"] == ROWS for f in summary)


def check_outputs_allowing_temps(out: Path, *, unfinished_ok: bool = False) -> dict[str, int]:
    """`check_outputs`, after moving aside the hidden temporary files a SIGKILL can leave.

    A kill in the middle of a local write leaves `.tmp-*` next to the outputs (hidden, ignored
    by the store's listing); they are counted here and reported, and never under a final name.
    """
    temps = [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    aside = out.parent / f"{out.name}-temps"
    for temp in temps:
        aside.mkdir(exist_ok=True)
        temp.rename(aside / temp.name)
    facts = check_outputs(out, unfinished_ok=unfinished_ok)
    facts["temps"] = len(temps)
    return facts
