"""Flows: turn a table into talking videos, and collect what an interrupted run left behind.

Example:
    ```python
    import pandas as pd
    from prefect_runcomfy import generate_talking_videos

    table = pd.DataFrame([
        {"id": "ada", "prompt": "a woman talks", "image": "s3://in/ada.png", "audio": "s3://in/ada.mp3"},
    ])
    manifest = generate_talking_videos(table, "s3://out/videos", credentials="runcomfy")
    print(manifest[["id", "status", "video_uri", "error"]])
    ```

    From a script or a sync `@flow` the call runs and returns the manifest (a subflow of the
    sync parent); from async code, await it: `await generate_talking_videos(...)`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
from prefect import tags
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.logging import get_logger, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, RowsNeedAttentionError
from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.engine.inputs.table import table_folder
from prefect_runcomfy.engine.outputs.manifest import build_manifest
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.engine.plan.planning import MediaSettings
from prefect_runcomfy.engine.record import hints
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.run.runner import (
    collect_table,
    open_output,
    plan_collect,
    plan_run,
    plan_whole_table,
    run_table,
)
from prefect_runcomfy.engine.run.settings import (
    Concurrency,
    MediaOptions,
    RunHooks,
    RunSettings,
    ShardRole,
    ShardWatching,
    Spending,
    Waiting,
)
from prefect_runcomfy.engine.run.state import cancel_queued_requests, queued_requests
from prefect_runcomfy.engine.run.stopping import cancelled_here, mark_stoppable, run_stoppable
from prefect_runcomfy.engine.shards.heartbeat import heartbeat_for
from prefect_runcomfy.engine.shards.parent import merged_outcomes, run_shards
from prefect_runcomfy.engine.shards.runs import cancel_recorded
from prefect_runcomfy.engine.shards.split import ShardFiles, plan_shards
from prefect_runcomfy.local_media import api_base_url, media_settings
from prefect_runcomfy.locations import (
    LOCATION_BLOCKS,
    Location,
    block_parameter,
    storage_location,
    stored_location,
)
from prefect_runcomfy.models.infinite_talk import INFINITE_TALK
from prefect_runcomfy.report.artifacts import Progress
from prefect_runcomfy.report.events import RowEvents
from prefect_runcomfy.report.finish import check_allow_failed_rows, finish_run
from prefect_runcomfy.report.naming import artifact_key as artifact_key_for
from prefect_runcomfy.report.naming import run_tags
from prefect_runcomfy.sync_or_async import SyncOrAsyncFlow, sync_or_async_flow
from prefect_runcomfy.tasks import cancel_request, client_for

STORED_TABLE_ROWS = 1000
"""In-memory tables up to this many rows are stored as the flow run's `inputs` parameter."""


class TableFlow(SyncOrAsyncFlow):
    """A flow whose in-memory `inputs` table is stored in Prefect only while it is small, and
    whose filesystem blocks are stored by reference (a saved one) or by their kind and path
    alone (an unsaved one): their settings may hold credentials.

    Prefect keeps every flow run's parameters in its database and refuses more than 512 KiB:
    about 2,000 rows. A larger DataFrame or list is described instead ("<in-memory table of
    10000 rows ...>"); the flow still receives the table itself. (Tables given as a file path
    or URL are always stored: they are just a string.)
    """

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Prefect's serialization, with a large in-memory `inputs` table summarized."""
        table = parameters.get("inputs")
        if isinstance(table, (pd.DataFrame, list)) and len(table) > STORED_TABLE_ROWS:
            kind = "DataFrame" if isinstance(table, pd.DataFrame) else "list of rows"
            parameters = {
                **parameters,
                "inputs": f"<in-memory {kind} of {len(table)} rows: not stored in Prefect "
                "(pass a file path or URL to keep it with the run)>",
            }
        blocks = {k: v for k, v in parameters.items() if isinstance(v, LOCATION_BLOCKS)}
        if blocks:  # a saved block by reference; an unsaved one without its settings
            parameters = {**parameters, **{k: block_parameter(v) for k, v in blocks.items()}}
        return super().serialize_parameters(parameters)


def stoppable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body that a Ctrl-C or SIGTERM on a sync caller stops cleanly: queued jobs
    cancelled, the flow run Cancelled with what was left (`engine.run.stopping.run_stoppable`).

    Written here, not in the engine: Prefect resolves a flow's parameter annotations in its
    function's globals, and versions the flow by its function's file.
    """

    @functools.wraps(fn)
    async def body(*args: Any, **kwargs: Any) -> Any:
        return await run_stoppable(fn, args, kwargs)

    return mark_stoppable(body)


def beating(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body that, run as a shard (`shard` names a heartbeat), writes that heartbeat
    while it runs, from reading the table to the manifest (`engine.shards.heartbeat`: how a
    sharded parent tells a working shard run from a dead one).

    Written here, not in the engine: Prefect resolves a flow's parameter annotations in its
    function's globals, and versions the flow by its function's file.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    async def body(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind_partial(*args, **kwargs).arguments
        shard = arguments.get("shard")
        if shard is None or not shard.heartbeat_name:
            return await fn(*args, **kwargs)
        uri, options = storage_location(arguments["output_uri"], arguments.get("storage_options"))
        with heartbeat_for(uri, options, shard.heartbeat_name, shard.heartbeat_s):
            return await fn(*args, **kwargs)

    return body


def said_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body whose rows' verdict (`RowsNeedAttentionError`) ends its flow run Failed
    with the error's words as the state's message, said once.

    Why: an exception escaping a flow body is logged by Prefect with its traceback
    ("Encountered exception during execution"), then again by every parent flow it passes
    through, and the traceback says nothing the message does not (the verdict is no bug).
    A returned Failed state is logged once ("Finished in state Failed('2 of 4 rows need
    attention ...')"); the caller still gets the error itself, with its `.manifest`: Prefect
    raises a Failed state's exception to a caller that asked for the result, and hands it to
    `state.result(raise_on_failure=False)`.
    """

    @functools.wraps(fn)
    async def body(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except RowsNeedAttentionError as exc:
            return Failed(message=str(exc), data=exc)

    return body


class _NoTracebackForVerdicts(logging.Filter):
    """Drop the traceback of a `RowsNeedAttentionError` from a flow run's log line (a parent
    flow that let it through logs "Encountered exception during execution"): its message
    says what happened and where the manifest is; the traceback only shows Prefect's engine."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RowsNeedAttentionError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_verdicts() -> None:
    flow_runs = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _NoTracebackForVerdicts) for f in flow_runs.filters):
        flow_runs.addFilter(_NoTracebackForVerdicts())


_quiet_verdicts()


def table_flow(**options: Any) -> Callable[[Callable[..., Any]], SyncOrAsyncFlow]:
    """`@flow(...)`, making a `TableFlow`."""
    return sync_or_async_flow(TableFlow, **options)


async def load_credentials(
    credentials: RunComfyCredentials | str | None,
) -> RunComfyCredentials | None:
    """A block, a saved block's name, or None (then the environment must hold the token:
    `RUNCOMFY_API_TOKEN`, `RUNCOMFY_TOKEN` or `RUNCOMFY_API_KEY`).

    Raises `ConfigurationError` early, before any row is touched, when no token can be found.
    """
    if isinstance(credentials, RunComfyCredentials):
        return credentials
    if isinstance(credentials, str) and credentials.strip():
        try:
            return await RunComfyCredentials.load(credentials.strip())
        except ValueError as exc:
            raise ConfigurationError(
                f"No RunComfyCredentials block named {credentials!r}: create it in the Prefect UI "
                f"or with {hints.save_credentials(credentials.strip())} ({exc})"
            ) from None
    # No block: the environment must hold the token. Fail now, not after the first row.
    await RunComfyClient().aclose()
    return None


async def tag_flow_run(wanted: tuple[str, ...]) -> None:
    """Add `wanted` to this flow run's tags (a deployment's run has only the deployment's).

    Row task runs get them from `prefect.tags(...)` around the batch; the flow run was
    created before its body ran, so it is updated once, through the API.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None:
        return
    missing = [t for t in wanted if t not in run.tags]
    if not missing:
        return
    try:
        async with get_client() as client:
            await client.update_flow_run(run.id, tags=[*run.tags, *missing])
    except Exception as exc:  # a tag is not worth failing a paid run for
        get_logger("prefect_runcomfy.flows").warning("Could not tag the flow run: %s", exc)


def _flow_run_id() -> str | None:
    try:
        context = get_run_context()
    except Exception:
        return None
    run = getattr(context, "flow_run", None)
    return str(run.id) if run is not None else None


async def _cancel_queued_on_stop(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Hook for cancelled and crashed runs: cancel the run's still-queued requests.

    Best effort: the hook may run in another process, or not at all. The ledger stays the
    source of truth; `collect_outstanding_requests` finishes whatever is left. The hook reads
    the token the way the run was given it: a saved block's name, or the environment. An
    unsaved block cannot be read back (Prefect stores the parameter masked), so the hook says
    which requests it left and how to avoid that, instead of failing quietly.
    """
    hook_logger = get_logger("prefect_runcomfy.flows")
    params = flow_run.parameters or {}
    output_uri = params.get("output_uri")
    if not output_uri or str(flow_run.id) in cancelled_here:
        return  # nothing to cancel, or the run's own stop did it in this process
    given = params.get("credentials")
    try:
        store = OutputStore(*await stored_location(output_uri, params.get("storage_options")))
        ledger = Ledger(store)
        if isinstance(given, dict):  # an unsaved block, stored masked: no token to be had
            left = await queued_requests(ledger, flow_run_id=str(flow_run.id))
            if left:
                hook_logger.warning(
                    "The run stopped with %d requests that may still be queued (%s), but it was "
                    "given an unsaved RunComfyCredentials block, whose token Prefect keeps "
                    "masked: this hook cannot cancel them. They are left for %s. To let the "
                    "hook cancel them, pass a saved block's name (credentials='runcomfy') or "
                    "set RUNCOMFY_API_TOKEN instead.",
                    len(left),
                    ", ".join(left),
                    hints.collect(str(output_uri), cancel=True).said("both"),
                )
            return
        credentials = await load_credentials(given)
        cancelled = await cancel_queued_requests(
            ledger, lambda: client_for(credentials), flow_run_id=str(flow_run.id)
        )
        if cancelled:
            hook_logger.warning("Cancelled %d queued requests: %s", len(cancelled), cancelled)
    except Exception as exc:
        hook_logger.warning(
            "Could not cancel the run's queued requests (%s); they are left for %s",
            exc,
            hints.collect(str(output_uri), cancel=True).said("both"),
        )


@table_flow(
    name="generate-talking-videos",
    log_prints=False,
    on_cancellation=[_cancel_queued_on_stop],
    on_crashed=[_cancel_queued_on_stop],
)
@said_once
@stoppable
@beating
async def generate_talking_videos(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    output_uri: Location,
    credentials: RunComfyCredentials | str | None = None,
    max_concurrency: int = 8,
    max_wait_s: float = 3600.0,
    storage_options: dict[str, Any] | None = None,
    staging_uri: Location | None = None,
    inline_media: bool = False,
    spending: Spending = Spending(),
    media: MediaOptions = MediaOptions(),
    waiting: Waiting = Waiting(),
    concurrency: Concurrency = Concurrency(),
    artifact_key: str | None = None,
    shard: ShardRole | None = None,
) -> pd.DataFrame:
    """Turn every row of a table into a lip-synced talking video, stored with its metadata.

    Each row (a portrait `image`, a speech `audio`, a `prompt`, optional settings) is checked,
    its media resolved, submitted once, waited for, and its video stored under `output_uri` as
    `<id>.mp4` with `<id>.json`; the run ends with `manifest.parquet` and returns the manifest.
    Running the same table into the same `output_uri` again skips stored rows, collects rows
    that were submitted, and never pays twice for a row by accident.

    The common call is `generate_talking_videos(inputs, output_uri)`; the settings people
    change now and then come in sections (pydantic models; in the Prefect UI each is a section
    of the run form, and a deployment passes each as a JSON object):
    `spending=Spending(max_submits=500, max_cost_usd=25)`,
    `media=MediaOptions(on_invalid="stop")`, `waiting=Waiting(poll_max_s=60)`,
    `concurrency=Concurrency(limit="runcomfy-account")`.

    Args:
        inputs: A DataFrame, a list of dicts, or a CSV / Parquet / JSON-lines path or URL.
            Columns `prompt`, `image`, `audio` (required), `resolution`, `frames`, `seed`,
            `steps`, `shift`, `cfg`, and `id` (names the row's files). Other columns are
            carried through to the manifest.
        output_uri: Where outputs go: a local folder, `s3://bucket/prefix`, `gs://...`, ...,
            or a Prefect filesystem block (`RemoteFileSystem`, whose `settings` are the fsspec
            options, so credentials stay in the block; `LocalFileSystem`; prefect-aws's
            `S3Bucket` where installed).
        credentials: A `RunComfyCredentials` block, the name of a saved one, or None to use
            `RUNCOMFY_API_TOKEN` (else `RUNCOMFY_TOKEN`, else `RUNCOMFY_API_KEY`) and
            `RUNCOMFY_BASE_URL`.
        max_concurrency: Jobs in flight at once from this run.
        max_wait_s: How long to wait for one job; a job still queued then is cancelled.
        storage_options: fsspec options for `output_uri` (e.g. an S3 endpoint); with a block,
            they are added to its settings.
        staging_uri: Where local media files are uploaded (then pre-signed) for RunComfy: an
            s3:// or gs:// folder, or a `RemoteFileSystem` or `S3Bucket` block of one.
            Without it (and without `inline_media`), the Prefect Variable
            `runcomfy_staging_uri` (set once for every deployment: `prefect variable set
            runcomfy_staging_uri s3://bucket/staging`), else `runcomfy_inline_media`, says
            where they go; against the local sandbox (a base URL on loopback) they are sent
            inline; else a row with a local file is invalid (`prefect_runcomfy.local_media`).
        inline_media: Send local media as `data:` URIs instead (image ≤ 6 MiB, audio ≤ 16 MiB).
        spending: What the run may pay for (`Spending`): `max_submits`, the most new (paid)
            jobs, and `max_cost_usd`, the most their estimated cost (from RunComfy's catalog),
            both checked before any POST (`SubmitLimitError`, `CostLimitError`);
            `allow_failed_rows`, how many rows that need a person (`failed`, `invalid`,
            `timed_out`, `outcome_unknown`) the run tolerates and still ends Completed (False:
            none; True: any; or a count; beyond it the run ends Failed, raising
            `RowsNeedAttentionError` with the manifest, after everything is written);
            `retry_failed` (pay again for rows that failed earlier) and `resubmit_unknown`
            (submit again rows whose earlier submit got no answer: this may pay twice).
        media: Reading the table and its media (`MediaOptions`): `on_invalid` ("continue" runs
            the valid rows and reports the others; "stop" submits nothing when any row is
            invalid), `input_storage_options` (fsspec options for the table and remote media)
            and `staging_storage_options` (for `staging_uri`; with a block, added to its
            settings).
        waiting: How jobs are polled (`Waiting`): `poll_initial_s` doubling up to `poll_max_s`;
            `poll_strategy` "learned" (read a job just after jobs of its kind finished in this
            run) or "doubling"; `not_found_grace_s`; `cancel_queued_at_deadline`.
        concurrency: Sharing with other runs (`Concurrency`): `limit`, the name of a Prefect
            global concurrency limit shared by every run on one RunComfy account (created with
            `prefect gcl create NAME --limit N`; strict); `single_writer`, take no claims on
            rows (only for storage that cannot create files exclusively, and only when no
            other run writes there at the same time: overlapping runs could each pay for the
            same rows).
        artifact_key: The key prefix of the run's summary artifacts (`<key>-summary`,
            `<key>-rows`), so that every run adds a version under one key on the Artifacts
            page. Default: derived from `output_uri` (`runcomfy-<location>-<hash>`).
        shard: Set only by `generate_talking_videos_sharded` for the runs of its shards
            (`ShardRole`: the shard's manifest name and heartbeat); leave it empty. A shard
            publishes its summary (unkeyed unless given an `artifact_key`) but no table
            artifact and no review page: its parent's list the rows of every shard.

    Returns:
        The manifest: one row per input row with `id, status, request_id, video_uri,
        metadata_uri, error`, timing, cost, file facts, the inputs and the extra columns.

    Raises:
        RowsNeedAttentionError: rows need a person beyond `allow_failed_rows`, or no row
            produced a video; `exc.manifest` is the manifest above.
    """
    check_allow_failed_rows(spending.allow_failed_rows)
    output, options = storage_location(output_uri, storage_options)
    staging, staging_options = storage_location(staging_uri, media.staging_storage_options)
    keyed = artifact_key is not None or shard is None
    key = artifact_key_for(output, artifact_key) if keyed else None
    await tag_flow_run(run_tags(INFINITE_TALK))
    creds = await load_credentials(credentials)
    settings = RunSettings(
        INFINITE_TALK,
        max_concurrency,
        max_wait_s,
        spending,
        waiting,
        concurrency,
        flow_run_id=_flow_run_id(),
    )
    resolving = media_settings(
        staging,
        inline_media,
        base_url=api_base_url(creds),
        storage_options=media.input_storage_options,
        staging_storage_options=staging_options,
    )
    store, outcomes = await _run_table(
        inputs,
        await open_output(output, options),
        settings,
        resolving,
        creds,
        on_invalid=media.on_invalid,
        table_storage_options=options if shard is not None else None,  # rows the parent wrote
    )
    return await finish_run(
        store,
        build_manifest(outcomes, INFINITE_TALK),
        output,
        name=shard.manifest_name if shard else MANIFEST_NAME,
        input_storage_options=media.input_storage_options,
        outcomes=outcomes,
        artifact_key=key,
        allow_failed_rows=spending.allow_failed_rows,
        model=INFINITE_TALK,
    )


async def _run_table(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    store: OutputStore,
    settings: RunSettings,
    media: MediaSettings,
    creds: RunComfyCredentials | None,
    *,
    on_invalid: Literal["continue", "stop"],
    table_storage_options: dict[str, Any] | None = None,
) -> tuple[OutputStore, list[RowOutcome]]:
    """The engine's run of the table (`engine.run.runner`), with the progress artifact and
    the row events hearing each row, and the run's tags on the rows' task runs."""

    def make_client() -> RunComfyClient:
        return client_for(creds)

    planned = await plan_run(
        inputs,
        store,
        settings,
        media,
        on_invalid=on_invalid,
        make_client=make_client,
        table_storage_options=table_storage_options or media.storage_options,
    )
    progress = Progress(planned.total)
    await progress.start()
    events = RowEvents(store, table_uri=inputs if isinstance(inputs, str) else None)
    hooks = RunHooks(make_client, on_row_done=lambda o: _row_done(o, progress, events))
    with tags(*run_tags(settings.model)):
        outcomes = await run_table(planned, store, settings, hooks)
    await progress.finish()
    events.run_done()
    return store, outcomes


async def _row_done(outcome: RowOutcome, progress: Progress, events: RowEvents) -> None:
    """A row ended: the progress artifact and Prefect's events hear it."""
    await progress.row_done(str(outcome.status))
    await events.row_done(outcome)


@table_flow(name="collect-outstanding-requests", log_prints=False)
@said_once
@stoppable
async def collect_outstanding_requests(
    output_uri: Location,
    credentials: RunComfyCredentials | str | None = None,
    storage_options: dict[str, Any] | None = None,
    cancel: bool = False,
    max_wait_s: float = 3600.0,
    max_concurrency: int = 8,
    allow_failed_rows: bool | int = False,
    waiting: Waiting = Waiting(),
    concurrency: Concurrency = Concurrency(),
) -> pd.DataFrame:
    """Finish what an interrupted or timed-out run left under `output_uri`.

    Every request in the ledger that was submitted but not stored (a crashed run, a
    `timed_out` row, an output the output host policy refused) is waited for and stored, or
    with `cancel=True` cancelled (only queued requests can be; running ones finish and are
    stored). Rows whose submit has an unknown outcome are reported as such; nothing is
    submitted. The manifest is updated. A request that a live run is waiting for (it holds
    the row's claim) is left to it and logged. `output_uri` (a URI or a filesystem block),
    `allow_failed_rows`, `waiting` and `concurrency` are as in `generate_talking_videos`.

    Returns:
        The manifest rows of the requests it handled.

    Raises:
        RowsNeedAttentionError: as `generate_talking_videos` does; `exc.manifest` holds the rows.
    """
    check_allow_failed_rows(allow_failed_rows)
    await tag_flow_run(run_tags(INFINITE_TALK))
    creds = await load_credentials(credentials)
    output, options = storage_location(output_uri, storage_options)
    store = OutputStore(output, options)
    settings = RunSettings(
        INFINITE_TALK,
        max_concurrency,
        max_wait_s,
        waiting=waiting,
        concurrency=concurrency,
        flow_run_id=_flow_run_id(),
    )
    left = await plan_collect(store)
    progress = Progress(left.total)
    await progress.start()
    events = RowEvents(store)
    hooks = RunHooks(
        lambda: client_for(creds),
        on_row_done=lambda outcome: _row_done(outcome, progress, events),
        cancel_job=lambda request_id: cancel_request(request_id, creds),
    )
    with tags(*run_tags(INFINITE_TALK)):
        outcomes = await collect_table(left, store, settings, hooks, cancel=cancel)
    await progress.finish()
    events.run_done()
    manifest = build_manifest(outcomes, INFINITE_TALK)
    if manifest.empty:
        get_run_logger().info("Nothing to collect.")
        return manifest
    return await finish_run(
        store,
        manifest,
        output,
        outcomes=outcomes,
        artifact_key=f"{artifact_key_for(output)}-collect",
        allow_failed_rows=allow_failed_rows,
        model=INFINITE_TALK,
    )


async def _cancel_shards_on_stop(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Hook for a cancelled sharded parent: cancel the shard runs it was waiting for (their
    own hooks cancel their queued jobs). It reads them from the record the parent wrote under
    its output location, since the hook may run in another process. Best effort."""
    params = flow_run.parameters or {}
    if not params.get("output_uri"):
        return
    try:
        where = await stored_location(params["output_uri"], params.get("storage_options"))
        store = OutputStore(*where)
        await cancel_recorded(store, str(flow_run.id))
    except Exception as exc:
        get_logger("prefect_runcomfy.flows").warning("Could not cancel the shard runs: %s", exc)


@table_flow(
    name="generate-talking-videos-sharded",
    log_prints=False,
    on_cancellation=[_cancel_shards_on_stop],
)
@said_once
async def generate_talking_videos_sharded(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    output_uri: Location,
    credentials: str | None = None,
    deployment: str = "generate-talking-videos/shard",
    shard_size: int = 500,
    max_concurrency_per_shard: int = 8,
    max_wait_s: float = 3600.0,
    storage_options: dict[str, Any] | None = None,
    staging_uri: Location | None = None,
    inline_media: bool = False,
    spending: Spending = Spending(),
    media: MediaOptions = MediaOptions(),
    waiting: Waiting = Waiting(),
    concurrency: Concurrency = Concurrency(),
    shard_watch: ShardWatching = ShardWatching(),
) -> pd.DataFrame:
    """Run a very large table as shards, each a separate flow run of `deployment` on its work
    pool, all under one account-wide limit, and merge their manifests into one.

    The whole table is checked here first, so an id is never in two shards (which could pay
    twice) and invalid rows are reported once. Each shard is written as Parquet under
    `<output_uri>/_shards/<shard>/`, runs `generate_talking_videos` into the same `output_uri`
    (one ledger, so re-running the parent is as safe as re-running one flow), and writes its
    own manifest; the merged `manifest.parquet` is written at the end.

    A shard is named by the output location, its index and its rows' ids, and its flow runs
    by an idempotency key derived from them (`engine/shards/runs.py`):

    - Re-run while shards still work (the same table into the same `output_uri`), the parent
      finds their runs and waits for them instead of starting others. A shard whose last run
      has ended gets a new run (attempt n + 1), which skips or collects what is done.
    - A shard run whose process died (a dead machine leaves it `Running` in Prefect) is
      noticed within `shard_stale_after_s` (+ one look) of its last heartbeat, marked
      `Crashed`, and its rows reported from the ledger (paid ones collectable with
      `prefect-runcomfy collect`); the merged manifest is still written.
    - Cancelling the parent cancels the shard runs it waits for; their own cancellation
      cancels their queued RunComfy jobs.

    Args:
        inputs: The table (DataFrame, list of dicts, or a file path/URL).
        output_uri: Where every shard stores its outputs (a URI, or a filesystem block: a
            saved one, since each shard loads it again by reference).
        credentials: The name of a saved RunComfyCredentials block (the shards load it).
        deployment: The deployment of `generate_talking_videos` that runs each shard
            (`prefect.yaml` defines `generate-talking-videos/shard`).
        shard_size: Rows per shard.
        max_concurrency_per_shard: Jobs in flight per shard.
        max_wait_s, storage_options, staging_uri, inline_media, media, waiting: Passed to
            every shard (see `generate_talking_videos`).
        spending: `max_submits` and `max_cost_usd` hold for the whole table, checked against
            the ledger before any shard starts; `allow_failed_rows` judges the merged
            manifest (and each shard's own run); `retry_failed` and `resubmit_unknown` as in
            `generate_talking_videos`. Every shard gets them too.
        concurrency: `limit`, a Prefect global concurrency limit shared by all shards: the
            number of RunComfy jobs in flight on the account, whatever the number of shards.
        shard_watch: How the parent tells a working shard run from a dead one
            (`ShardWatching`: `heartbeat_s`, how often each shard run writes its heartbeat;
            `stale_after_s`, how long a started shard run may show no sign of life before it
            is taken as dead).

    Returns:
        The merged manifest of this run's rows.

    Raises:
        RowsNeedAttentionError: as `generate_talking_videos` does, over the whole table.
    """
    check_allow_failed_rows(spending.allow_failed_rows)
    await tag_flow_run(run_tags(INFINITE_TALK))
    store = OutputStore(*storage_location(output_uri, storage_options))
    creds = await load_credentials(credentials) if spending.max_cost_usd is not None else None
    planned = await plan_whole_table(
        inputs,
        store,
        RunSettings(INFINITE_TALK, spending=spending),
        make_client=lambda: client_for(creds),
        table_storage_options=media.input_storage_options,
    )
    specs = plan_shards(
        store.uri(),
        planned.rows,
        planned.frame,
        shard_size,
        base_dir=table_folder(inputs if isinstance(inputs, str) else None),
        model=planned.model,
    )
    get_run_logger().info(
        "%d rows: %d valid in %d shards of up to %d, %d invalid",
        *(planned.total, len(planned.rows), len(specs), shard_size, len(planned.invalid)),
    )
    common = _as_parameters(
        {
            "output_uri": output_uri,
            "credentials": credentials,
            "max_concurrency": max_concurrency_per_shard,
            "max_wait_s": max_wait_s,
            "storage_options": storage_options,
            "staging_uri": staging_uri,
            "inline_media": inline_media,
            "spending": spending,
            "media": media,
            "waiting": waiting,
            "concurrency": concurrency,
        }
    )
    runs = await run_shards(
        store,
        deployment,
        specs,
        lambda files: {**common, **_shard_of(store, files, shard_watch)},
        heartbeat_s=shard_watch.heartbeat_s,
        stale_after_s=shard_watch.stale_after_s,
        parent_flow_run_id=_flow_run_id(),
    )
    return await finish_run(
        store,
        build_manifest(
            await merged_outcomes(planned, store, runs, store.output_uri), planned.model
        ),
        store.output_uri,
        artifact_key=artifact_key_for(store.output_uri),
        allow_failed_rows=spending.allow_failed_rows,
        model=INFINITE_TALK,
    )


def _shard_of(store: OutputStore, files: ShardFiles, watch: ShardWatching) -> dict[str, Any]:
    """The parameters that make a run of `generate_talking_videos` one shard's: its rows
    (written under the output location), its own manifest, and its heartbeat."""
    role = ShardRole(
        manifest_name=files.manifest, heartbeat_name=files.heartbeat, heartbeat_s=watch.heartbeat_s
    )
    return {"inputs": store.uri(files.rows), "shard": role.model_dump(mode="json")}


def _as_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Flow parameters as a deployment run is given them: sections as JSON objects, a saved
    block as a reference (its secrets stay in the block), never an unsaved block."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, Block):
            if value._block_document_id is None:
                raise ConfigurationError(
                    f"{name}: a sharded run passes its blocks to other flow runs by reference: "
                    f"save the block first ({type(value).__name__}(...).save('name'))"
                )
            value = block_parameter(value)
        elif isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        out[name] = value
    return out


__all__ = [
    "Concurrency",
    "MediaOptions",
    "ShardRole",
    "ShardWatching",
    "Spending",
    "Waiting",
    "collect_outstanding_requests",
    "generate_talking_videos",
    "generate_talking_videos_sharded",
    "load_credentials",
]
