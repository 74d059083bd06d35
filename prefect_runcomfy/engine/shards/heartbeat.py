"""A shard run's sign of life: a small file it rewrites on the output storage while it works.

A sharded parent must tell a shard run that is working from one whose process died: when a
worker's machine dies (the worker and its flow-run processes at once), nothing is left to tell
Prefect, and its flow runs stay `Running` forever. Prefect 3.9's own flow-run
heartbeats are events every 30 s at the least, off unless every worker's environment turns
them on, and turn into `Crashed` only through an automation the user creates. So the shard
writes its own: `heartbeat_name` under its `output_uri`, rewritten every `heartbeat_s` by a
thread (the event loop may be busy for seconds with a large table; a thread still beats, as
Prefect's own heartbeat does). The parent (`engine.shards.runs`) reads it and compares what it
reads with what it read before, by its own clock: no clock shared between machines is assumed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

from prefect.logging import get_logger

from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import utc_now

HEARTBEAT_S = 10.0
"""How often a shard run rewrites its heartbeat file, by default."""

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


def heartbeat_for(
    output_uri: str, storage_options: dict[str, Any] | None, name: str, every_s: float
) -> contextlib.AbstractContextManager[Any]:
    """The heartbeat `name` under `output_uri`, rewritten every `every_s` seconds while the
    context is open (a shard run's, asked for by its sharded parent)."""
    store = OutputStore(output_uri, storage_options)
    return Heartbeat(store, name, every_s or HEARTBEAT_S, flow_run_id=_current_flow_run_id())


__all__ = ["HEARTBEAT_S", "Heartbeat", "heartbeat_for"]
