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
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
from prefect import tags
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.logging import get_logger, get_run_logger
from prefect.states import State

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError
from prefect_runcomfy.api.models import MODEL_ID
from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.engine.inputs.table import table_folder
from prefect_runcomfy.engine.outputs.manifest import build_manifest
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.engine.plan.ledger import Ledger
from prefect_runcomfy.engine.plan.planning import MediaSettings
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
    RunHooks,
    RunSettings,
    Spending,
    Waiting,
)
from prefect_runcomfy.engine.run.state import cancel_queued_requests, queued_requests
from prefect_runcomfy.engine.run.stopping import cancelled_here, mark_stoppable, run_stoppable
from prefect_runcomfy.engine.run.waiting import PollStrategy
from prefect_runcomfy.engine.shards.heartbeat import HEARTBEAT_S, heartbeat_for
from prefect_runcomfy.engine.shards.parent import merged_outcomes, run_shards
from prefect_runcomfy.engine.shards.runs import STALE_AFTER_S, cancel_recorded
from prefect_runcomfy.engine.shards.split import ShardFiles, plan_shards
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
    """A flow whose in-memory `inputs` table is stored in Prefect only while it is small.

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
    """A flow body that, given `heartbeat_name`, writes that heartbeat while it runs, from
    reading the table to the manifest (`engine.shards.heartbeat`: how a sharded parent tells a
    working shard run from a dead one).

    Written here, not in the engine: Prefect resolves a flow's parameter annotations in its
    function's globals, and versions the flow by its function's file.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    async def body(*args: Any, **kwargs: Any) -> Any:
        with heartbeat_for(signature.bind_partial(*args, **kwargs).arguments):
            return await fn(*args, **kwargs)

    return body


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
                f"or with RunComfyCredentials(api_token=...).save({credentials!r}) ({exc})"
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
        store = OutputStore(output_uri, params.get("storage_options"))
        ledger = Ledger(store)
        if isinstance(given, dict):  # an unsaved block, stored masked: no token to be had
            left = await queued_requests(ledger, flow_run_id=str(flow_run.id))
            if left:
                hook_logger.warning(
                    "The run stopped with %d requests that may still be queued (%s), but it was "
                    "given an unsaved RunComfyCredentials block, whose token Prefect keeps "
                    "masked: this hook cannot cancel them. They are left for "
                    "`prefect-runcomfy collect %s --cancel` (or collect_outstanding_requests"
                    "(..., cancel=True)). To let the hook cancel them, pass a saved block's name "
                    "(credentials='runcomfy') or set RUNCOMFY_API_TOKEN instead.",
                    len(left),
                    ", ".join(left),
                    output_uri,
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
            "Could not cancel the run's queued requests (%s); they are left for "
            "`prefect-runcomfy collect %s --cancel`",
            exc,
            output_uri,
        )


@table_flow(
    name="generate-talking-videos",
    log_prints=False,
    on_cancellation=[_cancel_queued_on_stop],
    on_crashed=[_cancel_queued_on_stop],
)
@stoppable
@beating
async def generate_talking_videos(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    output_uri: str,
    credentials: RunComfyCredentials | str | None = None,
    max_concurrency: int = 8,
    max_wait_s: float = 3600.0,
    storage_options: dict[str, Any] | None = None,
    staging_uri: str | None = None,
    inline_media: bool = False,
    input_storage_options: dict[str, Any] | None = None,
    staging_storage_options: dict[str, Any] | None = None,
    concurrency_limit: str | None = None,
    on_invalid: Literal["continue", "stop"] = "continue",
    resubmit_unknown: bool = False,
    retry_failed: bool = False,
    cancel_queued_at_deadline: bool = True,
    poll_initial_s: float = 2.0,
    poll_max_s: float = 30.0,
    not_found_grace_s: float = 30.0,
    poll_strategy: PollStrategy = "learned",
    model_id: str = MODEL_ID,
    table_storage_options: dict[str, Any] | None = None,
    manifest_name: str = MANIFEST_NAME,
    max_submits: int | None = None,
    artifact_key: str | None = None,
    allow_failed_rows: bool | int = False,
    max_cost_usd: float | None = None,
    single_writer: bool = False,
    heartbeat_name: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> pd.DataFrame:
    """Turn every row of a table into a lip-synced talking video, stored with its metadata.

    Each row (a portrait `image`, a speech `audio`, a `prompt`, optional settings) is checked,
    its media resolved, submitted once, waited for, and its video stored under `output_uri` as
    `<id>.mp4` with `<id>.json`; the run ends with `manifest.parquet` and returns the manifest.
    Running the same table into the same `output_uri` again skips stored rows, collects rows
    that were submitted, and never pays twice for a row by accident.

    Args:
        inputs: A DataFrame, a list of dicts, or a CSV / Parquet / JSON-lines path or URL.
            Columns `prompt`, `image`, `audio` (required), `resolution`, `frames`, `seed`,
            `steps`, `shift`, `cfg`, and `id` (names the row's files). Other columns are
            carried through to the manifest.
        output_uri: Where outputs go: a local folder, `s3://bucket/prefix`, `gs://...`, ...
        credentials: A `RunComfyCredentials` block, the name of a saved one, or None to use
            `RUNCOMFY_API_TOKEN` (else `RUNCOMFY_TOKEN`, else `RUNCOMFY_API_KEY`) and
            `RUNCOMFY_BASE_URL`.
        max_concurrency: Jobs in flight at once from this run.
        max_wait_s: How long to wait for one job; a job still queued then is cancelled.
        storage_options: fsspec options for `output_uri` (e.g. an S3 endpoint).
        staging_uri: Where local media files are uploaded (then pre-signed) for RunComfy.
        inline_media: Send local media as `data:` URIs instead (image ≤ 6 MiB, audio ≤ 16 MiB).
        input_storage_options: fsspec options for reading the table and remote media.
        staging_storage_options: fsspec options for `staging_uri`.
        concurrency_limit: Name of a Prefect global concurrency limit shared by every run on one
            RunComfy account (created with `prefect gcl create NAME --limit N`); strict.
        on_invalid: "continue" runs the valid rows and reports the others; "stop" submits
            nothing when any row is invalid.
        resubmit_unknown: Submit again rows whose earlier submit has an unknown outcome (this
            may pay twice).
        retry_failed: Submit again rows that failed or were cancelled in an earlier run.
        cancel_queued_at_deadline: Cancel a job still queued at `max_wait_s`.
        poll_initial_s: First polling interval; it doubles up to `poll_max_s`.
        poll_max_s: The longest polling interval.
        not_found_grace_s: How long after its submit a request RunComfy does not know yet is
            taken as "not visible yet" rather than gone (once seen, "not found" means gone).
        poll_strategy: "learned": once jobs of a kind (resolution, frames) finished in this
            run, the others are read just after their expected finish; "doubling": each job
            on its own (`poll_initial_s` doubling up to `poll_max_s`), as before.
        model_id: The RunComfy model (InfiniteTalk's by default).
        table_storage_options: fsspec options for reading `inputs` when it is a URL
            (default: `input_storage_options`).
        manifest_name: Where under `output_uri` the manifest goes; a sharded run gives each
            shard its own and merges them at the end.
        max_submits: The most new (paid) jobs this run may submit. A run that would submit
            more fails with `SubmitLimitError` before submitting any, naming the count: a
            guard against a table that grew by mistake. Rows collected, skipped or reported
            again are not counted; `0` allows only collecting. None: no limit.
        artifact_key: The key prefix of the run's summary artifacts (`<key>-summary`,
            `<key>-rows`), so that every run adds a version under one key on the Artifacts
            page. Default: derived from `output_uri` (`runcomfy-<location>-<hash>`). A shard
            (a `manifest_name` of its own) publishes unkeyed artifacts unless given one.
        allow_failed_rows: How many rows that need a person (`failed`, `invalid`,
            `timed_out`, `outcome_unknown`) the run tolerates and still ends Completed: False
            (the default) none, True any number, or a count. Beyond it the run ends Failed with
            the counts in its state message, raising `RowsNeedAttentionError`, which carries
            the manifest (`exc.manifest`). A run in which no due row produced a video ends
            Failed whatever this says. Everything is written either way.
        max_cost_usd: The most this run's new jobs may cost, estimated from the model's price
            in RunComfy's catalog. A run whose estimate is higher, or that cannot be estimated
            (no usable price), fails with `CostLimitError` before submitting any. None: no limit.
        single_writer: Take no claims on rows: only for an output location whose storage
            cannot create files exclusively (the run refuses to submit there otherwise), and
            only when no other run writes there at the same time, since two overlapping runs
            could then each pay for the same rows.
        heartbeat_name: Set by a sharded parent for its shards: a file under `output_uri` this
            run rewrites every `heartbeat_s` seconds while it works, so that the parent tells
            it from a run whose process died. None (the default): no heartbeat.
        heartbeat_s: How often the heartbeat is written.

    Returns:
        The manifest: one row per input row with `id, status, request_id, video_uri,
        metadata_uri, error`, timing, cost, file facts, the inputs and the extra columns.

    Raises:
        RowsNeedAttentionError: rows need a person beyond `allow_failed_rows`, or no row
            produced a video; `exc.manifest` is the manifest above.
    """
    check_allow_failed_rows(allow_failed_rows)
    keyed = artifact_key is not None or manifest_name == MANIFEST_NAME
    key = artifact_key_for(output_uri, artifact_key) if keyed else None
    await tag_flow_run(run_tags(model_id))
    creds = await load_credentials(credentials)
    settings = RunSettings(
        max_concurrency=max_concurrency,
        max_wait_s=max_wait_s,
        spending=Spending(
            max_submits=max_submits,
            max_cost_usd=max_cost_usd,
            allow_failed_rows=allow_failed_rows,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
        ),
        waiting=Waiting(
            poll_initial_s=poll_initial_s,
            poll_max_s=poll_max_s,
            not_found_grace_s=not_found_grace_s,
            poll_strategy=poll_strategy,
            cancel_queued_at_deadline=cancel_queued_at_deadline,
        ),
        concurrency=Concurrency(limit=concurrency_limit, single_writer=single_writer),
        model_id=model_id,
        flow_run_id=_flow_run_id(),
    )
    media = MediaSettings(staging_uri, inline_media, input_storage_options, staging_storage_options)
    store, outcomes = await _run_table(
        inputs,
        await open_output(output_uri, storage_options),
        settings,
        media,
        creds,
        on_invalid=on_invalid,
        table_storage_options=table_storage_options or input_storage_options,
    )
    return await finish_run(
        store,
        build_manifest(outcomes),
        output_uri,
        name=manifest_name,
        input_storage_options=input_storage_options,
        outcomes=outcomes,
        artifact_key=key,
        allow_failed_rows=allow_failed_rows,
    )


async def _run_table(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    store: OutputStore,
    settings: RunSettings,
    media: MediaSettings,
    creds: RunComfyCredentials | None,
    *,
    on_invalid: Literal["continue", "stop"],
    table_storage_options: dict[str, Any] | None,
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
        table_storage_options=table_storage_options,
    )
    progress = Progress(planned.total)
    await progress.start()
    events = RowEvents(store, table_uri=inputs if isinstance(inputs, str) else None)
    hooks = RunHooks(make_client, on_row_done=lambda o: _row_done(o, progress, events))
    with tags(*run_tags(settings.model_id)):
        outcomes = await run_table(planned, store, settings, hooks)
    await progress.finish()
    return store, outcomes


async def _row_done(outcome: RowOutcome, progress: Progress, events: RowEvents) -> None:
    """A row ended: the progress artifact and Prefect's events hear it."""
    await progress.row_done(str(outcome.status))
    await events.row_done(outcome)


@sync_or_async_flow(name="collect-outstanding-requests", log_prints=False)
@stoppable
async def collect_outstanding_requests(
    output_uri: str,
    credentials: RunComfyCredentials | str | None = None,
    storage_options: dict[str, Any] | None = None,
    cancel: bool = False,
    max_wait_s: float = 3600.0,
    max_concurrency: int = 8,
    poll_initial_s: float = 2.0,
    poll_max_s: float = 30.0,
    allow_failed_rows: bool | int = False,
    single_writer: bool = False,
) -> pd.DataFrame:
    """Finish what an interrupted or timed-out run left under `output_uri`.

    Every request in the ledger that was submitted but not stored (a crashed run, a
    `timed_out` row, an output the output host policy refused) is waited for and stored, or
    with `cancel=True` cancelled (only queued requests can be; running ones finish and are
    stored). Rows whose submit has an unknown outcome are reported as such; nothing is
    submitted. The manifest is updated. A request that a live run is waiting for (it holds
    the row's claim) is left to it and logged. `allow_failed_rows` and `single_writer` are
    as in `generate_talking_videos`.

    Returns:
        The manifest rows of the requests it handled.

    Raises:
        RowsNeedAttentionError: as `generate_talking_videos` does; `exc.manifest` holds the rows.
    """
    check_allow_failed_rows(allow_failed_rows)
    await tag_flow_run(run_tags(MODEL_ID))
    creds = await load_credentials(credentials)
    store = OutputStore(output_uri, storage_options)
    settings = RunSettings(
        max_concurrency=max_concurrency,
        max_wait_s=max_wait_s,
        waiting=Waiting(poll_initial_s=poll_initial_s, poll_max_s=poll_max_s),
        concurrency=Concurrency(single_writer=single_writer),
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
    with tags(*run_tags(MODEL_ID)):
        outcomes = await collect_table(left, store, settings, hooks, cancel=cancel)
    await progress.finish()
    manifest = build_manifest(outcomes)
    if manifest.empty:
        get_run_logger().info("Nothing to collect.")
        return manifest
    return await finish_run(
        store,
        manifest,
        output_uri,
        outcomes=outcomes,
        artifact_key=f"{artifact_key_for(output_uri)}-collect",
        allow_failed_rows=allow_failed_rows,
    )


async def _cancel_shards_on_stop(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Hook for a cancelled sharded parent: cancel the shard runs it was waiting for (their
    own hooks cancel their queued jobs). It reads them from the record the parent wrote under
    its output location, since the hook may run in another process. Best effort."""
    params = flow_run.parameters or {}
    if not params.get("output_uri"):
        return
    try:
        store = OutputStore(params["output_uri"], params.get("storage_options"))
        await cancel_recorded(store, str(flow_run.id))
    except Exception as exc:
        get_logger("prefect_runcomfy.flows").warning("Could not cancel the shard runs: %s", exc)


@table_flow(
    name="generate-talking-videos-sharded",
    log_prints=False,
    on_cancellation=[_cancel_shards_on_stop],
)
async def generate_talking_videos_sharded(
    inputs: pd.DataFrame | list[dict[str, Any]] | str,
    output_uri: str,
    deployment: str = "generate-talking-videos/shard",
    shard_size: int = 500,
    credentials: str | None = None,
    concurrency_limit: str | None = None,
    max_concurrency_per_shard: int = 8,
    max_wait_s: float = 3600.0,
    storage_options: dict[str, Any] | None = None,
    input_storage_options: dict[str, Any] | None = None,
    shard_parameters: dict[str, Any] | None = None,
    max_submits: int | None = None,
    allow_failed_rows: bool | int = False,
    max_cost_usd: float | None = None,
    shard_heartbeat_s: float = HEARTBEAT_S,
    shard_stale_after_s: float = STALE_AFTER_S,
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
        output_uri: Where every shard stores its outputs.
        deployment: The deployment of `generate_talking_videos` that runs each shard
            (`prefect.yaml` defines `generate-talking-videos/shard`).
        shard_size: Rows per shard.
        credentials: The name of a saved RunComfyCredentials block (the shards load it).
        concurrency_limit: A Prefect global concurrency limit shared by all shards: the
            number of RunComfy jobs in flight on the account, whatever the number of shards.
        max_concurrency_per_shard: Jobs in flight per shard.
        max_wait_s: Passed to every shard.
        storage_options: fsspec options for `output_uri` (also used to read the shards).
        input_storage_options: fsspec options for the table and the media.
        shard_parameters: Any other `generate_talking_videos` parameters for every shard.
        max_submits: The most new (paid) jobs the whole table may submit, checked against the
            ledger before any shard starts (see `generate_talking_videos`).
        allow_failed_rows: Judges the merged manifest (and each shard's own run) as in
            `generate_talking_videos`.
        max_cost_usd: The most the whole table's new jobs may cost (the catalog's price),
            checked before any shard starts (see `generate_talking_videos`).
        shard_heartbeat_s: How often each shard run writes its heartbeat.
        shard_stale_after_s: How long a started shard run may show no sign of life (no new
            heartbeat, no state change) before it is taken as dead.

    Returns:
        The merged manifest of this run's rows.

    Raises:
        RowsNeedAttentionError: as `generate_talking_videos` does, over the whole table.
    """
    check_allow_failed_rows(allow_failed_rows)
    await tag_flow_run(run_tags(MODEL_ID))
    store = OutputStore(output_uri, storage_options)
    options = shard_parameters or {}
    creds = await load_credentials(credentials) if max_cost_usd is not None else None
    planned = await plan_whole_table(
        inputs,
        store,
        RunSettings(
            spending=Spending(
                max_submits=max_submits,
                max_cost_usd=max_cost_usd,
                resubmit_unknown=bool(options.get("resubmit_unknown", False)),
                retry_failed=bool(options.get("retry_failed", False)),
            ),
            model_id=str(options.get("model_id", MODEL_ID)),
        ),
        make_client=lambda: client_for(creds),
        table_storage_options=input_storage_options,
    )
    specs = plan_shards(
        store.uri(),
        planned.rows,
        planned.frame,
        shard_size,
        base_dir=table_folder(inputs if isinstance(inputs, str) else None),
    )
    get_run_logger().info(
        "%d rows: %d valid in %d shards of up to %d, %d invalid",
        planned.total,
        len(planned.rows),
        len(specs),
        shard_size,
        len(planned.invalid),
    )
    common: dict[str, Any] = {
        **options,
        "output_uri": output_uri,
        "credentials": credentials,
        "concurrency_limit": concurrency_limit,
        "max_concurrency": max_concurrency_per_shard,
        "max_wait_s": max_wait_s,
        "storage_options": storage_options,
        "input_storage_options": input_storage_options,
        "table_storage_options": storage_options,
        "allow_failed_rows": allow_failed_rows,
        "heartbeat_s": shard_heartbeat_s,
    }

    def parameters(files: ShardFiles) -> dict[str, Any]:
        return {
            **common,
            "inputs": store.uri(files.rows),
            "manifest_name": files.manifest,
            "heartbeat_name": files.heartbeat,
        }

    runs = await run_shards(
        store,
        deployment,
        specs,
        parameters,
        heartbeat_s=shard_heartbeat_s,
        stale_after_s=shard_stale_after_s,
        parent_flow_run_id=_flow_run_id(),
    )
    return await finish_run(
        store,
        build_manifest(await merged_outcomes(planned, store, runs, output_uri)),
        output_uri,
        artifact_key=artifact_key_for(output_uri),
        allow_failed_rows=allow_failed_rows,
    )


__all__ = [
    "collect_outstanding_requests",
    "generate_talking_videos",
    "generate_talking_videos_sharded",
    "load_credentials",
]
