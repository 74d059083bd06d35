"""The review of a big run: 20,000 rows written as an index and pages of cards, every file
under 1 MB, every link a relative one to a written file, the rows that need a person first;
the chart by time bucket; an earlier, bigger review's pages deleted on a rewrite; a small run
still one page. (First paint in Chromium: tests/test_review_browser.py.)"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
from review_rows import NEEDING, broken_links, seed_files, synthetic_manifest

from prefect_runcomfy.engine.outputs.manifest import build_manifest
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.review import INDEX_NAME, read_rows, write_review_page
from prefect_runcomfy.report.review.chart import CHART_MAX_ROWS, MAX_BUCKETS, chart
from prefect_runcomfy.report.review.pages import (
    CARDS_PER_PAGE,
    INDEX_CARDS,
    page_name,
    pager,
    split,
)
from prefect_runcomfy.report.review.writer import render_review_files
from prefect_runcomfy.report.summary import attention_rank

MB = 1_000_000
ROWS = 20_000
STATUS = re.compile(r'<article class="card [^"]*" data-status="([^"]*)" id="row-([^"]*)"')


@dataclass
class Written:
    """A review written to memory://, read back."""

    manifest: pd.DataFrame
    uri: str
    index_uri: str
    names: set[str]
    pages: dict[str, str]


@pytest.fixture(scope="module")
def big() -> Iterator[Written]:
    """The review of 20,000 synthetic rows (every 40th needs a person), written once through
    `write_review_page` to a memory:// output location beside stand-ins of its files."""
    root = f"memory://review-pages-{uuid.uuid4().hex[:8]}"
    store = OutputStore(f"{root}/videos")
    manifest = synthetic_manifest(ROWS)
    try:
        seed_files(store, manifest)
        uri = write_review_page(store, manifest, INFINITE_TALK)
        names = set(store.list())
        pages = {n: (store.read_bytes(n) or b"").decode() for n in names if n.endswith(".html")}
        yield Written(manifest, uri, store.uri(INDEX_NAME), names, pages)
    finally:  # fsspec's memory rm(recursive=True) takes minutes over 60,000 files
        memory = fsspec.filesystem("memory")
        folder = root.removeprefix("memory:/")
        for path in [p for p in memory.store if p.startswith(folder + "/")]:
            del memory.store[path]
        memory.pseudo_dirs[:] = [d for d in memory.pseudo_dirs if not d.startswith(folder)]


def cards(markup: str) -> list[tuple[str, str]]:
    """(status, id) of every card in `markup`, in order."""
    return STATUS.findall(markup)


def test_20000_rows_are_an_index_and_pages_each_under_a_megabyte(big: Written) -> None:
    assert big.uri == big.index_uri
    pages = sorted(n for n in big.pages if n != INDEX_NAME)
    assert pages == [page_name(i) for i in range(1, len(pages) + 1)]
    assert ROWS / CARDS_PER_PAGE <= len(pages) < ROWS / CARDS_PER_PAGE * 1.5
    sizes = {name: len(markup.encode()) for name, markup in big.pages.items()}
    assert max(sizes.values()) <= MB, sorted(sizes.items(), key=lambda kv: kv[1])[-3:]
    assert sizes[INDEX_NAME] < 400_000, "the index holds no row's card beyond the first few"
    # every row's card is on exactly one page
    shown = [row_id for name in pages for _, row_id in cards(big.pages[name])]
    assert len(shown) == ROWS and len(set(shown)) == ROWS
    # Nothing downloads at first paint: players load nothing, posters wait for the script.
    for name in pages:
        markup = big.pages[name]
        assert markup.count("<video") == markup.count('preload="none"')
        assert " poster=" not in markup
        # nothing is embedded per row: the favicon's empty data: URL is the only one
        assert markup.count("data:") == 1, name
    index = big.pages[INDEX_NAME]
    assert "<video" not in index and index.count("data:") == 1
    assert len(cards(index)) <= INDEX_CARDS


def test_every_link_of_the_review_is_relative_and_resolves_to_a_written_file(
    big: Written,
) -> None:
    assert broken_links(big.pages, big.names) == []
    index = big.pages[INDEX_NAME]
    for i in range(1, len(big.pages)):
        assert f'href="{page_name(i)}"' in index, "the index links every page"
    last = big.pages[page_name(len(big.pages) - 1)]
    assert 'href="../index.html"' in last and 'href="page-0001.html"' in last
    assert 'href="../manifest.parquet"' in last
    assert re.search(r'src="\.\./row-\d{5}\.mp4"', last)
    assert re.search(r'data-poster="\.\./row-\d{5}\.poster\.jpg"', last)


def test_the_rows_that_need_a_person_come_first(big: Written) -> None:
    needing = big.manifest[big.manifest["status"].isin(NEEDING)]
    in_order = needing.sort_values("status", key=lambda s: s.map(attention_rank), kind="stable")
    expected = list(zip(in_order["status"], in_order["id"], strict=True))
    index = big.pages[INDEX_NAME]
    shown = cards(index)
    assert shown == expected[: len(shown)] and len(shown) == INDEX_CARDS
    assert shown[0][0] == "failed"
    assert f'Rows that need a person <span class="c">{len(needing)}</span>' in index
    assert index.index("<article") < index.index('<ol class="pages">'), "cards before pages"
    # The pages list every row, the ones that need a person first, each status in the
    # manifest's order; the index links where each status starts.
    every = [c for name in sorted(big.pages) if name != INDEX_NAME for c in cards(big.pages[name])]
    assert every[: len(expected)] == expected
    ranks = [attention_rank(status) for status, _ in every]
    assert ranks == sorted(ranks)
    for status in ("failed", "cancelled", "succeeded"):
        first = next(i for i, (s, _) in enumerate(every) if s == status)
        page = page_name(first // CARDS_PER_PAGE + 1)
        assert f'href="{page}#status={status}"' in index, status


def test_a_rewrite_with_fewer_rows_deletes_the_pages_it_no_longer_has(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    pages = tmp_path / "out" / "_review"

    def review(rows: int) -> None:
        manifest = synthetic_manifest(rows)
        seed_files(store, manifest)
        write_review_page(store, manifest, INFINITE_TALK)

    review(1_200)
    assert len(list(pages.glob("page-*.html"))) == 5
    (pages / "notes.txt").write_text("not ours")  # a file of the user's is left alone
    review(600)
    assert sorted(p.name for p in pages.iterdir()) == [
        "notes.txt", "page-0001.html", "page-0002.html", "page-0003.html"
    ]  # fmt: skip
    assert "row-00599" in (pages / "page-0003.html").read_text()
    review(3)
    assert sorted(p.name for p in pages.iterdir()) == ["notes.txt"]
    index = (tmp_path / "out" / INDEX_NAME).read_text()
    assert len(cards(index)) == 3 and "_review/" not in index


def test_a_small_run_is_still_one_page_with_every_card() -> None:
    rows = read_rows(synthetic_manifest(CARDS_PER_PAGE), {}, INFINITE_TALK)
    files = render_review_files(rows, title="t", generated_at="now")
    assert list(files) == [INDEX_NAME]
    index = files[INDEX_NAME]
    assert [i for _, i in cards(index)] == [r.id for r in rows], "the manifest's order"
    assert 'preload="metadata"' in index and ' poster="row-' in index
    assert 'id="filters"' in index
    bigger = read_rows(synthetic_manifest(CARDS_PER_PAGE + 1), {}, INFINITE_TALK)
    assert len(render_review_files(bigger, title="t", generated_at="now")) == 3


def test_huge_texts_are_clipped_and_a_page_stays_under_a_megabyte() -> None:
    huge = "<b>error</b> " * 3_000  # 39,000 characters, 70 KB escaped
    manifest = build_manifest(
        [
            {"id": f"r{i}", "status": "failed", "error": huge, "prompt": huge}
            for i in range(CARDS_PER_PAGE + 50)
        ],
        INFINITE_TALK,
    )
    files = render_review_files(
        read_rows(manifest, {}, INFINITE_TALK), title="t", generated_at="now"
    )
    assert max(len(m.encode()) for m in files.values()) <= MB
    assert "more characters)" in files[page_name(1)]
    assert len(files) > 3, "pages are cut by size when cards are big"


def test_the_chart_of_a_big_run_has_a_bar_per_time_bucket() -> None:
    rows = read_rows(synthetic_manifest(8_000), {}, INFINITE_TALK)  # 3 h 33 min of finishes
    drawn = chart(rows)
    assert drawn is not None and drawn.bucketed
    assert len(drawn.bars) <= MAX_BUCKETS
    assert drawn.title.startswith("Mean queue and run time, by finish time (5 min")
    assert drawn.bars[0].label == "22:00"
    counted = sum(int(b.value.split(" ", 1)[0]) for b in drawn.bars)
    assert counted == sum(1 for r in rows if r.queue_s is not None or r.run_s is not None)
    # A manifest without finish times: bars by position in the table.
    undated = read_rows(synthetic_manifest(1_000).drop(columns=["finished_at"]), {}, INFINITE_TALK)
    by_order = chart(undated)
    assert by_order is not None and "by position" in by_order.title
    assert by_order.bars[0].label == "rows 1\u201321" and len(by_order.bars) <= MAX_BUCKETS
    few = chart(rows[:CHART_MAX_ROWS])
    assert few is not None and not few.bucketed and few.bars[0].label == "row-00000"


def test_pages_are_cut_by_count_and_size_and_the_pager_stays_short() -> None:
    sizes = [1_000] * 6 + [900_000] + [10] * 3
    assert split(sizes, per_page=4, budget=5_000) == [
        range(0, 4), range(4, 6), range(6, 7), range(7, 10)
    ]  # fmt: skip
    assert split([], per_page=4, budget=5_000) == []
    links = pager(40, 80)
    assert [link.text for link in links] == [
        "\u2039 previous", "1", "\u2026", "37", "38", "39", "40", "41", "42", "43", "\u2026",
        "80", "next \u203a",
    ]  # fmt: skip
    assert links[0].name == "page-0039.html" and [x.current for x in links].count(True) == 1
    assert pager(1, 1)[0].name is None and pager(1, 1)[-1].name is None


def test_the_index_lists_a_bounded_number_of_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `INDEX_PAGES` pages (125,000 rows) the index stops listing them, so it too stays
    under 1 MB; the pages' pagers reach the rest."""
    from prefect_runcomfy.report.review import writer

    monkeypatch.setattr(writer, "INDEX_PAGES", 2)
    rows = read_rows(synthetic_manifest(1_200), {}, INFINITE_TALK)
    files = render_review_files(rows, title="t", generated_at="now")
    index = files[INDEX_NAME]
    assert len(files) == 6 and "Every row, 5 pages" in index
    assert index.count('<li><a href="_review/') == 2
    assert "The other 3 pages are reached from each page's pager." in index


def test_a_big_review_on_s3_works_from_the_bucket_and_a_rewrite_deletes_stale_pages(
    s3_server: Any, s3_bucket: str
) -> None:
    """The same review in a bucket (moto): relative links only, so it works as files there;
    a rewrite for a small run deletes the pages."""
    store = OutputStore(f"s3://{s3_bucket}/night", s3_server.storage_options)

    def review(rows: int) -> dict[str, str]:
        # no portraits to link or make (they would be read from s3://bucket, not moto)
        manifest = synthetic_manifest(rows).drop(columns=["image"])
        assert write_review_page(store, manifest, INFINITE_TALK) == store.uri(INDEX_NAME)
        names = store.list()
        return {n: (store.read_bytes(n) or b"").decode() for n in names if n.endswith(".html")}

    first = review(CARDS_PER_PAGE + 10)
    assert sorted(first) == [page_name(1), page_name(2), INDEX_NAME]
    assert broken_links(first, set(store.list())) == []
    second = review(3)
    assert sorted(second) == [INDEX_NAME]
    assert broken_links(second, set(store.list())) == []
