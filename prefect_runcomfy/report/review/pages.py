"""How a big review is cut into files: `index.html` and pages of cards under `_review/`.

A review whose cards fit one page (`CARDS_PER_PAGE` cards, `PAGE_CARD_BYTES` of markup) is one
`index.html`, as it always was. A bigger one is an index (the header, the chart, the rows that
need a person, and a list of pages) plus `_review/page-0001.html`, … each holding at most
`CARDS_PER_PAGE` cards and `PAGE_CARD_BYTES` of them, so every file stays under a megabyte
whatever the number of rows. The pages list the rows that need a person first (see
`attention_rank`), each status in the manifest's order, so a status's rows are on
consecutive pages and the index can link to where each status starts.

Pure: card sizes and cards in, page plans out; the writer renders and writes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prefect_runcomfy.report.review.view import Card

PAGES_FOLDER = "_review"
"""The folder, under the output location, of a big review's pages."""

CARDS_PER_PAGE = 250
"""The most cards on one page (and on a small run's single page)."""

PAGE_CARD_BYTES = 800_000
"""The most bytes of card markup on one page: with the page's own ~20 KB (styles, header,
links to other pages) a page stays under 1 MB. A card is 1 to 3 KB; one with a very long prompt
or error is larger, and pages then hold fewer cards."""

INDEX_CARDS = 100
"""The most cards of rows that need a person on a big review's index (the pages hold all)."""

INDEX_CARD_BYTES = 400_000
"""The most bytes of those cards on the index."""

INDEX_PAGES = 500
"""The most pages the index lists (125,000 rows and more): an entry is 300 to 800 bytes (its
first and last ids are up to 128 characters each), so the list stays under 400 KB and the
index, with its cards, under 1 MB. The pages' pagers reach the rest."""

_PAGE_FILE = re.compile(rf"{PAGES_FOLDER}/page-\d{{4,}}\.html")


def page_name(number: int) -> str:
    """The file of page `number` (from 1), relative to the output location."""
    return f"{PAGES_FOLDER}/page-{number:04d}.html"


def is_page_name(name: str) -> bool:
    """Whether `name` (relative to the output location) is a page of a review."""
    return _PAGE_FILE.fullmatch(name) is not None


def stale_pages(present: Iterable[str], written: Iterable[str]) -> list[str]:
    """The pages in `present` that this review did not write (an earlier, bigger review's)."""
    kept = set(written)
    return sorted(n for n in present if is_page_name(n) and n not in kept)


def split(sizes: Sequence[int], *, per_page: int, budget: int) -> list[range]:
    """Consecutive cards (their sizes in bytes, in order) cut into pages of at most `per_page`
    cards and `budget` bytes; a card bigger than `budget` has a page of its own."""
    pages: list[range] = []
    start = used = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= per_page or used + size > budget):
            pages.append(range(start, i))
            start, used = i, 0
        used += size
    if sizes:
        pages.append(range(start, len(sizes)))
    return pages


@dataclass(frozen=True)
class StatusCount:
    """How many rows of one status, as the pages and the index say it."""

    status: str
    status_class: str
    label: str
    count: int


@dataclass(frozen=True)
class PageEntry:
    """One page of cards, as the index lists it and its own header says it."""

    number: int
    name: str
    """The page's file, relative to the output location."""
    first: int
    """The position (from 1) of its first card among all cards, in the pages' order."""
    last: int
    first_id: str
    last_id: str
    counts: list[StatusCount]


@dataclass(frozen=True)
class Jump:
    """A status, its rows, and the pages they are on: the index's way to each status."""

    status: str
    status_class: str
    label: str
    count: int
    page: str
    """The first page with a row of this status, relative to the output location."""
    pages: str
    """The pages in words: `page 3`, `pages 1-5` (with an en dash)."""


@dataclass(frozen=True)
class PagerLink:
    """One link of a page's pager; `name` is None for the page itself and for a gap (`…`)."""

    text: str
    name: str | None
    """The file linked, relative to the pages' folder."""
    current: bool = False
    """Whether this is the page itself."""


def status_counts(cards: Iterable[Card]) -> list[StatusCount]:
    """The statuses of `cards` with their counts, in the order they first appear."""
    found: dict[str, StatusCount] = {}
    for card in cards:
        seen = found.get(card.status)
        count = seen.count + 1 if seen else 1
        found[card.status] = StatusCount(card.status, card.status_class, card.label, count)
    return list(found.values())


def entries(cards: Sequence[Card], pages: Sequence[range]) -> list[PageEntry]:
    """The index's entry of every page (`pages`: ranges of `cards`)."""
    return [
        PageEntry(
            number=number,
            name=page_name(number),
            first=part.start + 1,
            last=part.stop,
            first_id=cards[part.start].id,
            last_id=cards[part.stop - 1].id,
            counts=status_counts(cards[i] for i in part),
        )
        for number, part in enumerate(pages, start=1)
    ]


def jumps(pages: Sequence[PageEntry]) -> list[Jump]:
    """Every status with its rows' count and the pages they are on, in the pages' order."""
    where: dict[str, list[PageEntry]] = {}
    counts: dict[str, StatusCount] = {}
    for page in pages:
        for c in page.counts:
            where.setdefault(c.status, []).append(page)
            known = counts.get(c.status)
            counts[c.status] = StatusCount(
                c.status, c.status_class, c.label, c.count + (known.count if known else 0)
            )
    found = []
    for status, on in where.items():
        c = counts[status]
        span = (
            f"page {on[0].number}" if len(on) == 1 else f"pages {on[0].number}\u2013{on[-1].number}"
        )
        found.append(Jump(status, c.status_class, c.label, c.count, on[0].name, span))
    return found


def pager(number: int, total: int, *, around: int = 3) -> list[PagerLink]:
    """The links of page `number`'s pager (of `total`): previous, the first and last pages,
    the pages `around` it, next. A few dozen links however many pages there are."""
    shown = sorted(
        {1, total} | set(range(max(1, number - around), min(total, number + around) + 1))
    )
    links = [PagerLink("\u2039 previous", page_file(number - 1) if number > 1 else None)]
    for i, n in enumerate(shown):
        if i and n - shown[i - 1] > 1:
            links.append(PagerLink("…", None))
        links.append(PagerLink(str(n), None if n == number else page_file(n), n == number))
    links.append(PagerLink("next \u203a", page_file(number + 1) if number < total else None))
    return links


def page_file(number: int) -> str:
    """Page `number`'s file name, relative to the pages' folder (how pages link each other)."""
    return page_name(number).rsplit("/", 1)[-1]


__all__ = [
    "CARDS_PER_PAGE",
    "INDEX_CARDS",
    "INDEX_CARD_BYTES",
    "INDEX_PAGES",
    "PAGES_FOLDER",
    "PAGE_CARD_BYTES",
    "Jump",
    "PageEntry",
    "PagerLink",
    "StatusCount",
    "entries",
    "is_page_name",
    "jumps",
    "page_file",
    "page_name",
    "pager",
    "split",
    "stale_pages",
    "status_counts",
]
