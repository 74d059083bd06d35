"""Pydantic models of RunComfy API answers, and the status vocabulary: the same for every model.

Nothing here does I/O: these are the shapes the client, the tasks and the sandbox agree on.
A model's inputs live with the model (`prefect_runcomfy/models/`); `InfiniteTalkInput` is
importable from here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefect_runcomfy.models.infinite_talk import InfiniteTalkInput as InfiniteTalkInput

# ---------------------------------------------------------------------------------------------
# The status vocabulary


class RequestStatus(StrEnum):
    """Where a RunComfy request stands, in one vocabulary for `/status` and `/result`.

    `/status` says `completed` where `/result` says `succeeded`; both map to `SUCCEEDED` only
    once the result confirms it. Unknown words from the API become `UNKNOWN` (not finished).
    """

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True when the request will not change any more."""
        return self in {
            RequestStatus.COMPLETED,
            RequestStatus.SUCCEEDED,
            RequestStatus.FAILED,
            RequestStatus.CANCELLED,
        }

    @classmethod
    def parse(cls, value: Any) -> RequestStatus:
        """Read a status word from either endpoint; never raises."""
        word = str(value or "").strip().lower().replace("-", "_").replace(" ", "_")
        return _STATUS_WORDS.get(word, cls.UNKNOWN)


_STATUS_WORDS: dict[str, RequestStatus] = {
    "in_queue": RequestStatus.IN_QUEUE,
    "queued": RequestStatus.IN_QUEUE,
    "in_progress": RequestStatus.IN_PROGRESS,
    "running": RequestStatus.IN_PROGRESS,
    "completed": RequestStatus.COMPLETED,
    "complete": RequestStatus.COMPLETED,
    "succeeded": RequestStatus.SUCCEEDED,
    "success": RequestStatus.SUCCEEDED,
    "failed": RequestStatus.FAILED,
    "failure": RequestStatus.FAILED,
    "error": RequestStatus.FAILED,
    "cancelled": RequestStatus.CANCELLED,
    "canceled": RequestStatus.CANCELLED,
}


class _Answer(BaseModel):
    # The API adds fields without notice; keep them (extra="allow") so metadata loses nothing.
    model_config = ConfigDict(extra="allow", frozen=True)

    def extras(self) -> dict[str, Any]:
        """Fields the API sent that this model does not name."""
        return dict(self.__pydantic_extra__ or {})


REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a RunComfy request id looks like (RunComfy's own clients check the same)."""


def is_request_id(value: Any) -> bool:
    """True when `value` is a string of 1 to 128 letters, digits, `_` or `-`: only such an id
    is ever put in a URL."""
    return isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value) is not None


class SubmittedRequest(_Answer):
    """The answer to a submit: the request id and where to follow it."""

    request_id: str

    @field_validator("request_id")
    @classmethod
    def _an_id(cls, value: str) -> str:
        if not is_request_id(value):
            raise ValueError("not a RunComfy request id")
        return value

    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None


def _or_none(convert: Callable[[Any], Any], value: Any) -> Any:
    """`convert(value)`, or None when there is no value or it does not convert: a field
    RunComfy sends in an unexpected form is unknown, not an error that loses the answer."""
    try:
        return None if value is None else convert(value)
    except (TypeError, ValueError):
        return None


class RequestState(_Answer):
    """The answer to a status read (`GET /v1/requests/{id}/status`)."""

    request_id: str
    status: RequestStatus = RequestStatus.UNKNOWN
    raw_status: str | None = Field(default=None, description="The status word as the API sent it.")
    queue_position: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _keep_raw(cls, data: Any) -> Any:
        if isinstance(data, dict) and "raw_status" not in data:
            data = {**data, "raw_status": data.get("status")}
            data["status"] = RequestStatus.parse(data.get("status"))
        return data

    @field_validator("queue_position", mode="before")
    @classmethod
    def _lenient_position(cls, value: Any) -> Any:
        return _or_none(int, value)


class RequestResult(RequestState):
    """The answer to a result read (`GET /v1/requests/{id}/result`).

    While the job is not finished it only reports the current state, so polling `/result`
    alone is enough to follow a request to its end.
    """

    output: dict[str, Any] | None = None
    error: Any = None
    failure_reason: Any = None
    created_at: Any = None
    finished_at: Any = None
    cost: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _completed_means_what_it_carries(cls, data: Any) -> Any:
        # /result should say succeeded/failed; if it says "completed", what it carries decides.
        if (
            isinstance(data, dict)
            and RequestStatus.parse(data.get("status")) is RequestStatus.COMPLETED
        ):
            if data.get("error") or data.get("failure_reason"):
                data = {**data, "raw_status": data.get("status"), "status": RequestStatus.FAILED}
            elif isinstance(data.get("output"), dict) and data["output"]:
                data = {**data, "raw_status": data.get("status"), "status": RequestStatus.SUCCEEDED}
        return data

    @field_validator("cost", mode="before")
    @classmethod
    def _lenient_cost(cls, value: Any) -> Any:
        return _or_none(float, value)

    @field_validator("output", mode="before")
    @classmethod
    def _output_object(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    @property
    def output_urls(self) -> list[str]:
        """Every output URL, videos first, in the order the API listed them."""
        return output_urls(self.output)

    @property
    def error_message(self) -> str | None:
        """The failure's reason as one line, whatever shape the API used."""
        for candidate in (self.error, self.failure_reason):
            if candidate in (None, "", {}):
                continue
            if isinstance(candidate, dict):
                parts = [str(candidate.get(k)) for k in ("type", "message") if candidate.get(k)]
                return ": ".join(parts) or str(candidate)
            return str(candidate)
        return None


_OUTPUT_KEYS = ("video", "videos", "image", "images")


def output_urls(output: dict[str, Any] | None) -> list[str]:
    """Collect every URL in a result's `output`: `video`, `videos`, `image`, `images`, then any
    other key holding a URL or a list of them. Duplicates are dropped, order kept."""
    if not output:
        return []
    keys = [k for k in _OUTPUT_KEYS if k in output] + [k for k in output if k not in _OUTPUT_KEYS]
    urls: list[str] = []
    for key in keys:
        value = output[key]
        values = value if isinstance(value, list) else [value]
        for item in values:
            is_url = isinstance(item, str) and re.match(r"^[a-z][a-z0-9+.-]*://", item, re.I)
            if is_url and item not in urls:
                urls.append(item)
    return urls


class CancelOutcome(_Answer):
    """The answer to a cancel: `outcome` is `cancelled` (it was queued) or `not_cancellable`."""

    request_id: str
    status: str | None = None
    outcome: str | None = None

    @property
    def cancelled(self) -> bool:
        """True when RunComfy confirmed that the request will not run."""
        return (self.outcome or "").lower() == "cancelled" or (
            RequestStatus.parse(self.status) == RequestStatus.CANCELLED
            and (self.outcome or "").lower() != "not_cancellable"
        )


class ModelInfo(_Answer):
    """A catalog entry (`GET /v1/models/{model_id}`, or one item of `GET /v1/models`).

    `price_unit` is `second` (video: `base_price_usd` per second of output) or `output` /
    `image` (per output); either may be missing or unusable, which `usable_price` says.
    """

    model_id: str
    display_name: str | None = None
    base_price_usd: float | None = None
    price_unit: str | None = None
    pricing_note: str | None = None
    categories: list[str] = Field(default_factory=list)
    input_schema: dict[str, Any] | None = None

    @field_validator("base_price_usd", mode="before")
    @classmethod
    def _lenient_price(cls, value: Any) -> Any:
        try:
            price = None if value is None or isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            return None
        return price if price is not None and math.isfinite(price) and price >= 0 else None

    @field_validator("price_unit", mode="before")
    @classmethod
    def _unit_word(cls, value: Any) -> Any:
        return str(value).strip().lower() or None if value is not None else None

    @field_validator("categories", mode="before")
    @classmethod
    def _category_names(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return []
        return [str(c.get("name") or c) if isinstance(c, dict) else str(c) for c in value]

    @property
    def usable_price(self) -> bool:
        """True when the entry gives a price a cost can be estimated from: a positive, finite
        number (a 0 may stand for "unknown": not guessed free) and a unit this package knows
        (`second`, `output`, `image`)."""
        price = self.base_price_usd
        return (
            price is not None
            and math.isfinite(price)
            and price > 0
            and self.price_unit in PRICE_UNITS
        )


PRICE_UNITS = frozenset({"second", "output", "image"})
"""The catalog's price units a cost can be estimated from."""
