"""What a downloaded video is: a quick MP4 check and a PyAV probe of its streams (no decoding).

Entry points: `is_mp4`, `probe_video`, `describe_video` (for a container already open, as the
poster maker has it: `outputs.previews`). PyAV is optional: without it a probe says nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


def is_mp4(path: str | os.PathLike[str]) -> bool:
    """True when the file starts like an MP4/MOV (an `ftyp` box); a quick check, not a decode."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return len(head) >= 12 and head[4:8] == b"ftyp"


def probe_video(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Describe a local video file with PyAV.

    Returns `duration_s, width, height, fps, frames, video_codec, audio_codec, has_audio,
    audio_duration_s` (None for what the file does not say), or None when PyAV is not
    installed or the file cannot be read as a video.

    Example:
        ```python
        probe_video("alice.mp4")
        # {'duration_s': 5.0, 'width': 720, 'height': 720, 'fps': 25.0, 'frames': 125,
        #  'video_codec': 'h264', 'audio_codec': 'aac', 'has_audio': True, 'audio_duration_s': 5.0}
        ```
    """
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(os.fspath(path)) as container:
            return describe_video(container)
    except Exception:
        # Probing is best effort: a broken file is reported by the caller's own checks.
        return None


def describe_video(container: Any) -> dict[str, Any] | None:
    """What `probe_video` reports, read from a container PyAV already opened (no decoding)."""
    import av

    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    if video is None:
        return None
    duration_s = container.duration / av.time_base if container.duration else None
    if duration_s is None and video.duration and video.time_base:
        duration_s = float(video.duration * video.time_base)
    rate = video.average_rate or video.guessed_rate
    audio_duration_s = None
    if audio is not None and audio.duration and audio.time_base:
        audio_duration_s = round(float(audio.duration * audio.time_base), 3)
    info: dict[str, Any] = {
        "duration_s": round(duration_s, 3) if duration_s is not None else None,
        "width": video.codec_context.width or None,
        "height": video.codec_context.height or None,
        "fps": round(float(rate), 3) if rate else None,
        "frames": int(video.frames) or None,
        "video_codec": video.codec_context.name,
        "audio_codec": audio.codec_context.name if audio is not None else None,
        "has_audio": audio is not None,
        "audio_duration_s": audio_duration_s,
    }
    if info["frames"] is None:
        # Some containers do not store a frame count; counting packets needs no decode.
        info["frames"] = sum(1 for p in container.demux(video) if p.size) or None
        with contextlib.suppress(Exception):  # back to the start for whoever decodes next
            container.seek(0)
    return info


__all__ = ["describe_video", "is_mp4", "probe_video"]
