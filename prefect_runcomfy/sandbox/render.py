"""Render the sandbox's stand-in for InfiniteTalk's output: a real H.264/AAC MP4.

The portrait is letterboxed to the requested size and a dark mouth, drawn at the lower middle
of the picture (where a centred portrait has its mouth), opens with the loudness of the
speech, frame by frame, so a person can see that picture and sound are in sync. Video runs at
25 fps with `min(frames, ceil(audio_seconds * 25))` frames; the audio is cut to the same length.

Everything here is synchronous and CPU-bound: the sandbox calls it in a worker thread.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from prefect_runcomfy.engine.outputs.previews import reformat
from prefect_runcomfy.models.infinite_talk import FRAMES_PER_SECOND
from prefect_runcomfy.sandbox.drawing import fill_ellipse

AUDIO_RATE = 44_100
"""Sample rate of the rendered audio track (mono AAC)."""

MOUTH_CENTER = (0.5, 0.66)
"""Where the mouth is drawn, as fractions of the placed portrait's width and height."""

TINY_SIZE = 64
"""Width and height of the videos made by the `tiny` render mode."""

_AAC_FRAME = 1024  # samples per AAC frame: feeding whole frames keeps the encoder exact


class MediaError(Exception):
    """An input could not be fetched or decoded; the run fails with this message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        """A short error type for the failed run's `error.type`, e.g. `MediaDecodeError`."""


@dataclass(frozen=True)
class RenderedVideo:
    """A finished MP4 on disk and what it holds."""

    path: Path
    """Where the file is."""
    width: int
    """Frame width in pixels."""
    height: int
    """Frame height in pixels."""
    frames: int
    """Number of video frames (25 per second)."""
    seconds: float
    """Video duration: frames / 25."""
    size_bytes: int
    """File size."""
    render_s: float
    """Wall-clock seconds the render took."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/WebP/... bytes into an HxWx3 uint8 RGB array (first frame)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("MediaDecodeError", "the image file holds no picture")
            frame = next(container.decode(video=0))
            return reformat(frame, format="rgb24").to_ndarray()
    except (av.FFmpegError, StopIteration, IndexError, ValueError) as exc:
        raise MediaError("MediaDecodeError", f"the image could not be decoded: {exc}") from exc


def decode_audio(data: bytes, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode any audio FFmpeg reads (MP3, WAV, AAC, ...) into mono float32 samples at `rate`."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise MediaError("MediaDecodeError", "the audio file has no audio stream")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError("MediaDecodeError", f"the audio could not be decoded: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise MediaError("MediaDecodeError", "the audio holds no samples")
    return samples


def letterbox(rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Scale `rgb` to fit `width` x `height` keeping its aspect ratio, centred on black.

    Returns the canvas and the placed picture's box `(x, y, w, h)`.
    """
    src_h, src_w = rgb.shape[:2]
    scale = min(width / src_w, height / src_h)
    fit_w = max(2, min(width, round(src_w * scale)))
    fit_h = max(2, min(height, round(src_h * scale)))
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    # swscale does the resampling: better than nearest-neighbour numpy and just as fast
    scaled = reformat(frame, width=fit_w, height=fit_h, format="rgb24").to_ndarray()
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x, y = (width - fit_w) // 2, (height - fit_h) // 2
    canvas[y : y + fit_h, x : x + fit_w] = scaled[:fit_h, :fit_w]
    return canvas, (x, y, fit_w, fit_h)


def loudness_per_frame(samples: np.ndarray, rate: int, frames: int) -> np.ndarray:
    """Return one mouth opening in [0, 1] per video frame from the audio's RMS loudness.

    Normalised by a high percentile so quiet and loud recordings both move the mouth, with a
    noise floor so silence keeps it shut and a little smoothing so it does not flicker.
    """
    per_frame = rate / FRAMES_PER_SECOND
    rms = np.zeros(frames, dtype=np.float32)
    for i in range(frames):
        chunk = samples[int(i * per_frame) : int((i + 1) * per_frame)]
        if chunk.size:
            rms[i] = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
    peak = float(np.percentile(rms, 95)) if frames else 0.0
    if peak <= 1e-4:
        return np.zeros(frames, dtype=np.float32)
    level = np.clip((rms / peak - 0.15) / 0.85, 0.0, 1.0)
    smoothed = level.copy()
    smoothed[1:] = 0.6 * level[1:] + 0.4 * level[:-1]
    return smoothed.astype(np.float32)


def video_frame_count(requested_frames: int, audio_seconds: float) -> int:
    """InfiniteTalk's rule: the frame budget, or fewer when the audio is shorter."""
    return max(1, min(requested_frames, math.ceil(audio_seconds * FRAMES_PER_SECOND - 1e-9)))


def render_talking_video(
    image: bytes,
    audio: bytes,
    width: int,
    height: int,
    frames: int,
    out_path: Path,
    preset: str = "ultrafast",
) -> RenderedVideo:
    """Render the talking-portrait MP4 for one job; raises MediaError on undecodable inputs."""
    started = time.monotonic()
    rgb = decode_image(image)
    samples = decode_audio(audio)
    n_frames = video_frame_count(frames, samples.size / AUDIO_RATE)
    base, (bx, by, bw, bh) = letterbox(rgb, width, height)
    opening = loudness_per_frame(samples, AUDIO_RATE, n_frames)
    mouth_x = bx + MOUTH_CENTER[0] * bw
    mouth_y = by + MOUTH_CENTER[1] * bh
    mouth_rx = 0.075 * bw
    closed, wide = max(1.5, 0.006 * bh), 0.05 * bh
    # the mouth only touches this box, so each frame restores just the box from the base
    x0, x1 = max(int(mouth_x - mouth_rx - 3), 0), min(int(mouth_x + mouth_rx + 4), width)
    y0, y1 = max(int(mouth_y - wide - 3), 0), min(int(mouth_y + wide + 4), height)
    canvas = base.copy()

    def pictures() -> Iterator[np.ndarray]:
        for i in range(n_frames):
            canvas[y0:y1, x0:x1] = base[y0:y1, x0:x1]
            ry = closed + (wide - closed) * float(opening[i])
            fill_ellipse(canvas, mouth_x, mouth_y, mouth_rx, ry, (70, 20, 28))
            yield canvas

    audio_out = _fit_audio(samples, n_frames)
    _encode_mp4(out_path, width, height, pictures(), audio_out, preset)
    return RenderedVideo(
        path=out_path,
        width=width,
        height=height,
        frames=n_frames,
        seconds=n_frames / FRAMES_PER_SECOND,
        size_bytes=out_path.stat().st_size,
        render_s=time.monotonic() - started,
    )


def render_tiny(out_path: Path, frames: int = FRAMES_PER_SECOND) -> RenderedVideo:
    """Render a small valid MP4 (64x64, H.264 + AAC) fast, without looking at any input.

    Used by the `tiny` render mode for scale benchmarks where thousands of jobs run.
    """
    started = time.monotonic()
    size = TINY_SIZE
    t = np.arange(int(frames / FRAMES_PER_SECOND * AUDIO_RATE), dtype=np.float32) / AUDIO_RATE
    tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)

    def pictures() -> Iterator[np.ndarray]:
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        for i in range(frames):
            canvas[:] = (40, 90 + (i * 5) % 120, 160)
            yield canvas

    _encode_mp4(out_path, size, size, pictures(), tone, "ultrafast")
    return RenderedVideo(
        path=out_path,
        width=size,
        height=size,
        frames=frames,
        seconds=frames / FRAMES_PER_SECOND,
        size_bytes=out_path.stat().st_size,
        render_s=time.monotonic() - started,
    )


def _fit_audio(samples: np.ndarray, n_frames: int) -> np.ndarray:
    # cut to the video's length; pad the last partial frame with silence so both tracks match
    wanted = round(n_frames / FRAMES_PER_SECOND * AUDIO_RATE)
    if samples.size >= wanted:
        return samples[:wanted]
    return np.concatenate([samples, np.zeros(wanted - samples.size, dtype=np.float32)])


def _encode_mp4(
    out_path: Path,
    width: int,
    height: int,
    pictures: Iterator[np.ndarray],
    audio: np.ndarray,
    preset: str,
) -> None:
    tmp = out_path.with_name(out_path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FRAMES_PER_SECOND)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.options = {"preset": preset, "crf": "28"}
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        sound.bit_rate = 64_000
        audio_pos = 0
        for index, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, FRAMES_PER_SECOND)
            container.mux(video.encode(frame))
            # interleave: audio up to the end of this video frame
            until = min(audio.size, round((index + 1) / FRAMES_PER_SECOND * AUDIO_RATE))
            audio_pos = _mux_audio(container, sound, audio, audio_pos, until)
        audio_pos = _mux_audio(container, sound, audio, audio_pos, audio.size)
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    tmp.replace(out_path)  # readers never see a half-written file


def _mux_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    audio: np.ndarray,
    pos: int,
    until: int,
) -> int:
    # whole AAC frames while there is enough audio; the tail goes out once everything is in
    while until - pos >= _AAC_FRAME or (until == audio.size and pos < until):
        n = min(_AAC_FRAME, until - pos)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[None, pos : pos + n]), format="flt", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = pos
        frame.time_base = Fraction(1, AUDIO_RATE)
        container.mux(stream.encode(frame))
        pos += n
    return pos
