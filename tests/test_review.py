"""The review page (`index.html`) and its previews: escaping, relative links, every status with
its advice, the chart and filters, PyAV-made posters and thumbnails, and writing to a local
folder, memory:// and (moto) S3 — plus once from a real flow run against the sandbox."""

from __future__ import annotations

import base64
import html
import io
import re
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import av
import fsspec
import numpy as np
import pandas as pd
import pytest

from prefect_runcomfy import RunComfyCredentials, Spending, Waiting, generate_talking_videos
from prefect_runcomfy.engine.outputs.manifest import RowStatus, build_manifest
from prefect_runcomfy.engine.outputs.previews import jpeg_bytes, poster_frame, thumbnail
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.review import (
    INDEX_NAME,
    advice_for,
    read_input_image,
    render_review_html,
    write_review_page,
)
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

EVIL = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>&amp;"


# --- media made with PyAV ---------------------------------------------------------------------


def make_mp4(path: Path, *, width: int = 96, height: int = 64, frames: int = 30) -> Path:
    """An H.264 MP4 at 10 fps whose frame i is a flat grey of level 8*i (to tell frames apart)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "5"}
        for i in range(frames):
            rgb = np.full((height, width, 3), 8 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_png(width: int, height: int, *, alpha: bool = False) -> bytes:
    """PNG bytes: red, or fully transparent when `alpha`."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "rgba" if alpha else "rgb24"
    codec.time_base = Fraction(1, 1)
    channels = 4 if alpha else 3
    pixels = np.zeros((height, width, channels), dtype=np.uint8)
    if not alpha:
        pixels[..., 0] = 220
    frame = av.VideoFrame.from_ndarray(pixels, format="rgba" if alpha else "rgb24")
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def decode_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


# --- previews ---------------------------------------------------------------------------------


def test_poster_frame_is_a_third_in_and_scaled(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "v.mp4", width=1280, height=720, frames=30)
    dest = tmp_path / "v.poster.jpg"
    assert poster_frame(video, dest) is True
    pixels = decode_jpeg(dest.read_bytes())
    assert pixels.shape == (360, 640, 3)
    # frame 10 of 30 (level 80); JPEG and colour conversion move it a little
    assert abs(float(pixels.mean()) - 80) < 10, pixels.mean()
    assert not list(tmp_path.glob(".tmp-*")), "no temporary file left behind"


def test_poster_frame_small_video_kept_and_fraction(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "v.mp4", width=96, height=64, frames=30)
    dest = tmp_path / "p.jpg"
    assert poster_frame(video, dest, fraction=0.0, max_width=640)
    pixels = decode_jpeg(dest.read_bytes())
    assert pixels.shape == (64, 96, 3), "never enlarged"
    assert float(pixels.mean()) < 12
    assert poster_frame(video, dest, fraction=0.9, max_width=48)
    pixels = decode_jpeg(dest.read_bytes())
    assert pixels.shape == (32, 48, 3)
    assert abs(float(pixels.mean()) - 8 * 27) < 12


def test_poster_frame_returns_false_on_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    assert poster_frame(junk, tmp_path / "a.jpg") is False
    assert poster_frame(tmp_path / "missing.mp4", tmp_path / "b.jpg") is False
    assert not (tmp_path / "a.jpg").exists() and not (tmp_path / "b.jpg").exists()


def test_thumbnail_scales_to_max_size_keeping_aspect(tmp_path: Path) -> None:
    dest = tmp_path / "t.jpg"
    assert thumbnail(make_png(600, 400), dest) is True
    pixels = decode_jpeg(dest.read_bytes())
    assert pixels.shape == (170, 256, 3)
    assert pixels[..., 0].mean() > 180 and pixels[..., 1].mean() < 60, "red stays red"
    assert thumbnail(make_png(300, 900), dest, max_size=128)
    assert decode_jpeg(dest.read_bytes()).shape == (128, 42, 3)
    assert thumbnail(make_png(100, 80), dest)
    assert decode_jpeg(dest.read_bytes()).shape == (80, 100, 3), "never enlarged"


def test_thumbnail_of_a_jpeg_and_a_transparent_png(tmp_path: Path) -> None:
    with av.open(str(make_mp4(tmp_path / "v.mp4", frames=2))) as container:
        frame = next(container.decode(video=0))
    dest = tmp_path / "t.jpg"
    assert thumbnail(jpeg_bytes(frame, 96, 64), dest)
    assert decode_jpeg(dest.read_bytes()).shape == (64, 96, 3)
    assert thumbnail(make_png(64, 64, alpha=True), dest)
    assert decode_jpeg(dest.read_bytes()).mean() > 240, "transparent areas are laid on white"


@pytest.mark.parametrize("data", [b"", b"garbage" * 50, b"\x89PNG\r\n\x1a\n broken"])
def test_thumbnail_returns_false_on_undecodable_bytes(tmp_path: Path, data: bytes) -> None:
    assert thumbnail(data, tmp_path / "t.jpg") is False
    assert not (tmp_path / "t.jpg").exists()


# --- rendering --------------------------------------------------------------------------------


def record(row_id: str, status: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": row_id, "status": status, "row": 0}
    if status == "succeeded":
        base.update(
            video_uri=f"/data/out/{row_id}.mp4",
            video_uris=[f"/data/out/{row_id}.mp4"],
            metadata_uri=f"/data/out/{row_id}.json",
            duration_s=5.0,
            width=480,
            height=480,
            size_bytes=110_000,
            cost_usd=0.075,
            queue_seconds=1.5,
            run_seconds=40.0,
            request_id=f"req-{row_id}",
            prompt="a person says hello",
            image="https://user:secret@example.com/face.png?X-Amz-Signature=secret",
            audio="s3://bucket/hello.mp3",
            resolution="480x480",
            frames=125,
            seed=7,
        )
    base.update(fields)
    return base


def all_statuses_manifest() -> pd.DataFrame:
    return build_manifest(
        [
            record("ok", "succeeded"),
            record("bad", "invalid", error="row 1 (id 'bad'): steps: too many (got 30)"),
            record(
                "broke", "failed", error="Request r2 failed: OOM", request_id="r2", cost_usd=0.01
            ),
            record("stop", "cancelled", error="Request r3 was cancelled.", request_id="r3"),
            record(
                "slow",
                "timed_out",
                error="gave up after 60 s (still running on RunComfy)",
                request_id="r4",
                queue_seconds=3.0,
                run_seconds=57.0,
            ),
            record("lost", "outcome_unknown", error="not submitted: an earlier submit ..."),
        ],
        INFINITE_TALK,
    )


class Attributes(HTMLParser):
    """Collects every tag and attribute, to check links and resources."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Attributes()
    parser.feed(page)
    return parser.tags


def render(manifest: pd.DataFrame, **kwargs: Any) -> str:
    kwargs.setdefault("sidecars", {})
    kwargs.setdefault("title", "Review")
    kwargs.setdefault("generated_at", "2025-01-01 00:00 UTC")
    return render_review_html(manifest, INFINITE_TALK, **kwargs)


def test_user_text_is_escaped_everywhere() -> None:
    manifest = build_manifest(
        [
            record("ok", "succeeded", prompt=EVIL, note=EVIL),
            record("bad", "invalid", error=EVIL, extras={"customer": EVIL}),
            record("weird", "<b>status</b>", error=EVIL),
        ],
        INFINITE_TALK,
    )
    page = render(manifest, title=EVIL, generated_at=EVIL, sidecars={"ok": {"model_id": EVIL}})
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("<script") == 1, "only the page's own filter script"
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&amp;amp;" in page, "an entity in the data is shown, not interpreted"
    assert "<b>status</b>" not in page and "&lt;b&gt;status&lt;/b&gt;" in page
    # Only the page's own tags: nothing smuggled in through the data.
    assert {tag for tag, _ in parse(page)} <= {
        "html", "head", "meta", "title", "link", "style", "body", "div", "h1", "p", "a",
        "section", "h3", "span", "svg", "line", "text", "g", "rect", "nav", "button", "i",
        "main", "article", "video", "header", "h2", "img", "b", "dl", "dt", "dd", "code",
        "footer", "script",
    }  # fmt: skip


HOSTILE = [
    "<script>alert(1)</script>",
    "</script><script>alert(2)</script>",
    "</textarea><img src=x onerror=alert(3)>",
    '"><svg onload=alert(4)>',
    "' onmouseover='alert(5)' x='",
    "</title></style><iframe src=javascript:alert(6)></iframe>",
    "<!-- --><![CDATA[ ]]>&lt;b&gt;",
    "{{ 7 * 7 }}{% raw %}",
]


def test_hostile_text_in_every_field_stays_text() -> None:
    """Prompts, ids, errors, notes, request ids, statuses, sources, settings, the sidecar's
    facts, the title and the output location: every one is shown as text, in elements and in
    attributes, and none becomes a tag, an attribute or template code."""
    rows = []
    for i, text in enumerate(HOSTILE):
        rows += [
            record(f"{text}{i}", "succeeded", prompt=text, note=text, request_id=text,
                   image=f"https://h/{text}", audio=text, resolution=text, seed=text,
                   video_uri=None, video_uris=[f"/o/{text}{i}.mp4", f"/o/{text}{i}-b.mp4"]),
            record(f"bad{i}", "failed", error=text, request_id=text, queue_seconds=1.0),
            record(f"odd{i}", text, error=text, note=text),
        ]  # fmt: skip
    sidecars = {
        f"bad{i}": {"inputs": {"241_positive_prompt": text, "128_steps": text}}
        for i, text in enumerate(HOSTILE)
    }
    page = render(
        build_manifest(rows, INFINITE_TALK),
        sidecars=sidecars,
        title=HOSTILE[5],
        generated_at=HOSTILE[2],
        output_uri=HOSTILE[3],
    )
    for text in HOSTILE:
        if set(text) & set("<>&\"'"):
            assert text not in page, text
    assert page.count("<script") == 1 and page.count("</script>") == 1
    assert "</textarea>" not in page and "<iframe" not in page and "<![CDATA[" not in page
    assert page.count("<!--") == 0 and page.count("</style>") == 1
    tags = parse(page)
    assert {tag for tag, _ in tags} <= {
        "html", "head", "meta", "title", "link", "style", "body", "div", "h1", "p", "a",
        "section", "h3", "span", "svg", "line", "text", "g", "rect", "nav", "button", "i",
        "main", "article", "video", "header", "h2", "img", "b", "dl", "dt", "dd", "code",
        "footer", "script",
    }  # fmt: skip
    assert not [n for _, attrs in tags for n in attrs if n.startswith("on")], "no handlers"
    # What was given is what is shown: the attributes and the text read back unchanged.
    assert [a["title"] for t, a in tags if t == "h2"][::3] == [
        f"{t}{i}" for i, t in enumerate(HOSTILE)
    ]
    statuses = [a["data-status"] for t, a in tags if t == "article"]
    assert statuses[2::3] == HOSTILE
    assert [a["class"] for t, a in tags if t == "article"][2::3] == ["card s-other"] * len(HOSTILE)
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert all(text in shown for text in HOSTILE)
    assert "{{ 7 * 7 }}{% raw %}" in shown and ">49<" not in page, "data is never template code"
    for tag, attrs in tags:
        for name in ("href", "src", "poster"):
            value = attrs.get(name)
            if value is not None and value != "data:,":
                assert re.fullmatch(r"[A-Za-z0-9._~%-]+", value), (tag, name, value)


def test_ids_in_links_are_percent_encoded() -> None:
    manifest = build_manifest([record("a b&c#d%e'f", "succeeded", video_uri=None)], INFINITE_TALK)
    tags = parse(render(manifest))
    sources = [a["src"] for t, a in tags if t == "video"]
    assert sources == ["a%20b%26c%23d%25e%27f.mp4"]


def test_links_are_relative_file_names_and_nothing_is_loaded_from_outside() -> None:
    page = render(all_statuses_manifest(), output_uri="s3://bucket/out")
    tags = parse(page)
    links = [
        (tag, name, value)
        for tag, attrs in tags
        for name, value in attrs.items()
        if name in {"href", "src", "poster", "action", "srcset", "xlink:href"}
    ]
    assert links, "the page links its files"
    for tag, name, value in links:
        assert value is not None
        if tag == "link" and value == "data:,":  # the empty favicon stops a favicon request
            continue
        assert re.fullmatch(r"[A-Za-z0-9._~%-]+", value), (tag, name, value)
    # No external resources of any kind: no scheme in attributes, no CSS url()/@import.
    assert not re.search(r"(src|href|poster)=\"(https?:)?//", page)
    assert "url(" not in page and "@import" not in page
    assert "/data/out" not in page, "absolute local paths never appear"
    assert "X-Amz-Signature" not in page and "secret" not in page, "no pre-signed queries"
    hrefs = {a.get("href") for t, a in tags if t == "a"}
    assert {"ok.mp4", "ok.json", "manifest.parquet"} <= hrefs
    posters = [a.get("poster") for t, a in tags if t == "video"]
    assert posters == ["ok.poster.jpg"]
    images = [a.get("src") for t, a in tags if t == "img"]
    assert "ok.portrait.jpg" in images


@pytest.mark.parametrize("status", [s.value for s in RowStatus if s is not RowStatus.SUCCEEDED])
def test_every_problem_status_shows_its_error_and_what_to_do(status: str) -> None:
    page = render(all_statuses_manifest(), output_uri="s3://bucket/out")
    card = re.search(
        rf'<article class="card [^"]*" data-status="{status}".*?</article>', page, re.S
    )
    assert card, status
    html_text = card.group(0)
    assert 'class="problem"' in html_text and "What to do:" in html_text
    advice = advice_for(status, output_uri="s3://bucket/out")
    shown = html.unescape(re.sub(r"<[^>]+>", "", html_text))
    assert advice and advice in shown
    expected = {
        "invalid": "Fix this row",
        "failed": "retry_failed=True",
        "cancelled": "submits it anew, with no flag",
        "timed_out": "<code>prefect-runcomfy collect s3://bucket/out</code>",
        "outcome_unknown": "resubmit_unknown=True",
    }[status]
    assert expected in html_text
    assert "<video" not in html_text, "no player for a row without a video"


def test_header_counts_totals_chart_and_filters() -> None:
    page = render(all_statuses_manifest())
    tiles = dict(
        (label, int(n))
        for n, label in re.findall(
            r'<span class="n">(\d+)</span><span class="l">([^<]+)</span>', page
        )
    )
    assert tiles == {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "invalid": 1,
        "timed out": 1,
        "outcome unknown": 1,
    }
    assert "$0.085" in page, "total cost of the rows whose cost is known"
    assert '5.0 s</span><span class="l">of video' in page
    chart = re.search(r'<svg class="chart".*?</svg>', page, re.S)
    assert chart
    assert chart.group(0).count('class="queue"') == 2 and chart.group(0).count('class="run"') == 2
    assert ">ok</text>" in chart.group(0) and ">slow</text>" in chart.group(0)
    nav = re.search(r'<nav id="filters"[^>]*>.*?</nav>', page, re.S)
    assert nav and " hidden>" in nav.group(0), "hidden until the script shows it"
    filters = re.findall(r'data-filter="([a-z_]+)"', nav.group(0))
    assert filters == ["all", *[s.value for s in RowStatus]]
    assert re.findall(r'data-status="([a-z_]+)"', page) == [
        "succeeded", "invalid", "failed", "cancelled", "timed_out", "outcome_unknown"
    ]  # fmt: skip


def test_assets_decide_what_is_linked() -> None:
    manifest = build_manifest(
        [record("ok", "succeeded"), record("gone", "succeeded")], INFINITE_TALK
    )
    page = render(manifest, assets={"ok.mp4", "ok.portrait.jpg", "manifest.parquet"})
    tags = parse(page)
    assert [a["src"] for t, a in tags if t == "video"] == ["ok.mp4"]
    assert [a.get("poster") for t, a in tags if t == "video"] == [None], "no poster: none made"
    assert [a["src"] for t, a in tags if t == "img"] == ["ok.portrait.jpg"]
    assert "gone.mp4 is not in this folder" in page
    assert 'href="ok.json"' not in page, "sidecar not listed: not linked"


def test_old_and_sparse_manifests_render() -> None:
    sparse = pd.DataFrame({"id": ["a", "b"], "status": ["succeeded", "failed"]})
    page = render(sparse)
    assert 'src="a.mp4"' in page and "no error message was recorded" in page
    nans = pd.DataFrame(
        {
            "id": ["x"],
            "status": ["failed"],
            "error": [np.nan],
            "queue_seconds": [np.nan],
            "cost_usd": [None],
            "video_uris": [None],
        }
    )
    assert 'data-status="failed"' in render(nans)
    empty = render(pd.DataFrame(columns=["id", "status"]))
    assert "The manifest has no rows yet." in empty and "No queue or run times yet." in empty


def test_sidecar_fills_what_the_manifest_lacks() -> None:
    sparse = pd.DataFrame({"id": ["a"], "status": ["succeeded"]})
    sidecar = {
        "request_id": "req-from-sidecar",
        "queue_seconds": 2.0,
        "run_seconds": 30.0,
        "cost_usd": 0.5,
        "inputs": {"241_positive_prompt": "from the sidecar", "128_steps": 9},
        "files": [{"uri": "s3://b/o/a.mp4", "video": {"duration_s": 5.0, "fps": 25.0}}],
    }
    page = render(sparse, sidecars={"a": sidecar})
    for text in ("req-from-sidecar", "from the sidecar", "<b>steps</b> 9", "$0.5", "25 fps"):
        assert text in page, text
    assert render(sparse, sidecars={"a.json": sidecar}) == page, "keyed by <id>.json works too"


# --- writing the page -------------------------------------------------------------------------


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def seed_store(store: OutputStore, tmp_path: Path, image: str) -> pd.DataFrame:
    """A store holding one stored video with its sidecar, plus a manifest with an invalid row."""
    video = make_mp4(tmp_path / "src.mp4", width=320, height=240)
    store.put_file(video, "ok.mp4")
    store.write_json("ok.json", {"id": "ok", "request_id": "req-ok", "status": "succeeded"})
    manifest = build_manifest(
        [
            record("ok", "succeeded", image=image, video_uri=store.uri("ok.mp4"), video_uris=None),
            record("bad", "invalid", error="steps: too many"),
        ],
        INFINITE_TALK,
    )
    store.write_manifest(manifest)
    return manifest


def check_written(store: OutputStore, uri: str) -> str:
    assert uri == store.uri(INDEX_NAME)
    page = (store.read_bytes(INDEX_NAME) or b"").decode()
    assert page.startswith("<!doctype html>")
    assert decode_jpeg(store.read_bytes("ok.poster.jpg") or b"").shape == (240, 320, 3)
    assert decode_jpeg(store.read_bytes("ok.portrait.jpg") or b"").shape == (40, 60, 3)
    assert 'poster="ok.poster.jpg"' in page and 'src="ok.portrait.jpg"' in page
    assert 'src="ok.mp4"' in page and 'href="ok.json"' in page
    assert not [n for n in store.list() if ".tmp-" in n]
    return page


def test_write_review_page_to_a_local_folder(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    image = tmp_path / "face.png"
    image.write_bytes(make_png(60, 40))
    manifest = seed_store(store, tmp_path, str(image))
    page = check_written(store, write_review_page(store, manifest, INFINITE_TALK))
    assert "Talking videos · out" in page
    linked = [v for _, a in parse(page) for k, v in a.items() if k in {"href", "src", "poster"}]
    assert linked and not [v for v in linked if v and str(tmp_path) in v], "links are relative"

    # Previews are made once: a rewrite leaves them alone (even when the source is gone).
    image.unlink()
    poster_before = store.read_bytes("ok.poster.jpg")
    write_review_page(store, manifest, INFINITE_TALK)
    assert store.read_bytes("ok.poster.jpg") == poster_before
    assert store.exists("ok.portrait.jpg")


def test_the_page_reads_sidecars_only_for_rows_the_run_does_not_hold(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    image = tmp_path / "face.png"
    image.write_bytes(make_png(60, 40))
    manifest = seed_store(store, tmp_path, str(image))
    store.write_json("bad.json", {"id": "bad", "inputs": {"128_seed": 4242}})
    read: list[str] = []
    original = store.read_many_bytes

    def spy(names: Any) -> dict[str, bytes]:
        names = list(names)
        read.extend(names)
        return original(names)

    store.read_many_bytes = spy  # type: ignore[method-assign]
    probed = {"video_codec": "heldcodec", "fps": 25}
    held = {"ok": {"id": "ok", "status": "succeeded", "files": [{"video": probed}]}}
    page = check_written(store, write_review_page(store, manifest, INFINITE_TALK, known=held))
    assert read == ["bad.json"], "the held row's sidecar is not read back"
    assert "heldcodec" in page and "4242" in page


def test_write_review_page_to_memory(tmp_path: Path) -> None:
    store = OutputStore("memory://review-test/out")
    try:
        manifest = seed_store(store, tmp_path, data_uri(make_png(60, 40)))
        check_written(store, write_review_page(store, manifest, INFINITE_TALK))
        assert fsspec.filesystem("memory").exists("/review-test/out/index.html")
    finally:
        fsspec.filesystem("memory").rm("/review-test", recursive=True)


def test_write_review_page_to_s3_with_an_s3_portrait(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", **options)
    fs.pipe(f"{s3_bucket}/inputs/face.png", make_png(60, 40))
    store = OutputStore(f"s3://{s3_bucket}/review", options)
    manifest = seed_store(store, tmp_path, f"s3://{s3_bucket}/inputs/face.png")
    page = check_written(
        store, write_review_page(store, manifest, INFINITE_TALK, input_storage_options=options)
    )
    assert f"s3://{s3_bucket}/review/ok.mp4" not in page, "links stay relative on S3"
    assert fs.exists(f"{s3_bucket}/review/index.html")


def test_unreadable_portraits_and_videos_still_give_a_page(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    manifest = build_manifest(
        [
            record("a", "succeeded", image="http://127.0.0.1:9/nothing.png"),
            record("b", "succeeded", image="data:image/png;base64,!!!not-base64"),
            record("c", "succeeded", image=str(tmp_path / "missing.png")),
        ],
        INFINITE_TALK,
    )
    (tmp_path / "out" / "a.mp4").write_bytes(b"not a video")
    write_review_page(store, manifest, INFINITE_TALK)
    page = (tmp_path / "out" / INDEX_NAME).read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "index.html"]
    assert "<img" not in page and "poster=" not in page
    assert 'src="a.mp4"' in page and "b.mp4 is not in this folder" in page


def test_read_input_image_kinds(tmp_path: Path) -> None:
    png = make_png(8, 8)
    assert read_input_image(data_uri(png)) == png
    (tmp_path / "f.png").write_bytes(png)
    assert read_input_image(str(tmp_path / "f.png")) == png
    assert read_input_image(str(tmp_path / "nope.png")) is None
    assert read_input_image("http://127.0.0.1:9/x.png", timeout_s=2) is None
    assert read_input_image("") is None


# --- from a real run --------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
async def test_page_from_a_real_flow_run(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = shared_sandbox
    sb.reset(config=True)
    rows = [dict(r) for r in sample_inputs(sb.base_url)[:2]]
    rows[0]["prompt"] = EVIL
    rows.append(dict(rows[1], id="bad-steps", steps=30))
    credentials = RunComfyCredentials(api_token=sb.token, base_url=sb.base_url, max_retries=3)
    out = tmp_path / "videos"
    await generate_talking_videos(
        rows,
        str(out),
        credentials,
        waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.5),
        spending=Spending(allow_failed_rows=True),
    )
    store = OutputStore(str(out))
    manifest = store.read_manifest()
    assert manifest is not None
    uri = write_review_page(store, manifest, INFINITE_TALK)
    assert uri == str(out / INDEX_NAME)
    names = {p.name for p in out.iterdir()}
    for row in rows[:2]:
        assert {f"{row['id']}.poster.jpg", f"{row['id']}.portrait.jpg"} <= names
        pixels = decode_jpeg((out / f"{row['id']}.portrait.jpg").read_bytes())
        assert max(pixels.shape[:2]) <= 256
        assert decode_jpeg((out / f"{row['id']}.poster.jpg").read_bytes()).shape[1] == 480
    page = (out / INDEX_NAME).read_text()
    assert "&lt;script&gt;alert" in page and "<script>alert" not in page
    assert page.count("<video") == 2 and 'data-status="invalid"' in page
    assert "Fix this row" in page and "steps" in page
