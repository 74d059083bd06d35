"""How a run stops when it is asked to: its queued jobs cancelled, the rest said in one line.

A stop reaches a run as one cancellation of its task: asyncio's own on Ctrl-C under
`asyncio.run`, Prefect's when a deployment's run is cancelled (the runner's SIGTERM), or
`request_stop`, which the sync entry points call from their SIGINT/SIGTERM handler
(`prefect_runcomfy.sync_or_async`): Prefect runs a flow called from sync code in a thread of
its own, which a KeyboardInterrupt in the main thread never reaches.

Then `engine.run.phases.execute` calls `stop_batch`: no further submit starts, a submit already
sent is waited for (its request id is what lets its job be cancelled), every job the run
submitted and has not seen finish is asked to cancel (only queued ones can be: those are not
billed, and a re-run submits them again), and the ledger says so. What it did is a
`StopReport`, whose `message()` says it in one line, with the command that collects what was
left running.

A flow body run by `run_stoppable` and stopped by `request_stop` ends its flow run
`Cancelled`, the report as the state's message; any other stop goes on as Prefect handles it
(`Crashed`, or `Cancelled` for a deployment's run cancelled from Prefect).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import shlex
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.exceptions import TerminationSignal
from prefect.logging import get_run_logger
from prefect.states import Cancelled, State

from prefect_runcomfy.api.exceptions import StorageError
from prefect_runcomfy.engine.run.cancels import mark_cancelled, send_cancels

if TYPE_CHECKING:
    from prefect_runcomfy.engine.plan.ledger import Ledger
    from prefect_runcomfy.engine.run.state import RunState

T = TypeVar("T")

STOP_GRACE_S = 15.0
"""How long a stopped run spends on its jobs at RunComfy (the submits under way, then the
cancels) before it lets go. Prefect's runner kills a cancelled deployment run after 30 s."""
STOPS: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    TerminationSignal,
)
"""What a stop raises in a run: a cancellation, or a signal's exception when it lands in
the run's own frames (Prefect's SIGTERM bridge raises `TerminationSignal`)."""
stop_requested_listeners: list[Callable[[str], None]] = []
"""Called with the reason when `request_stop` is called (in the signal handler's thread):
the command line quiets its console here."""
stop_listeners: list[Callable[[StopReport], None]] = []
"""Called with the report when a run body was stopped by `request_stop` (`run_stoppable`):
the command line prints it."""
cancelled_here: set[str] = set()
"""Flow runs whose stop already cancelled their queued jobs in this process: the flows'
`on_cancellation`/`on_crashed` hook need not ask RunComfy again."""


@dataclass(frozen=True)
class StopReport:
    """What a stopped run did with the jobs it had at RunComfy."""

    output_uri: str
    cancelled: tuple[str, ...] = ()
    """Request ids cancelled while still queued (not billed)."""
    running: tuple[str, ...] = ()
    """Request ids RunComfy would not cancel: they run to their end and are billed."""
    unanswered: tuple[str, ...] = ()
    """Request ids whose cancel got no answer in time: queued or running, nobody knows."""
    cancelling: bool = True
    """False for a run that collects earlier runs' requests: it leaves them as they are."""
    reason: str | None = None

    @property
    def left(self) -> tuple[str, ...]:
        """Every request the run left at RunComfy."""
        return self.running + self.unanswered

    def message(self) -> str:
        """The stop in one line: what was cancelled, what was left and how to collect it."""
        collect = f"prefect-runcomfy collect {shlex.quote(self.output_uri)}"
        said = [f"Stopped{f' ({self.reason})' if self.reason else ''}"]
        if self.cancelled:
            said.append(f"{_jobs(len(self.cancelled))} cancelled while queued (not billed)")
        if self.running:
            said.append(
                f"{_jobs(len(self.running))} left running on RunComfy (billed): `{collect}` "
                "stores their videos"
            )
        if self.unanswered:
            said.append(
                f"{_jobs(len(self.unanswered))} not confirmed cancelled (no answer): "
                f"`{collect} --cancel` cancels them or stores their videos"
            )
        if not self.cancelling:  # a collecting run: what it did not collect stays
            said.append(f"the requests not collected yet stay for `{collect}`")
        elif not (self.cancelled or self.left):
            said.append("no job of this run was queued or running")
        again = " Running the same table again goes on where it stopped."
        return "; ".join(said) + "." + (again if self.cancelling and self.output_uri else "")


def _jobs(n: int) -> str:
    return f"{n} job{'s' if n != 1 else ''}"


# -- asking a run to stop ---------------------------------------------------------------------


class RunStop:
    """A run body that a stop can reach from any thread: `request` cancels its task once."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._open = True
        self.reason: str | None = None
        self.report: StopReport | None = None

    def request(self, reason: str) -> None:
        """Stop the run (thread-safe, and safe in a signal handler); again does nothing."""
        if self.reason is not None:
            return
        self.reason = reason
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # Once: a cancellation that kept coming (as anyio's cancel scopes deliver it) would
        # cut short the stop's own calls to RunComfy and Prefect.
        if self._open and self._task is not None and not self._task.done():
            self._task.cancel(f"stopped ({self.reason})")


_runs: set[RunStop] = set()
_pending: list[str] = []
_current: contextvars.ContextVar[RunStop | None] = contextvars.ContextVar(
    "prefect_runcomfy_run_stop", default=None
)


def request_stop(reason: str) -> None:
    """Stop every run body of this process run by `run_stoppable` (from any thread, or a signal
    handler); a run body that starts later stops at once, until `clear_stop_request`."""
    _pending[:] = [reason]
    for listener in list(stop_requested_listeners):
        listener(reason)
    for run in list(_runs):  # list(): another thread may add or drop one meanwhile
        run.request(reason)


def clear_stop_request() -> None:
    """Forget a stop that no run body took (it was asked after the run's body ended)."""
    _pending.clear()


@contextlib.contextmanager
def watching_for_stop() -> Iterator[RunStop]:
    """Make the running task's body reachable by `request_stop` while it runs."""
    run = RunStop()
    token = _current.set(run)
    _runs.add(run)
    if _pending:
        run.request(_pending[0])
    try:
        yield run
    finally:
        run._open = False
        _runs.discard(run)
        _current.reset(token)


async def run_stoppable(
    fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T | State[Any]:
    """Run an async flow body so that a `request_stop` ends its flow run `Cancelled`, with
    the run's `StopReport` as the state's message; any other cancellation passes as is.

    A flow run's state is its body's return value: Prefect sets a returned `Cancelled` state,
    where a cancellation escaping the body ends the run `Crashed`. Flows use it through a
    wrapper of their own module (`flows.stoppable`): Prefect resolves a flow's parameter
    annotations in its function's globals, and versions it by its function's file.
    """
    with watching_for_stop() as stop:
        try:
            return await fn(*args, **kwargs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Only our own stop becomes a state: another cancellation (a timeout, a parent
            # cancelled meanwhile) still counts on the task once ours is taken off.
            if stop.reason is None or task is None or task.uncancel() > 0:
                raise
    report = stop.report or StopReport("", reason=stop.reason)
    for listener in list(stop_listeners):
        listener(report)
    return Cancelled(message=report.message())


def mark_stoppable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a flow body that goes through `run_stoppable` (the sync entry points then stop
    it on SIGINT and SIGTERM: `sync_or_async.StopOnSignals`)."""
    fn.__runcomfy_stoppable__ = True  # type: ignore[attr-defined]
    return fn


def is_stoppable(fn: Any) -> bool:
    """Whether `fn` is a flow body marked by `mark_stoppable`."""
    return bool(getattr(fn, "__runcomfy_stoppable__", False))


# -- what a stopped run does ------------------------------------------------------------------


async def stop_batch(
    batch: RunState, *, cancel: bool, stop_rows: Callable[[float], Awaitable[Any]]
) -> StopReport:
    """Stop a run's rows within `STOP_GRACE_S`: no further submit starts, the submits already
    sent are answered, the jobs the run submitted and has not seen finish are asked to cancel
    (`cancel`), the rows are stopped (`stop_rows`, given the seconds left), and then the
    ledger says which jobs were cancelled.

    The cancels go before the rows are stopped: a queued job that starts meanwhile is billed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_GRACE_S

    def left() -> float:
        return max(0.1, deadline - loop.time())

    batch.stop_reason = batch.stop_reason or "the run was stopped"
    if batch.posting:
        await asyncio.wait(set(batch.posting), timeout=left())
    requests = dict(batch.submitted)
    answers: dict[str, bool] = {}
    if cancel and requests:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(send_cancels(batch.make_client, requests, answers), left())
    await stop_rows(left())
    answered = dict(answers)  # a cancel still under way after the grace answers too late
    await _record(batch, requests, answered)
    return StopReport(
        batch.store.output_uri,
        cancelled=tuple(requests[r] for r, done in answered.items() if done),
        running=tuple(requests[r] for r, done in answered.items() if not done),
        unanswered=tuple(q for r, q in requests.items() if r not in answered),
        cancelling=cancel,
    )


async def _record(
    batch: RunState, requests: Mapping[str, str], answers: Mapping[str, bool]
) -> None:
    """The ledger after a stop: a cancelled job's row `cancelled` and not billed (so a re-run
    submits it again); a job left running recorded `submitted` with its id, in case the stop
    cut the row's own write (else a re-run could not collect it)."""

    def write(row_id: str, request_id: str) -> None:
        with contextlib.suppress(StorageError):
            if answers.get(row_id):
                mark_cancelled(batch.ledger, row_id, request_id)
            else:
                _keep_request_id(batch.ledger, row_id, request_id)

    await asyncio.gather(*(asyncio.to_thread(write, r, q) for r, q in requests.items()))


def _keep_request_id(ledger: Ledger, row_id: str, request_id: str) -> None:
    entry = ledger.get(row_id)
    if entry is None or entry.request_id != request_id:
        ledger.mark_submitted(row_id, request_id)


def say_stopped(report: StopReport) -> None:
    """Hand the report to the run body's `run_stoppable` (its flow run's state says it), or log
    it when the stop came another way (the run then ends as Prefect decides)."""
    run = _current.get()
    if run is not None and run.reason is not None:
        run.report = dataclasses.replace(report, reason=run.reason)
    else:
        get_run_logger().warning("%s", report.message())


__all__ = [
    "STOPS",
    "STOP_GRACE_S",
    "RunStop",
    "StopReport",
    "cancelled_here",
    "clear_stop_request",
    "is_stoppable",
    "mark_stoppable",
    "request_stop",
    "run_stoppable",
    "say_stopped",
    "stop_batch",
    "stop_listeners",
    "stop_requested_listeners",
    "watching_for_stop",
]
