"""Secret scan, after the other reliability tests: the token is in no file, artifact or log line.

Runs last in tests/reliability (file name order; the reliability tests run together on one
process, see tests/reliability/conftest.py). It looks at every file under this process's
pytest temporary folder (every output, ledger, sidecar, manifest and runner log written so
far), the Prefect test harness's SQLite database (flow run parameters, task runs, logs,
artifacts), the artifacts read back through the Prefect API, and every log record kept since
the first reliability test. It also runs one more flow with a wrong token and a failing row,
so error paths are covered too.

What the rest of the run writes afterwards, on this process or another, is scanned by the
whole-run secret scan in tests/conftest.py, when every process has finished: every file under
pytest's temporary folder, each process's harness database and these log records included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import FAST, TOKEN, config, creds, rows
from sandbox_helpers import manifest_of

from prefect_runcomfy import generate_talking_videos
from prefect_runcomfy.sandbox import Sandbox, run_sandbox

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with run_sandbox(config(no_balance_tokens=("broke-" + TOKEN,))) as sandbox:
        yield sandbox


async def test_the_token_is_nowhere(
    sb: Sandbox,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    all_log_lines: list[str],
) -> None:
    table = rows(sb, 3, prefix="secret-")
    table[1]["prompt"] += " [sandbox:fail]"
    sb.add_fault(endpoint="result", kind="server_error", count=2)
    out = tmp_path / "out"
    await generate_talking_videos(table, str(out), creds(sb), **FAST)
    # refused tokens: the error paths must not echo them either
    wrong = TOKEN[::-1]
    await manifest_of(
        generate_talking_videos(rows(sb, 1, prefix="w-"), str(out), creds(sb, wrong), **FAST)
    )
    broke = "broke-" + TOKEN
    await manifest_of(
        generate_talking_videos(rows(sb, 1, prefix="b-"), str(out), creds(sb, broke), **FAST)
    )
    assert sb.stats()["file_requests_with_authorization"] == 0

    secrets = [TOKEN.encode(), wrong.encode()]
    files = [p for p in tmp_path_factory.getbasetemp().rglob("*") if p.is_file()]
    assert len(files) > 50, "the reliability suite's outputs are where they are expected"
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"the token is in {path}"

    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    db = Path((url.get_secret_value() if url else "").split("///")[-1])
    db_files = list(db.parent.glob(db.name + "*"))
    assert db_files, "the test harness's SQLite database was found"
    for path in db_files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"the token is in {path}"

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_artifacts()
    assert artifacts
    for artifact in artifacts:
        text = f"{artifact.data} {artifact.description} {artifact.key}"
        assert TOKEN not in text and wrong not in text, artifact.key

    assert len(all_log_lines) > 100
    for line in all_log_lines:
        assert TOKEN not in line and wrong not in line, line[:300]
