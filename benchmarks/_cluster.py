"""A Prefect deployment as a user runs one, for the benchmarks that need it: a throwaway
PostgreSQL cluster on loopback, `prefect server start` on it, process workers, and the
`shard` deployment of `deployments/prefect.yaml` with one account-wide concurrency limit.

Needs Debian's `postgresql` package (`apt-get install -y postgresql`): `initdb` and `pg_ctl`
from `/usr/lib/postgresql/*/bin`, as the `postgres` user when run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import TOKEN

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
LIMIT_NAME = "bench-account"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Postgres and the Prefect server ------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    # initdb refuses to run as root
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, list[str]]]:
    """A throwaway Postgres cluster on 127.0.0.1: (SQLAlchemy URL, the commands that made it)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise SystemExit("no /usr/lib/postgresql/*/bin/pg_ctl: apt-get install -y postgresql")
    pg_bin = found[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    data = folder / "data"
    commands = [
        [str(pg_bin / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"],
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "postgres.log"),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c max_connections=200",
            "-w",
            "start",
        ],
        [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
    ]
    try:
        for command in commands:
            subprocess.run(_as_postgres(command), check=True, capture_output=True, cwd=folder)
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", commands
    finally:
        subprocess.run(
            _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def prefect_env(api_url: str, home: str) -> dict[str, str]:
    """The environment of a Prefect process of the benchmark (its own PREFECT_HOME)."""
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=home,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env


@contextlib.contextmanager
def prefect_server(database_url: str, log: Path, home: str) -> Iterator[str]:
    """`prefect server start` on a free loopback port against `database_url`; its API URL."""
    port = free_port()
    env = prefect_env("", home)
    env.pop("PREFECT_API_URL")
    env.update(
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_LOGGING_LEVEL="INFO",  # lease revocations and the access log are INFO
        PREFECT_UI_ENABLED="false",
    )
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"the Prefect server exited: see {log}")
            time.sleep(1)
        else:
            raise SystemExit(f"the Prefect server did not start: see {log}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- processes ----------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_machine(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a worker and every process below it (stopped first, so none sees another die)."""
    tree = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    proc.wait(timeout=30)
    return tree


def start_worker(env: dict[str, str], log: Path, limit: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "runcomfy", "--limit", str(limit)],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def deploy(env: dict[str, str], base_url: str, limit: int) -> None:
    """A process work pool, the `shard` deployment, the `bench` credentials block, and the
    account-wide limit `LIMIT_NAME`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from prefect_runcomfy import RunComfyCredentials

    for command in (
        ["work-pool", "create", "runcomfy", "--type", "process"],
        ["--no-prompt", "deploy", "--name", "shard", "--prefect-file", "deployments/prefect.yaml"],
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "prefect"), *command],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0 and b"already exists" not in done.stdout:
            raise SystemExit(done.stdout.decode() + done.stderr.decode())
    await RunComfyCredentials(api_token=TOKEN, base_url=base_url).save("bench", overwrite=True)
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=limit)
        )
