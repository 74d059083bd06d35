"""Flows: turn a table into talking videos, and collect what an interrupted run left behind.

Example:
    ```python
    import asyncio
    import pandas as pd
    from prefect_runcomfy import generate_talking_videos

    table = pd.DataFrame([
        {"id": "ada", "prompt": "a woman talks", "image": "s3://in/ada.png", "audio": "s3://in/ada.mp3"},
    ])
    manifest = asyncio.run(generate_talking_videos(table, "s3://out/videos", credentials="runcomfy"))
    print(manifest[["id", "status", "video_uri", "error"]])
    ```
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.logging import get_logger, get_run_logger
from prefect.states import State

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, InvalidInputError
from prefect_runcomfy.api.models import MODEL_ID
from prefect_runcomfy.blocks import RunComfyCredentials
from prefect_runcomfy.engine.batch import (
    Batch,
    cancel_queued_requests,
    collect_request,
    in_row_task,
    invalid_record,
    run_row,
)
from prefect_runcomfy.engine.ledger import Ledger, LedgerEntry, LedgerState
from prefect_runcomfy.engine.manifest import (
    RowStatus,
    build_manifest,
    merge_manifests,
    parquet_safe,
    status_counts,
)
from prefect_runcomfy.engine.media import MediaResolver
from prefect_runcomfy.engine.planning import describe_plan, output_state, plan_rows
from prefect_runcomfy.engine.storage import OutputStore
from prefect_runcomfy.engine.table import (
    PreparedRow,
    RowProblem,
    check_table,
    read_table,
    table_folder,
)
from prefect_runcomfy.engine.waiting import PollPolicy
from prefect_runcomfy.report.artifacts import Progress, publish_summary, spending

MANIFEST_NAME = "manifest.parquet"


STORED_TABLE_ROWS = 1000
"""In-memory tables up to this many rows are stored as the flow run's `inputs` parameter."""


class TableFlow(Flow[..., Any]):
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


def table_flow(**options: Any) -> Callable[[Callable[..., Any]], TableFlow]:
    """`@flow(...)`, making a `TableFlow`."""

    def make(fn: Callable[..., Any]) -> TableFlow:
        return TableFlow(fn=fn, **options)

    return make


async def load_credentials(
    credentials: RunComfyCredentials | str | None,
) -> RunComfyCredentials | None:
    """A block, a saved block's name, or None (then `RUNCOMFY_API_TOKEN` is required).

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
    source of truth; `collect_outstanding_requests` finishes whatever is left.
    """
    hook_logger = get_logger("prefect_runcomfy.flows")
    params = flow_run.parameters or {}
    output_uri = params.get("output_uri")
    if not output_uri:
        return
    try:
        credentials = await load_credentials(params.get("credentials"))
        store = OutputStore(output_uri, params.get("storage_options"))
        cancelled = await cancel_queued_requests(
            Ledger(store), credentials, flow_run_id=str(flow_run.id)
        )
        if cancelled:
            hook_logger.warning("Cancelled %d queued requests: %s", len(cancelled), cancelled)
    except Exception as exc:
        hook_logger.warning("Could not cancel queued requests: %s", exc)


def _resolver(
    table_uri: str | None,
    staging_uri: str | None,
    inline_media: bool,
    input_storage_options: dict[str, Any] | None,
    staging_storage_options: dict[str, Any] | None,
) -> MediaResolver:
    return MediaResolver(
        base_uri=table_folder(table_uri),
        staging_uri=staging_uri,
        inline_media=inline_media,
        storage_options=input_storage_options,
        staging_storage_options=staging_storage_options,
    )


MEDIA_COLUMNS = ("image", "audio")


async def api_payload(row: PreparedRow, resolver: MediaResolver) -> dict[str, Any]:
    """The row's API body, its media resolved to URLs RunComfy can fetch (cached per run)."""
    resolved = {
        kind: (await resolver.resolve(getattr(row.job, kind), kind)).url  # type: ignore[arg-type]
        for kind in MEDIA_COLUMNS
    }
    return row.job.model_copy(update=resolved).to_api_payload()


async def _media_problems(row: PreparedRow, resolver: MediaResolver) -> list[tuple[str, str]]:
    problems = []
    for kind in MEDIA_COLUMNS:
        try:
            await resolver.resolve(getattr(row.job, kind), kind)  # type: ignore[arg-type]
        except Exception as exc:
            problems.append((kind, str(exc)))
    return problems


async def _resolve_all(
    rows: list[PreparedRow], resolver: MediaResolver
) -> tuple[list[PreparedRow], list[RowProblem], dict[str, dict[str, Any]]]:
    """Resolve every row's media before anything is submitted; a row that cannot be is invalid."""
    good: list[PreparedRow] = []
    bad: list[RowProblem] = []
    payloads: dict[str, dict[str, Any]] = {}
    semaphore = asyncio.Semaphore(16)

    async def one(row: PreparedRow) -> None:
        async with semaphore:
            problems = await _media_problems(row, resolver)
        if problems:
            bad.append(RowProblem(row.row, row.id, problems, row.extras, row.job.model_dump()))
            return
        # Inline media can be megabytes per row: it is rebuilt at submit time instead.
        payloads[row.id] = {} if resolver.inline_media else await api_payload(row, resolver)
        good.append(row)

    await asyncio.gather(*(one(r) for r in rows))
    good.sort(key=lambda r: r.row)
    bad.sort(key=lambda r: r.row)
    return good, bad, payloads


@table_flow(
    name="generate-talking-videos",
    log_prints=False,
    on_cancellation=[_cancel_queued_on_stop],
    on_crashed=[_cancel_queued_on_stop],
)
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
    model_id: str = MODEL_ID,
    table_storage_options: dict[str, Any] | None = None,
    manifest_name: str = MANIFEST_NAME,
    max_submits: int | None = None,
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
            `RUNCOMFY_API_TOKEN` (and `RUNCOMFY_BASE_URL`).
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
        model_id: The RunComfy model (InfiniteTalk's by default).
        table_storage_options: fsspec options for reading `inputs` when it is a URL
            (default: `input_storage_options`).
        manifest_name: Where under `output_uri` the manifest goes; a sharded run gives each
            shard its own and merges them at the end.
        max_submits: The most new (paid) jobs this run may submit. A run that would submit
            more fails with `SubmitLimitError` before submitting any, naming the count: a
            guard against a table that grew by mistake. Rows collected, skipped or reported
            again are not counted; `0` allows only collecting. None: no limit.

    Returns:
        The manifest: one row per input row with `id, status, request_id, video_uri,
        metadata_uri, error`, timing, cost, file facts, the inputs and the extra columns.
    """
    logger = get_run_logger()
    creds = await load_credentials(credentials)
    table_uri = inputs if isinstance(inputs, str) else None
    df = await asyncio.to_thread(
        read_table, inputs, storage_options=table_storage_options or input_storage_options
    )
    check = check_table(df)
    resolver = _resolver(
        table_uri, staging_uri, inline_media, input_storage_options, staging_storage_options
    )
    valid, media_problems, payloads = await _resolve_all(check.valid, resolver)
    invalid = sorted([*check.invalid, *media_problems], key=lambda p: p.row)
    for problem in invalid:
        logger.warning("Invalid %s", problem.message)
    if invalid and on_invalid == "stop":
        raise InvalidInputError(
            f"{len(invalid)} of {len(df)} rows are invalid; nothing was submitted "
            "(on_invalid='stop'):\n" + "\n".join(p.message for p in invalid),
            problems=[(p.message, "") for p in invalid],
        )
    logger.info(
        "%d rows: %d valid, %d invalid; outputs go to %s",
        len(df),
        len(valid),
        len(invalid),
        output_uri,
    )

    store = OutputStore(output_uri, storage_options)
    await asyncio.to_thread(store.check_writable)
    ledger = Ledger(store)
    entries, present = await asyncio.to_thread(output_state, store)

    decisions = plan_rows(
        valid,
        entries,
        present,
        resubmit_unknown=resubmit_unknown,
        retry_failed=retry_failed,
        max_submits=max_submits,
    )
    logger.info("Plan: %s", describe_plan(decisions))

    async def resolve_payload(row: PreparedRow) -> dict[str, Any]:
        return payloads.get(row.id) or await api_payload(row, resolver)

    progress = Progress(len(df))
    await progress.start()
    batch = Batch(
        credentials=creds,
        store=store,
        ledger=ledger,
        max_concurrency=max_concurrency,
        concurrency_limit=concurrency_limit,
        max_wait_s=max_wait_s,
        poll=PollPolicy(
            initial_s=poll_initial_s, max_s=poll_max_s, not_found_grace_s=not_found_grace_s
        ),
        cancel_queued_at_deadline=cancel_queued_at_deadline,
        model_id=model_id,
        flow_run_id=_flow_run_id(),
        progress=progress,
        resolve_payload=resolve_payload,
    )
    records: list[dict[str, Any]] = [invalid_record(p) for p in invalid]
    for _ in invalid:
        await progress.row_done(RowStatus.INVALID.value)

    jobs = [
        run_row(batch, row, decision, entries.get(row.id))
        for row, decision in zip(valid, decisions, strict=True)
    ]
    try:
        records += await asyncio.gather(*jobs)
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Stopped from outside: cancel what is still queued (best effort), keep the rest in
        # the ledger for `collect_outstanding_requests`.
        with_suppressed = asyncio.shield(
            cancel_queued_requests(ledger, creds, flow_run_id=batch.flow_run_id)
        )
        try:
            await asyncio.wait_for(with_suppressed, timeout=30)
        except BaseException as exc:
            logger.warning("Could not cancel queued requests: %s", exc)
        raise
    finally:
        await batch.aclose()
    await progress.finish()
    records.sort(key=lambda r: r["row"])
    manifest = build_manifest(records)
    return await _write_manifest(
        store,
        manifest,
        output_uri,
        logger,
        name=manifest_name,
        input_storage_options=input_storage_options,
    )


async def _write_manifest(
    store: OutputStore,
    manifest: pd.DataFrame,
    output_uri: str,
    logger: Any,
    *,
    name: str = MANIFEST_NAME,
    input_storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Merge this run's rows into the manifest at `name`, write it, and publish the summary."""
    previous = await asyncio.to_thread(store.read_manifest, name)
    merged = parquet_safe(merge_manifests(previous, manifest))
    manifest_uri = await asyncio.to_thread(store.write_manifest, merged, name)
    page_uri = None
    if name == MANIFEST_NAME:  # a shard's manifest gets no page: its parent writes one
        from prefect_runcomfy.report.review import write_review_page

        try:
            page_uri = await asyncio.to_thread(
                write_review_page, store, merged, input_storage_options=input_storage_options
            )
        except Exception as exc:  # the page is a view; the run's outputs are what count
            logger.warning("Could not write the review page: %s", exc)
    counts = {k: v for k, v in status_counts(manifest).items() if v}
    logger.info(
        "Done: %s. %s. Manifest: %s%s",
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        spending(manifest)[0],
        manifest_uri,
        f". Review page: {page_uri}" if page_uri else "",
    )
    await publish_summary(
        manifest, output_uri=output_uri, manifest_uri=manifest_uri, page_uri=page_uri
    )
    manifest.attrs["review_page"] = page_uri
    manifest.attrs["manifest_uri"] = manifest_uri
    return manifest


@flow(name="collect-outstanding-requests", log_prints=False)
async def collect_outstanding_requests(
    output_uri: str,
    credentials: RunComfyCredentials | str | None = None,
    storage_options: dict[str, Any] | None = None,
    cancel: bool = False,
    max_wait_s: float = 3600.0,
    max_concurrency: int = 8,
    poll_initial_s: float = 2.0,
    poll_max_s: float = 30.0,
) -> pd.DataFrame:
    """Finish what an interrupted or timed-out run left under `output_uri`.

    Every request in the ledger that was submitted but not stored (a crashed run, a
    `timed_out` row) is waited for and stored, or with `cancel=True` cancelled (only queued
    requests can be; running ones finish and are stored). Rows whose submit has an unknown
    outcome are reported as such; nothing is submitted. The manifest is updated.

    Returns:
        The manifest rows of the requests it handled.
    """
    logger = get_run_logger()
    creds = await load_credentials(credentials)
    store = OutputStore(output_uri, storage_options)
    ledger = Ledger(store)
    entries = await asyncio.to_thread(ledger.load_all)
    outstanding = [
        e
        for e in entries.values()
        if e.state in (LedgerState.SUBMITTED, LedgerState.TIMED_OUT) and e.request_id
    ]
    unknown = [
        e
        for e in entries.values()
        if e.state in (LedgerState.SUBMITTING, LedgerState.OUTCOME_UNKNOWN) and not e.request_id
    ]
    logger.info(
        "%d outstanding requests under %s; %d rows with an unknown submit outcome",
        len(outstanding),
        output_uri,
        len(unknown),
    )
    progress = Progress(len(outstanding) + len(unknown))
    await progress.start()
    batch = Batch(
        credentials=creds,
        store=store,
        ledger=ledger,
        max_concurrency=max_concurrency,
        max_wait_s=max_wait_s,
        poll=PollPolicy(initial_s=poll_initial_s, max_s=poll_max_s),
        flow_run_id=_flow_run_id(),
        progress=progress,
    )

    async def one(entry: LedgerEntry) -> dict[str, Any]:
        extra = entry.model_extra or {}
        record: dict[str, Any] = {
            "id": entry.id,
            "row": extra.get("row"),
            "extras": extra.get("extras") or {},
            **(extra.get("friendly_inputs") or {}),
            "request_id": entry.request_id,
            "submitted_at": entry.submitted_at,
            "attempts": entry.attempts,
            "note": "collected by collect-outstanding-requests",
        }
        assert entry.request_id is not None
        async with batch.slot() as client:
            if cancel:
                from prefect_runcomfy.tasks import cancel_request

                answer = await cancel_request(entry.request_id, creds)
                if answer.cancelled:
                    await batch.ledger_call(
                        "mark", entry.id, LedgerState.CANCELLED, error="cancelled on request"
                    )
                    record.update(status=RowStatus.CANCELLED.value, error="cancelled on request")
                    return await batch.done(record)
            request_id = entry.request_id
            await in_row_task(
                entry.id,
                record,
                lambda: collect_request(
                    batch,
                    client,
                    entry.id,
                    request_id,
                    entry.submitted_at,
                    record,
                    inputs=extra.get("inputs"),
                ),
            )
        return await batch.done(record)

    try:
        records = list(await asyncio.gather(*(one(e) for e in outstanding)))
    finally:
        await batch.aclose()
    for entry in unknown:
        record = {
            "id": entry.id,
            "row": (entry.model_extra or {}).get("row"),
            "attempts": entry.attempts,
        }
        record.update(
            status=RowStatus.OUTCOME_UNKNOWN.value,
            error=entry.error or "a submit was sent but its answer was lost",
        )
        records.append(await batch.done(record))
    await progress.finish()
    manifest = build_manifest(records)
    if manifest.empty:
        logger.info("Nothing to collect.")
        return manifest
    return await _write_manifest(store, manifest, output_uri, logger)


@table_flow(name="generate-talking-videos-sharded", log_prints=False)
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
) -> pd.DataFrame:
    """Run a very large table as shards, each a separate flow run of `deployment` on its work
    pool, all under one account-wide limit, and merge their manifests into one.

    The whole table is checked here first, so an id is never in two shards (which could pay
    twice) and invalid rows are reported once. Each shard is written as Parquet under
    `<output_uri>/_shards/<this run>/`, runs `generate_talking_videos` into the same
    `output_uri` (one ledger, so re-running the parent is as safe as re-running one flow), and
    writes its own manifest; the merged `manifest.parquet` is written at the end.

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

    Returns:
        The merged manifest of this run's rows.
    """
    from prefect.deployments import run_deployment

    from prefect_runcomfy.engine.sharding import shard_frames, shard_names, write_shard

    logger = get_run_logger()
    table_uri = inputs if isinstance(inputs, str) else None
    df = await asyncio.to_thread(read_table, inputs, storage_options=input_storage_options)
    check = check_table(df)
    for problem in check.invalid:
        logger.warning("Invalid %s", problem.message)
    store = OutputStore(output_uri, storage_options)
    if max_submits is not None:
        entries, present = await asyncio.to_thread(output_state, store)
        options = shard_parameters or {}
        decisions = plan_rows(
            check.valid,
            entries,
            present,
            resubmit_unknown=bool(options.get("resubmit_unknown", False)),
            retry_failed=bool(options.get("retry_failed", False)),
            max_submits=max_submits,
        )
        logger.info("Plan: %s", describe_plan(decisions))
    frames = shard_frames(check.valid, df, shard_size, base_dir=table_folder(table_uri))
    run_key = _flow_run_id() or uuid.uuid4().hex
    names = shard_names(run_key, len(frames))
    uris = [
        await asyncio.to_thread(write_shard, store, frame, table_name)
        for frame, (table_name, _) in zip(frames, names, strict=True)
    ]
    logger.info(
        "%d rows: %d valid in %d shards of up to %d, %d invalid",
        len(df),
        len(check.valid),
        len(frames),
        shard_size,
        len(check.invalid),
    )

    async def one(number: int, uri: str, manifest_name: str) -> pd.DataFrame | None:
        parameters: dict[str, Any] = {
            **(shard_parameters or {}),
            "inputs": uri,
            "output_uri": output_uri,
            "credentials": credentials,
            "concurrency_limit": concurrency_limit,
            "max_concurrency": max_concurrency_per_shard,
            "max_wait_s": max_wait_s,
            "storage_options": storage_options,
            "input_storage_options": input_storage_options,
            "table_storage_options": storage_options,
            "manifest_name": manifest_name,
        }
        run = await run_deployment(  # type: ignore[misc]  # async in an async flow
            deployment,
            parameters=parameters,
            flow_run_name=f"shard-{number:04d}",
            as_subflow=True,
            timeout=None,
        )
        state = run.state
        logger.info("Shard %d ended %s", number, state.name if state else "without a state")
        return await asyncio.to_thread(store.read_manifest, manifest_name)

    shard_manifests = await asyncio.gather(
        *(one(i, uri, names[i][1]) for i, uri in enumerate(uris))
    )
    records: list[dict[str, Any]] = [invalid_record(p) for p in check.invalid]
    parts = [m for m in shard_manifests if m is not None and not m.empty]
    for frame, shard_manifest in zip(frames, shard_manifests, strict=True):
        if shard_manifest is None:
            # The shard run died before writing its manifest: its rows are in the ledger, and
            # running this flow again collects or skips them without paying twice.
            for row_id in frame["id"]:
                records.append(
                    {
                        "id": row_id,
                        "status": RowStatus.FAILED.value,
                        "error": "its shard's flow run ended before writing a manifest; "
                        "run again (nothing is paid twice) or collect_outstanding_requests",
                    }
                )
    manifest = (
        pd.concat([*parts, build_manifest(records)], ignore_index=True)
        if records or parts
        else build_manifest([])
    )
    by_id = {row.id: row.row for row in check.valid} | {p.id or "": p.row for p in check.invalid}
    manifest["row"] = [
        by_id.get(i, r) for i, r in zip(manifest["id"], manifest["row"], strict=True)
    ]
    manifest = manifest.sort_values("row", kind="stable").reset_index(drop=True)
    return await _write_manifest(store, manifest, output_uri, logger)


__all__ = [
    "collect_outstanding_requests",
    "generate_talking_videos",
    "generate_talking_videos_sharded",
    "load_credentials",
]
