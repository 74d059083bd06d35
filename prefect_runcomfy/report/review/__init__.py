"""The review page: `<output_uri>/index.html`, a card per manifest row, rewritten every run.

A small run's review is one self-contained HTML file: inline CSS, an inline SVG chart and a
few lines of inline JavaScript (status filters; everything is readable without it). A big
run's (more than `CARDS_PER_PAGE` rows) is an index, with the summary, a chart by time
bucket, the first rows that need a person and a list of pages, plus pages of cards under
`_review/` (`_review/page-0001.html`, ...), the rows that need a person first, each file under
1 MB at any number of rows; their players load nothing until played and their posters come
as the cards near the screen. Every file loads nothing from the network and links only files
of its output location by relative links (`alice.mp4`, `../alice.poster.jpg`, `alice.json`,
`manifest.parquet`), and reads no file with `fetch()`, so it works opened from a local folder,
downloaded from a bucket, or served by any static host.

The markup is Jinja2 templates under `templates/` (`review_layout.html.j2` and the parts in
`review_macros.html.j2`; `review.html.j2` for a small run, `review_index.html.j2` and
`review_page.html.j2` for a big one; `review.css` and `review.js` beside them), rendered with
autoescaping on: every value from the data (prompts are user text) is HTML-escaped, and ids
in links are percent-encoded as well. Python only reads the rows and prepares what the
templates show, as plain strings and numbers, one job a module:

- `rows`: manifest rows (and their sidecars) read into `ReviewRow`s, by the record's readers;
- `view`: the header's tiles, the filters and a card per row; `advice`: what to do per status;
- `chart`: the queue and run time chart (a bar per row, or per time bucket);
- `pages`: how a big review is cut into files, and their links;
- `previews`: `<id>.portrait.jpg` and `<id>.poster.jpg` made where missing
  (see `prefect_runcomfy.engine.outputs.previews`);
- `writer`: `render_review_files` (pure) and `write_review_page` (reads, makes previews,
  writes, deletes stale pages).

```python
store = OutputStore("s3://bucket/videos")
manifest = store.read_manifest()
write_review_page(store, manifest, model)   # 's3://bucket/videos/index.html'
```
"""

from __future__ import annotations

from prefect_runcomfy.report.review.advice import advice_for
from prefect_runcomfy.report.review.chart import CHART_MAX_ROWS
from prefect_runcomfy.report.review.pages import CARDS_PER_PAGE, PAGES_FOLDER
from prefect_runcomfy.report.review.previews import read_input_image
from prefect_runcomfy.report.review.rows import ReviewRow, read_rows
from prefect_runcomfy.report.review.writer import (
    INDEX_NAME,
    WrittenReview,
    render_review_files,
    render_review_html,
    render_rows,
    write_review,
    write_review_files,
    write_review_page,
)

__all__ = [
    "CARDS_PER_PAGE",
    "CHART_MAX_ROWS",
    "INDEX_NAME",
    "PAGES_FOLDER",
    "ReviewRow",
    "WrittenReview",
    "advice_for",
    "read_input_image",
    "read_rows",
    "render_review_files",
    "render_review_html",
    "render_rows",
    "write_review",
    "write_review_files",
    "write_review_page",
]
