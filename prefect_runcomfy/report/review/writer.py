"""Drawing the review from its rows, and writing it with its previews beside the videos.

`render_review_files` is pure (rows in, HTML files out: `index.html` alone for a small run,
with `_review/page-NNNN.html` for a big one; see `pages`); `render_review_html` gives its
`index.html`. `write_review_page` reads what the review needs from the output location (the
sidecars the run does not hold, the files already there), makes the missing previews, writes
the files and deletes the pages an earlier, bigger review left.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import jinja2
import pandas as pd

from prefect_runcomfy._version import __version__
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.models.base import ModelSpec
from prefect_runcomfy.report.links import FileLinks
from prefect_runcomfy.report.review.chart import Chart, chart
from prefect_runcomfy.report.review.pages import (
    CARDS_PER_PAGE,
    INDEX_CARD_BYTES,
    INDEX_CARDS,
    INDEX_PAGES,
    PAGE_CARD_BYTES,
    Jump,
    PageEntry,
    PagerLink,
    StatusCount,
    entries,
    jumps,
    pager,
    split,
    stale_pages,
)
from prefect_runcomfy.report.review.previews import (
    make_portraits,
    make_posters,
    missing_previews,
)
from prefect_runcomfy.report.review.rows import (
    ReviewRow,
    file_ids,
    read_review_sidecars,
    read_rows,
)
from prefect_runcomfy.report.review.signed import is_signed_name, signed_copies, signed_name
from prefect_runcomfy.report.review.view import (
    Card,
    Filter,
    Have,
    Tile,
    card,
    file_url,
    filters,
    rows_summary,
    tiles,
)
from prefect_runcomfy.report.summary import attention_rank

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
"""The review page's file name under the output location (a big review's index)."""

_SINGLE, _INDEX, _PAGE = "review.html.j2", "review_index.html.j2", "review_page.html.j2"
_MACROS = "review_macros.html.j2"


@dataclass(frozen=True)
class Head:
    """What every file of the review shows at its top and bottom."""

    title: str
    generator: str
    generated_at: str
    row_count: int
    rows_word: str
    manifest: str
    manifest_linked: bool
    base: str = ""
    """The way from the file to the output location: "" beside it, "../" from the pages."""


@dataclass(frozen=True)
class Page:
    """A small run's review: one page, every card on it."""

    head: Head
    tiles: list[Tile]
    chart: Chart | None
    filters: list[Filter]
    cards: list[str]
    """Each card's markup, rendered (and escaped) by the `card_html` macro."""


@dataclass(frozen=True)
class IndexPage:
    """A big review's `index.html`: the summary, the chart, the rows that need a person (the
    first `INDEX_CARDS`) and every page of cards."""

    head: Head
    tiles: list[Tile]
    chart: Chart | None
    jumps: list[Jump]
    first_page: str
    attention: list[str]
    attention_total: int
    pages: list[PageEntry]
    """The first `INDEX_PAGES` pages."""
    page_total: int


@dataclass(frozen=True)
class CardsPage:
    """One page of a big review's cards, under `_review/`."""

    head: Head
    entry: PageEntry
    total: int
    pager: list[PagerLink]
    filters: list[StatusCount]
    cards: list[str]


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("prefect_runcomfy.report", "templates"),
        autoescape=True,  # every value is user text until proven otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["file_url"] = file_url
    return environment


def _render(template: str, page: Page | IndexPage | CardsPage) -> str:
    return _environment().get_template(template).render(page=page)


def _cards_html(cards: Sequence[Card], base: str, *, lazy: bool) -> list[str]:
    """Each card's markup (escaped by the template), its links starting with `base`."""
    # Markup (not str): the page templates insert it as it is, escaped once already.
    macros = _environment().get_template(_MACROS).module
    return [macros.card_html(c, base, lazy) for c in cards]  # type: ignore[attr-defined]


def render_review_html(
    manifest: pd.DataFrame,
    model: ModelSpec,
    *,
    sidecars: Mapping[str, Mapping[str, Any]],
    title: str,
    generated_at: str,
    assets: Collection[str] | None = None,
    output_uri: str | None = None,
) -> str:
    """The review's `index.html` for `manifest`: the whole review for a small run, the index
    of its pages for a big one (`render_review_files` gives them all). Pure: no I/O.

    Args:
        manifest: the manifest (any subset of its columns; older runs' manifests work).
        model: the model the rows are jobs of (which inputs are settings, media, prompt).
        sidecars: each row's sidecar JSON, keyed by row id (or by `<id>.json`); missing rows
            are fine. Used for what the manifest lacks (parameters as sent, probed facts).
        title: the page title (escaped like everything else).
        generated_at: when the page was made, shown as given.
        assets: names of the files beside the page. When given, posters, portraits, videos
            and sidecars not in it are not linked (no broken images); None assumes all exist.
        output_uri: shown in the `prefect-runcomfy collect` advice for timed-out rows.

    Example:
        ```python
        page = render_review_html(
            manifest, model, sidecars={}, title="Videos", generated_at="now"
        )
        ```
    """
    return render_rows(
        read_rows(manifest, sidecars, model),
        title=title,
        generated_at=generated_at,
        assets=assets,
        output_uri=output_uri,
    )


def render_rows(
    rows: list[ReviewRow],
    *,
    title: str,
    generated_at: str,
    assets: Collection[str] | None = None,
    output_uri: str | None = None,
) -> str:
    """The review's `index.html` of rows already read (`read_rows`); the arguments as
    `render_review_html`'s. Pure: no I/O."""
    files = render_review_files(
        rows, title=title, generated_at=generated_at, assets=assets, output_uri=output_uri
    )
    return files[INDEX_NAME]


def render_review_files(
    rows: list[ReviewRow],
    *,
    title: str,
    generated_at: str,
    assets: Collection[str] | None = None,
    output_uri: str | None = None,
) -> dict[str, str]:
    """Every file of the review of `rows`, by name under the output location: `index.html`
    alone when the cards fit one page (`CARDS_PER_PAGE`, `PAGE_CARD_BYTES`), else the index
    and `_review/page-NNNN.html` (see `pages`). The arguments as `render_review_html`'s.
    Pure: no I/O.

    Example:
        ```python
        files = render_review_files(rows, title="Videos", generated_at="now")
        sorted(files)  # ['_review/page-0001.html', ..., 'index.html'] at 20,000 rows
        ```
    """
    have: Have = (lambda name: True) if assets is None else set(assets).__contains__
    summary = rows_summary(rows)
    head = Head(
        title=title,
        generator=f"prefect-runcomfy {__version__}",
        generated_at=generated_at,
        row_count=len(rows),
        rows_word="row" if len(rows) == 1 else "rows",
        manifest=MANIFEST_NAME,
        manifest_linked=have(MANIFEST_NAME),
    )
    cards = [card(row, have, output_uri) for row in rows]
    drawn = chart(rows)
    if len(cards) <= CARDS_PER_PAGE:
        markup = _cards_html(cards, "", lazy=False)
        if sum(len(m.encode()) + 1 for m in markup) <= PAGE_CARD_BYTES:
            page = Page(head, tiles(summary), drawn, filters(summary), markup)
            return {INDEX_NAME: _render(_SINGLE, page)}
    return _paged(cards, head, tiles(summary), drawn)


def _paged(
    cards: list[Card], head: Head, tile_list: list[Tile], drawn: Chart | None
) -> dict[str, str]:
    """The index and the pages of a review too big for one page."""
    ordered = sorted(cards, key=lambda c: attention_rank(c.status))  # stable: manifest order
    markup = _cards_html(ordered, "../", lazy=True)
    ranges = split(
        [len(m.encode()) + 1 for m in markup], per_page=CARDS_PER_PAGE, budget=PAGE_CARD_BYTES
    )
    listed = entries(ordered, ranges)
    inner = replace(head, base="../")
    files = {
        entry.name: _render(
            _PAGE,
            CardsPage(
                inner,
                entry,
                len(listed),
                pager(entry.number, len(listed)),
                entry.counts,
                markup[part.start : part.stop],
            ),
        )
        for entry, part in zip(listed, ranges, strict=True)
    }
    cancelled = attention_rank(RowStatus.CANCELLED)
    needing = [c for c in ordered if attention_rank(c.status) < cancelled]  # unknown words too
    shown = _cards_html(needing[:INDEX_CARDS], "", lazy=True)
    sizes = itertools.accumulate(len(m.encode()) + 1 for m in shown)
    shown = [m for m, used in zip(shown, sizes, strict=True) if used <= INDEX_CARD_BYTES]
    index = IndexPage(
        head,
        tile_list,
        drawn,
        jumps(listed),
        listed[0].name,
        shown,
        len(needing),
        listed[:INDEX_PAGES],
        len(listed),
    )
    files[INDEX_NAME] = _render(_INDEX, index)
    return files


@dataclass(frozen=True)
class WrittenReview:
    """Where a written review is: its `index.html`, and the signed copy a link can open."""

    uri: str
    """The URI of `index.html` (relative links: the lasting review)."""
    signed_url: str | None = None
    """A pre-signed URL of the signed copy's index (`signed`), None when the store cannot sign."""
    links: FileLinks | None = None
    """The signature's lifetime and words (None when not signed)."""


def write_review_page(
    store: OutputStore,
    manifest: pd.DataFrame,
    model: ModelSpec,
    *,
    input_storage_options: dict[str, Any] | None = None,
    title: str | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write the review of `manifest` under `store` (each file atomically); returns the URI of
    its `index.html`: the whole review for a small run, the index of `_review/page-NNNN.html`
    for a big one (see `render_review_files`). Pages an earlier, bigger review left are
    deleted. No signed copy (`write_review` writes one where the store can sign).

    First creates the previews that are missing: `<id>.portrait.jpg` from each row's input
    `image` (read with `input_storage_options`), and `<id>.poster.jpg` for succeeded rows
    (their video is downloaded to a temporary file when the store is remote). A preview that
    cannot be made is skipped, so a page is always written. Sync; blocking I/O.

    Args:
        store: the output location.
        manifest: usually the merged `manifest.parquet` (every row stored there).
        model: the model the rows are jobs of.
        input_storage_options: fsspec options for reading `s3://` / `gs://` portraits.
        title: the page title; default "Talking videos · <folder name>".
        known: the sidecars of the rows a run holds in memory (each `sidecar_of` a record,
            `{}` for a row that has none), keyed by row id: only the other rows' sidecars are
            read from the store.

    Raises:
        StorageError: only when a file of the review itself cannot be written.

    Example:
        ```python
        write_review_page(OutputStore("out"), OutputStore("out").read_manifest(), model)
        ```
    """
    return write_review(
        store,
        manifest,
        model,
        input_storage_options=input_storage_options,
        title=title,
        known=known,
        link_expires_s=0,
    ).uri


def write_review(
    store: OutputStore,
    manifest: pd.DataFrame | None,
    model: ModelSpec,
    *,
    input_storage_options: dict[str, Any] | None = None,
    title: str | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    link_expires_s: int | None = None,
) -> WrittenReview:
    """`write_review_page`, plus, where the store can sign (S3, GCS), the signed copy of every
    file of the review (`signed`) whose links live `link_expires_s` seconds (default
    `RUNCOMFY_LINK_EXPIRES_S`, 7 days; 0: no copy). Returns where both are.

    Example:
        ```python
        written = write_review(OutputStore("s3://bkt/out"), manifest, model)
        written.signed_url   # 'https://bkt.s3.amazonaws.com/out/_review/signed-index.html?...'
        ```
    """
    if manifest is None:
        manifest = pd.DataFrame(columns=["id", "status"])
    held = {k: dict(v) for k, v in (known or {}).items()}
    unheld = [i for i in file_ids(manifest) if i not in held]
    rows = read_rows(manifest, {**read_review_sidecars(store, unheld), **held}, model)
    present = _present(store)
    portraits, posters = missing_previews(rows, present)
    present |= make_portraits(store, portraits, input_storage_options)
    present |= make_posters(store, posters)
    present.add(INDEX_NAME)

    folder = store.uri("").rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or store.uri("")
    files = render_review_files(
        rows,
        title=title or f"Talking videos · {folder}",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        assets=present,
        output_uri=store.output_uri,
    )
    links = FileLinks.make(store, [signed_name(INDEX_NAME)], link_expires_s)
    expires = links.expires_s
    copies: dict[str, str] = {}
    if links.signs:
        note = (
            f"A shared copy: its {links.lifetime}. The lasting review is {INDEX_NAME} in "
            f"{store.uri('')} (download the folder, or serve it)."
        )
        copies = signed_copies(files, lambda names: store.sign_many(names, expires), note)
    uri = write_review_files(store, {**copies, **files}, present)
    signed_url = links.url(signed_name(INDEX_NAME)) if copies else None
    return WrittenReview(uri, signed_url, links if signed_url else None)


def write_review_files(
    store: OutputStore, files: Mapping[str, str], present: Collection[str] = ()
) -> str:
    """Write the review's `files` (`render_review_files`) under `store` and return the URI of
    its `index.html`. The pages go first and the index last, so the index never links a page
    not yet written; then the pages of an earlier, bigger review that are among `present` (the
    files there before) and not in `files` are deleted.

    Raises:
        StorageError: when a file of the review cannot be written (a stale page that cannot
            be deleted is only logged).
    """
    pages = [name for name in files if name != INDEX_NAME]  # signed copies among them
    if pages:
        with ThreadPoolExecutor(max_workers=min(8, len(pages))) as pool:
            list(pool.map(lambda n: store.write_bytes(n, files[n].encode("utf-8")), pages))
    uri = store.write_bytes(INDEX_NAME, files[INDEX_NAME].encode("utf-8"))
    stale = stale_pages(present, files) + [
        n for n in present if is_signed_name(n) and n not in files
    ]
    for name in stale:
        try:
            store.delete(name)
        except Exception as exc:
            logger.warning("Review page: cannot delete the stale %s: %s", name, exc)
    return uri


def _present(store: OutputStore) -> set[str]:
    """The files already beside the page; none when the folder cannot be listed."""
    try:
        return set(store.list())
    except Exception as exc:
        logger.warning("Review page: cannot list %s: %s", store.uri(""), exc)
        return set()


__all__ = [
    "INDEX_NAME",
    "CardsPage",
    "Head",
    "IndexPage",
    "Page",
    "WrittenReview",
    "render_review_files",
    "render_review_html",
    "render_rows",
    "write_review",
    "write_review_files",
    "write_review_page",
]
