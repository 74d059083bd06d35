"""Regenerate the sandbox's sample inputs: a stylised portrait and a few short speech clips.

The outputs are committed, so the package never needs this script (nor espeak-ng) at run time.
Run it again only to change the samples:

    apt-get install -y espeak-ng
    python -m prefect_runcomfy.sandbox.samples.make_samples

The portrait is drawn with numpy and encoded as PNG with PyAV; the speech is synthesised with
espeak-ng and encoded as mono MP3 with PyAV (LAME), falling back to AAC in .m4a when the
FFmpeg build has no MP3 encoder.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import cast

import av
import numpy as np

from prefect_runcomfy.sandbox.drawing import fill_ellipse, fill_rect, vertical_gradient

HERE = Path(__file__).resolve().parent
"""The samples directory, where the outputs are written."""

SPEECH: dict[str, str] = {
    "hello": (
        "Hello! I am a sandbox portrait. Everything you see here was rendered on your own computer."
    ),
    "pipeline": "This video cost nothing. The sandbox speaks the same API as RunComfy.",
    "short": "Testing, one, two, three. Can you see my lips move?",
}
"""Clip name (without extension) and the sentence espeak-ng speaks."""

SIZE = 512
"""Width and height of the portrait in pixels."""


def draw_portrait(size: int = SIZE) -> np.ndarray:
    """Draw a friendly stylised face as an RGB array.

    The lips sit at (0.5, 0.66) of the image, where the sandbox renderer draws the moving mouth.
    """
    s = size / 512.0  # every coordinate below is laid out for 512 px and scaled
    img = vertical_gradient(size, size, (170, 205, 235), (230, 240, 250))
    skin, skin_shadow = (241, 194, 160), (226, 172, 140)
    hair = (92, 58, 38)
    # shoulders and shirt first, so the neck and head cover them
    fill_ellipse(img, 256 * s, 560 * s, 230 * s, 150 * s, (70, 120, 170))
    fill_rect(img, int(220 * s), int(360 * s), int(292 * s), int(440 * s), skin_shadow)
    fill_ellipse(img, 256 * s, 430 * s, 40 * s, 22 * s, skin_shadow)
    # hair behind the head
    fill_ellipse(img, 256 * s, 215 * s, 150 * s, 165 * s, hair)
    fill_rect(img, int(110 * s), int(215 * s), int(402 * s), int(330 * s), hair)
    # ears, face
    fill_ellipse(img, 134 * s, 255 * s, 20 * s, 32 * s, skin_shadow)
    fill_ellipse(img, 378 * s, 255 * s, 20 * s, 32 * s, skin_shadow)
    fill_ellipse(img, 256 * s, 245 * s, 122 * s, 148 * s, skin)
    # fringe
    fill_ellipse(img, 210 * s, 128 * s, 100 * s, 48 * s, hair)
    fill_ellipse(img, 320 * s, 135 * s, 80 * s, 40 * s, hair)
    # eyebrows, eyes
    for x in (208, 304):
        fill_ellipse(img, x * s, 203 * s, 28 * s, 7 * s, (80, 50, 34))
        fill_ellipse(img, x * s, 238 * s, 24 * s, 15 * s, (252, 252, 252))
        fill_ellipse(img, x * s, 240 * s, 11 * s, 11 * s, (70, 110, 70))
        fill_ellipse(img, x * s, 240 * s, 5 * s, 5 * s, (20, 20, 20))
        fill_ellipse(img, (x + 4) * s, 236 * s, 2.5 * s, 2.5 * s, (255, 255, 255))
    # nose, cheeks
    fill_ellipse(img, 256 * s, 290 * s, 12 * s, 9 * s, skin_shadow)
    fill_ellipse(img, 185 * s, 300 * s, 24 * s, 13 * s, (240, 160, 150), opacity=0.45)
    fill_ellipse(img, 327 * s, 300 * s, 24 * s, 13 * s, (240, 160, 150), opacity=0.45)
    # lips at (0.5, 0.66): the renderer opens a dark mouth over them
    fill_ellipse(img, 256 * s, 338 * s, 40 * s, 9 * s, (196, 104, 104))
    return img


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG bytes with PyAV."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height = rgb.shape[1], rgb.shape[0]
    codec.pix_fmt = "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)


def speech_codec() -> tuple[str, str]:
    """Return (encoder, file suffix): MP3 when FFmpeg has LAME, else AAC in .m4a."""
    if "libmp3lame" in av.codec.codecs_available:
        return "libmp3lame", ".mp3"
    return "aac", ".m4a"


def encode_speech(wav: bytes, target: Path, codec_name: str, rate: int = 22050) -> None:
    """Re-encode espeak's WAV as a small mono clip at `target` (48 kbit/s)."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    with av.open(io.BytesIO(wav), mode="r") as source, av.open(str(target), mode="w") as sink:
        stream = cast(av.AudioStream, sink.add_stream(codec_name, rate=rate, layout="mono"))
        stream.bit_rate = 48_000
        for frame in source.decode(audio=0):
            for out in resampler.resample(frame):
                sink.mux(stream.encode(out))
        for out in resampler.resample(None):
            sink.mux(stream.encode(out))
        sink.mux(stream.encode(None))


def synthesise(text: str) -> bytes:
    """Speak `text` with espeak-ng and return the WAV bytes."""
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    if espeak is None:
        raise SystemExit("espeak-ng is needed to regenerate the speech samples")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        # a slightly slower rate and lower pitch sound less robotic
        subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [espeak, "-v", "en-us", "-s", "150", "-p", "45", "-w", str(wav), text], check=True
        )
        return wav.read_bytes()


def main() -> None:
    """Write portrait.png and one clip per entry of SPEECH next to this script."""
    (HERE / "portrait.png").write_bytes(encode_png(draw_portrait()))
    codec_name, suffix = speech_codec()
    for name, text in SPEECH.items():
        encode_speech(synthesise(text), HERE / f"{name}{suffix}", codec_name)
    for path in sorted(HERE.iterdir()):
        if path.suffix in {".png", ".mp3", ".m4a"}:
            print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
