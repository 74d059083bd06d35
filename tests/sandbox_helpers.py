"""Helpers for tests that talk to the RunComfy sandbox over real HTTP."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import av
import httpx
import numpy as np

from prefect_runcomfy.models.infinite_talk import MODEL_ID

SUBMIT_PATH = f"/v1/models/{MODEL_ID}"
"""Where InfiniteTalk jobs are submitted."""

FINISHED = {"succeeded", "failed", "cancelled", "canceled"}
"""Result words after which a request does not change."""


def payload(base_url: str, **overrides: Any) -> dict[str, Any]:
    """A valid InfiniteTalk API body using the sandbox's sample portrait and speech."""
    body: dict[str, Any] = {
        "241_positive_prompt": "a person talks",
        "284_image": f"{base_url}/samples/portrait.png",
        "125_audio": f"{base_url}/samples/hello.mp3",
        "245_valuex246_value": "480x480 (1:1)",
        "270_value": 125,
    }
    body.update(overrides)
    return body


def submit(client: httpx.Client, base_url: str, **overrides: Any) -> str:
    """Submit a job and return its request id (asserting the submit was accepted)."""
    answer = client.post(SUBMIT_PATH, json=payload(base_url, **overrides))
    assert answer.status_code in (200, 202), answer.text
    return str(answer.json()["request_id"])


def wait_result(client: httpx.Client, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll /result until the request finishes; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/v1/requests/{request_id}/result")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] in FINISHED:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} did not finish: {body}")
        time.sleep(0.02)


def wait_state(
    client: httpx.Client, request_id: str, words: set[str], timeout: float = 10.0
) -> str:
    """Poll /status until it says one of `words`; return the word."""
    deadline = time.monotonic() + timeout
    while True:
        word = str(client.get(f"/v1/requests/{request_id}/status").json()["status"])
        if word in words:
            return word
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} stuck at {word!r}, wanted {words}")
        time.sleep(0.01)


@dataclass
class Probe:
    """What PyAV sees in an MP4."""

    fps: float
    width: int
    height: int
    pix_fmt: str
    video_codec: str
    frames: int
    video_seconds: float
    audio_codec: str | None
    audio_seconds: float | None


def probe_mp4(data: bytes) -> Probe:
    """Decode every video frame of an MP4 and report its streams."""
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(video=0))
        return Probe(
            fps=float(video.average_rate or 0),
            width=video.codec_context.width,
            height=video.codec_context.height,
            pix_fmt=str(video.codec_context.pix_fmt),
            video_codec=video.codec_context.name,
            frames=frames,
            video_seconds=float(video.duration * video.time_base) if video.duration else 0.0,
            audio_codec=audio.codec_context.name if audio else None,
            audio_seconds=float(audio.duration * audio.time_base)
            if audio is not None and audio.duration
            else None,
        )


def wav_bytes(seconds: float, loud_from: float = 0.0, rate: int = 16_000) -> bytes:
    """A mono WAV: silence until `loud_from` seconds, then a loud 300 Hz tone."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    tone = np.where(t >= loud_from, 0.6 * np.sin(2 * np.pi * 300 * t), 0.0).astype(np.float32)
    pcm = (tone * 32767).astype(np.int16)
    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    """A base64 data: URI."""
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def frame_at(data: bytes, index: int) -> np.ndarray:
    """The RGB array of one decoded frame of an MP4."""
    with av.open(io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise IndexError(index)


async def manifest_of(run: Awaitable[Any]) -> Any:
    """The manifest of a flow run, also when its rows made it end Failed (tests that check
    each row's status, not the run's verdict, which tests/test_run_outcome.py checks)."""
    from prefect_runcomfy.exceptions import RowsNeedAttentionError

    try:
        return await run
    except RowsNeedAttentionError as exc:
        return exc.manifest


def api_requests(sb: Any) -> int:
    """Requests the sandbox's API served, not counting its jobs' own fetches of their input
    samples (a created job renders in the background, whenever the sandbox gets to it)."""
    stats = sb.stats()
    return int(stats["requests_total"]) - int(stats["requests_by_endpoint"].get("samples", 0))
