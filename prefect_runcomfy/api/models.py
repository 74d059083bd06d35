"""Pydantic models for InfiniteTalk inputs and RunComfy API answers, and the status vocabulary.

Nothing here does I/O: these are the shapes the client, the tasks and the sandbox agree on.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

MODEL_ID = "community/infinite-talk/image-to-video"
"""The RunComfy model id of InfiniteTalk image-to-video."""

FRAMES_PER_SECOND = 25
"""InfiniteTalk renders 25 frames per second: 125 frames is about 5 s of video."""

RESOLUTIONS: tuple[str, ...] = (
    "480x480 (1:1)",
    "720x720 (1:1)",
    "480x720 (2:3)",
    "720x480 (3:2)",
    "540x960 (9:16)",
    "576x1024 (9:16)",
    "720x1280 (9:16)",
    "960x540 (16:9)",
    "1024x576 (16:9)",
    "1280x720 (16:9)",
)
"""Every resolution the model accepts, spelled as the API wants it."""

FRAME_COUNTS: tuple[int, ...] = (125, 250)
"""The frame counts the model accepts."""

_RESOLUTION_BY_SIZE = {r.split(" ", 1)[0]: r for r in RESOLUTIONS}

# friendly name -> API key, in the schema's order
API_KEYS: dict[str, str] = {
    "prompt": "241_positive_prompt",
    "image": "284_image",
    "audio": "125_audio",
    "resolution": "245_valuex246_value",
    "frames": "270_value",
    "seed": "128_seed",
    "steps": "128_steps",
    "shift": "128_shift",
    "cfg": "128_cfg",
}
"""Friendly input names and the API keys (ComfyUI node ids) they stand for."""

FRIENDLY_NAMES: dict[str, str] = {v: k for k, v in API_KEYS.items()}
"""API keys and the friendly names they are known by."""

MEDIA_COLUMNS = ("image", "audio")
"""The inputs that are media files (URLs RunComfy fetches), by friendly name."""

SETTINGS = ("resolution", "frames", "seed", "steps", "shift", "cfg")
"""The generation settings, by friendly name, in the schema's order: every input but the
prompt and the media."""


def resolution_size(resolution: str) -> tuple[int, int]:
    """Return `(width, height)` of a resolution such as `"720x1280 (9:16)"` or `"720x1280"`."""
    width, height = resolution.split(" ", 1)[0].lower().split("x")
    return int(width), int(height)


class InfiniteTalkInput(BaseModel):
    """One InfiniteTalk job: a portrait, a speech recording and the generation settings.

    Accepts the friendly names (`prompt`, `image`, `audio`, `resolution`, `frames`, `seed`,
    `steps`, `shift`, `cfg`) or the raw API keys (`241_positive_prompt`, `284_image`, ...).
    `resolution` may be given as `"720x720"` or as the API's `"720x720 (1:1)"`.

    Example:
        ```python
        from prefect_runcomfy import InfiniteTalkInput

        job = InfiniteTalkInput(
            prompt="a woman is talking and waving hands",
            image="https://example.com/portrait.png",
            audio="https://example.com/speech.mp3",
            resolution="480x720",
            frames=250,
        )
        job.to_api_payload()
        # {'241_positive_prompt': 'a woman ...', '284_image': ..., '245_valuex246_value': '480x720 (2:3)', ...}
        ```
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        str_strip_whitespace=True,
        frozen=True,
        # strict-ish numbers: "7" from a CSV is fine, 7.5 steps is not
        coerce_numbers_to_str=False,
    )

    prompt: str = Field(
        min_length=1,
        max_length=10_000,
        validation_alias=AliasChoices("prompt", "241_positive_prompt"),
        description=(
            "What the person does while talking. Required: the schema's example "
            "'a woman is talking and waving hands' is not filled in for you."
        ),
    )
    image: str = Field(
        min_length=1,
        max_length=100_000_000,
        validation_alias=AliasChoices("image", "284_image"),
        description="The portrait: a public https URL, a data: URI, or (in a flow) a path to resolve.",
    )
    audio: str = Field(
        min_length=1,
        max_length=100_000_000,
        validation_alias=AliasChoices("audio", "125_audio"),
        description="The speech: a public https URL, a data: URI, or (in a flow) a path to resolve.",
    )
    resolution: str = Field(
        default="720x720 (1:1)",
        validation_alias=AliasChoices("resolution", "245_valuex246_value"),
        description="Output size, one of RESOLUTIONS; '720x720' is accepted for '720x720 (1:1)'.",
    )
    frames: int = Field(
        default=125,
        validation_alias=AliasChoices("frames", "270_value"),
        description="Number of frames at 25 fps: 125 (about 5 s) or 250 (about 10 s).",
    )
    seed: int = Field(
        default=96860978,
        validation_alias=AliasChoices("seed", "128_seed"),
        description="Random seed.",
    )
    steps: int = Field(
        default=7,
        ge=6,
        le=20,
        validation_alias=AliasChoices("steps", "128_steps"),
        description="Denoising steps, 6 to 20; more refine detail but take longer.",
    )
    shift: float = Field(
        default=11,
        ge=1,
        le=15,
        validation_alias=AliasChoices("shift", "128_shift"),
        description="Sampling-schedule shift, 1 to 15; higher trades stability for stronger motion.",
    )
    cfg: float = Field(
        default=1,
        ge=0.6,
        le=2,
        validation_alias=AliasChoices("cfg", "128_cfg"),
        description="Guidance scale, 0.6 to 2: how strongly the output follows the prompt.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_name_given_twice(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for friendly, key in API_KEYS.items():
                if friendly in data and key in data and data[friendly] != data[key]:
                    raise ValueError(
                        f"both {friendly!r} and {key!r} are given, with different values; "
                        "keep one of them"
                    )
        return data

    @field_validator("resolution", mode="before")
    @classmethod
    def _normalise_resolution(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = re.sub(r"\s+", " ", value.strip())
            if text in RESOLUTIONS:
                return text
            size = text.split(" ", 1)[0].lower().replace("\u00d7", "x")  # the multiplication sign
            if size in _RESOLUTION_BY_SIZE and (" " not in text or text == size):
                return _RESOLUTION_BY_SIZE[size]
            raise ValueError(
                f"{value!r} is not a resolution the model offers; use one of "
                + ", ".join(s for s in _RESOLUTION_BY_SIZE)
            )
        return value

    @field_validator("frames", mode="before")
    @classmethod
    def _whole_frames(cls, value: Any) -> Any:
        return _whole_number(value)

    @field_validator("seed", "steps", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        return _whole_number(value)

    @field_validator("shift", "cfg", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("frames")
    @classmethod
    def _frames_allowed(cls, value: int) -> int:
        if value not in FRAME_COUNTS:
            raise ValueError(
                f"{value} frames is not offered; use 125 (about 5 s) or 250 (about 10 s)"
            )
        return value

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        if not -(2**63) <= value < 2**64:
            raise ValueError("must fit in 64 bits")
        return value

    @property
    def width(self) -> int:
        """Width of the video in pixels."""
        return resolution_size(self.resolution)[0]

    @property
    def height(self) -> int:
        """Height of the video in pixels."""
        return resolution_size(self.resolution)[1]

    @property
    def max_seconds(self) -> float:
        """The longest video this job can produce: frames / 25 fps."""
        return self.frames / FRAMES_PER_SECOND

    def to_api_payload(self) -> dict[str, Any]:
        """Return the JSON body RunComfy expects, keyed by the API's node ids."""
        return {API_KEYS[name]: getattr(self, name) for name in API_KEYS}

    @classmethod
    def from_api_payload(cls, payload: dict[str, Any]) -> InfiniteTalkInput:
        """Build an input from an API body (the raw keys); the inverse of `to_api_payload`."""
        return cls.model_validate(payload)


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.0+)?\s*", value):
        return int(float(value)) if "." in value else int(value)
    return value


def describe_validation_error(error: ValidationError) -> list[tuple[str, str]]:
    """Turn a pydantic error into `(column, reason)` pairs in the user's words.

    The column is the friendly name (`steps`, not `128_steps`); the reason says what was
    given and what is allowed.
    """
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = item.get("loc") or ()
        column = str(loc[0]) if loc else "(row)"
        column = FRIENDLY_NAMES.get(column, column)
        message = str(item.get("msg", "is invalid"))
        message = message.removeprefix("Value error, ")
        kind = item.get("type", "")
        if kind == "missing":
            message = "is required but missing"
        elif kind == "extra_forbidden":
            message = "is not an input of this model"
        given = item.get("input")
        if kind not in {"missing", "extra_forbidden"} and not isinstance(given, dict):
            shown = repr(given)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message = f"{message} (got {shown})"
        problems.append((column, message))
    return problems


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
        try:
            return None if value is None else int(value)
        except (TypeError, ValueError):
            return None


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
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

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
