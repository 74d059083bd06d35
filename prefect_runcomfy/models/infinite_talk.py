"""InfiniteTalk image-to-video: its inputs, their API keys and its `ModelSpec`.

Every fact about this model lives here: the input model (`InfiniteTalkInput`), the node keys
its inputs are sent as (`284_image`, `125_audio`, ...), which inputs are media, what makes two
of its jobs take about as long, and how many seconds of video a job makes (frames at 25 fps,
cut short by the audio). The engine only sees `INFINITE_TALK`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from prefect_runcomfy.models.base import ModelInput, ModelSpec, visible_text

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


class InfiniteTalkInput(ModelInput):
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

    API_KEYS: ClassVar[Mapping[str, str]] = API_KEYS

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

    @field_validator("prompt")
    @classmethod
    def _visible_prompt(cls, value: str) -> str:
        return visible_text(value)

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


def video_seconds(job: InfiniteTalkInput, audio_seconds: float | None = None) -> float:
    """Seconds of video a job makes at most: frames / 25, capped by its audio's length."""
    seconds = job.frames / FRAMES_PER_SECOND
    if audio_seconds is not None and 0 < audio_seconds < seconds:
        return audio_seconds
    return seconds


INFINITE_TALK = ModelSpec(
    model_id=MODEL_ID,
    tag="infinite-talk",
    input_model=InfiniteTalkInput,
    media={"image": "image", "audio": "audio"},
    settings=SETTINGS,
    kind_fields=("resolution", "frames", "steps"),
    output_seconds=video_seconds,
    prompt="prompt",
    length_from="audio",
    output_suffix=".mp4",
)
"""InfiniteTalk image-to-video, as the engine is given it."""


__all__ = [
    "API_KEYS",
    "FRAMES_PER_SECOND",
    "FRAME_COUNTS",
    "FRIENDLY_NAMES",
    "INFINITE_TALK",
    "MEDIA_COLUMNS",
    "MODEL_ID",
    "RESOLUTIONS",
    "SETTINGS",
    "InfiniteTalkInput",
    "resolution_size",
    "video_seconds",
]
