"""What the engine needs to know about one RunComfy model, in one place: `ModelSpec`.

RunComfy serves many models through one queue API. The engine, the ledger, storage and the
reports are the same for all of them; what differs is here: the model's id and tag, the
input model that checks a row, the API keys its inputs are sent as, which inputs are media,
what makes two jobs take about as long, how many billable seconds a job makes, and the
file suffix of its outputs. A model module (`models/infinite_talk.py`) defines one spec and
the flows hand it to the engine.

```python
from prefect_runcomfy.models import INFINITE_TALK

job = INFINITE_TALK.validate({"prompt": "a man talks", "image": url, "audio": url})
INFINITE_TALK.job_kind(job.to_api_payload())   # ('community/...', '720x720 (1:1)', '125', '7')
```
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ValidationError, model_validator

MediaKind = Literal["image", "audio"]
"""What a media input is: RunComfy fetches it from a URL, or takes it inline."""


class ModelInput(BaseModel):
    """One job of a model: its inputs by friendly name, sent under the model's API keys.

    A model's input class sets `API_KEYS` (friendly name → API key, in the schema's order);
    `to_api_payload` sends every field under its key. An input may be given by either name;
    given by both (a table with `prompt` and `241_positive_prompt` columns), the two must hold
    the same value, or the job is refused: which one was meant cannot be known.
    """

    API_KEYS: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _one_value_per_input(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        twins = [(f, k) for f, k in cls.API_KEYS.items() if f in data and k in data]
        if not twins:
            return data
        different = [(f, k) for f, k in twins if not _same_value(data[f], data[k])]
        if different:
            raise ValueError(
                "; ".join(
                    f"both {f!r} and {k!r} are given, with different values "
                    f"({_shown(data[f])} and {_shown(data[k])})"
                    for f, k in different
                )
                + ": keep one of them"
            )
        # Equal twins are one input: the API key's copy goes, else it would be an unknown input.
        return {name: value for name, value in data.items() if name not in dict(twins).values()}

    def to_api_payload(self) -> dict[str, Any]:
        """Return the JSON body RunComfy expects, keyed by the API's node ids."""
        return {key: getattr(self, name) for name, key in self.API_KEYS.items()}


@dataclass(frozen=True)
class ModelSpec:
    """Everything specific to one model that a run, its plan and its reports use."""

    model_id: str
    """The RunComfy model id the jobs are submitted to."""
    tag: str
    """The model's short name, a tag on the run and its row task runs."""
    input_model: type[ModelInput]
    """Checks one row and builds its API body."""
    media: Mapping[str, MediaKind]
    """The inputs that are media files (URLs RunComfy fetches), by friendly name."""
    settings: tuple[str, ...]
    """The generation settings, by friendly name: every input but the prompt and the media."""
    kind_fields: tuple[str, ...]
    """The inputs, by friendly name, that make two jobs take about as long."""
    output_seconds: Callable[[Any, float | None], float]
    """Seconds of output a job (an `input_model`) makes at most, given the length in seconds
    of its `length_from` medium when known: what a price per second is paid on."""
    prompt: str | None = "prompt"
    """The input that holds the text prompt, shown on the review page."""
    length_from: str | None = None
    """The media input whose length caps `output_seconds` (read from local files)."""
    output_suffix: str = ".mp4"
    """The suffix of an output file whose URL names none."""

    @property
    def api_keys(self) -> Mapping[str, str]:
        """Friendly input names and the API keys they stand for, in the schema's order."""
        return self.input_model.API_KEYS

    @property
    def friendly_names(self) -> dict[str, str]:
        """API keys and the friendly names they are known by."""
        return {key: name for name, key in self.api_keys.items()}

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input by its friendly name, in the schema's order."""
        return tuple(self.api_keys)

    @property
    def input_columns(self) -> frozenset[str]:
        """The table columns that are inputs: friendly names and API keys."""
        return frozenset(self.api_keys) | frozenset(self.api_keys.values())

    def first_media(self, kind: MediaKind) -> str | None:
        """The first media input of `kind`, by friendly name (None when there is none)."""
        return next((name for name, k in self.media.items() if k == kind), None)

    def validate(self, given: Mapping[str, Any]) -> ModelInput:
        """One row's inputs (friendly names or API keys) as a job; raises `ValidationError`."""
        return self.input_model.model_validate(dict(given))

    def friendly(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` with API keys replaced by their friendly names."""
        names = self.friendly_names
        return {names.get(k, k): v for k, v in given.items()}

    def describe_error(self, error: ValidationError) -> list[tuple[str, str]]:
        """A validation error as `(column, reason)` pairs, columns by friendly name."""
        return describe_validation_error(error, self.friendly_names)

    def job_kind(self, payload: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The kind of a job from its API payload: the model and its `kind_fields`.

        Keys missing from the payload count as the model's defaults would: the same for
        every row that leaves them out.
        """
        payload = payload or {}
        keys = self.api_keys
        return (
            self.model_id,
            *(
                str(payload.get(keys.get(name, name), payload.get(name, "")))
                for name in self.kind_fields
            ),
        )


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return bool(a == b)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Me"})
"""Unicode categories of characters that show nothing by themselves: spaces, line and
paragraph separators, control and format characters (zero-width space U+200B, joiners
U+200C/U+200D, word joiner U+2060, byte-order mark U+FEFF), lone surrogates, and combining
marks with nothing to combine with. Unassigned code points are not among them: an emoji newer
than Python's Unicode tables is visible."""


def visible_text(value: str) -> str:
    """`value` unchanged when it has a character a person can see, else `ValueError`.

    A prompt of zero-width characters passes a length check, and a job would be paid for a
    prompt nobody wrote.
    """
    if not any(unicodedata.category(c) not in INVISIBLE_CATEGORIES for c in value):
        codes = " ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(value))
        shown = codes if len(codes) <= 60 else codes[:57] + "..."
        raise ValueError(f"has no visible character (only {shown}); write the text")
    return value


def describe_validation_error(
    error: ValidationError, friendly_names: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Turn a pydantic error into `(column, reason)` pairs in the user's words.

    The column is the friendly name (`steps`, not `128_steps`) where `friendly_names` knows
    it; the reason says what was given and what is allowed.
    """
    names = friendly_names or {}
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = item.get("loc") or ()
        column = str(loc[0]) if loc else "(row)"
        column = names.get(column, column)
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


__all__ = [
    "INVISIBLE_CATEGORIES",
    "MediaKind",
    "ModelInput",
    "ModelSpec",
    "describe_validation_error",
    "visible_text",
]
