"""Sample inputs shipped with the sandbox: a stylised portrait and short speech clips.

The sandbox serves them publicly at `/samples/<name>`, so demo rows can point at
`http://127.0.0.1:PORT/samples/portrait.png`. `make_samples.py` regenerated them (it needs
espeak-ng); the package itself only reads the committed files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent
"""The directory holding the sample files."""

MEDIA_TYPES = {".png": "image/png", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".wav": "audio/wav"}
"""Media type of each sample file suffix."""

PORTRAIT = "portrait.png"
"""The sample portrait's file name."""

_ROWS = (
    ("hello", "a friendly person says hello to the camera"),
    ("pipeline", "a person explains something calmly, nodding"),
    ("short", "a person counts and smiles"),
)


def sample_files() -> dict[str, Path]:
    """Every shipped sample by file name."""
    return {
        p.name: p for p in sorted(SAMPLES_DIR.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES
    }


def speech_file(stem: str) -> str:
    """The file name of a speech clip, whatever format it was encoded in."""
    for name in sample_files():
        if Path(name).stem == stem and Path(name).suffix != ".png":
            return name
    raise FileNotFoundError(f"no speech sample named {stem!r}")


def sample_inputs(
    base_url: str, resolution: str = "480x480", frames: int = 125
) -> list[dict[str, Any]]:
    """Demo rows (friendly column names) that use the samples served by a sandbox at `base_url`.

    Each row has `id`, `prompt`, `image`, `audio`, `resolution` and `frames`.
    """
    root = base_url.rstrip("/")
    return [
        {
            "id": f"sample-{stem}",
            "prompt": prompt,
            "image": f"{root}/samples/{PORTRAIT}",
            "audio": f"{root}/samples/{speech_file(stem)}",
            "resolution": resolution,
            "frames": frames,
        }
        for stem, prompt in _ROWS
    ]
