"""The sandbox's model catalog: InfiniteTalk with its input schema, built from models.py."""

from __future__ import annotations

from typing import Any

from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.models.infinite_talk import API_KEYS, FRAME_COUNTS, MODEL_ID, RESOLUTIONS

DISPLAY_NAME = "InfiniteTalk image-to-video"
"""The catalog's display name of the model."""

_TITLES = {
    "prompt": ("Prompt", "What the person does while talking."),
    "image": ("Image", "Public URL (or data: URI) of the portrait."),
    "audio": ("Audio", "Public URL (or data: URI) of the speech."),
    "resolution": ("Resolution (W:H)", ""),
    "frames": ("Number of Frames", "25 frames per second: 125 is about 5 s, 250 about 10 s."),
    "seed": ("Seed", ""),
    "steps": (
        "Steps",
        "Number of denoising iterations; more steps refine detail and stability but take longer.",
    ),
    "shift": (
        "Shift",
        "Offsets the diffusion sampling schedule, trading stability for stronger motion/style "
        "as the value increases.",
    ),
    "cfg": (
        "Guidance Scale",
        "Controls how strongly the output adheres to the prompt versus allowing creative "
        "variation.",
    ),
}
_TYPES = {
    "frames": "integer",
    "seed": "integer",
    "steps": "integer",
    "shift": "number",
    "cfg": "number",
}
_BOUNDS = {"steps": (6, 20), "shift": (1, 15), "cfg": (0.6, 2)}
_REQUIRED = ("prompt", "image", "audio")


def input_schema() -> dict[str, Any]:
    """The JSON schema of InfiniteTalk's input, keyed by the API's node ids."""
    fields = InfiniteTalkInput.model_fields
    properties: dict[str, Any] = {}
    for name, key in API_KEYS.items():
        title, description = _TITLES[name]
        prop: dict[str, Any] = {
            "title": title,
            "description": description,
            "type": _TYPES.get(name, "string"),
        }
        if name not in _REQUIRED:
            prop["default"] = fields[name].default
        if name == "resolution":
            prop["enum"] = list(RESOLUTIONS)
        if name == "frames":
            prop["enum"] = list(FRAME_COUNTS)
        if name in _BOUNDS:
            prop["minimum"], prop["maximum"] = _BOUNDS[name]
        properties[key] = prop
    return {
        "type": "object",
        "title": "Input schema",
        "required": [API_KEYS[n] for n in _REQUIRED],
        "properties": properties,
    }


OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "uri"},
        "video": {"type": "string", "format": "uri"},
        "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
        "videos": {"type": "array", "items": {"type": "string", "format": "uri"}},
    },
}
"""The output schema every RunComfy model shares."""


PRICING_NOTE = "Billed per second of output video (25 frames per second)."
"""InfiniteTalk's pricing note in the sandbox's catalog."""

CATEGORIES: tuple[str, ...] = ("image-to-video", "lip-sync", "talking-avatar")
"""InfiniteTalk's categories in the sandbox's catalog."""

# Listed, never run: they give search, category and paging something to tell apart, and show
# the other price units. A submit to one of them is refused as an unknown model.
_LISTED_ONLY: tuple[dict[str, Any], ...] = (
    {
        "model_id": "sandbox/portrait-studio/text-to-image",
        "display_name": "Portrait studio text-to-image (listed by the sandbox, not runnable)",
        "base_price_usd": 0.02,
        "price_unit": "image",
        "pricing_note": "Billed per image.",
        "categories": ["text-to-image"],
    },
    {
        "model_id": "sandbox/voice-over/text-to-audio",
        "display_name": "Voice-over text-to-audio (listed by the sandbox, not runnable)",
        "base_price_usd": 0.005,
        "price_unit": "output",
        "pricing_note": "Billed per output.",
        "categories": ["text-to-audio"],
    },
)


def model_entry(
    price_per_second_usd: float, *, price_unit: str = "second", priced: bool = True
) -> dict[str, Any]:
    """The catalog entry of InfiniteTalk.

    `price_unit` other than "second" bills `price_per_second_usd` per output; `priced=False`
    leaves the price out (an entry that gives no usable price).
    """
    entry: dict[str, Any] = {
        "model_id": MODEL_ID,
        "display_name": DISPLAY_NAME,
        "base_price_usd": price_per_second_usd if priced else None,
        "price_unit": price_unit if priced else None,
        "pricing_note": PRICING_NOTE if priced else "Pricing is not published for this model.",
        "categories": list(CATEGORIES),
        "input_schema": input_schema(),
        "output_schema": OUTPUT_SCHEMA,
    }
    if priced and price_unit != "second":
        entry["pricing_note"] = f"Billed per {price_unit}."
    return entry


def entries(price_per_second_usd: float, **pricing: Any) -> list[dict[str, Any]]:
    """Every catalog entry: InfiniteTalk (the one model the sandbox runs), then the listed-only ones."""
    return [model_entry(price_per_second_usd, **pricing), *(dict(e) for e in _LISTED_ONLY)]


def search(
    entries_: list[dict[str, Any]],
    *,
    query: str | None = None,
    category: str | None = None,
    limit: int = 50,
    offset: int = 0,
    include_schema: bool = False,
) -> dict[str, Any]:
    """`GET /v1/models` as RunComfy's clients read it: `{"models": [...], "total": N}`.

    `query` matches the id, display name or a category (case-insensitive, part of a word is
    enough); `category` keeps the entries that have it; `total` counts every match, `limit`
    and `offset` page through them. Schemas are left out unless `include_schema`.
    """
    found = []
    for entry in entries_:
        words = " ".join([entry["model_id"], entry["display_name"], *entry["categories"]]).lower()
        if query and query.strip().lower() not in words:
            continue
        if category and category.strip().lower() not in [c.lower() for c in entry["categories"]]:
            continue
        if not include_schema:
            entry = {k: v for k, v in entry.items() if k not in ("input_schema", "output_schema")}
        found.append(entry)
    page = found[max(0, offset) : max(0, offset) + max(0, limit)]
    return {"models": page, "total": len(found)}


def categories(entries_: list[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v1/models/categories`: every category once, sorted, with how many there are."""
    names = sorted({c for entry in entries_ for c in entry["categories"]})
    return {"categories": names, "total": len(names)}
