"""Every error prefect-runcomfy raises, in one tree.

Catch `RunComfyError` for all of them. Each class says when it is raised and what to do.
Each layer translates the errors of what it drives into these: the API client its HTTP and
transport errors (`api/client.py`), downloads theirs (`api/downloads.py`), the output store
fsspec's, botocore's and the OS's (`engine/outputs/store.py`). The cause is kept
(`raise ... from`) where it holds no secret; the token and storage secrets never appear in
any message.

```
RunComfyError
├── ConfigurationError                 no token / bad settings
│   ├── SubmitLimitError               a run would submit more new jobs than max_submits
│   └── CostLimitError                 a run's estimated cost is over max_cost_usd (or unknown)
├── InvalidInputError                  a row is not a valid InfiniteTalk input
├── InvalidRequestIdError              a request id is not of RunComfy's form (never sent)
├── MediaError                         an input file cannot be read, signed or staged
├── StorageError                       outputs cannot be written / read where asked
├── RunComfyAPIError                   the API said no (carries status code, error code, detail)
│   ├── AuthenticationError            token missing, expired, revoked; account inactive
│   ├── InsufficientBalanceError       no balance left
│   ├── PermissionDeniedError          the request belongs to another user
│   ├── RequestNotFoundError           unknown or expired request id
│   ├── ModelNotFoundError             bad model id
│   ├── InputRejectedError             the API rejected the input (422 / schema)
│   ├── RateLimitedError               429; carries retry_after
│   └── ServerError                    5xx
├── TransportError                     the API could not be reached (safe to retry reads)
├── SubmitOutcomeUnknownError          a submit was sent but its answer was lost
├── RunFailedError                     the job ran and failed
├── RunCancelledError                  the job was cancelled
├── RunTimedOutError                   waiting passed its deadline
├── DownloadError                      an output could not be downloaded completely
│   └── DownloadTimedOutError          an output's download passed its deadline (slow or stalled)
├── OutputRefusedError                 an output's host, type or size is not allowed
├── RowNotStoredError                  a row's outputs were not stored (the task says why)
└── RowsNeedAttentionError             a run ended with rows that need a person (carries the manifest)
```
"""

from __future__ import annotations

from typing import Any


class RunComfyError(Exception):
    """Base class of every error raised by prefect-runcomfy."""


class ConfigurationError(RunComfyError):
    """Settings are missing or wrong (no token, bad URL); fix the configuration and run again."""


class SubmitLimitError(ConfigurationError):
    """A run would submit more new, paid jobs than `max_submits` allows; nothing was submitted."""

    def __init__(self, message: str, *, would_submit: int, limit: int) -> None:
        super().__init__(message)
        self.would_submit = would_submit
        self.limit = limit


class CostLimitError(ConfigurationError):
    """A run's estimated cost is over `max_cost_usd`, or cannot be estimated while it is set;
    nothing was submitted. `estimate_usd` is None when the catalog gave no usable price."""

    def __init__(
        self,
        message: str,
        *,
        estimate_usd: float | None,
        limit_usd: float,
        would_submit: int,
    ) -> None:
        super().__init__(message)
        self.estimate_usd = estimate_usd
        self.limit_usd = limit_usd
        self.would_submit = would_submit


class InvalidInputError(RunComfyError, ValueError):
    """An input row is not a valid InfiniteTalk job; the message names the row, column and reason."""

    def __init__(
        self, message: str, *, problems: list[tuple[str, str]] | None = None, row: Any = None
    ) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.row = row


class InvalidRequestIdError(RunComfyError, ValueError):
    """A request id is not 1-128 letters, digits, `_` or `-`; it is never put in a URL."""


class MediaError(RunComfyError):
    """An input image or audio cannot be read, signed, staged or inlined; fix the path or option."""


class StorageError(RunComfyError):
    """Outputs cannot be written to (or read from) the output location; check URI and credentials."""


# --- the API said no -------------------------------------------------------------------------


class RunComfyAPIError(RunComfyError):
    """RunComfy answered with an error; `status_code`, `error_code` and `detail` say which."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: int | str | None = None,
        detail: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.detail = detail
        self.request_id = request_id


class AuthenticationError(RunComfyAPIError):
    """The token is missing, expired or revoked, or the account is inactive (400004, 401/403)."""


class InsufficientBalanceError(RunComfyAPIError):
    """The account has no balance left (400002, 402); top up before submitting more jobs."""


class PermissionDeniedError(RunComfyAPIError):
    """The request belongs to another user (403001); use the token that submitted it."""


class RequestNotFoundError(RunComfyAPIError):
    """The request id is unknown or its record has expired (404001); it cannot be collected."""


class ModelNotFoundError(RunComfyAPIError):
    """The model id is not known to RunComfy (400001); check the spelling."""


class InputRejectedError(RunComfyAPIError):
    """RunComfy rejected the job's input (422 or a schema error); `detail` holds its reason."""


class RateLimitedError(RunComfyAPIError):
    """Too many requests (429); `retry_after` is the wait RunComfy asked for, in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(RunComfyAPIError):
    """RunComfy failed on its side (5xx); reads are retried, a submit's outcome becomes unknown."""


# --- the API could not be reached --------------------------------------------------------------


class TransportError(RunComfyError):
    """RunComfy could not be reached or the connection broke; check the network and retry."""


class SubmitOutcomeUnknownError(RunComfyError):
    """A submit reached RunComfy but its answer was lost: a job may be running and billed.

    It is never retried automatically, because RunComfy has no idempotency key. Look for the
    video in your RunComfy dashboard, or submit again on purpose (`resubmit_unknown=True`).
    """

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


# --- the job itself ----------------------------------------------------------------------------


class RunFailedError(RunComfyError):
    """The job ran and failed; `error` holds RunComfy's reason as given."""

    def __init__(
        self, message: str, *, request_id: str, error: Any = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.error = error
        self.details = details


class RunCancelledError(RunComfyError):
    """The job was cancelled before it produced outputs."""

    def __init__(self, message: str, *, request_id: str, details: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.details = details


class RunTimedOutError(RunComfyError):
    """Waiting passed its deadline; a running job is kept in the ledger so a later run collects it."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        last_status: str | None = None,
        cancelled: bool = False,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.last_status = last_status
        self.cancelled = cancelled
        self.details: Any = None


class DownloadError(RunComfyError):
    """An output could not be downloaded completely (expired link, size mismatch, broken stream).

    `expired` is True when the output host said the file is gone or forbidden (HTTP 403, 404,
    410): trying again will not help. Anything else (429, 5xx, a broken stream) may pass.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def expired(self) -> bool:
        """True when the output is gone for good (HTTP 403, 404 or 410)."""
        return self.status_code in (403, 404, 410)


class DownloadTimedOutError(DownloadError):
    """An output's download passed its deadline, retries included (it trickled or stalled).

    The job itself succeeded and is paid for: its output can be collected later, without
    paying again, while RunComfy keeps it. The deadline is `grace_s` plus the size at the
    minimum rate (`prefect_runcomfy.api.download_deadline`); `received` and `expected` say how
    far the last try got (`expected` is None when the host announced no size).
    """

    def __init__(
        self, message: str, *, deadline_s: float, received: int, expected: int | None
    ) -> None:
        super().__init__(message)
        self.deadline_s = deadline_s
        self.received = received
        self.expected = expected


class OutputRefusedError(RunComfyError):
    """An output URL (or a redirect) points at a host that is not allowed, or the answer is
    not a video or is over the size cap; nothing of it was kept, and trying again will not
    help. The message says how to allow it.

    `reason` is `host`, `type`, `size` or `url`; `host` is the host refused, when it was one.
    """

    def __init__(
        self, message: str, *, reason: str, url: str | None = None, host: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url
        self.host = host


# --- batches ------------------------------------------------------------------------------------


class RowNotStoredError(RunComfyError):
    """A batch row ended without a stored video; it only marks the row's task run as failed.

    The flow catches nothing here: the row's manifest record (`status`, `error`) says what
    happened and what to do, and the other rows go on.
    """

    def __init__(self, row_id: str, status: str, error: str | None) -> None:
        super().__init__(f"{row_id} ended {status}: {error or 'no reason given'}")
        self.row_id = row_id
        self.status = status


class RowsNeedAttentionError(RunComfyError):
    """A run ended with rows that need a person (failed, invalid, timed out, outcome unknown)
    beyond what `allow_failed_rows` tolerates, or with no video at all; it fails the flow run.

    Everything was written first (videos, sidecars, `manifest.parquet`, the review page, the
    artifacts); `manifest` is the run's manifest, as the flow would have returned it, and
    `counts` the rows per status. Look at the rows whose `status` is not `succeeded`.
    """

    def __init__(self, message: str, *, manifest: Any, counts: dict[str, int]) -> None:
        super().__init__(message)
        self.manifest = manifest
        self.counts = counts

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed run's exception; keyword-only arguments need this.
        return (_rebuild_rows_need_attention, (str(self), self.manifest, self.counts))


def _rebuild_rows_need_attention(
    message: str, manifest: Any, counts: dict[str, int]
) -> RowsNeedAttentionError:
    return RowsNeedAttentionError(message, manifest=manifest, counts=counts)


__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "CostLimitError",
    "DownloadError",
    "DownloadTimedOutError",
    "InputRejectedError",
    "InsufficientBalanceError",
    "InvalidInputError",
    "InvalidRequestIdError",
    "MediaError",
    "ModelNotFoundError",
    "OutputRefusedError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestNotFoundError",
    "RowNotStoredError",
    "RowsNeedAttentionError",
    "RunCancelledError",
    "RunComfyAPIError",
    "RunComfyError",
    "RunFailedError",
    "RunTimedOutError",
    "ServerError",
    "StorageError",
    "SubmitLimitError",
    "SubmitOutcomeUnknownError",
    "TransportError",
]
