"""Benchmark: the review page of a big run, 20,000 synthetic rows by default.

The rows are the tests' (`tests/review_rows.py`: every 40th needs a person, every 97th other
one was cancelled, the rest succeeded; finish times 1.6 s apart; a few prompts of the maximal
10,000 characters). Empty stand-ins of each row's portrait, video and poster are put in a
temporary folder first, so the cards link them and no preview is made; then `write_review_page`
writes the review there as a run's last step does (the manifest read into cards, the sidecars
looked for, the folder listed, the files rendered and written). Recorded: the number of files,
the largest, the index, the total, and the time to write; then, when Chromium and Playwright
are there, the first contentful paint of `index.html`, the first page and the last page
(best of three loads each, ms from navigation start) and what each requested by `load`.

    .venv/bin/python benchmarks/review_pages.py            # 20,000 rows; about a minute
    .venv/bin/python benchmarks/review_pages.py --rows 4000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' rows

from _common import machine, save
from review_rows import first_paint, seed_files, synthetic_manifest

from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.review import INDEX_NAME, write_review_page

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write(rows: int, folder: Path) -> dict[str, Any]:
    """Write the review of `rows` synthetic rows into `folder`; its files' figures."""
    store = OutputStore(str(folder))
    manifest = synthetic_manifest(rows)
    seeded = seed_files(store, manifest)
    start = time.perf_counter()
    write_review_page(store, manifest, INFINITE_TALK)
    seconds = time.perf_counter() - start
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*.html")}
    largest = max(sizes, key=lambda name: sizes[name])
    return {
        "rows": rows,
        "rows_needing_a_person": int(
            manifest["status"].isin(["failed", "invalid", "timed_out", "outcome_unknown"]).sum()
        ),
        "files_beside_seeded": seeded,
        "write_seconds": round(seconds, 2),
        "file_count": len(sizes),
        "largest_file": {"name": largest, "bytes": sizes[largest]},
        "index_bytes": sizes[INDEX_NAME],
        "total_bytes": sum(sizes.values()),
        "pages": sorted(n for n in sizes if n != INDEX_NAME),
    }


async def paint(folder: Path, names: list[str]) -> dict[str, Any] | str:
    """First contentful paint of each of `names` in headless Chromium (best of three), or why
    it could not be measured."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "no chromium on PATH (apt-get install chromium)"
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return "the playwright package is not installed"
    found: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for name in names:
                loads = [await first_paint(browser, (folder / name).as_uri()) for _ in range(3)]
                times = [seen["first_paint_ms"] for seen in loads]
                fetched = [u for u in loads[-1]["by_load"] if not u.endswith(".html")]
                found[name] = {
                    "first_paint_ms": min(t for t in times if t is not None),
                    "first_paint_ms_each": times,
                    "videos_requested_by_load": sum(u.endswith(".mp4") for u in fetched),
                    "images_requested_by_load": sum(u.endswith(".jpg") for u in fetched),
                }
        finally:
            await browser.close()
    return found


def main() -> None:
    """Measure, print and save `results/review_pages_<rows>.json`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "command": "benchmarks/review_pages.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="review-pages-") as tmp:
        folder = Path(tmp) / "videos"
        written = write(args.rows, folder)
        pages = written.pop("pages")
        result["review"] = written
        shown = [INDEX_NAME, *([pages[0], pages[-1]] if pages else [])]
        result["first_paint"] = asyncio.run(paint(folder, shown))
    path = save(f"review_pages_{args.rows}", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
