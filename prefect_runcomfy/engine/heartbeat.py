"""A shard run's sign of life: a small file it rewrites on the output storage while it works.

A sharded parent must tell a shard run that is working from one whose process died: a
SIGKILLed worker leaves its flow runs `Running` in Prefect forever. Prefect 3.9's own flow-run
heartbeats are events every 30 s at the least, off unless every worker's environment turns
them on, and turn into `Crashed` only through an automation the user creates. So the shard
writes its own: `heartbeat_name` under its `output_uri`, rewritten every `heartbeat_s` by a
thread (the event loop may be busy for seconds with a large table; a thread still beats, as
Prefect's own heartbeat does). The parent (`engine.shard_runs`) reads it and compares what it
reads with what it read before, by its own clock: no clock shared between machines is assumed.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, get_type_hints

from prefect.logging import get_logger

from prefect_runcomfy.engine.outcome import utc_now
from prefect_runcomfy.engine.storage import OutputStore

HEARTBEAT_S = 10.0
"""How often a shard run rewrites its heartbeat file, by default."""

_P = ParamSpec("_P")
_R = TypeVar("_R")
_logger = get_logger("prefect_runcomfy.heartbeat")


class Heartbeat:
    """Rewrites `name` under `store` every `every_s` seconds from a daemon thread, between
    `start()` and `stop()` (or as a context manager).

    Each beat holds the writer (flow run id, host, process id), a count that grows by one each
    beat, and the writer's time. A failed write is logged once and tried again at the next
    beat: the parent only needs some beat to land within its stale bound.
    """

    def __init__(
        self, store: OutputStore, name: str, every_s: float, *, flow_run_id: str | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.every_s = max(0.2, float(every_s))
        self.flow_run_id = flow_run_id
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> None:
        """Write one beat now."""
        self.count += 1
        record = {
            "flow_run_id": self.flow_run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "count": self.count,
            "at": utc_now(),
            "every_s": self.every_s,
        }
        try:
            self.store.write_json(self.name, record, durable=False)
        except Exception as exc:  # the next beat tries again; the run's work goes on
            if not self._failing:
                _logger.warning("Could not write the heartbeat %s: %s", self.name, exc)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self.every_s):
            self.beat()

    def start(self) -> Heartbeat:
        """Beat at once (from the thread: the caller does not wait for storage), then every
        `every_s` until `stop()`."""
        self._thread = threading.Thread(target=self._run, name="runcomfy-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (the file stays: the run's final state in Prefect says it ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return str(run.id) if run is not None else None


def beats_while_running(
    fn: Callable[_P, Awaitable[_R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Wrap an async flow function whose parameters include `output_uri`, `storage_options`,
    `heartbeat_name` and `heartbeat_s`: given a `heartbeat_name`, the body runs under a
    `Heartbeat` written there; without one it runs as it is.

    The wrapper keeps the function's signature (`functools.wraps`), so Prefect sees the same
    parameters. A decorator rather than code in the body: the heartbeat must cover the whole
    body, from reading the table to the manifest.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        given = signature.bind_partial(*args, **kwargs).arguments
        name = given.get("heartbeat_name")
        if not name:
            return await fn(*args, **kwargs)
        store = OutputStore(given["output_uri"], given.get("storage_options"))
        every_s = given.get("heartbeat_s") or HEARTBEAT_S
        with Heartbeat(store, str(name), float(every_s), flow_run_id=_current_flow_run_id()):
            return await fn(*args, **kwargs)

    # Prefect reads a flow's parameter types from its signature and resolves names written as
    # strings (`from __future__ import annotations`) in the function's own module, which for
    # a wrapper would be this one: give the wrapper the signature with the types resolved.
    hints = get_type_hints(fn)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(annotation=hints.get(name, p.annotation))
            for name, p in signature.parameters.items()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    return wrapper


__all__ = ["HEARTBEAT_S", "Heartbeat", "beats_while_running"]
