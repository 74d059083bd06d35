"""Drawing the review page from its rows, and writing it with its previews beside the videos.

`render_review_html` is pure (rows in, HTML out); `write_review_page` reads what the page
needs from the output location (the sidecars the run does not hold, the files already there),
makes the missing previews and writes `index.html`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jinja2
import pandas as pd

from prefect_runcomfy._version import __version__
from prefect_runcomfy.engine.outputs.store import MANIFEST_NAME, OutputStore
from prefect_runcomfy.models.base import ModelSpec
from prefect_runcomfy.report.review.chart import Chart, chart
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

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
"""The review page's file name under the output location."""

_TEMPLATE = "review.html.j2"


@dataclass(frozen=True)
class Page:
    """Everything the template shows."""

    title: str
    generator: str
    generated_at: str
    row_count: int
    rows_word: str
    manifest: str
    manifest_linked: bool
    tiles: list[Tile]
    chart: Chart | None
    filters: list[Filter]
    cards: list[Card]


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("prefect_runcomfy.report", "templates"),
        autoescape=True,  # every value is user text until proven otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["file_url"] = file_url
    return environment.get_template(_TEMPLATE)


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
    """The review page for `manifest` as one self-contained HTML document. Pure: no I/O.

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
    """The review page of rows already read (`read_rows`); the arguments as
    `render_review_html`'s. Pure: no I/O."""
    have: Have = (lambda name: True) if assets is None else set(assets).__contains__
    summary = rows_summary(rows)
    page = Page(
        title=title,
        generator=f"prefect-runcomfy {__version__}",
        generated_at=generated_at,
        row_count=len(rows),
        rows_word="row" if len(rows) == 1 else "rows",
        manifest=MANIFEST_NAME,
        manifest_linked=have(MANIFEST_NAME),
        tiles=tiles(summary),
        chart=chart(rows),
        filters=filters(summary),
        cards=[card(row, have, output_uri) for row in rows],
    )
    return _template().render(page=page)


def write_review_page(
    store: OutputStore,
    manifest: pd.DataFrame,
    model: ModelSpec,
    *,
    input_storage_options: dict[str, Any] | None = None,
    title: str | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write `index.html` for `manifest` under `store` (atomically); returns its URI.

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
        StorageError: only when `index.html` itself cannot be written.

    Example:
        ```python
        write_review_page(OutputStore("out"), OutputStore("out").read_manifest(), model)
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
    page = render_rows(
        rows,
        title=title or f"Talking videos · {folder}",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        assets=present,
        output_uri=store.output_uri,
    )
    return store.write_bytes(INDEX_NAME, page.encode("utf-8"))


def _present(store: OutputStore) -> set[str]:
    """The files already beside the page; none when the folder cannot be listed."""
    try:
        return set(store.list())
    except Exception as exc:
        logger.warning("Review page: cannot list %s: %s", store.uri(""), exc)
        return set()


__all__ = ["INDEX_NAME", "Page", "render_review_html", "render_rows", "write_review_page"]
