"""`RunComfyClient`: the async HTTP client for RunComfy's Model API.

One method per endpoint, errors translated into `prefect_runcomfy.api.exceptions` in one place,
and a retry rule per kind of call, all run by the one loop `prefect_runcomfy.api.backoff.retrying`:

- reads (`status`, `result`, `model_info`, `list_models`) and `cancel` are retried with
  exponential backoff and jitter, honouring `Retry-After`, a bounded number of times;
- `submit` is retried only as `may_resend_submit` allows: when the request provably never
  reached RunComfy or was refused with 429. Any other failure after the bytes left raises
  `SubmitOutcomeUnknownError`: RunComfy has no idempotency key, so a blind retry could pay for
  the same video twice;
- downloads of output URLs go through a separate HTTP client that never carries the token,
  and only to the hosts its `OutputPolicy` allows (`prefect_runcomfy.api.hosts`).

This module does not import Prefect.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.backoff import Backoff, parse_retry_after, retry_after_of, retrying
from prefect_runcomfy.api.downloads import (
    DownloadedFile,
    download_output,
    output_http_client,
    shared_ssl_context,
)
from prefect_runcomfy.api.exceptions import (
    AuthenticationError,
    ConfigurationError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidRequestIdError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestNotFoundError,
    RunComfyAPIError,
    ServerError,
    SubmitOutcomeUnknownError,
    TransportError,
)
from prefect_runcomfy.api.hosts import OutputPolicy
from prefect_runcomfy.api.models import (
    CancelOutcome,
    ModelInfo,
    RequestResult,
    RequestState,
    SubmittedRequest,
    is_request_id,
)
from prefect_runcomfy.models.base import ModelInput
from prefect_runcomfy.models.infinite_talk import MODEL_ID

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
"""Where RunComfy's Model API lives."""

TOKEN_ENV = "RUNCOMFY_API_TOKEN"  # noqa: S105 - a variable name, not a secret
"""The first environment variable read for the token when none is given."""

TOKEN_ENVS: tuple[str, ...] = (TOKEN_ENV, "RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY")
"""Where the token is looked for when none is given, in this order: this package's name,
then the one RunComfy's CLI and ComfyUI nodes read, then the one its MCP servers read."""

BASE_URL_ENV = "RUNCOMFY_BASE_URL"
"""Environment variable read for the base URL when none is given."""

USER_AGENT = f"prefect-runcomfy/{__version__}"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=30.0)

logger = logging.getLogger("prefect_runcomfy.api.client")

T = TypeVar("T")

# httpx errors raised before a single byte of the request was written: no connection was made
# (refused, DNS failure, TLS handshake, connect timeout), none was free in the pool, or the URL
# scheme cannot be spoken at all.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)

# Reads and cancel change nothing that a second try could double: any of these may pass.
_READ_RETRYABLE = (TransportError, ServerError, RateLimitedError)


def may_resend_submit(error: BaseException) -> bool:
    """The submit rule: True only when sending the same submit again cannot create a second job.

    That is when the request provably never reached RunComfy (an httpx connect error or connect
    timeout: connection refused, DNS failure; no free pooled connection; an unusable URL scheme)
    or when RunComfy refused it outright with 429 (`RateLimitedError`). Anything else after the
    bytes left (a read timeout, a dropped connection, a 5xx, an answer without a request id) may
    have created a billed job; RunComfy has no idempotency key, so such a submit is never sent
    again and ends as `SubmitOutcomeUnknownError`.
    """
    return isinstance(error, (*_NEVER_SENT, RateLimitedError))


def _read_may_be_retried(error: BaseException) -> bool:
    return isinstance(error, _READ_RETRYABLE)


def _log_retry(error: BaseException, failures: int, pause: float) -> None:
    # The type only: an httpx error's text carries the URL, and nothing here may echo a body.
    logger.debug(
        "Retrying after %s (try %d failed) in %.1f s", type(error).__name__, failures, pause
    )


_CODE_ERRORS: dict[int, type[RunComfyAPIError]] = {
    400001: ModelNotFoundError,
    400002: InsufficientBalanceError,
    400004: AuthenticationError,
    403001: PermissionDeniedError,
    404001: RequestNotFoundError,
}

_CODE_ADVICE: dict[type[RunComfyAPIError], str] = {
    ModelNotFoundError: "check the model id",
    InsufficientBalanceError: "top up the RunComfy account, then run again",
    AuthenticationError: (
        "check the API token (the credentials block, or RUNCOMFY_API_TOKEN, RUNCOMFY_TOKEN, "
        "RUNCOMFY_API_KEY)"
    ),
    PermissionDeniedError: "read it with the token that submitted it",
    RequestNotFoundError: "the request is unknown or its record has expired; it cannot be collected",
    InputRejectedError: "fix the input and submit again",
    RateLimitedError: "slow down; it will be retried after the wait RunComfy asked for",
    ServerError: "RunComfy failed on its side; try again later",
}


def token_from_environment() -> str | None:
    """The first non-blank of `RUNCOMFY_API_TOKEN`, `RUNCOMFY_TOKEN`, `RUNCOMFY_API_KEY`."""
    for name in TOKEN_ENVS:
        value = os.environ.get(name)
        if value and value.strip():
            return value
    return None


def _resolve_token(api_token: str | SecretStr | None) -> SecretStr:
    value: str | None
    if isinstance(api_token, SecretStr):
        value = api_token.get_secret_value()
    else:
        value = api_token if api_token is not None else token_from_environment()
    if not value or not value.strip():
        raise ConfigurationError(
            "No RunComfy API token: pass one, save a RunComfyCredentials block, or set "
            f"{', '.join(TOKEN_ENVS[:-1])} or {TOKEN_ENVS[-1]}."
        )
    return SecretStr(value.strip())


def resolve_base_url(base_url: str | None) -> str:
    """`base_url`, else `RUNCOMFY_BASE_URL`, else RunComfy's own, without a trailing slash."""
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"RunComfy base URL must start with http:// or https://: {url!r}")
    return url


class RunComfyClient:
    """An async client for RunComfy's Model API (submit, status, result, cancel, catalog, download).

    Create it inside the coroutine that uses it (Prefect gives each async task its own event
    loop) and close it with `async with` or `aclose()`.

    Args:
        api_token: The RunComfy token; when omitted, the first of `RUNCOMFY_API_TOKEN`,
            `RUNCOMFY_TOKEN` and `RUNCOMFY_API_KEY` that is set. Sent only in the
            `Authorization` header of API calls, never to output hosts, never logged.
        base_url: The API's base URL; `RUNCOMFY_BASE_URL` or `https://model-api.runcomfy.net`.
        timeout: Seconds (or an `httpx.Timeout`) for API calls.
        max_retries: How many times a retryable call is tried again before giving up.
        backoff: Delays between retries; `Retry-After` wins when RunComfy sends it.
        max_retry_after_s: The longest `Retry-After` honoured before giving up instead.
        transport: An httpx transport for the API (tests, proxies).
        download_transport: An httpx transport for output hosts.
        output_hosts: Host patterns outputs may also be downloaded from, beside RunComfy's
            output domains, this API's own host and `RUNCOMFY_OUTPUT_HOSTS`
            (`cdn.example.com`, `*.example.com`, `http://10.0.0.5:8080`).
        max_output_bytes: The largest output downloaded (2 GiB when None).

    Example:
        ```python
        from prefect_runcomfy import RunComfyClient, InfiniteTalkInput

        async with RunComfyClient() as client:  # token from the environment
            job = InfiniteTalkInput(prompt="a man talks", image=image_url, audio=audio_url)
            submitted = await client.submit(job)
            result = await client.result(submitted.request_id, include_cost=True)
        ```
    """

    def __init__(
        self,
        api_token: str | SecretStr | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        max_retry_after_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        download_transport: httpx.AsyncBaseTransport | None = None,
        output_hosts: Sequence[str] = (),
        max_output_bytes: int | None = None,
    ) -> None:
        self._token = _resolve_token(api_token)
        self.base_url = resolve_base_url(base_url)
        self.output_policy = OutputPolicy.build(
            self.base_url, extra_hosts=output_hosts, max_bytes=max_output_bytes
        )
        """Where outputs may be downloaded from, what they may be, and how big."""
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff or Backoff()
        self.max_retry_after_s = max_retry_after_s
        api_timeout = (
            timeout
            if isinstance(timeout, httpx.Timeout)
            else (httpx.Timeout(timeout) if timeout is not None else DEFAULT_TIMEOUT)
        )
        self._api = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=api_timeout,
            verify=shared_ssl_context(),
            transport=transport,
            headers={
                "Authorization": f"Bearer {self._token.get_secret_value()}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            follow_redirects=False,
        )
        # Output URLs are public CDN links: this client has no Authorization header at all, so the
        # token cannot leak to an output host, even through a redirect.
        self._downloads = output_http_client(transport=download_transport)
        self.requests_sent = 0
        """How many HTTP requests this client sent to the API (retries included)."""

    def __repr__(self) -> str:
        return f"RunComfyClient(base_url={self.base_url!r}, api_token=SecretStr('**********'))"

    @property
    def output_http(self) -> httpx.AsyncClient:
        """The HTTP client for output hosts: no Authorization header; redirects are followed by
        the download itself, each checked against `output_policy`."""
        return self._downloads

    async def __aenter__(self) -> RunComfyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close both HTTP connection pools."""
        await self._api.aclose()
        await self._downloads.aclose()

    # --- endpoints ---------------------------------------------------------------------------

    async def submit(
        self, inputs: ModelInput | dict[str, Any], *, model_id: str = MODEL_ID
    ) -> SubmittedRequest:
        """Submit one job and return its `request_id` and follow-up URLs.

        `inputs` is a model's input (such as an `InfiniteTalkInput`) or an API body (raw
        keys); `model_id` says which model runs it. Retried only when the
        request never reached RunComfy or was refused with 429 (the rule: `may_resend_submit`).

        Raises:
            SubmitOutcomeUnknownError: the request was sent but no usable answer came back;
                a job may exist and be billed. Never retried automatically.
            RunComfyAPIError: RunComfy refused the job (token, balance, input, model).
        """
        payload = inputs.to_api_payload() if isinstance(inputs, ModelInput) else inputs
        path = f"/v1/models/{quote(model_id, safe='/')}"

        async def once() -> dict[str, Any]:
            self.requests_sent += 1
            return self._check(await self._api.post(path, json=payload))

        try:
            body = await self._retry(once, retry_if=may_resend_submit)
        except httpx.HTTPError as exc:
            # `from None`: the httpx error holds the request, and with it the Authorization header.
            if may_resend_submit(exc):
                raise TransportError(
                    f"Could not reach RunComfy at {self.base_url} to submit "
                    f"({type(exc).__name__}); nothing was submitted."
                ) from None
            raise SubmitOutcomeUnknownError(
                f"The submit was sent to RunComfy but its answer was lost ({type(exc).__name__}); "
                "a job may be running and billed. It was not sent again.",
                cause=type(exc).__name__,
            ) from None
        except ServerError as exc:
            raise SubmitOutcomeUnknownError(
                f"RunComfy answered the submit with a server error ({exc.status_code or ''} "
                f"{exc.error_code or ''}); a job may still have been created. "
                "It was not sent again.",
                cause=f"server_error:{exc.status_code or exc.error_code}",
            ) from None
        request_id = body.get("request_id")
        if request_id is not None and not is_request_id(request_id):
            # Never put it in a URL: it could point the next call anywhere on the API host.
            raise SubmitOutcomeUnknownError(
                "RunComfy accepted the submit but its answer carried a malformed request id "
                f"({self._redact(repr(request_id))[:80]}); a job may be running and billed, "
                "and it cannot be followed. It was not sent again.",
                cause="malformed_request_id",
            )
        try:
            return SubmittedRequest.model_validate(body)
        except ValueError:
            raise SubmitOutcomeUnknownError(
                "RunComfy accepted the submit but its answer had no request_id; a job may be "
                "running and billed. It was not sent again.",
                cause="no_request_id",
            ) from None

    async def status(self, request_id: str) -> RequestState:
        """Read where a request stands (`in_queue` with its position, `in_progress`, ...)."""
        body = await self._read("GET", self._request_path(request_id, "status"), request_id)
        return RequestState.model_validate({**body, "request_id": request_id})

    async def result(self, request_id: str, *, include_cost: bool = False) -> RequestResult:
        """Read a request's result: its outputs once succeeded, else its current state.

        Polling this alone is enough to follow a request to its end. With `include_cost`,
        RunComfy adds the job's cost in USD where it knows it.
        """
        params = {"include_cost": "true"} if include_cost else None
        body = await self._read(
            "GET", self._request_path(request_id, "result"), request_id, params=params
        )
        return RequestResult.model_validate({**body, "request_id": request_id})

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Ask RunComfy to cancel a request. Only queued requests can be; cancelling twice is harmless.

        Check `.cancelled` on the answer: `not_cancellable` means it runs to the end and is billed.
        """
        body = await self._read("POST", self._request_path(request_id, "cancel"), request_id)
        return CancelOutcome.model_validate({**body, "request_id": request_id})

    async def model_info(self, model_id: str = MODEL_ID) -> ModelInfo:
        """Read a model's catalog entry: display name, price and input schema."""
        body = await self._read("GET", f"/v1/models/{quote(model_id, safe='/')}", None)
        return ModelInfo.model_validate({"model_id": model_id, **body})

    async def list_models(
        self,
        search: str | None = None,
        *,
        category: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ModelInfo]:
        """List catalog entries (`{"models": [...], "total": N}`), optionally filtered by a
        search term or a category, one page of `limit` from `offset`."""
        given = {"search": search, "category": category, "limit": limit, "offset": offset}
        params = {k: str(v) for k, v in given.items() if v is not None and v != ""}
        body = await self._read("GET", "/v1/models", None, params=params or None)
        items = body.get("models") or body.get("items") or body.get("data") or []
        if not items and isinstance(body.get("detail"), list):
            items = body["detail"]  # a bare list (how `_check` keeps a non-object body)
        return [ModelInfo.model_validate(item) for item in items if isinstance(item, dict)]

    async def list_categories(self) -> list[str]:
        """The catalog's categories (`GET /v1/models/categories`), as names."""
        body = await self._read("GET", "/v1/models/categories", None)
        items = body.get("categories") or body.get("detail") or []
        names = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                item = item.get("name") or item.get("category") or item.get("slug")
            if item:
                names.append(str(item))
        return names

    # --- downloads ---------------------------------------------------------------------------

    async def download(
        self,
        url: str,
        destination: str | os.PathLike[str] | IO[bytes],
        *,
        chunk_size: int = 1 << 20,
        attempts: int = 3,
    ) -> DownloadedFile:
        """Stream an output URL to a file without the token, if `output_policy` allows it;
        see `download_output`."""
        return await download_output(
            url,
            destination,
            http=self._downloads,
            chunk_size=chunk_size,
            attempts=attempts,
            backoff=self.backoff,
            policy=self.output_policy,
        )

    # --- the one place where HTTP answers become results or exceptions ---------------------

    def _request_path(self, request_id: str, action: str) -> str:
        if not is_request_id(request_id):
            shown = repr(request_id)[:80]
            raise InvalidRequestIdError(
                f"Not a RunComfy request id: {shown} (ids are 1 to 128 letters, digits, '_' "
                "or '-'); it was not sent anywhere."
            )
        return f"/v1/requests/{request_id}/{action}"

    async def _read(
        self,
        method: str,
        path: str,
        request_id: str | None,
        *,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send a call that is safe to repeat, retrying what can be retried."""

        async def once() -> dict[str, Any]:
            try:
                self.requests_sent += 1
                response = await self._api.request(method, path, params=params)
            except httpx.HTTPError as exc:
                raise TransportError(
                    f"RunComfy could not be reached for {method} {path} ({type(exc).__name__})."
                ) from None
            return self._check(response, request_id=request_id)

        return await self._retry(once, retry_if=_read_may_be_retried)

    async def _retry(
        self, call: Callable[[], Awaitable[T]], *, retry_if: Callable[[BaseException], bool]
    ) -> T:
        """Run `call` under this client's retry settings; `retry_if` says which errors may pass."""
        return await retrying(
            call,
            delays=self.backoff,
            attempts=self.max_retries + 1,
            retry_if=retry_if,
            wait_hint=retry_after_of,
            max_wait_s=self.max_retry_after_s,
            on_retry=_log_retry,
        )

    def _check(self, response: httpx.Response, *, request_id: str | None = None) -> dict[str, Any]:
        """Return the JSON body of a good answer; raise the matching exception for any other.

        A 2xx body that carries `error_code` is an error too.
        """
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {} if body is None else {"detail": body}
        code = _error_code(body)
        if response.is_success and code is None:
            return body
        raise self._error_for(response, body, code, request_id)

    def _error_for(
        self,
        response: httpx.Response,
        body: dict[str, Any],
        code: int | None,
        request_id: str | None,
    ) -> RunComfyAPIError:
        status = response.status_code
        # Redacted before it is cut: a cut must not keep half a token.
        detail = _error_detail(self._redact_any(body)) or response.reason_phrase or ""
        cls: type[RunComfyAPIError]
        if code in _CODE_ERRORS:
            cls = _CODE_ERRORS[code]
        elif code is not None and 500000 <= code < 600000:
            cls = ServerError
        elif code is not None and 429000 <= code < 430000:
            cls = RateLimitedError
        elif status in (401,):
            cls = AuthenticationError
        elif status == 402:
            cls = InsufficientBalanceError
        elif status == 403:
            cls = PermissionDeniedError if request_id else AuthenticationError
        elif status == 404:
            cls = RequestNotFoundError if request_id else ModelNotFoundError
        elif status == 429:
            cls = RateLimitedError
        elif status >= 500:
            cls = ServerError
        elif status in (400, 413, 422):
            cls = InputRejectedError
        else:
            cls = RunComfyAPIError
        what = f"RunComfy answered {response.request.method} {response.request.url.path} with HTTP {status}"
        if code is not None:
            what += f", error {code}"
        message = f"{what}: {detail}" if detail else what
        advice = _CODE_ADVICE.get(cls)
        if advice:
            message += f" ({advice})"
        kwargs: dict[str, Any] = {
            "status_code": status,
            "error_code": code,
            "detail": self._redact_any(body.get("detail", detail)),
            "request_id": request_id,
        }
        if cls is RateLimitedError:
            return RateLimitedError(
                message,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                **kwargs,
            )
        return cls(message, **kwargs)

    def _redact(self, text: str) -> str:
        # A server that echoes the token back must not get it into our logs or exceptions.
        secret = self._token.get_secret_value()
        return text.replace(secret, "**********") if secret else text

    def _redact_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, list):
            return [self._redact_any(v) for v in value]
        if isinstance(value, dict):
            return {k: self._redact_any(v) for k, v in value.items()}
        return value


def _error_code(body: dict[str, Any]) -> int | None:
    for key in ("error_code", "code"):
        value = body.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None


MAX_REASON_CHARS = 1000
"""The longest reason from an error body that an exception message carries (cut with '…')."""

_MAX_REASON_ITEMS = 20
"""How many items of a `detail` list a message names before saying how many more there are."""


def _error_detail(body: dict[str, Any]) -> str:
    """The whole reason an error body gives, as one line: its message, then its detail.

    RunComfy's bodies carry `error_message` and, for a schema rejection, `detail` (a string, a
    list or an object); other servers say `message`, `error` or `errors`. Each part that
    says something new is kept, in that order, and the line is cut at `MAX_REASON_CHARS`.
    """
    parts: list[str] = []
    for key in ("error_message", "message", "error", "detail"):
        text = _describe(body.get(key))
        if text and not any(text in part for part in parts):
            parts.append(text)
    if body.get("detail") in (None, "", [], {}):
        text = _describe(body.get("errors"))
        if text and not any(text in part for part in parts):
            parts.append(text)
    return _cut(": ".join(parts), MAX_REASON_CHARS)


def _describe(value: Any) -> str:
    """One line for a string, a list (pydantic-style items as `loc: msg`) or an object."""
    if value in (None, "", [], {}):
        return ""
    if isinstance(value, list):
        items = [_describe_item(item) for item in value[:_MAX_REASON_ITEMS]]
        more = len(value) - _MAX_REASON_ITEMS
        return "; ".join(i for i in items if i) + (f"; and {more} more" if more > 0 else "")
    if isinstance(value, dict):
        return _describe_item(value)
    return _cut(str(value), MAX_REASON_CHARS)


def _describe_item(item: Any) -> str:
    if isinstance(item, dict):
        message = item.get("msg") or item.get("message")
        where = item.get("loc") or item.get("field") or item.get("path")
        if isinstance(where, list):
            where = ".".join(str(p) for p in where if p != "body")
        if message not in (None, ""):
            return f"{where}: {message}" if where else str(message)
        typed = [str(item.get(k)) for k in ("type", "code") if item.get(k) not in (None, "")]
        if typed and len(item) <= 2:
            return ": ".join(typed)
        return _cut(json.dumps(item, default=str, ensure_ascii=False), 300)
    if isinstance(item, list):
        return _describe(item)
    return _cut(str(item), 300)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line: a server's newlines must not break a log line
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "DEFAULT_BASE_URL",
    "TOKEN_ENVS",
    "DownloadedFile",
    "RunComfyClient",
    "may_resend_submit",
    "resolve_base_url",
    "token_from_environment",
]
