"""Run the sandbox: in a background thread for tests and scripts, or blocking for the CLI.

uvicorn's h11 protocol is subclassed so each request can reach its connection's transport:
that is what lets the `drop_*` faults close a connection without any answer, which an ASGI
app alone cannot do (uvicorn would send a 500 instead).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from prefect_runcomfy.sandbox.app import TRANSPORT_KEY, build_app
from prefect_runcomfy.sandbox.config import SandboxConfig
from prefect_runcomfy.sandbox.state import SandboxState

T = TypeVar("T")


class DropCapableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, handing each request its transport under `TRANSPORT_KEY`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Wrap the app so every HTTP scope carries this connection's transport."""
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app_with_transport(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope["extensions"] = {
                    **(scope.get("extensions") or {}),
                    TRANSPORT_KEY: self.transport,
                }
            await inner(scope, receive, send)

        self.app = app_with_transport


KEEP_ALIVE_S = 75
"""How long the sandbox keeps an idle connection open (seconds), as nginx does by default."""


def _uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=DropCapableH11Protocol,
        loop="asyncio",
        lifespan="on",
        log_level=log_level,
        access_log=False,  # access lines never carry headers, but keep test output quiet
        timeout_graceful_shutdown=2,
        # Idle keep-alive connections stay open longer than any client keeps them (httpx: 5 s),
        # as behind RunComfy's load balancers. With uvicorn's default of 5 s both ends closed
        # at the same moment, and a request sent as the server closed failed with ReadError.
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def _bind(host: str, port: int) -> socket.socket:
    # binding ourselves lets port 0 pick a free port that we know before the server starts
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class Sandbox:
    """A running sandbox server and the controls to script it.

    Start it with `run_sandbox(config)` as a context manager (sync or async), or call
    `start()` / `stop()`. The server runs in its own thread with its own event loop, so it
    works whatever loops the caller runs.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        foreign_host: str | None = None,
    ) -> None:
        """Prepare a sandbox on `host:port` (port 0 picks a free port); nothing runs yet.

        `foreign_host` (another loopback address, e.g. `127.0.0.2`) adds a second listener on
        a free port there: the same server seen as another host, for output URLs that point
        elsewhere (`output_urls_on="foreign"`, `files_redirect="foreign"`); the stats count
        file requests per listener.
        """
        self.host = host
        """The interface the server listens on."""
        self.port = port
        """The port; the real one once started."""
        self.foreign_host = foreign_host
        """The foreign listener's address, if any."""
        self.foreign_port: int | None = None
        """The foreign listener's port, once started."""
        self.state = SandboxState(config or SandboxConfig())
        """The server's state (touch it only through the methods below from other threads)."""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. `http://127.0.0.1:54321`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def foreign_base_url(self) -> str:
        """The foreign listener's base URL, e.g. `http://127.0.0.2:54322` (once started)."""
        if self.foreign_host is None or self.foreign_port is None:
            raise RuntimeError("this sandbox has no foreign listener (foreign_host=...)")
        return f"http://{self.foreign_host}:{self.foreign_port}"

    @property
    def token(self) -> str:
        """A token the server accepts (the first of `config.tokens`)."""
        return self.state.config.tokens[0]

    @property
    def config(self) -> SandboxConfig:
        """The settings in force now."""
        return self.state.config

    def start(self, timeout: float = 30.0) -> Sandbox:
        """Start the server thread and return once the server answers."""
        if self._thread is not None:
            return self
        if self.state.closed:  # started before: begin afresh, keeping the current settings
            self.state = SandboxState(self.state.config)
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        sockets = [sock]
        if self.foreign_host is not None:
            foreign = _bind(self.foreign_host, 0)
            self.foreign_port = foreign.getsockname()[1]
            self.state.foreign_address = (self.foreign_host, self.foreign_port)
            sockets.append(foreign)
        self._server = uvicorn.Server(_uvicorn_config(build_app(self.state), "warning"))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": sockets},
            name=f"runcomfy-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the RunComfy sandbox did not start")
            time.sleep(0.01)
        with httpx.Client(timeout=5, trust_env=False) as probe:
            probe.get(f"{self.base_url}/_sandbox/health").raise_for_status()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and wait for its thread (running jobs are abandoned)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server, self._thread = None, None

    def __enter__(self) -> Sandbox:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    async def __aenter__(self) -> Sandbox:
        """Start the server without blocking the caller's event loop."""
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server without blocking the caller's event loop."""
        await asyncio.to_thread(self.stop)

    # --- controls (each runs on the server's loop, so it never races a request)

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter (same as `GET /_sandbox/stats`)."""
        return self._on_loop(self.state.stats_snapshot)

    def requests(self) -> list[dict[str, Any]]:
        """Every request with state, payload hash and schedule (same as `GET /_sandbox/requests`)."""
        return self._on_loop(self.state.requests_snapshot)

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        count: int = 1,
        retry_after: float | None = None,
        error_code: int | None = None,
        http_status: int | None = None,
    ) -> dict[str, Any]:
        """Make the next `count` calls to `endpoint` misbehave as `kind` (see faults.KINDS)."""
        return self._on_loop(
            lambda: self.state.add_fault(
                endpoint=endpoint,
                kind=kind,
                count=count,
                retry_after=retry_after,
                error_code=error_code,
                http_status=http_status,
            )
        )

    def set(self, **changes: Any) -> dict[str, Any]:
        """Change any SandboxConfig switch now, e.g. `sb.set(result_ttl_s=0.5)`."""
        return self._on_loop(lambda: self.state.set_config(**changes))

    def reset(self, config: bool = False) -> None:
        """Forget requests, counters and faults; `config=True` also restores the start settings."""
        self._on_loop_async(lambda: self.state.reset(config=config))

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self._on_loop_async(call)

    def _on_loop_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        loop = self.state.loop
        if loop is None or self._thread is None:
            raise RuntimeError("the sandbox is not running")

        async def call() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)


def run_sandbox(
    config: SandboxConfig | None = None, *, foreign_host: str | None = None, **changes: Any
) -> Sandbox:
    """A sandbox to use as `with run_sandbox(cfg) as sb:` (or `async with`).

    Keyword arguments override fields of `config`, e.g. `run_sandbox(workers=1)`;
    `foreign_host` adds a listener on another loopback address (see `Sandbox`).
    """
    cfg = config or SandboxConfig()
    if changes:
        cfg = cfg.updated(**changes)
    return Sandbox(cfg, foreign_host=foreign_host)


def _say(line: str) -> None:
    print(line, flush=True)


def serve_sandbox(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    announce: Callable[[str], None] | None = _say,
    log_level: str = "info",
) -> None:
    """Run a sandbox in the foreground until interrupted (Ctrl-C), for the CLI.

    `announce` receives one line per fact worth telling the user (base URL, token, admin
    API); by default they are printed and flushed, so a parent process reading a pipe sees
    them at once. Pass None to stay quiet.
    """
    state = SandboxState(config or SandboxConfig())
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{bound}"
    if announce is not None:
        announce(f"RunComfy sandbox: {base_url}")
        # the sandbox token is not a secret: it only unlocks this local server
        announce(f"token: {state.config.tokens[0]}")
        announce(f"try: RUNCOMFY_BASE_URL={base_url} RUNCOMFY_API_TOKEN={state.config.tokens[0]}")
        announce(f"admin: {base_url}/_sandbox/stats  samples: {base_url}/samples")
    uvicorn.Server(_uvicorn_config(build_app(state), log_level)).run(sockets=[sock])
