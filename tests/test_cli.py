"""The `prefect-runcomfy` command, run as a real process against the sandbox and a real
Prefect API: exit codes, help, validate, run, demo, status, cancel, collect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prefect.settings import get_current_settings
from sandbox_helpers import api_requests

from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = pytest.mark.usefixtures("prefect_api")

CLI = str(Path(sys.executable).parent / "prefect-runcomfy")
COMMANDS = ["run", "plan", "validate", "sandbox", "demo", "status", "cancel", "collect"]


@pytest.fixture
def sb(shared_sandbox: Sandbox) -> Sandbox:
    shared_sandbox.reset(config=True)
    return shared_sandbox


def cli(
    *args: str, token: str | None = None, base_url: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    env["COLUMNS"] = "200"
    env.pop("RUNCOMFY_API_TOKEN", None)
    if token:
        env["RUNCOMFY_API_TOKEN"] = token
    if base_url:
        env["RUNCOMFY_BASE_URL"] = base_url
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


def write_table(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    from typer.testing import CliRunner

    from prefect_runcomfy.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example" in result.output, result.output


def test_the_console_script_starts() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert all(command in result.stdout for command in COMMANDS)


def test_validate_prints_every_problem_of_every_row(tmp_path: Path) -> None:
    (tmp_path / "face.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    rows = [
        {"id": "ok", "prompt": "p", "image": "face.png", "audio": "https://x.test/a.mp3"},
        {
            "id": "two",
            "prompt": "p",
            "image": "https://x.test/i.png",
            "audio": "https://x.test/a.mp3",
            "steps": 99,
            "cfg": 9,
        },
        {"id": "gone", "prompt": "p", "image": "missing.png", "audio": "https://x.test/a.mp3"},
        {
            "id": "../up",
            "prompt": "",
            "image": "https://x.test/i.png",
            "audio": "https://x.test/a.mp3",
        },
    ]
    result = cli("validate", write_table(tmp_path / "rows.csv", rows), "--inline-media")
    assert result.returncode == 2, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "row 1 (id 'two'): steps:" in out and "cfg:" in out
    assert "row 2 (id 'gone'): image: image file" in out and "missing.png does not exist" in out
    assert "row 3" in out and "id:" in out and "prompt:" in out
    assert "1 of 4 rows valid" in out


def test_validate_a_good_table(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "image": "https://x.test/i.png", "audio": "https://x.test/a.mp3"}]
    result = cli("validate", write_table(tmp_path / "rows.csv", rows))
    assert result.returncode == 0
    assert "1 of 1 rows valid" in result.stdout


def test_run_all_succeed(sb: Sandbox, tmp_path: Path) -> None:
    table = write_table(tmp_path / "rows.csv", sample_inputs(sb.base_url)[:2])
    out = tmp_path / "out"
    result = cli("run", table, "--output", str(out), token=sb.token, base_url=sb.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 succeeded" in result.stdout
    assert (
        "Jobs this run submitted: 2, estimated $0.1500 before submitting, "
        "cost reported by RunComfy $0."
    ) in " ".join(result.stdout.split())
    assert "sample-hello" in result.stdout
    assert (out / "manifest.parquet").exists()


def test_run_partial_failure_exits_1(sb: Sandbox, tmp_path: Path) -> None:
    rows = sample_inputs(sb.base_url)[:2]
    rows[1]["prompt"] += " [sandbox:fail]"
    result = cli(
        "run",
        write_table(tmp_path / "r.csv", rows),
        "-o",
        str(tmp_path / "o"),
        token=sb.token,
        base_url=sb.base_url,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 succeeded" in result.stdout and "1 failed" in result.stdout


def test_run_over_max_submits_exits_3_and_submits_nothing(sb: Sandbox, tmp_path: Path) -> None:
    table = write_table(tmp_path / "rows.csv", sample_inputs(sb.base_url)[:2])
    result = cli(
        "run",
        table,
        "-o",
        str(tmp_path / "o"),
        "--max-submits",
        "1",
        token=sb.token,
        base_url=sb.base_url,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "would submit 2 new jobs, more than --max-submits 1" in " ".join(result.stderr.split())
    assert sb.stats()["submits_accepted"] == 0


def test_run_over_max_cost_exits_3_and_submits_nothing(sb: Sandbox, tmp_path: Path) -> None:
    table = write_table(tmp_path / "rows.csv", sample_inputs(sb.base_url)[:2])
    result = cli(
        "run",
        table,
        "-o",
        str(tmp_path / "o"),
        "--max-cost",
        "0.1",
        token=sb.token,
        base_url=sb.base_url,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "estimated cost $0.1500 for 2 jobs" in said and "--max-cost 0.1" in said
    assert sb.stats()["submits_accepted"] == 0


def test_plan_estimates_the_cost_from_the_catalog(sb: Sandbox, tmp_path: Path) -> None:
    table = write_table(tmp_path / "rows.csv", sample_inputs(sb.base_url)[:2])
    out = str(tmp_path / "never-run")
    priced = cli("plan", table, "-o", out, token=sb.token, base_url=sb.base_url)
    assert priced.returncode == 0, priced.stdout + priced.stderr
    text = " ".join(priced.stdout.split())
    assert "Estimated cost $0.1500 for 2 jobs (10.0 s of video at $0.0150 per second" in text
    over = cli("plan", table, "-o", out, "--max-cost", "0.1", token=sb.token, base_url=sb.base_url)
    assert over.returncode == 3, over.stdout + over.stderr
    assert "more than --max-cost 0.1" in " ".join(over.stderr.split())
    unpriced = cli("plan", table, "-o", out, "--max-cost", "5")  # no token: no price to read
    assert unpriced.returncode == 3, unpriced.stdout + unpriced.stderr
    assert "not estimated" in " ".join(unpriced.stdout.split())
    stats = sb.stats()
    assert stats["submits_accepted"] == 0
    assert set(stats["requests_by_endpoint"]) == {"catalog"}, "only the price was read"


def test_plan_reads_the_ledger_and_spends_nothing(sb: Sandbox, tmp_path: Path) -> None:
    samples = sample_inputs(sb.base_url)
    out = tmp_path / "out"
    first = cli(
        "run",
        write_table(tmp_path / "two.csv", samples[:2]),
        "-o",
        str(out),
        token=sb.token,
        base_url=sb.base_url,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    submitted = sb.stats()["submits_accepted"]
    grown = [*samples, {**samples[0], "id": "[/]odd", "prompt": "markup [/] in a row"}]
    table = write_table(tmp_path / "grown.csv", grown)
    requests_before = sb.stats()["requests_total"]

    result = cli("plan", table, "-o", str(out))  # no token: not even the price is read
    assert result.returncode == 2, result.stdout + result.stderr  # the odd id is invalid
    text = " ".join(result.stdout.split())
    assert f"{len(samples) - 2} to submit, 2 already stored, 1 invalid" in text
    assert "[/]odd" in text  # shown as text, not read as markup
    # the same command in-process (it needs no Prefect): the console script was shown above
    from typer.testing import CliRunner

    from prefect_runcomfy.cli import app

    over = CliRunner().invoke(app, ["plan", table, "-o", str(out), "--max-submits", "0"])
    assert over.exit_code == 3, over.output
    fresh = CliRunner().invoke(app, ["plan", table, "-o", str(tmp_path / "never-run")])
    assert f"{len(samples)} to submit" in " ".join(fresh.output.split())
    assert not (tmp_path / "never-run").exists(), "a plan writes nothing"
    assert sb.stats()["submits_accepted"] == submitted
    assert sb.stats()["requests_total"] == requests_before


def test_run_bad_input_exits_2_and_submits_nothing(sb: Sandbox, tmp_path: Path) -> None:
    rows = [
        *sample_inputs(sb.base_url)[:1],
        {"id": "x", "prompt": "p", "image": "i", "audio": "a", "frames": 7},
    ]
    result = cli(
        "run",
        write_table(tmp_path / "r.csv", rows),
        "-o",
        str(tmp_path / "o"),
        "--on-invalid",
        "stop",
        token=sb.token,
        base_url=sb.base_url,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "frames" in result.stderr
    assert sb.stats()["submits_accepted"] == 0


def test_run_without_a_token_is_a_configuration_error(sb: Sandbox, tmp_path: Path) -> None:
    table = write_table(tmp_path / "rows.csv", sample_inputs(sb.base_url)[:1])
    result = cli("run", table, "-o", str(tmp_path / "o"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "RUNCOMFY_API_TOKEN" in result.stderr


def test_status_and_cancel(sb: Sandbox) -> None:
    import asyncio

    from prefect_runcomfy import InfiniteTalkInput, RunComfyClient

    # Each CLI call is a new process: under load one took over 30 s to start, and the first job
    # had ended before `cancel` reached the "running" one. The next test's reset drops it.
    sb.set(workers=1, run_seconds=300.0)

    async def submit_two() -> list[str]:
        async with RunComfyClient(sb.token, sb.base_url) as client:
            ids = []
            for prompt in ("first", "second"):
                row = {k: v for k, v in sample_inputs(sb.base_url)[0].items() if k != "id"}
                row["prompt"] = prompt
                ids.append((await client.submit(InfiniteTalkInput(**row))).request_id)
            return ids

    running, queued = asyncio.run(submit_two())
    status = cli("status", queued, token=sb.token, base_url=sb.base_url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "in_queue"
    cancelled = cli("cancel", queued, token=sb.token, base_url=sb.base_url)
    assert cancelled.returncode == 0
    assert json.loads(cancelled.stdout)["outcome"] == "cancelled"
    refused = cli("cancel", running, token=sb.token, base_url=sb.base_url)
    assert refused.returncode == 1
    missing = cli("status", "no-such-request", token=sb.token, base_url=sb.base_url)
    assert missing.returncode == 4
    assert "404001" in missing.stderr
    # not an id: refused before any call (in-process: the console script was shown above)
    from typer.testing import CliRunner

    from prefect_runcomfy.cli import app

    before = api_requests(sb)
    env = {"RUNCOMFY_API_TOKEN": sb.token, "RUNCOMFY_BASE_URL": sb.base_url}
    for command in ("status", "cancel"):
        bad = CliRunner().invoke(app, [command, "../x?y=1"], env=env)
        assert bad.exit_code == 2, bad.output
        assert "Not a RunComfy request id" in bad.output
    assert api_requests(sb) == before


def test_collect_with_nothing_left(sb: Sandbox, tmp_path: Path) -> None:
    result = cli("collect", str(tmp_path / "empty"), token=sb.token, base_url=sb.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to collect" in result.stdout


def test_demo_writes_real_videos(tmp_path: Path) -> None:
    result = cli("demo", "--output", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = pd.read_parquet(tmp_path / "demo" / "manifest.parquet")
    assert set(manifest["status"]) == {"succeeded"}
    assert len(manifest) == 3
    for uri in manifest["video_uri"]:
        assert Path(uri).read_bytes()[4:8] == b"ftyp"
    assert "Open a video" in result.stdout


# -- the CLI speaks CLI ----------------------------------------------------------------------

PYTHON_WORDS = ("Spending(", "retry_failed", "resubmit_unknown", "collect_outstanding_requests")


def test_a_failed_run_prints_a_clean_bar_a_summary_and_cli_hints(
    sb: Sandbox, tmp_path: Path
) -> None:
    """4 rows, 2 bad (one fails on RunComfy, one is invalid): the terminal shows the bar and
    the summary, no log line or traceback; blanks, not nan; hints name flags and commands."""
    samples = sample_inputs(sb.base_url)
    rows = [dict(samples[i % 3], id=f"r{i}") for i in range(4)]
    rows[2]["prompt"] += " [sandbox:fail]"
    rows[3]["steps"] = 0  # invalid: never submitted, no request id
    table = write_table(tmp_path / "rows.csv", rows)
    out = str(tmp_path / "out")
    result = cli("run", table, "-o", out, token=sb.token, base_url=sb.base_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == "", result.stderr  # no WARNING, ERROR or traceback
    text = result.stdout
    assert re.search(r"rows .*4/4", text), text  # the bar's last frame
    assert "2 succeeded, 1 failed, 1 invalid" in text
    assert "nan" not in text  # a missing request id is blank
    said = " ".join(text.split())
    assert "1 failed: RunComfy did not deliver a video." in said
    assert "run again with --retry-failed" in said
    assert not [w for w in PYTHON_WORDS if w in text], text

    # the same run again: the failed row's reason and the plan say the flag, not Python
    again = cli("plan", table, "-o", out)
    assert "--retry-failed" in " ".join(again.stdout.split()), again.stdout
    assert not [w for w in PYTHON_WORDS if w in again.stdout], again.stdout

    # --verbose shows Prefect's lines, still without a traceback
    verbose = cli("run", table, "-o", out, "--verbose", token=sb.token, base_url=sb.base_url)
    assert verbose.returncode == 1, verbose.stdout + verbose.stderr
    assert "WARNING" in verbose.stderr or "ERROR" in verbose.stderr, verbose.stderr
    assert "Traceback" not in verbose.stderr, verbose.stderr


def test_collect_shows_the_bar_and_the_summary_only(sb: Sandbox, tmp_path: Path) -> None:
    """A request left in the ledger by an earlier run: `collect` stores it behind a bar."""
    from sandbox_helpers import submit

    from prefect_runcomfy.engine.outputs.store import OutputStore
    from prefect_runcomfy.engine.plan.ledger import Ledger

    out = tmp_path / "out"
    sb.set(workers=2, run_seconds=0.5)
    with httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.token}"}
    ) as client:
        request_id = submit(client, sb.base_url)
    ledger = Ledger(OutputStore(str(out)))
    ledger.mark_submitting("left", "0" * 64, flow_run_id="0" * 32)
    ledger.mark_submitted("left", request_id)
    result = cli("collect", str(out), token=sb.token, base_url=sb.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    assert re.search(r"rows .*1/1", result.stdout), result.stdout
    assert "1 succeeded" in result.stdout and request_id in result.stdout


def test_status_and_cancel_accept_credentials(sb: Sandbox) -> None:
    """`--credentials NAME` reads the token from a saved block, as `run` does."""
    from prefect_runcomfy import RunComfyCredentials

    sb.set(workers=1, run_seconds=600.0)  # the queued job stays queued (the fixture resets)
    with httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.token}"}
    ) as client:
        from sandbox_helpers import submit

        submit(client, sb.base_url)  # keeps the only worker busy
        queued = submit(client, sb.base_url)
    block = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url)
    block.save("cli-credentials-test", overwrite=True)
    status = cli("status", queued, "--credentials", "cli-credentials-test")  # no token in env
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["status"] == "in_queue"
    cancelled = cli("cancel", queued, "--credentials", "cli-credentials-test")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert json.loads(cancelled.stdout)["outcome"] == "cancelled"
    unknown = cli("status", queued, "--credentials", "no-such-block")
    assert unknown.returncode == 3, unknown.stdout + unknown.stderr
    said = " ".join(unknown.stderr.split())
    assert "No RunComfyCredentials block named 'no-such-block'" in said
    assert "prefect block create runcomfy-credentials" in said and ".save(" not in said


def test_hints_have_a_python_form_and_a_cli_form() -> None:
    from prefect_runcomfy.engine.record import hints

    said = f"run again with {hints.RETRY_FAILED}, or {hints.collect('/tmp/a b', cancel=True)}"
    assert said == (
        "run again with spending=Spending(retry_failed=True), "
        "or collect_outstanding_requests('/tmp/a b', cancel=True)"
    )
    assert hints.for_cli(said) == (
        "run again with --retry-failed, or prefect-runcomfy collect '/tmp/a b' --cancel"
    )
    assert hints.for_cli("more than max_submits=5; raise max_cost_usd") == (
        "more than --max-submits 5; raise --max-cost"
    )
    assert hints.RESUBMIT_UNKNOWN.said("both") == (
        "spending=Spending(resubmit_unknown=True) (CLI: --resubmit-unknown)"
    )
