"""Small JPEG previews, made with PyAV: a poster frame and a portrait thumbnail.

They are written beside the videos, so the page (`index.html`) can link them by file name:

```
<id>.poster.jpg     a frame from about a third into <id>.mp4, at most 640 px wide
<id>.portrait.jpg   the input portrait, at most 256 px on its longer side
```

Both functions return False instead of raising when the input cannot be decoded: a missing
preview must never fail a run or stop the page from being written.

```python
poster_frame("out/alice.mp4", "out/alice.poster.jpg")       # True
thumbnail(Path("alice.png").read_bytes(), "out/alice.portrait.jpg")
```
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

try:  # PyAV comes with the `media` extra; without it there are no previews, and no error
    import av
except ImportError:  # pragma: no cover - the test environment installs every extra
    av = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prefect_runcomfy.engine.outputs.store import OutputStore

logger = logging.getLogger(__name__)

POSTER_SUFFIX = ".poster.jpg"
"""Suffix of a row's poster frame: `<id>.poster.jpg`."""

PORTRAIT_SUFFIX = ".portrait.jpg"
"""Suffix of a row's portrait thumbnail: `<id>.portrait.jpg`."""

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Larger inputs are not decoded for a thumbnail (RunComfy's own limit is far below this)."""

# Pixels, not bytes: a tiny PNG can declare a huge canvas; decoding it would take gigabytes.
_MAX_PIXELS = 100_000_000


def poster_name(row_id: str) -> str:
    """The poster frame's file name for a row: `<id>.poster.jpg`."""
    return f"{row_id}{POSTER_SUFFIX}"


def portrait_name(row_id: str) -> str:
    """The portrait thumbnail's file name for a row: `<id>.portrait.jpg`."""
    return f"{row_id}{PORTRAIT_SUFFIX}"


def poster_frame(
    video_path: str | os.PathLike[str],
    dest_path: str | os.PathLike[str],
    *,
    fraction: float = 1 / 3,
    max_width: int = 640,
) -> bool:
    """Write a JPEG of the frame about `fraction` into the video, scaled to at most `max_width`.

    The first frame at or after the target time is used (the last frame if the video is
    shorter than its header says). The JPEG is written to a temporary name and renamed, so
    `dest_path` is complete or absent.

    Returns:
        True when the poster was written; False when the video has no decodable picture.

    Example:
        ```python
        poster_frame("out/alice.mp4", "out/alice.poster.jpg", max_width=320)
        ```
    """
    if av is None:
        return False
    try:
        frame = _frame_at(os.fspath(video_path), min(max(float(fraction), 0.0), 1.0))
    except (av.FFmpegError, OSError, ValueError, RuntimeError, StopIteration) as exc:
        logger.debug("No poster frame from %s: %s", video_path, exc)
        return False
    return frame is not None and _write_poster(frame, dest_path, max_width, video_path)


def _write_poster(
    frame: av.VideoFrame, dest_path: str | os.PathLike[str], max_width: int, source: object
) -> bool:
    try:
        width, height = _fit(frame.width, frame.height, max_width=max_width)
        _write_jpeg(frame, width, height, os.fspath(dest_path))
        return True
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        logger.debug("No poster frame from %s: %s", source, exc)
        return False


def probe_with_poster(
    video_path: str | os.PathLike[str],
    dest_path: str | os.PathLike[str],
    *,
    fraction: float = 1 / 3,
    max_width: int = 640,
) -> tuple[dict[str, Any] | None, bool]:
    """`outputs.probe.probe_video` and `poster_frame` in one pass over the file (opened once).

    Returns:
        The probe's description (None when the file is not a readable video) and whether
        the poster was written.

    Example:
        ```python
        info, has_poster = probe_with_poster("out/alice.mp4", "out/alice.poster.jpg")
        ```
    """
    from prefect_runcomfy.engine.outputs.probe import describe_video, probe_video

    if av is None:
        return probe_video(video_path), False
    path = os.fspath(video_path)
    try:
        with av.open(path, mode="r") as container:
            info = describe_video(container)
            if info is None:
                return None, False
            frame = _frame_in(container, min(max(float(fraction), 0.0), 1.0))
    except Exception:
        return probe_video(path), poster_frame(
            path, dest_path, fraction=fraction, max_width=max_width
        )
    if frame is None:  # a broken index: the slower path starts over from the top
        return info, poster_frame(path, dest_path, fraction=fraction, max_width=max_width)
    return info, _write_poster(frame, dest_path, max_width, video_path)


def store_poster(
    store: OutputStore,
    video_path: str | os.PathLike[str],
    row_id: str,
    tmp_dir: str | None = None,
    *,
    probe: bool = False,
) -> tuple[dict[str, Any] | None, bool]:
    """Make a row's poster (`<id>.poster.jpg`) from its video on local disk and upload it into
    `store`: the one place posters are made (when a video is stored, and by the review page
    for rows stored before they had one). With `probe`, the video's description comes back
    too, from the same pass over the file.

    A local folder gets the poster written in place (a hidden temp file renamed, not synced
    to disk: it is a preview, made again by the review page if a power cut lost it); other
    stores get it through `tmp_dir`, a local folder (required for them).

    Returns:
        The description (None unless `probe`, or when the file is not a readable video) and
        whether the poster was stored.
    """
    name = poster_name(row_id)
    if store.is_local:
        poster = store.local_temp(name)
    elif tmp_dir is None:
        raise ValueError(f"a poster for {store.uri('')} needs a local tmp_dir")
    else:
        poster = os.path.join(tmp_dir, name)
    try:
        if probe:
            info, made = probe_with_poster(video_path, poster)
        else:
            info, made = None, poster_frame(video_path, poster)
        if made:
            if store.is_local:
                store.commit_local(poster, name, durable=False)
            else:
                store.put_file(poster, name)
    finally:
        if store.is_local and os.path.exists(poster):
            os.remove(poster)  # not made, or the rename failed
    return info, made


def thumbnail(
    image_bytes: bytes, dest_path: str | os.PathLike[str], *, max_size: int = 256
) -> bool:
    """Write a JPEG of the image (PNG, JPEG, WebP, ...) scaled to at most `max_size` px a side.

    Images are never enlarged. Transparent areas are laid on white (JPEG has no alpha).

    Returns:
        True when the thumbnail was written; False when the bytes are not a decodable image.

    Example:
        ```python
        thumbnail(Path("alice.png").read_bytes(), "out/alice.portrait.jpg")
        ```
    """
    if not isinstance(image_bytes, bytes | bytearray | memoryview) or not image_bytes:
        return False
    if len(image_bytes) > MAX_IMAGE_BYTES or av is None:
        return False
    try:
        with av.open(io.BytesIO(bytes(image_bytes)), mode="r") as container:
            if not container.streams.video:
                return False
            stream = container.streams.video[0]
            if (stream.codec_context.width or 0) * (stream.codec_context.height or 0) > _MAX_PIXELS:
                return False
            frame = next(container.decode(stream), None)
        if frame is None or frame.width <= 0 or frame.height <= 0:
            return False
        frame = _on_white(frame)
        width, height = _fit(frame.width, frame.height, max_width=max_size, max_height=max_size)
        _write_jpeg(frame, width, height, os.fspath(dest_path))
        return True
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        logger.debug("No thumbnail: %s", exc)
        return False


def jpeg_bytes(frame: av.VideoFrame, width: int, height: int) -> bytes:
    """Encode one frame as a baseline JPEG of `width` x `height` (PyAV's `mjpeg` encoder)."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width = width
    codec.height = height
    # Full-range 4:2:0 is what every browser and image viewer expects of a JPEG.
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 25)
    # One thread: FFmpeg's default slice threads cost more than they save on one small image.
    codec.thread_count = 1
    # The default rate control leaves visible blocks on faces; a low quantiser keeps it crisp
    # while a 640 px poster stays in the tens of kilobytes.
    codec.options = {"qmin": "2", "qmax": "5"}
    scaled = reformat(frame, width=width, height=height, format="yuvj420p")
    packets = [*codec.encode(scaled), *codec.encode(None)]
    data = b"".join(bytes(p) for p in packets)
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("the JPEG encoder produced no image")
    return data


# -- helpers -----------------------------------------------------------------------------------


def reformat(frame: av.VideoFrame, **options: Any) -> av.VideoFrame:
    """`frame.reformat(**options)` on this thread only.

    PyAV 17+ scales with a pool of one thread per CPU by default, started and stopped for
    every frame: two threads per poster here, which cost more than scaling one small picture
    (`benchmarks/scale.py`). Older PyAV has no `threads` option and scales on one thread.
    """
    return frame.reformat(**_ONE_THREAD, **options)


# Decided once: PyAV < 17 has no `threads` keyword (and scales on one thread anyway).
_ONE_THREAD: dict[str, Any] = (
    {"threads": 1} if av is not None and int(av.__version__.split(".")[0]) >= 17 else {}
)


def _frame_in(container: Any, fraction: float) -> av.VideoFrame | None:
    """The first frame at or after `fraction` of the duration, from an open container."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    # One decoding thread: a poster needs a few frames, and starting a thread pool per
    # video costs more than it saves.
    stream.codec_context.thread_count = 1
    duration = _duration_s(container, stream)
    target = duration * fraction if duration else 0.0
    if target > 0 and stream.time_base:
        # Seeking lands on the keyframe before the target; decoding forward finds it.
        with contextlib.suppress(av.FFmpegError):
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
    return _decode_until(container, stream, target)


def _frame_at(path: str, fraction: float) -> av.VideoFrame | None:
    with av.open(path, mode="r") as container:
        if not container.streams.video:
            return None
        chosen = _frame_in(container, fraction)
        stream = container.streams.video[0]
        duration = _duration_s(container, stream)
        target = duration * fraction if duration else 0.0
    if chosen is None and target > 0:
        # A broken index can make the seek land past the end; start over from the top.
        with av.open(path, mode="r") as container:
            stream = container.streams.video[0]
            chosen = _decode_until(container, stream, target)
    return chosen


def _decode_until(container: Any, stream: Any, target: float) -> av.VideoFrame | None:
    last = None
    try:
        for frame in container.decode(stream):
            last = frame
            if frame.time is None or frame.time + 1e-6 >= target:
                return frame
    except av.FFmpegError:
        pass  # a truncated tail: the frames decoded so far are still good
    return last


def _duration_s(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return None


def _fit(
    width: int, height: int, *, max_width: int, max_height: int | None = None
) -> tuple[int, int]:
    """Scale down (never up) into the box, keeping the aspect; even sizes for 4:2:0 chroma."""
    scale = min(1.0, max_width / width, (max_height / height) if max_height else 1.0)
    new_w = max(2, round(width * scale / 2) * 2)
    new_h = max(2, round(height * scale / 2) * 2)
    return new_w, new_h


def _on_white(frame: av.VideoFrame) -> av.VideoFrame:
    if "a" not in frame.format.name.replace("yuvj", "").replace("gray", ""):
        return frame
    rgba = reformat(frame, format="rgba").to_ndarray().astype(np.float32)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return av.VideoFrame.from_ndarray(rgb.round().astype(np.uint8), format="rgb24")


def _write_jpeg(frame: av.VideoFrame, width: int, height: int, dest: str) -> None:
    data = jpeg_bytes(frame, width, height)
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(dest)}")
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


__all__ = [
    "PORTRAIT_SUFFIX",
    "POSTER_SUFFIX",
    "jpeg_bytes",
    "portrait_name",
    "poster_frame",
    "poster_name",
    "probe_with_poster",
    "thumbnail",
]
