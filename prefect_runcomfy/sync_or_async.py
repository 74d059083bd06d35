"""Flows and tasks that run when called from sync code and can be awaited from async code.

Everything in this library is written once, async. A plain call from a sync script, a sync
`@flow` or a sync `@task` runs that coroutine to its end and returns the value; a call from
async code (a running event loop, an async flow or task) returns the coroutine to await, as
Prefect does for any async flow. The flow run, its parent link, its tags and its state are
Prefect's own in both cases: the sync path only drives the same coroutine.

Example:
    ```python
    from prefect import flow
    from prefect_runcomfy import generate_talking_videos

    @flow
    def nightly():  # a sync parent: the call returns the manifest DataFrame
        manifest = generate_talking_videos("rows.csv", "s3://out/videos", credentials="runcomfy")
        return manifest[manifest.status == "succeeded"]

    @flow
    async def nightly_async():  # an async parent: await it
        return await generate_talking_videos("rows.csv", "s3://out/videos", credentials="runcomfy")
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from prefect import Flow, Task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_runcomfy.engine.run.stopping import (
    clear_stop_request,
    is_stoppable,
    request_stop,
    stop_listeners,
)


def caller_is_async() -> bool:
    """Whether the code calling us can await: inside an async flow or task run, or with an
    event loop running in this thread outside any run.

    Inside a run, the run decides (a sync task run in an async flow's worker thread is sync);
    outside, a running loop does. The same rule as Prefect's own `async_dispatch`, written
    with the public run contexts (`test_sync_or_async_is_decided_as_prefect_decides` in
    `tests/test_prefect_native.py` pins that they agree).
    """
    run = TaskRunContext.get() or FlowRunContext.get()
    if run is not None:
        runner = getattr(run, "task", None) or getattr(run, "flow", None)
        return bool(getattr(runner, "isasync", True))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_here(call: Any, *, stoppable: bool = False) -> Any:
    """Return `call` to a caller that can await it; run it to its end for one that cannot.

    Prefect's `run_coro_as_sync` copies the caller's context into the coroutine, so a flow
    run started here is the sync parent's subflow, under the caller's `prefect.tags(...)`.

    A `stoppable` run (a flow body run by `engine.run.stopping.run_stoppable`) called from the
    main thread stops cleanly on SIGINT or SIGTERM (`StopOnSignals`): its queued jobs are
    cancelled and its flow run ends Cancelled; then the signal does what it did before
    (Ctrl-C raises KeyboardInterrupt; SIGTERM ends the process).
    """
    if not inspect.iscoroutine(call) or caller_is_async():
        return call
    if not stoppable:
        return run_coro_as_sync(call)
    with StopOnSignals() as signals:
        try:
            return run_coro_as_sync(call)
        except BaseException:
            if signals.received is None or signals.delivered:
                raise  # not stopped by a signal, or a second signal already said it
            # The run stopped as it was asked (its flow run is Cancelled): what comes next
            # is the signal's to say, below.
    signals.deliver()
    return None


STOP_WAIT_S = 30.0
"""The longest a sync caller waits for a stopped run to end; then it stops waiting, as a
second Ctrl-C does."""
RECORD_WAIT_S = 10.0
"""Once the run said what it left (its cancels done), how long Prefect gets to record its
final state: a temporary Prefect server started by this process is in its process group
and gets the terminal's Ctrl-C too, and Prefect's client retries a server gone for minutes."""


class StopOnSignals:
    """While a run goes on in Prefect's event-loop thread, SIGINT and SIGTERM stop it
    cleanly first (`engine.run.stopping.request_stop`), then reach whoever handled them before.

    Why: Prefect runs a flow called from sync code in a thread of its own and, on Ctrl-C,
    cancels it and returns at once: the process then exits while the run's cancels and its
    final state are still to be sent (the jobs ran on and were billed, the flow run stayed
    Running), and a SIGTERM killed the process outright. Here the first signal asks the run
    to stop and waits for it (`STOP_WAIT_S` at most, `RECORD_WAIT_S` once it reported); a
    second one stops waiting. Only the main thread can handle signals, and an ignored
    signal stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.delivered = False
        """Whether the signal went on to the handler that was there before."""
        self._before: dict[int, Any] = {}
        """The handlers found on entry: given back on exit, and the signal's next stop."""
        self._installed = False
        self._patience: threading.Timer | None = None

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.SIGNALS:
            before = signal.getsignal(signum)
            if before in (signal.SIG_IGN, None):  # ignored, or not set from Python
                continue
            self._before[signum] = before
            signal.signal(signum, self._on_signal)
            self._installed = True
        if self._installed:
            stop_listeners.append(self._reported)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._patience is not None:
            self._patience.cancel()
        with contextlib.suppress(ValueError):
            stop_listeners.remove(self._reported)
        self._restore()
        clear_stop_request()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop waiting for the first
            self.received = signum
            self._restore()
            self.deliver(frame)
            return
        self.received = signum
        self._wait_at_most(STOP_WAIT_S)
        request_stop(signal.Signals(signum).name)

    def _reported(self, report: Any) -> None:
        self._wait_at_most(RECORD_WAIT_S)

    def _wait_at_most(self, seconds: float) -> None:
        """Send the signal again in `seconds` (from a timer thread: the handler then runs in
        the main thread, as for a second Ctrl-C) unless the run ended first."""
        if self._patience is not None:
            self._patience.cancel()
        self._patience = threading.Timer(seconds, os.kill, (os.getpid(), self.received))
        self._patience.daemon = True
        self._patience.start()

    def _restore(self) -> None:
        if self._installed:
            for signum, handler in self._before.items():
                signal.signal(signum, handler)
            self._installed = False

    def deliver(self, frame: FrameType | None = None) -> None:
        """Hand the signal received to the handler that was there before (Python's raises
        KeyboardInterrupt; SIGTERM's default ends the process)."""
        signum = self.received
        if signum is None or self.delivered:
            return
        self.delivered = True
        handler = self._before.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, frame)
        else:
            # The process ends here: Prefect's log lines still queued go to its API first.
            logging.shutdown()
            signal.signal(signum, handler)
            signal.raise_signal(signum)


class SyncOrAsyncFlow(Flow[..., Any]):
    """An async flow that also runs when called from sync code (see the module docstring).

    `.fn`, `.serve`, `.deploy`, `.to_deployment` and deployments are Prefect's own; only a
    direct call changes: it returns the result (or the state, with `return_state=True`) to a
    sync caller instead of a coroutine that would never run.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the flow: awaitable from async code, run to its end from sync code."""
        return run_here(super().__call__(*args, **kwargs), stoppable=is_stoppable(self.fn))

    def with_options(self, **options: Any) -> Any:
        """Prefect's `with_options`, keeping this class (Prefect's makes a plain `Flow`)."""
        copy = super().with_options(**options)
        copy.__class__ = type(self)
        return copy


class SyncOrAsyncTask(Task[..., Any]):
    """An async task that also runs when called directly from a sync flow or script.

    `.submit()` and `.map()` are Prefect's own: they already work from sync flows.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task: awaitable from async code, run to its end from sync code."""
        return run_here(super().__call__(*args, **kwargs))

    def with_options(self, **options: Any) -> Any:
        """Prefect's `with_options`, keeping this class."""
        copy = super().with_options(**options)
        copy.__class__ = type(self)
        return copy


def sync_or_async_task(
    **options: Any,
) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], SyncOrAsyncTask]:
    """`@task(**options)` for an async function, making a `SyncOrAsyncTask`."""

    def make(fn: Callable[..., Coroutine[Any, Any, Any]]) -> SyncOrAsyncTask:
        return SyncOrAsyncTask(fn=fn, **options)

    return make


def sync_or_async_flow(
    cls: type[SyncOrAsyncFlow] = SyncOrAsyncFlow, **options: Any
) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], SyncOrAsyncFlow]:
    """`@flow(**options)` for an async function, making a `cls` (a `SyncOrAsyncFlow`)."""

    def make(fn: Callable[..., Coroutine[Any, Any, Any]]) -> SyncOrAsyncFlow:
        return cls(fn=fn, **options)

    return make


__all__ = [
    "StopOnSignals",
    "SyncOrAsyncFlow",
    "SyncOrAsyncTask",
    "caller_is_async",
    "run_here",
    "sync_or_async_flow",
    "sync_or_async_task",
]
