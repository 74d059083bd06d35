"""The sandbox's HTTP routes: the RunComfy Model API, public files and the /_sandbox admin API.

Every API route goes through `serve`, which counts the request, fires scripted faults and
then runs the route's own work. Answers follow runcomfy-api.md; where the docs are silent,
the switches in SandboxConfig pick the reading.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.models.infinite_talk import API_KEYS, MODEL_ID
from prefect_runcomfy.sandbox import catalog
from prefect_runcomfy.sandbox.faults import Fault
from prefect_runcomfy.sandbox.queue import Job, JobState, iso_utc
from prefect_runcomfy.sandbox.samples import MEDIA_TYPES, sample_files
from prefect_runcomfy.sandbox.state import SandboxState, token_digest

TRANSPORT_KEY = "sandbox.transport"
"""Where the drop-capable server protocol puts the connection's transport in the ASGI scope."""

# error codes: documented ones, plus the sandbox's picks for what the docs do not name
BAD_MODEL, NO_BALANCE, BAD_TOKEN, NOT_OWNER, NOT_FOUND = 400001, 400002, 400004, 403001, 404001
INVALID_INPUT, RATE_LIMITED, SERVER_ERROR = 422001, 429001, 500001

_API_KEY_SET = frozenset(API_KEYS.values())
_PAD_CHUNK = 1 << 20
"""Chunk size of the zero padding served with `output_padding_bytes`."""
STALL_HOLD_S = 120.0
"""How long a file stalled by `files_stall_after_bytes` keeps its connection open, silent,
when the client does not leave first (then it closes it, the file cut short)."""
_TRICKLE_TICK_S = 0.05
"""A trickled file (`files_bytes_per_s`) is sent in one piece per tick."""


class ConnectionDropped(Exception):
    """Raised when a fault drops a connection but the server cannot reach the socket."""


def build_app(state: SandboxState) -> FastAPI:
    """Return the FastAPI app of one sandbox; its lifespan starts and stops `state`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="RunComfy sandbox",
        version=__version__,
        lifespan=lifespan,
        docs_url="/_sandbox/docs",
        redoc_url=None,
        openapi_url="/_sandbox/openapi.json",
    )
    app.state.sandbox = state

    # ---------------------------------------------------------------- helpers

    def error(
        code: int,
        message: str,
        http_status: int,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        detail: Any = None,
    ) -> JSONResponse:
        shape = state.config.error_body_shape
        if shape == "detail":
            body: dict[str, Any] = {"detail": detail if detail is not None else message}
        elif shape == "code":
            body = {"code": code, "error": message}
        else:
            body = {"error_code": code, "error_message": message}
        if detail is not None and shape != "detail":
            body["detail"] = detail
        body.update(extra or {})
        return JSONResponse(body, status_code=http_status, headers=headers)

    def authenticate(request: Request) -> tuple[str, str] | JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        cfg = state.config
        valid = (*cfg.tokens, *cfg.no_balance_tokens)
        if scheme.lower() != "bearer" or not token or token not in valid:
            # the message never repeats the token
            return error(
                BAD_TOKEN,
                "token missing, expired or revoked, or account inactive",
                cfg.auth_http_status,
            )
        return token, token_digest(token)

    def ts(wall: float | None) -> str | float | None:
        if wall is None:
            return None
        if state.config.timestamp_format == "epoch":
            return round(wall, 6)
        return iso_utc(wall)

    def status_word(job: Job, endpoint: str) -> str:
        cfg = state.config
        now = time.monotonic()
        if job.state == JobState.IN_QUEUE:
            if cfg.transient_states and now - job.submitted_mono < cfg.transient_window_s:
                return "pending"
            return "in_queue"
        if job.state == JobState.IN_PROGRESS:
            started = job.started_mono or now
            if cfg.transient_states and now - started < cfg.transient_window_s:
                return "starting"
            return "in_progress"
        if job.state == JobState.CANCELLED:
            return cfg.cancelled_spelling
        if job.state == JobState.SUCCEEDED:
            return "completed" if endpoint == "status" else "succeeded"
        return cfg.failed_status_word if endpoint == "status" else "failed"

    def urls(request: Request, request_id: str) -> dict[str, str]:
        base = str(request.base_url).rstrip("/")
        return {
            "status_url": f"{base}/v1/requests/{request_id}/status",
            "result_url": f"{base}/v1/requests/{request_id}/result",
            "cancel_url": f"{base}/v1/requests/{request_id}/cancel",
        }

    def find_job(request_id: str, owner: str) -> Job | JSONResponse:
        job = state.scheduler.jobs.get(request_id)
        gone = error(NOT_FOUND, f"request {request_id} not found or expired", 404)
        if job is None:
            return gone
        if time.monotonic() - job.submitted_mono < state.config.not_found_after_submit_s:
            return gone  # not visible yet, as right after a real submit
        if job.owner != owner:
            return error(NOT_OWNER, "this request belongs to another user", 403)
        if job.expired(state.config):
            return gone
        return job

    async def drop_connection(request: Request) -> Response:
        transport = request.scope.get("extensions", {}).get(TRANSPORT_KEY)
        if transport is None:
            raise ConnectionDropped("sandbox fault: connection dropped")
        transport.abort()  # no answer at all: the client sees the connection die
        # let the loop deliver connection_lost so the server drops whatever we return next
        for _ in range(10):
            await asyncio.sleep(0)
        return Response(status_code=499)

    async def fault_answer(request: Request, fault: Fault) -> Response:
        if fault.kind == "rate_limit":
            retry_after = fault.retry_after if fault.retry_after is not None else 1
            shown = f"{retry_after:g}" if isinstance(retry_after, float) else str(retry_after)
            return error(
                fault.error_code or RATE_LIMITED,
                "too many requests, slow down",
                fault.http_status or 429,
                headers={"Retry-After": shown},
            )
        if fault.kind == "server_error":
            return error(
                fault.error_code or SERVER_ERROR,
                "internal server error (sandbox fault)",
                fault.http_status or 500,
            )
        if fault.kind == "error_code_200":
            # always the error_code shape: this is the reading clients get wrong
            return JSONResponse(
                {
                    "error_code": fault.error_code or SERVER_ERROR,
                    "error_message": "request failed (sandbox fault, sent with HTTP 200)",
                },
                status_code=200,
            )
        return await drop_connection(request)  # drop_before_accept

    async def serve(
        request: Request, endpoint: str, work: Callable[[], Awaitable[Response]]
    ) -> Response:
        state.stats.requests_by_endpoint[endpoint] += 1
        fault = state.faults.take(endpoint)
        if fault is not None and fault.before:
            return await fault_answer(request, fault)
        response = await work()
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.retry_after or 0)
        elif fault is not None and fault.kind == "drop_after_accept":
            return await drop_connection(request)
        return response

    # ---------------------------------------------------------------- the Model API

    @app.post("/v1/models/{model_id:path}")
    async def submit(model_id: str, request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                state.stats.submits_rejected[BAD_TOKEN] += 1
                return auth
            token, owner = auth
            if model_id != MODEL_ID:
                state.stats.submits_rejected[BAD_MODEL] += 1
                return unknown_model(model_id)
            if token in state.config.no_balance_tokens:
                state.stats.submits_rejected[NO_BALANCE] += 1
                return error(NO_BALANCE, "no balance left on this account", 402)
            checked = await _validate(request)
            if isinstance(checked, JSONResponse):
                state.stats.submits_rejected[INVALID_INPUT] += 1
                return checked
            payload, job_input = checked
            job = state.create_job(model_id, payload, owner, job_input)
            request_id = job.request_id
            if state.config.request_id_shape == "malformed":
                # the job exists and will be billed, but its id is not one a client may use
                request_id = f"../{job.request_id}?next=http://127.0.0.2/"
            body: dict[str, Any] = {"request_id": request_id, **urls(request, request_id)}
            if state.config.submit_status_code == 202:
                body["status"] = "in_queue"
            return JSONResponse(body, status_code=state.config.submit_status_code)

        return await serve(request, "submit", work)

    async def _validate(
        request: Request,
    ) -> tuple[dict[str, Any], InfiniteTalkInput] | JSONResponse:
        try:
            payload = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return invalid([{"field": "(body)", "message": f"not valid JSON: {exc}"}])
        if not isinstance(payload, dict):
            return invalid([{"field": "(body)", "message": "must be a JSON object"}])
        problems = [
            {"field": key, "message": "is not an input of this model"}
            for key in payload
            if key not in _API_KEY_SET
        ]
        if problems:
            return invalid(problems)
        try:
            job_input = InfiniteTalkInput.from_api_payload(payload)
        except ValidationError as exc:
            return invalid(
                [
                    {
                        # pydantic names missing fields by their friendly name; the API
                        # speaks in node ids
                        "field": ".".join(API_KEYS.get(str(p), str(p)) for p in item["loc"])
                        or "(body)",
                        "message": str(item.get("msg", "is invalid")).removeprefix("Value error, "),
                    }
                    for item in exc.errors(include_url=False)
                ]
            )
        return payload, job_input

    def invalid(problems: list[dict[str, str]]) -> JSONResponse:
        # RunComfy's shape: a general message, the reasons in `detail` (the sandbox adds
        # `errors`, the same reasons as objects)
        return error(
            INVALID_INPUT,
            "input does not match the schema",
            422,
            extra={"errors": problems},
            detail=[f"{p['field']}: {p['message']}" for p in problems],
        )

    @app.get("/v1/requests/{request_id}/status")
    async def status(request_id: str, request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            job = find_job(request_id, auth[1])
            if isinstance(job, JSONResponse):
                return job
            links = urls(request, request_id)
            body: dict[str, Any] = {
                "request_id": request_id,
                "status": status_word(job, "status"),
                "status_url": links["status_url"],
                "result_url": links["result_url"],
            }
            if job.state == JobState.IN_QUEUE:
                position = state.scheduler.queue_position(job)
                body["queue_position"] = position + state.config.queue_position_base
            return JSONResponse(body)

        return await serve(request, "status", work)

    @app.get("/v1/requests/{request_id}/result")
    async def result(request_id: str, request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            job = find_job(request_id, auth[1])
            if isinstance(job, JSONResponse):
                return job
            cfg = state.config
            body: dict[str, Any] = {
                "request_id": request_id,
                "status": status_word(job, "result"),
                "created_at": ts(job.submitted_wall),
                "finished_at": ts(job.finished_wall) if job.state.finished else None,
            }
            if job.state == JobState.SUCCEEDED and job.video is not None:
                base = str(request.base_url).rstrip("/")
                if cfg.output_urls_on == "foreign":
                    base = foreign_base()
                url = f"{base}/files/{job.file_name}"
                body["output"] = (
                    {"videos": [url]} if cfg.output_shape == "videos" else {"video": url}
                )
            elif job.state == JobState.FAILED:
                message = job.error_message or "the run failed"
                if cfg.error_shape == "string":
                    body["error"] = message
                elif cfg.error_shape == "failure_reason":
                    body["failure_reason"] = message
                else:
                    body["error"] = {"type": job.error_type or "RunError", "message": message}
            wants_cost = request.query_params.get("include_cost", "").lower() in {"1", "true"}
            if wants_cost and job.state.finished:
                seconds = job.video.seconds if job.video is not None else 0.0
                if cfg.price_unit != "second":  # one output, billed as one
                    seconds = 1.0 if job.video is not None else 0.0
                body["cost"] = round(seconds * cfg.price_per_second_usd, 6)
            return JSONResponse(body)

        return await serve(request, "result", work)

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request_id: str, request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            job = find_job(request_id, auth[1])
            if isinstance(job, JSONResponse):
                return job
            state.stats.cancels += 1
            was_queued = job.state == JobState.IN_QUEUE
            cancelled = state.scheduler.cancel(job)
            if cancelled and was_queued:
                state.stats.cancelled_jobs += 1
            body = {
                "request_id": request_id,
                "status": status_word(job, "status"),
                "outcome": "cancelled" if cancelled else "not_cancellable",
            }
            return JSONResponse(body, status_code=202)

        return await serve(request, "cancel", work)

    def catalog_entries() -> list[dict[str, Any]]:
        cfg = state.config
        return catalog.entries(
            cfg.price_per_second_usd, price_unit=cfg.price_unit, priced=cfg.catalog_priced
        )

    def unknown_model(model_id: str) -> JSONResponse:
        status = state.config.unknown_model_http_status
        return error(BAD_MODEL, f"unknown model id {model_id!r}", status)

    @app.get("/v1/models")
    async def list_models(
        request: Request,
        search: str | None = None,
        category: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include_schema: bool = False,
    ) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            found = catalog.search(
                catalog_entries(),
                query=search,
                category=category,
                limit=limit,
                offset=offset,
                include_schema=include_schema,
            )
            return JSONResponse(found)

        return await serve(request, "catalog", work)

    # before the model route, which would take "categories" for a model id
    @app.get("/v1/models/categories")
    async def list_categories(request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            return JSONResponse(catalog.categories(catalog_entries()))

        return await serve(request, "catalog", work)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        async def work() -> Response:
            auth = authenticate(request)
            if isinstance(auth, JSONResponse):
                return auth
            for entry in catalog_entries():
                if entry["model_id"] == model_id:
                    return JSONResponse(entry)
            return unknown_model(model_id)

        return await serve(request, "catalog", work)

    # ---------------------------------------------------------------- public files

    def foreign_base() -> str:
        base = state.foreign_base_url
        if base is None:
            raise RuntimeError(
                "this sandbox has no foreign listener: start it with Sandbox(foreign_host=...)"
            )
        return base

    def listener(request: Request) -> str:
        server = request.scope.get("server")
        on_foreign = server is not None and tuple(server) == state.foreign_address
        return "foreign" if on_foreign else "api"

    @app.api_route("/files/{name}", methods=["GET", "HEAD"])
    async def files(name: str, request: Request) -> Response:
        async def work() -> Response:
            state.stats.file_requests += 1
            came_in_on = listener(request)
            state.stats.file_requests_by_listener[came_in_on] += 1
            redirect = state.config.files_redirect
            if came_in_on == "api" and redirect == "foreign":
                return Response(
                    status_code=302, headers={"Location": f"{foreign_base()}/files/{name}"}
                )
            if came_in_on == "api" and redirect == "self" and "hop" not in request.query_params:
                return Response(status_code=302, headers={"Location": f"/files/{name}?hop=1"})
            if "authorization" in request.headers:
                # count only: the header's value is never looked at or kept
                state.stats.file_requests_with_authorization += 1
            job = state.scheduler.jobs.get(name.removesuffix(".mp4"))
            if (
                job is None
                or name != job.file_name
                or job.video is None
                or job.expired(state.config)
                or not job.video.path.exists()
            ):
                return error(NOT_FOUND, "file not found or expired", 404)
            padding = state.config.output_padding_bytes
            if request.method == "GET":
                state.stats.file_bytes_served += job.video.size_bytes + padding
                job.downloads += 1
                if job.first_download_mono is None:
                    job.first_download_mono = time.monotonic()
            config = state.config
            paced = (
                config.files_bytes_per_s is not None or config.files_stall_after_bytes is not None
            )
            if padding or config.files_without_length or paced:
                return padded_file(job.video.path, job.video.size_bytes, padding, name, request)
            # FileResponse streams in chunks and sends Content-Length
            served_as = state.config.output_content_type
            return FileResponse(job.video.path, media_type=served_as, filename=name)

        return await serve(request, "files", work)

    def padded_file(path: Any, size: int, padding: int, name: str, request: Request) -> Response:
        """The file then `padding` zero bytes, streamed in 1 MiB chunks with Content-Length
        (chunked, without it, when `files_without_length`), trickled or stalled as the
        config says (`files_bytes_per_s`, `files_stall_after_bytes`)."""
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if not state.config.files_without_length:
            headers["Content-Length"] = str(size + padding)
        served_as = state.config.output_content_type
        if request.method == "HEAD":
            return Response(status_code=200, media_type=served_as, headers=headers)

        async def chunks() -> AsyncIterator[bytes]:
            yield await asyncio.to_thread(path.read_bytes)  # the small rendered video
            zeros = bytes(_PAD_CHUNK)
            left = padding
            while left > 0:
                piece = zeros if left >= _PAD_CHUNK else zeros[:left]
                left -= len(piece)
                yield piece

        body = paced(chunks(), state.config.files_bytes_per_s, state.config.files_stall_after_bytes)
        return StreamingResponse(body, media_type=served_as, headers=headers)

    @app.get("/samples")
    async def samples_index(request: Request) -> Response:
        state.stats.requests_by_endpoint["samples"] += 1
        base = str(request.base_url).rstrip("/")
        return JSONResponse({name: f"{base}/samples/{name}" for name in sample_files()})

    @app.api_route("/samples/{name}", methods=["GET", "HEAD"])
    async def sample(name: str) -> Response:
        state.stats.requests_by_endpoint["samples"] += 1
        path = sample_files().get(name)  # only the shipped names: no path tricks
        if path is None:
            return error(NOT_FOUND, "no such sample", 404)
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    # ---------------------------------------------------------------- admin (no token)

    @app.get("/_sandbox/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/_sandbox/stats")
    async def admin_stats() -> dict[str, Any]:
        return state.stats_snapshot()

    @app.get("/_sandbox/requests")
    async def admin_requests() -> list[dict[str, Any]]:
        return state.requests_snapshot()

    @app.get("/_sandbox/faults")
    async def admin_faults() -> list[dict[str, Any]]:
        return state.faults.pending()

    @app.post("/_sandbox/faults")
    async def admin_add_fault(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            return JSONResponse(state.add_fault(**body))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/_sandbox/config")
    async def admin_config() -> dict[str, Any]:
        return state.config.public_dict()

    @app.post("/_sandbox/config")
    async def admin_set_config(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            return JSONResponse(state.set_config(**body))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.post("/_sandbox/reset")
    async def admin_reset(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = {}
        await state.reset(config=bool(isinstance(body, dict) and body.get("config")))
        return {"ok": True}

    return app


async def paced(
    chunks: AsyncIterator[bytes], bytes_per_s: float | None, stall_after: int | None
) -> AsyncIterator[bytes]:
    """`chunks` as they come, or trickled at `bytes_per_s`, and cut off after `stall_after`
    bytes by silence: the connection stays open and sends nothing (Starlette cancels this when
    the client leaves; otherwise it ends after `STALL_HOLD_S`, the file cut short)."""
    step = max(1, int(bytes_per_s * _TRICKLE_TICK_S)) if bytes_per_s else None
    sent = 0
    async for chunk in chunks:
        for part in _pieces(chunk, step):
            if stall_after is not None and sent + len(part) > stall_after:
                if stall_after > sent:
                    yield part[: stall_after - sent]
                await asyncio.sleep(STALL_HOLD_S)
                return
            sent += len(part)
            yield part
            if bytes_per_s:
                await asyncio.sleep(len(part) / bytes_per_s)


def _pieces(chunk: bytes, step: int | None) -> Iterator[bytes]:
    if step is None:
        yield chunk
        return
    for start in range(0, len(chunk), step):
        yield chunk[start : start + step]
