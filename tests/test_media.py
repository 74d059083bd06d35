"""Media resolution (passthrough, sign, stage, inline) against real files and moto's S3; probing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil
import struct
import wave
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from prefect_runcomfy.engine.inputs.media import (
    INLINE_CAPS,
    MediaResolver,
    ResolvedMedia,
    sniff_format,
)
from prefect_runcomfy.engine.outputs.probe import is_mp4, probe_video
from prefect_runcomfy.exceptions import MediaError


async def resolve_media(value: str, *, kind: Any, **options: Any) -> ResolvedMedia:
    """One value through a resolver made for it with `options` (the tests' shorthand)."""
    return await MediaResolver(**options).resolve(value, kind)


# --- real media, made here ---------------------------------------------------------------------


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    scanlines = b"".join(
        b"\x00" + b"".join(bytes([(x * 30) % 256, (y * 30) % 256, 128]) for x in range(width))
        for y in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def wav_bytes(seconds: float = 0.25, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def make_mp4(path: Path, *, frames: int = 10, fps: int = 25, size: int = 64) -> Path:
    """A real H.264 + AAC MP4, written with PyAV."""
    import av

    rate = 16000
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(frames):
            picture = np.full((size, size, 3), (i * 23) % 256, dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        samples = int(rate * frames / fps)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        for pos in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[None, pos : pos + 1024]), format="flt", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = pos
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


def sparse_file(path: Path, head: bytes, size: int) -> None:
    """A file of exactly `size` bytes starting with `head` (zeros after, sparse on disk)."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "media"
    folder.mkdir()
    png = folder / "portrait.png"
    png.write_bytes(png_bytes())
    wav = folder / "speech.wav"
    wav.write_bytes(wav_bytes())
    return {"png": png, "wav": wav, "folder": folder}


def download(url: str) -> bytes:
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.get(url)
    assert response.status_code == 200, response.text[:300]
    return response.content


def s3_put(s3_server: Any, bucket: str, key: str, data: bytes) -> None:
    s3_server.boto3_client().put_object(Bucket=bucket, Key=key, Body=data)


def s3_get(s3_server: Any, bucket: str, key: str) -> bytes | None:
    client = s3_server.boto3_client()
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


# --- passthrough -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://cdn.example.com/a.png?sig=1", "http://127.0.0.1:8000/samples/portrait.png"],
)
async def test_urls_pass_through(url: str) -> None:
    media = await resolve_media(url, kind="image")
    assert media == ResolvedMedia(url=url, source=url, how="passthrough")


async def test_url_without_host_is_rejected() -> None:
    with pytest.raises(MediaError, match="no host"):
        await resolve_media("https:///a.png", kind="image")


async def test_data_uri_passes_through_after_checks() -> None:
    data = png_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    media = await resolve_media(uri, kind="image")
    assert media.url == uri
    assert media.how == "passthrough"
    assert media.size == len(data)
    assert media.sha256 == hashlib.sha256(data).hexdigest()
    assert "base64,..." in repr(media)
    assert len(repr(media)) < 400


@pytest.mark.parametrize(
    ("uri", "kind", "message"),
    [
        ("data:image/png;base64,%%%notbase64", "image", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "image", "not valid base64"),  # bad padding
        ("data:image/png,rawbytes", "image", "must be base64"),
        ("data:;base64,AAAA", "image", "no media type"),
        ("data:image/png;base64", "image", "malformed"),
        (
            "data:audio/wav;base64," + base64.b64encode(wav_bytes()).decode(),
            "image",
            "not an image",
        ),
        ("data:image/png;base64," + base64.b64encode(wav_bytes()).decode(), "image", "holds WAV"),
        (
            "data:audio/wav;base64," + base64.b64encode(b"plain text").decode(),
            "audio",
            "not an audio",
        ),
        ("data:image/png;base64,", "image", "empty"),
    ],
)
async def test_bad_data_uris(uri: str, kind: Any, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        await resolve_media(uri, kind=kind)


async def test_data_uri_over_the_cap() -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(INLINE_CAPS["image"])
    uri = "data:image/png;base64," + base64.b64encode(big).decode()
    with pytest.raises(MediaError, match=r"capped at 6\.0 MiB"):
        await resolve_media(uri, kind="image")


# --- object stores: signed ---------------------------------------------------------------------


async def test_s3_object_becomes_a_signed_url_that_downloads(
    s3_server: Any, s3_bucket: str
) -> None:
    data = png_bytes(16, 16)
    s3_put(s3_server, s3_bucket, "inputs/alice.png", data)
    media = await resolve_media(
        f"s3://{s3_bucket}/inputs/alice.png",
        kind="image",
        storage_options=s3_server.storage_options,
        expires_s=3600,
    )
    assert media.how == "signed"
    assert media.size == len(data)
    assert media.source == f"s3://{s3_bucket}/inputs/alice.png"
    assert media.url.startswith(f"{s3_server.endpoint_url}/{s3_bucket}/inputs/alice.png?")
    assert "Expires=" in media.url or "X-Amz-Expires=3600" in media.url
    assert download(media.url) == data
    assert "?..." in repr(media)
    assert "Signature" not in repr(media)


async def test_missing_s3_object_is_a_media_error(s3_server: Any, s3_bucket: str) -> None:
    with pytest.raises(MediaError, match="does not exist") as info:
        await resolve_media(
            f"s3://{s3_bucket}/inputs/nobody.png",
            kind="image",
            storage_options=s3_server.storage_options,
        )
    assert f"s3://{s3_bucket}/inputs/nobody.png" in str(info.value)
    with pytest.raises(MediaError, match="does not exist"):
        await resolve_media(
            "s3://no-such-bucket-777/a.png", kind="image", storage_options=s3_server.storage_options
        )


async def test_s3_folder_is_not_a_file(s3_server: Any, s3_bucket: str) -> None:
    s3_put(s3_server, s3_bucket, "inputs/a.png", png_bytes())
    with pytest.raises(MediaError, match="folder"):
        await resolve_media(
            f"s3://{s3_bucket}/inputs", kind="image", storage_options=s3_server.storage_options
        )


async def test_s3_signatures_cannot_outlive_seven_days(s3_server: Any, s3_bucket: str) -> None:
    s3_put(s3_server, s3_bucket, "a.png", png_bytes())
    with pytest.raises(MediaError, match="at most 7 days"):
        await resolve_media(
            f"s3://{s3_bucket}/a.png",
            kind="image",
            storage_options=s3_server.storage_options,
            expires_s=8 * 24 * 3600,
        )


# --- local files -------------------------------------------------------------------------------


async def test_local_file_inline(files: dict[str, Path]) -> None:
    image = await resolve_media(str(files["png"]), kind="image", inline_media=True)
    assert image.how == "inline"
    assert image.url.startswith("data:image/png;base64,")
    assert base64.b64decode(image.url.split(",", 1)[1]) == files["png"].read_bytes()
    assert image.sha256 == hashlib.sha256(files["png"].read_bytes()).hexdigest()
    audio = await resolve_media(f"file://{files['wav']}", kind="audio", inline_media=True)
    assert audio.url.startswith("data:audio/wav;base64,")
    assert audio.size == files["wav"].stat().st_size
    # An inline result is itself a valid data: URI input.
    again = await resolve_media(audio.url, kind="audio")
    assert again.sha256 == audio.sha256


@pytest.mark.parametrize(
    ("kind", "magic", "cap_text"),
    [("image", b"\x89PNG\r\n\x1a\n", "6.0 MiB"), ("audio", b"ID3\x04\x00", "16.0 MiB")],
)
async def test_inline_caps(tmp_path: Path, kind: Any, magic: bytes, cap_text: str) -> None:
    big = tmp_path / f"big.{'png' if kind == 'image' else 'mp3'}"
    sparse_file(big, magic, INLINE_CAPS[kind] + 1)
    with pytest.raises(MediaError) as info:
        await resolve_media(str(big), kind=kind, inline_media=True)
    message = str(info.value)
    assert str(big) in message
    assert f"{INLINE_CAPS[kind] + 1} bytes" in message
    assert f"capped at {cap_text}" in message
    assert "staging_uri" in message
    # Exactly at the cap is fine.
    sparse_file(big, magic, INLINE_CAPS[kind])
    media = await resolve_media(str(big), kind=kind, inline_media=True)
    assert media.size == INLINE_CAPS[kind]


async def test_content_must_match_the_kind(files: dict[str, Path]) -> None:
    fake = files["folder"] / "x.png"
    shutil.copy(files["wav"], fake)
    with pytest.raises(MediaError, match=r"x\.png is not an image: it holds WAV data"):
        await resolve_media(str(fake), kind="image", inline_media=True)
    text = files["folder"] / "notes.mp3"
    text.write_text("not audio at all")
    with pytest.raises(MediaError, match=r"notes\.mp3 is not an audio file"):
        await resolve_media(str(text), kind="audio", inline_media=True)
    # The check runs before staging too: nothing is uploaded for a wrong file.
    with pytest.raises(MediaError, match="not an image"):
        await resolve_media(str(fake), kind="image", staging_uri="s3://never-contacted/x")


async def test_local_file_without_options_says_what_to_do(files: dict[str, Path]) -> None:
    with pytest.raises(MediaError) as info:
        await resolve_media(str(files["png"]), kind="image")
    # the fix, named for each way a run starts: the parameter, the CLI flag, the deployment's
    # Prefect Variable (set once)
    said = str(info.value)
    assert said.startswith(f"local file {files['png']}: ")
    for fix in (
        "staging_uri=",
        "--staging-uri",
        "prefect variable set runcomfy_staging_uri",
        "inline_media=True",
        "--inline-media",
        "runcomfy_inline_media",
    ):
        assert fix in said, fix


async def test_relative_paths_use_base_uri(files: dict[str, Path], tmp_path: Path) -> None:
    table_dir = tmp_path / "table"
    (table_dir / "img").mkdir(parents=True)
    shutil.copy(files["png"], table_dir / "img" / "a.png")
    for base in (str(table_dir), f"file://{table_dir}"):
        media = await resolve_media("img/a.png", kind="image", base_uri=base, inline_media=True)
        assert media.how == "inline"
        assert media.size == files["png"].stat().st_size
    up = await resolve_media(
        "../media/portrait.png", kind="image", base_uri=str(table_dir), inline_media=True
    )
    assert up.sha256 == hashlib.sha256(files["png"].read_bytes()).hexdigest()
    with pytest.raises(MediaError, match=r"table/img/missing\.png does not exist"):
        await resolve_media("img/missing.png", kind="image", base_uri=str(table_dir))


async def test_relative_paths_against_a_remote_base(s3_server: Any, s3_bucket: str) -> None:
    data = wav_bytes()
    s3_put(s3_server, s3_bucket, "batch/audio/bob.wav", data)
    media = await resolve_media(
        "audio/bob.wav",
        kind="audio",
        base_uri=f"s3://{s3_bucket}/batch/tables/..",
        storage_options=s3_server.storage_options,
    )
    assert media.how == "signed"
    assert media.source == "audio/bob.wav"
    assert download(media.url) == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://files.example.com/a.png", "cannot fetch ftp: URLs"),
        ("memory://x/a.png", "cannot fetch memory: URLs"),
        ("mailto:someone", "cannot fetch mailto: URLs"),
        ("/definitely/not/here.png", "does not exist"),
    ],
)
async def test_unusable_values(value: str, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        await resolve_media(value, kind="image", inline_media=True)


async def test_folders_and_empty_files(files: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="is a folder"):
        await resolve_media(str(files["folder"]), kind="image", inline_media=True)
    empty = files["folder"] / "empty.png"
    empty.touch()
    with pytest.raises(MediaError, match="is empty"):
        await resolve_media(str(empty), kind="image", inline_media=True)


async def test_staging_needs_a_signable_store(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot pre-sign"):
        await resolve_media(str(files["png"]), kind="image", staging_uri=str(tmp_path / "stage"))


# --- staging -----------------------------------------------------------------------------------


@pytest.fixture
def staging(s3_server: Any, s3_bucket: str) -> dict[str, Any]:
    return {
        "staging_uri": f"s3://{s3_bucket}/staging",
        "storage_options": s3_server.storage_options,
    }


async def test_local_file_staged_then_signed(
    files: dict[str, Path], staging: dict[str, Any], s3_server: Any, s3_bucket: str
) -> None:
    data = files["wav"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    media = await resolve_media(str(files["wav"]), kind="audio", **staging)
    assert media.how == "staged"
    assert media.sha256 == digest
    assert media.size == len(data)
    assert media.url.startswith(f"{s3_server.endpoint_url}/{s3_bucket}/staging/{digest}.wav?")
    assert s3_get(s3_server, s3_bucket, f"staging/{digest}.wav") == data
    assert download(media.url) == data


async def test_staging_twice_uploads_once(
    files: dict[str, Path], staging: dict[str, Any], s3_server: Any, s3_bucket: str
) -> None:
    data = files["png"].read_bytes()
    key = f"staging/{hashlib.sha256(data).hexdigest()}.png"
    resolver = MediaResolver(**staging)
    first = await resolver.resolve(str(files["png"]), "image")
    assert s3_get(s3_server, s3_bucket, key) == data

    # Same resolver: answered from its cache, no upload (the deleted object stays deleted).
    s3_server.boto3_client().delete_object(Bucket=s3_bucket, Key=key)
    second = await resolver.resolve(str(files["png"]), "image")
    assert second is first
    assert s3_get(s3_server, s3_bucket, key) is None

    # A new resolver (a later run): the content-addressed object is found, not uploaded again.
    marker = b"M" * len(data)  # same size, different bytes: proves no second upload happened
    s3_put(s3_server, s3_bucket, key, marker)
    third = await MediaResolver(**staging).resolve(str(files["png"]), "image")
    assert third.how == "staged"
    assert s3_get(s3_server, s3_bucket, key) == marker

    # A different size under the same name is not trusted: it is uploaded again.
    s3_put(s3_server, s3_bucket, key, b"short")
    await MediaResolver(**staging).resolve(str(files["png"]), "image")
    assert s3_get(s3_server, s3_bucket, key) == data


async def test_concurrent_resolves_share_one_answer(
    files: dict[str, Path], staging: dict[str, Any], s3_server: Any, s3_bucket: str
) -> None:
    resolver = MediaResolver(**staging)
    results = await asyncio.gather(
        *(resolver.resolve(str(files["wav"]), "audio") for _ in range(8))
    )
    assert len({r.url for r in results}) == 1
    listed = s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket, Prefix="staging/")
    assert [o["Key"].rsplit(".", 1)[1] for o in listed["Contents"]] == ["wav"]


# --- sniffing and probing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\x89PNG\r\n\x1a\n\x00", "PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "WAV"),
        (b"OggS\x00\x02", "OGG"),
        (b"fLaC\x00\x00", "FLAC"),
        (b"\x00\x00\x00\x20ftypM4A ", "M4A"),
        (b"ID3\x04\x00\x00", "MP3"),
        (b"\xff\xfb\x90\x64", "MP3"),
        (b"\xff\xf1\x50\x80", "AAC"),
        (b"GIF89a", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, fmt: str | None) -> None:
    assert sniff_format(head) == fmt


def test_probe_video(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "clip.mp4", frames=10, fps=25, size=64)
    assert is_mp4(path)
    info = probe_video(path)
    assert info is not None
    assert info["width"] == 64
    assert info["height"] == 64
    assert info["fps"] == 25.0
    assert info["frames"] == 10
    assert info["video_codec"] == "h264"
    assert info["audio_codec"] == "aac"
    assert info["has_audio"] is True
    assert info["duration_s"] == pytest.approx(0.4, abs=0.1)
    assert info["audio_duration_s"] == pytest.approx(0.4, abs=0.1)
    assert set(info) == {
        "duration_s",
        "width",
        "height",
        "fps",
        "frames",
        "video_codec",
        "audio_codec",
        "has_audio",
        "audio_duration_s",
    }


def test_probe_and_is_mp4_on_non_videos(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    assert probe_video(text) is None
    assert probe_video(tmp_path / "missing.mp4") is None
    assert not is_mp4(text)
    assert not is_mp4(tmp_path / "missing.mp4")
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    assert not is_mp4(png)
