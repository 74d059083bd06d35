"""The `prefect-runcomfy` command: run, validate, sandbox, demo, status, cancel, collect.

Exit codes tell outcomes apart, so a scheduler or a shell script can act on them:

| code | meaning |
|---:|---|
| 0 | every row succeeded (or: the command did what it was asked) |
| 1 | the run finished, but some rows did not succeed (see the manifest) |
| 2 | bad input: the table (or an argument) is invalid; nothing was submitted |
| 3 | configuration error: no token, unknown credentials block, unreachable storage, over a limit |
| 4 | RunComfy refused or failed a single-request command (status, cancel) |
| 130 | stopped by Ctrl-C (SIGINT): queued jobs cancelled, the rest said in one line |
| 143 | stopped by SIGTERM, the same way |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

StorageOptions = Annotated[
    list[str] | None,
    typer.Option("--storage-option", "-s", help="fsspec option for --output, key=value."),
]
"""The `-s key=value` option of every command that opens the output location."""

StagingUri = Annotated[
    str | None,
    typer.Option(
        help="Folder (s3://, gs://) to upload local media to. Default: the Prefect Variable "
        "runcomfy_staging_uri."
    ),
]
"""The `--staging-uri` option of `run`, `plan` and `validate` (one rule: `local_media`)."""
InlineMedia = Annotated[
    bool,
    typer.Option(
        help="Send local media as data: URIs (the default against the local sandbox, or "
        "with the Prefect Variable runcomfy_inline_media)."
    ),
]
"""The `--inline-media` option of `run`, `plan` and `validate` (one rule: `local_media`)."""

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_CONFIG = 3
EXIT_API = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM

app = typer.Typer(
    name="prefect-runcomfy",
    help="Turn tables of portraits and speech into lip-synced talking videos with RunComfy.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err = Console(stderr=True)


def _options(values: list[str] | None) -> dict[str, Any] | None:
    """`key=value` pairs (values parsed as JSON when they can be) into fsspec options."""
    if not values:
        return None
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not key=value")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = options
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return options


def _shown(value: Any) -> str:
    """A cell as the terminal shows it: blank for a missing value (None, NaN, NA), never `nan`;
    hints in it said for the command line."""
    from prefect_runcomfy.engine.record.hints import for_cli

    return "" if _is_blank(value) else escape(for_cli(str(value)))


def _is_blank(value: Any) -> bool:
    """None, NaN, pandas' NA and NaT, and empty text (judged without importing pandas: the
    error lines of `status` and `cancel` go through here too)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return value != value
    return type(value).__name__ in ("NAType", "NaTType")


def _summary(manifest: Any, output: str) -> None:
    """Print the run's rows as a table, then its counts, what to do about each kind of row
    that did not succeed (in CLI words), spending and where its files are."""
    from prefect_runcomfy.engine.record.outcome import as_number
    from prefect_runcomfy.report.review.advice import advice_for
    from prefect_runcomfy.report.summary import summarize

    table = Table(title="Talking videos", show_lines=False)
    for column in ("id", "status", "request id", "seconds", "video / error"):
        table.add_column(column, overflow="fold")
    for record in manifest.to_dict(orient="records"):
        seconds = as_number(record.get("run_seconds"))
        ok = record.get("status") == "succeeded"
        table.add_row(
            _shown(record.get("id")),
            f"[{'green' if ok else 'red'}]{_shown(record.get('status'))}[/]",
            _shown(record.get("request_id")),
            "" if seconds is None else f"{seconds:.1f}",
            _shown(record.get("video_uri") if ok else record.get("error")),
        )
    console.print(table)
    summary = summarize(manifest)
    counts = summary.nonzero_counts
    console.print(escape(", ".join(f"{n} {s}" for s, n in counts.items())) or "no rows")
    for status, n in counts.items():
        advice = advice_for(status, output_uri=output, surface="cli")
        if advice and status != "succeeded":
            console.print(f"[red]{n} {escape(status)}:[/] {escape(advice)}")
    for sentence in summary.spending:
        console.print(escape(sentence))
    console.print(f"Outputs and manifest.parquet: [bold]{escape(output)}[/]")
    page = manifest.attrs.get("review_page")
    if page:
        console.print(f"Review page: [bold]{escape(str(page))}[/]  (open it in a browser)")


def _quiet_console(verbose: bool) -> None:
    """Keep Prefect's log lines, warnings and tracebacks out of the terminal unless `verbose`:
    the progress bar and the summary say what happened (one line per row that did not
    succeed, what to do about it) and the exit code the rest. The lines still reach the
    Prefect API and UI."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    if not verbose:
        _console_level(logging.CRITICAL + 1)


def _console_level(level: int) -> None:
    """Show only Prefect log lines of `level` and above in the terminal."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.setLevel(level)


def _run_flow(*, flow: str = "generate_talking_videos", **kwargs: Any) -> Any:
    """Run a flow of `prefect_runcomfy.flows` in this process, with a live progress bar on the
    terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prefect_runcomfy import flows
    from prefect_runcomfy.report.artifacts import progress_listeners

    run_flow = getattr(flows, flow)
    bar = Progress(
        TextColumn("[bold]rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    )
    task_id = bar.add_task("starting", total=None)

    def listen(done: int, total: int, counts: dict[str, int]) -> None:
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        bar.update(task_id, completed=done, total=total, description=text)

    progress_listeners.append(listen)
    try:
        with bar:
            return run_flow(**kwargs)
    finally:
        progress_listeners.remove(listen)


class _Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM reached the command (raised by its handler, as Python's own handler
    raises KeyboardInterrupt, so that Prefect and the run treat both alike)."""


def _manifest_of(
    call: Callable[[], Any],
    *,
    output: str | None = None,
    verbose: bool = False,
    setup: Callable[[], None] | None = None,
) -> Any:
    """Run a flow (after `setup`) and return its manifest, also when rows ended the flow run
    Failed (the exit code says so); other errors become their exit codes.

    Ctrl-C or SIGTERM stops the run (its queued jobs cancelled, its flow run Cancelled: see
    `sync_or_async.StopOnSignals`), then the command prints what was left in one line and
    exits 130 (143 for SIGTERM). The Prefect log lines of the rows being stopped stay out of
    the terminal (unless --verbose): the UI has them. The signal is noted when it arrives:
    a KeyboardInterrupt raised inside a library may come out wrapped in its own error.
    """
    from prefect_runcomfy.api.exceptions import RowsNeedAttentionError
    from prefect_runcomfy.engine.run import stopping

    received: list[int] = []
    asked: list[str] = []
    reports: list[stopping.StopReport] = []

    def on_signal(signum: int, frame: object) -> None:
        if received:  # the command is stopping already: another signal ends it at once
            _exit_now(_stop_code(received))
        received.append(signum)
        raise _Stopped

    def quiet(reason: str) -> None:  # in the signal handler: only a level is set
        asked.append(reason)
        if not verbose:
            _console_level(logging.CRITICAL + 1)

    with _signals_to(on_signal, keep=lambda: bool(received)), _listening(quiet, reports.append):
        try:
            if setup is not None:
                setup()
            return call()
        except RowsNeedAttentionError as exc:
            if not received:
                return exc.manifest
        except Exception as exc:
            if not received:
                raise typer.Exit(_handle(exc)) from None
        except KeyboardInterrupt:
            pass
    # Prefect's threads may still be logging as Python shuts down (a second Ctrl-C cut the
    # wait short): their failures are expected then, and not worth a traceback each.
    logging.raiseExceptions = False
    err.print(f"[yellow]{escape(_stop_message(reports, asked, output))}[/]")
    # Python's shutdown then waits for Prefect's log and event workers to hand over what they
    # hold, with no time limit; with the server gone (a temporary server started by this
    # command is in its process group and gets the terminal's Ctrl-C too) they retry for
    # minutes. The line is said: the process ends within EXIT_GRACE_S whatever they do.
    limit = threading.Timer(EXIT_GRACE_S, _exit_now, (_stop_code(received),))
    limit.daemon = True
    limit.start()
    raise typer.Exit(_stop_code(received))


EXIT_GRACE_S = 5.0
"""How long a stopped command's shutdown may take (Prefect's own log flush waits 5 s)."""


def _stop_code(received: list[int]) -> int:
    return EXIT_TERMINATED if signal.SIGTERM in received else EXIT_INTERRUPTED


def _exit_now(code: int) -> None:
    """End the process at once, with what it has printed so far."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a flush cut by a signal can raise
            stream.flush()
    os._exit(code)


def _stop_message(reports: list[Any], asked: list[str], output: str | None) -> str:
    """The one line a stopped command prints: the run's own report when it made one."""
    if reports:
        return str(reports[-1].message())
    if not asked:  # stopped before the run began: nothing was submitted
        return "Stopped; nothing was submitted."
    collect = f"`prefect-runcomfy collect {shlex.quote(output)} --cancel`" if output else "collect"
    return (
        "Stopped without waiting for the run to cancel its queued jobs: "
        f"{collect} cancels any still queued and stores the others."
    )


@contextlib.contextmanager
def _signals_to(handler: Callable[[int, Any], None], keep: Callable[[], bool]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` meanwhile, and to the end of the process when
    `keep()` says so on the way out (a stopping command: a signal during Python's shutdown
    then goes to `handler`, not to the default one, which would print a traceback from
    wherever the shutdown was waiting)."""
    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if not keep():
            for signum, previous in before.items():
                signal.signal(signum, previous)


@contextlib.contextmanager
def _listening(
    on_request: Callable[[str], None], on_stopped: Callable[[Any], None]
) -> Iterator[None]:
    """Hear a stop as it is asked (`on_request`) and its report (`on_stopped`) meanwhile."""
    from prefect_runcomfy.engine.run import stopping

    stopping.stop_requested_listeners.append(on_request)
    stopping.stop_listeners.append(on_stopped)
    try:
        yield
    finally:
        stopping.stop_requested_listeners.remove(on_request)
        stopping.stop_listeners.remove(on_stopped)


def _exit_for(manifest: Any) -> int:
    ok = len(manifest) > 0 and bool((manifest["status"] == "succeeded").all())
    return EXIT_OK if ok else EXIT_PARTIAL


def _handle(exc: BaseException) -> int:
    """Print a known error in one line (its hints said for the command line); its exit code."""
    from prefect_runcomfy.api.exceptions import (
        ConfigurationError,
        InvalidInputError,
        InvalidRequestIdError,
        RunComfyAPIError,
        StorageError,
    )

    if isinstance(exc, (InvalidInputError, InvalidRequestIdError)):
        err.print(f"[red]Invalid input:[/] {_shown(exc)}")
        return EXIT_BAD_INPUT
    if isinstance(exc, (ConfigurationError, StorageError)):
        err.print(f"[red]Configuration error:[/] {_shown(exc)}")
        return EXIT_CONFIG
    if isinstance(exc, RunComfyAPIError):
        err.print(f"[red]RunComfy said no:[/] {_shown(exc)}")
        return EXIT_API
    raise exc


@app.command()
def run(
    inputs: Annotated[str, typer.Argument(help="CSV, Parquet or JSON-lines table (path or URL).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where videos go (folder, s3://...).")
    ],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Jobs in flight.")] = 8,
    credentials: Annotated[
        str | None, typer.Option(help="Name of a saved RunComfyCredentials block.")
    ] = None,
    max_wait: Annotated[float, typer.Option(help="Seconds to wait for one job.")] = 3600.0,
    staging_uri: StagingUri = None,
    inline_media: InlineMedia = False,
    on_invalid: Annotated[str, typer.Option(help="continue | stop")] = "continue",
    retry_failed: Annotated[bool, typer.Option(help="Pay again for rows that failed.")] = False,
    resubmit_unknown: Annotated[
        bool, typer.Option(help="Submit again rows whose submit outcome is unknown.")
    ] = False,
    concurrency_limit: Annotated[
        str | None, typer.Option(help="Prefect global concurrency limit for the account.")
    ] = None,
    storage_option: StorageOptions = None,
    max_submits: Annotated[
        int | None,
        typer.Option(help="Refuse to run (exit 3) if more new, paid jobs would be submitted."),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            help="Refuse to run (exit 3) if the new jobs' estimated cost (USD, from RunComfy's "
            "catalog) is higher, or cannot be estimated."
        ),
    ] = None,
    single_writer: Annotated[
        bool,
        typer.Option(
            help="Take no claims on rows (storage that cannot create files exclusively): "
            "only when no other run writes to --output at the same time, or rows may be paid "
            "twice."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line.")] = False,
) -> None:
    """Run every row of INPUTS and store videos, sidecars and manifest.parquet under --output.

    Examples:

    ```
    prefect-runcomfy run rows.csv --output ./videos
    prefect-runcomfy run s3://in/rows.parquet -o s3://out/nightly --credentials runcomfy -c 16
    prefect-runcomfy run rows.csv -o ./videos --max-submits 500 --max-cost 25
    ```

    Exit code 0: all rows succeeded; 1: some did not; 2: bad input; 3: configuration error
    (or over --max-submits / --max-cost, before anything was submitted); 130: stopped by
    Ctrl-C (143: by SIGTERM): queued jobs are cancelled, and one line says what was left
    running and the command that collects it (the same run again goes on where it stopped).
    """
    from prefect_runcomfy.engine.run.settings import Concurrency, MediaOptions, Spending

    manifest = _manifest_of(
        output=output,
        verbose=verbose,
        setup=lambda: _quiet_console(verbose),
        call=lambda: _run_flow(
            inputs=inputs,
            output_uri=output,
            credentials=credentials,
            max_concurrency=concurrency,
            max_wait_s=max_wait,
            staging_uri=staging_uri,
            inline_media=inline_media,
            storage_options=_options(storage_option),
            spending=Spending(
                max_submits=max_submits,
                max_cost_usd=max_cost,
                retry_failed=retry_failed,
                resubmit_unknown=resubmit_unknown,
            ),
            media=MediaOptions(on_invalid=on_invalid),  # type: ignore[arg-type]
            concurrency=Concurrency(limit=concurrency_limit, single_writer=single_writer),
        ),
    )
    _summary(manifest, output)
    raise typer.Exit(_exit_for(manifest))


def _planned(
    inputs: str,
    output: str | None,
    *,
    mode: Literal["check", "offline"],
    staging_uri: str | None,
    inline_media: bool,
    storage_options: dict[str, Any] | None = None,
    credentials: str | None = None,
    price: bool = False,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
) -> Any:
    """The run's own plan of INPUTS (`engine.plan.planning.plan_table`), against the ledger
    under `output` (None: every row new), its media checked in `mode` by a run's rule for
    --staging-uri and --inline-media (`local_media`: then the Prefect Variables, then the
    sandbox's default), against the API of --credentials or the environment."""
    from prefect_runcomfy.engine.plan.planning import plan_table, planning_store
    from prefect_runcomfy.models import INFINITE_TALK

    async def planned() -> Any:
        from prefect_runcomfy.api.client import RunComfyClient
        from prefect_runcomfy.local_media import api_base_url, media_settings

        block = None
        if credentials:
            from prefect_runcomfy.flows import load_credentials

            block = await load_credentials(credentials)
        make_client = block.get_client if block is not None else RunComfyClient
        return await plan_table(
            inputs,
            planning_store(output, storage_options) if output else None,
            INFINITE_TALK,
            media=media_settings(
                staging_uri, inline_media, base_url=api_base_url(block), mode=mode
            ),
            make_client=make_client if price else None,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
        )

    try:
        return asyncio.run(planned())
    except Exception as exc:
        raise typer.Exit(_handle(exc)) from None


@app.command()
def validate(
    inputs: Annotated[str, typer.Argument(help="CSV, Parquet or JSON-lines table (path or URL).")],
    staging_uri: StagingUri = None,
    inline_media: InlineMedia = False,
) -> None:
    """Check every row of INPUTS without any network call; print every problem of every row.

    The rows and their local media files are checked by the rules of a run given the same
    --staging-uri or --inline-media (a local file needs one of them); remote media are
    looked at by `plan` and `run`.

    Example: `prefect-runcomfy validate rows.csv --inline-media`. Exit code 0: all rows
    valid; 2: not.
    """
    table_plan = _planned(
        inputs, None, mode="offline", staging_uri=staging_uri, inline_media=inline_media
    )
    for problem in table_plan.invalid:
        console.print(f"[red]✗[/] {escape(problem.message)}")
    console.print(f"{len(table_plan.rows)} of {table_plan.total} rows valid.")
    raise typer.Exit(EXIT_BAD_INPUT if table_plan.invalid else EXIT_OK)


@app.command()
def plan(
    inputs: Annotated[str, typer.Argument(help="CSV, Parquet or JSON-lines table (path or URL).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="The output location a run would use.")
    ],
    staging_uri: StagingUri = None,
    inline_media: InlineMedia = False,
    retry_failed: Annotated[bool, typer.Option(help="As `run --retry-failed` would.")] = False,
    resubmit_unknown: Annotated[
        bool, typer.Option(help="As `run --resubmit-unknown` would.")
    ] = False,
    max_submits: Annotated[
        int | None, typer.Option(help="Exit 3 if more new jobs would be submitted.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(help="Exit 3 if the new jobs' estimated cost (USD) is higher, or unknown."),
    ] = None,
    credentials: Annotated[
        str | None, typer.Option(help="Saved RunComfyCredentials block to read the price with.")
    ] = None,
    storage_option: StorageOptions = None,
) -> None:
    """Show what `run` would do with each row of INPUTS, from the ledger under --output, and
    what the new jobs would cost.

    It is the run's own plan: the same rows, decided the same way, their media checked by the
    same rules (given the same --staging-uri or --inline-media), so a row it counts as to
    submit is one a run sends. Nothing is submitted, uploaded or written. The only call to
    RunComfy reads the model's price from its catalog (with the token of the environment or
    --credentials; without one the cost is not estimated).

    Examples:

    ```
    prefect-runcomfy plan rows.csv --output ./videos --inline-media
    prefect-runcomfy plan s3://in/rows.parquet -o s3://out/nightly --max-submits 500 --max-cost 25
    ```

    Exit code 0: planned; 2: bad input (invalid rows are listed); 3: over --max-submits or
    --max-cost.
    """
    table_plan = _planned(
        inputs,
        output,
        mode="check",
        staging_uri=staging_uri,
        inline_media=inline_media,
        storage_options=_options(storage_option),
        credentials=credentials,
        price=True,
        retry_failed=retry_failed,
        resubmit_unknown=resubmit_unknown,
    )
    _print_plan(table_plan)
    try:
        table_plan.check_limits(max_submits, max_cost)
    except Exception as exc:
        raise typer.Exit(_handle(exc)) from None
    raise typer.Exit(EXIT_BAD_INPUT if table_plan.invalid else EXIT_OK)


def _print_plan(table_plan: Any) -> None:
    """Each row's plan and why, the invalid rows, the counts, and the estimate."""
    table = Table(title="Plan", show_lines=False)
    for column in ("id", "plan", "why"):
        table.add_column(column, overflow="fold")
    for row, decision in zip(table_plan.rows, table_plan.decisions, strict=True):
        table.add_row(escape(row.id), decision.plan.value, _shown(decision.reason))
    for problem in table_plan.invalid:
        shown_id = escape(str(problem.id or f"row {problem.row}"))
        table.add_row(shown_id, "[red]invalid[/]", _shown(problem.message))
    console.print(table)
    console.print(_shown(table_plan.describe()))
    estimate = table_plan.estimate()
    if estimate is not None:
        said = estimate.describe()
        console.print(escape(said[:1].upper() + said[1:]))


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8787,
    workers: Annotated[int, typer.Option(help="Jobs run at once.")] = 2,
    run_seconds: Annotated[float, typer.Option(help="Seconds each job runs.")] = 3.0,
    queue_seconds: Annotated[
        float, typer.Option(help="Extra seconds before a job may start.")
    ] = 0.0,
) -> None:
    """Serve the local RunComfy sandbox (no credits spent) until Ctrl-C.

    Example: `prefect-runcomfy sandbox --port 8787`, then
    `RUNCOMFY_BASE_URL=http://127.0.0.1:8787 RUNCOMFY_API_TOKEN=sandbox-token prefect-runcomfy run ...`
    """
    from prefect_runcomfy.sandbox import SandboxConfig, serve_sandbox

    config = SandboxConfig(workers=workers, run_seconds=run_seconds, queue_seconds=queue_seconds)
    serve_sandbox(config, host="127.0.0.1", port=port)


@app.command()
def demo(
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where the demo writes.")
    ] = "./output",
) -> None:
    """Run the flow over sample rows against the built-in sandbox; write real MP4s to --output.

    Example: `prefect-runcomfy demo --output ./output`. Spends no credits; needs no token.
    """
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from prefect_runcomfy.engine.run.settings import Waiting
    from prefect_runcomfy.sandbox import SandboxConfig, run_sandbox, sample_inputs

    out = str(Path(output).resolve()) if "://" not in output else output
    with run_sandbox(SandboxConfig(workers=2, run_seconds=(1.0, 3.0))) as sb:
        os.environ["RUNCOMFY_BASE_URL"] = sb.base_url
        os.environ["RUNCOMFY_API_TOKEN"] = sb.token
        rows = sample_inputs(sb.base_url)
        console.print(f"Sandbox at {sb.base_url}; {len(rows)} sample rows → {out}")
        # The demo starts Prefect's temporary server; on a busy machine it needs more than
        # Prefect's default 20 s to come up.
        with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90}):
            manifest = _manifest_of(
                output=out,
                setup=lambda: _quiet_console(False),
                call=lambda: _run_flow(
                    inputs=rows,
                    output_uri=out,
                    max_concurrency=4,
                    waiting=Waiting(poll_initial_s=0.5, poll_max_s=2.0),
                ),
            )
    _summary(manifest, out)
    videos = manifest["video_uri"].dropna()
    console.print(f"Open a video: [bold]{escape(str(videos.iloc[0] if len(videos) else out))}[/]")
    raise typer.Exit(_exit_for(manifest))


Credentials = Annotated[
    str | None,
    typer.Option(
        help="Name of a saved RunComfyCredentials block (default: RUNCOMFY_API_TOKEN and "
        "RUNCOMFY_BASE_URL from the environment)."
    ),
]
"""The `--credentials` option of every command that needs a token."""


def _single(coro_factory: Any, credentials: str | None = None) -> Any:
    """Run one request with a client of the saved block `credentials` (Prefect is imported
    only then) or of the environment."""
    from prefect_runcomfy.api.client import RunComfyClient

    async def go() -> Any:
        if credentials:
            from prefect_runcomfy.flows import load_credentials

            _quiet_console(False)  # Prefect's own lines (its event worker's) stay out
            block = await load_credentials(credentials)
            assert block is not None  # a name gives a block or raises
            client = block.get_client()
        else:
            client = RunComfyClient()
        async with client:
            return await coro_factory(client)

    try:
        return asyncio.run(go())
    except Exception as exc:
        raise typer.Exit(_handle(exc)) from None


@app.command()
def status(
    request_id: Annotated[str, typer.Argument(help="A RunComfy request id.")],
    credentials: Credentials = None,
) -> None:
    """Print a request's status and, when finished, its result.

    Example: `prefect-runcomfy status 3f1c... --credentials runcomfy`
    """
    result = _single(lambda c: c.result(request_id, include_cost=True), credentials)
    console.print_json(result.model_dump_json())


@app.command()
def cancel(
    request_id: Annotated[str, typer.Argument(help="A RunComfy request id.")],
    credentials: Credentials = None,
) -> None:
    """Cancel a queued request (running ones cannot be cancelled and are billed).

    Example: `prefect-runcomfy cancel 3f1c... --credentials runcomfy`
    """
    outcome = _single(lambda c: c.cancel(request_id), credentials)
    console.print_json(outcome.model_dump_json())
    raise typer.Exit(EXIT_OK if outcome.cancelled else EXIT_PARTIAL)


@app.command()
def collect(
    output: Annotated[str, typer.Argument(help="The output location of an earlier run.")],
    credentials: Credentials = None,
    cancel_queued: Annotated[
        bool, typer.Option("--cancel", help="Cancel outstanding requests instead of waiting.")
    ] = False,
    max_wait: Annotated[float, typer.Option(help="Seconds to wait for one job.")] = 3600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line.")] = False,
) -> None:
    """Wait for (or cancel) requests an interrupted run left under OUTPUT and store them.

    Example: `prefect-runcomfy collect s3://out/nightly --credentials runcomfy`

    Exit code 0: every collected row succeeded (or nothing was left); 1: some did not.
    """
    manifest = _manifest_of(
        output=output,
        verbose=verbose,
        setup=lambda: _quiet_console(verbose),
        call=lambda: _run_flow(
            flow="collect_outstanding_requests",
            output_uri=output,
            credentials=credentials,
            cancel=cancel_queued,
            max_wait_s=max_wait,
        ),
    )
    if manifest.empty:
        console.print("Nothing to collect.")
        raise typer.Exit(EXIT_OK)
    _summary(manifest, output)
    raise typer.Exit(_exit_for(manifest))


def main() -> None:
    """Entry point of the `prefect-runcomfy` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
