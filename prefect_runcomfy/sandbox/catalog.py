"""The sandbox's model catalog: InfiniteTalk with its input schema, built from models.py."""

from __future__ import annotations

from typing import Any

from prefect_runcomfy.api.models import (
    API_KEYS,
    FRAME_COUNTS,
    MODEL_ID,
    RESOLUTIONS,
    InfiniteTalkInput,
)

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


def model_entry(price_per_second_usd: float) -> dict[str, Any]:
    """The catalog entry of InfiniteTalk."""
    return {
        "model_id": MODEL_ID,
        "display_name": DISPLAY_NAME,
        "base_price_usd": price_per_second_usd,
        "price_unit": "second",
        "input_schema": input_schema(),
        "output_schema": OUTPUT_SCHEMA,
    }


def search(query: str | None, price_per_second_usd: float) -> list[dict[str, Any]]:
    """Catalog entries whose id or display name contains `query` (all when it is empty)."""
    entry = model_entry(price_per_second_usd)
    text = f"{entry['model_id']} {entry['display_name']}".lower()
    if query and query.strip().lower() not in text:
        return []
    return [entry]
