"""Synthetic manifests as a big nightly run leaves them, for the review's tests at 20,000 rows
and for `benchmarks/review_pages.py`: the rows, stand-ins for the files beside them, and a
check that every link of the review resolves to a file."""

from __future__ import annotations

import html
import posixpath
import random
import re
import urllib.parse
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from prefect_runcomfy.engine.outputs.manifest import build_manifest
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.models import INFINITE_TALK

NEEDING = ("failed", "invalid", "timed_out", "outcome_unknown")
"""The statuses of rows that need a person, in the order the review lists them."""

ERRORS = {
    "failed": "Request {rid} failed: CUDA out of memory while sampling frame 88 of 125",
    "invalid": "row {n} (id '{id}'): steps: Input should be less than or equal to 20 (got 30)",
    "timed_out": "gave up waiting after 3600 s (still running on RunComfy)",
    "outcome_unknown": "not submitted: an earlier submit of this row got no answer",
    "cancelled": "Request {rid} was cancelled.",
}


def status_of(i: int, every: int) -> str:
    """Row `i`'s status: every `every`th row needs a person (the four statuses in turn),
    every 97th other one was cancelled, the rest succeeded."""
    if i % every == every // 2:
        return NEEDING[i // every % len(NEEDING)]
    return "cancelled" if i % 97 == 13 else "succeeded"


def synthetic_row(i: int, status: str, rnd: random.Random, start: datetime) -> dict[str, Any]:
    """Row `i` of a night, with what its card shows; a few rows have a maximal prompt."""
    row_id = f"row-{i:05d}"
    words = ["a", "woman", "in", "a", "red", "coat", "talks", "about", "the", "weather"]
    prompt = " ".join(rnd.choice(words) for _ in range(rnd.randint(8, 40)))
    if i % 2_500 == 7:
        prompt = ("a very long prompt <b>&amp; its escapes</b> " * 400)[:10_000]
    record: dict[str, Any] = {
        "id": row_id,
        "status": status,
        "row": i,
        "prompt": prompt,
        "image": f"s3://bucket/faces/{i % 50}.png",
        "audio": f"s3://bucket/speech/{row_id}.wav",
        "resolution": "480x832",
        "frames": 125,
        "seed": i,
        "queue_seconds": rnd.uniform(2, 900),
        "finished_at": (start + timedelta(seconds=i * 1.6)).isoformat(),
        "customer": f"cust-{i % 300}",
    }
    if status != "invalid":
        record |= {
            "request_id": f"{i:08x}-5d1e-4c3a-9f00-{i:012x}",
            "run_seconds": rnd.uniform(60, 240),
        }
    if status == "succeeded":
        record |= {
            "video_uri": f"s3://bucket/videos/{row_id}.mp4",
            "metadata_uri": f"s3://bucket/videos/{row_id}.json",
            "duration_s": 5.0, "width": 480, "height": 832, "size_bytes": 2_400_000,
            "cost_usd": 0.075, "submitted_by_this_run": True,
        }  # fmt: skip
    else:
        record["error"] = ERRORS[status].format(rid=record.get("request_id"), n=i, id=row_id)
    return record


def synthetic_manifest(n: int, *, every: int = 40, seed: int = 22) -> pd.DataFrame:
    """`n` rows of a night's run (`status_of` says which need a person), finishing 1.6 s apart."""
    rnd = random.Random(seed)
    start = datetime(2025, 6, 1, 22, 0, tzinfo=UTC)
    return build_manifest(
        [synthetic_row(i, status_of(i, every), rnd, start) for i in range(n)], INFINITE_TALK
    )


def seed_files(store: OutputStore, manifest: pd.DataFrame) -> int:
    """Empty stand-ins for what a run leaves beside the page (each row's portrait, each
    succeeded row's video and poster; `manifest.parquet`), so the cards link them and no
    preview is made (a portrait would be read from s3://); returns the number of files made.
    (No sidecars: the page would read them all back.)"""
    names = [
        f"{row_id}{suffix}"
        for row_id, status in zip(manifest["id"], manifest["status"], strict=True)
        for suffix in (".portrait.jpg", *((".mp4", ".poster.jpg") if status == "succeeded" else ()))
    ]
    store.fs.pipe({store.path(name): b"" for name in names})
    store.write_manifest(manifest)
    return len(names) + 1


_ATTRIBUTE = re.compile(r'\s(href|src|poster|data-poster)="([^"]*)"')
_TAG = re.compile(r"<(\w+)\s[^>]*>")


def links_of(page: str) -> list[tuple[str, str, str]]:
    """Every link in `page`'s markup: (tag, attribute, value, unescaped). The review quotes
    every attribute with double quotes, so a pattern reads it (an HTML parser is 10x slower
    over 30 MB of pages)."""
    found = []
    for tag in _TAG.finditer(page):
        for name, value in _ATTRIBUTE.findall(tag.group(0)):
            found.append((tag.group(1), name, html.unescape(value)))
    return found


def broken_links(pages: Mapping[str, str], files: Collection[str]) -> list[str]:
    """The links of `pages` (markup by name under the output location) that are not relative
    links to one of `files` (names there): none, for a review that works from a folder or a
    bucket with no server."""
    broken = []
    for name, markup in sorted(pages.items()):
        folder = posixpath.dirname(name)
        for tag, attribute, value in links_of(markup):
            if tag == "link" and value == "data:,":
                continue
            if re.match(r"^[a-zA-Z][\w+.-]*:|^/", value):
                broken.append(f"{name}: {attribute}={value} is not relative")
                continue
            path = urllib.parse.unquote(value.split("#", 1)[0])
            target = posixpath.normpath(posixpath.join(folder, path))
            if target not in files:
                broken.append(f"{name}: {attribute}={value} resolves to nothing")
    return broken


FIRST_PAINT_JS = """() => new Promise((resolve) => {
  const seen = performance.getEntriesByName("first-contentful-paint")[0];
  if (seen) return resolve(seen.startTime);
  new PerformanceObserver((list) => {
    const entry = list.getEntriesByName("first-contentful-paint")[0];
    if (entry) resolve(entry.startTime);
  }).observe({ type: "paint", buffered: true });
  setTimeout(() => resolve(null), 20000);
})"""
"""Resolves to the page's first contentful paint in milliseconds since navigation began (the
file read, parsed, laid out and painted), or null when it did not paint in 20 s."""


async def first_paint(browser: Any, url: str) -> dict[str, Any]:
    """Open `url` in a fresh page of `browser` (Playwright's): its first contentful paint
    (ms from navigation start) and the URLs it requested up to then and up to `load`."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        await page.goto(url, wait_until="commit")
        painted = await page.evaluate(FIRST_PAINT_JS)
        at_paint = list(requested)
        await page.wait_for_load_state("load")
        return {"first_paint_ms": painted, "at_paint": at_paint, "by_load": list(requested)}
    finally:
        await page.close()
