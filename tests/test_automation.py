"""The README's automation, on a real Prefect server: "notify me when a row ends
outcome_unknown" fires when a run leaves a row whose submit answer was lost.

A real `prefect server start` (not the test harness's ephemeral one) on loopback, with its own
home and database; the automation and the run are made by user scripts in new processes; the
notification is a webhook block calling a listener on 127.0.0.1 here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from prefect_runcomfy.sandbox import Sandbox, sample_inputs

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent

# The README's snippet, word for word between the markers (the test fills in the URL).
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_automation() -> str:
    text = README.read_text()
    start = text.index("<!-- automation-example -->")
    code = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` on loopback; yields the environment that points clients at it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/server.db",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A listener on loopback that keeps every JSON body posted to it."""
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def run_script(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = cwd / f"script_{time.monotonic_ns()}.py"
    path.write_text(code)
    return subprocess.run(
        [sys.executable, str(path)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_readme_automation_notifies_when_a_row_ends_outcome_unknown(
    prefect_server: dict[str, str],
    webhook: tuple[str, list[dict[str, object]]],
    shared_sandbox: Sandbox,
    tmp_path: Path,
) -> None:
    sb = shared_sandbox
    sb.reset(config=True)
    url, received = webhook
    # Set up the automation the way the README says (the webhook stands in for Slack).
    setup = (
        readme_automation()
        .replace(
            'SlackWebhook(url="https://hooks.slack.com/services/...")',
            f'CustomWebhookNotificationBlock(name="alerts", url="{url}", '
            'json_data={"text": "{{body}}"}, allow_private_urls=True)',
        )
        .replace(
            "from prefect.blocks.notifications import SlackWebhook",
            "from prefect.blocks.notifications import CustomWebhookNotificationBlock",
        )
    )
    made = run_script(setup, prefect_server, tmp_path)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]

    # A run whose only submit is accepted but whose answer is lost: outcome_unknown.
    sb.add_fault(endpoint="submit", kind="drop_after_accept")
    out = tmp_path / "out"
    row = dict(sample_inputs(sb.base_url)[0], id="lost-answer")
    nightly = textwrap.dedent(
        f"""
        from prefect_runcomfy import RunComfyCredentials, generate_talking_videos
        from prefect_runcomfy.exceptions import RowsNeedAttentionError

        credentials = RunComfyCredentials(api_token={sb.token!r}, base_url={sb.base_url!r})
        try:
            generate_talking_videos([{row!r}], {str(out)!r}, credentials=credentials)
        except RowsNeedAttentionError as exc:
            print("STATUS", exc.manifest["status"].tolist())
        """
    )
    ran = run_script(nightly, prefect_server, tmp_path)
    assert "STATUS ['outcome_unknown']" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert sb.stats()["submits_accepted"] == 1

    deadline = time.monotonic() + 90
    while not received and time.monotonic() < deadline:
        time.sleep(0.5)
    assert received, "the automation did not notify within 90 s"
    text = str(received[0]["text"])
    assert "lost-answer" in text
    assert str(out) in text
    assert sb.token not in text
