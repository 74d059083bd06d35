"""The review page: `<output_uri>/index.html`, one card per manifest row, rewritten every run.

The page is a single self-contained HTML file: inline CSS, an inline SVG chart and a few lines
of inline JavaScript (status filters; everything is readable without it). It loads nothing
from the network and links only file names in its own folder (`alice.mp4`,
`alice.poster.jpg`, `alice.json`, `manifest.parquet`), so it works opened from a local folder,
downloaded from a bucket, or served by any static host.

The markup is the Jinja2 template `templates/review.html.j2` (with `review.css` and
`review.js` beside it), rendered with autoescaping on: every value from the data (prompts are
user text) is HTML-escaped, and ids in links are percent-encoded as well. Python only reads
the rows and prepares what the template shows, as plain strings and numbers, one job a module:

- `rows`: manifest rows (and their sidecars) read into `ReviewRow`s, by the record's readers;
- `view`: the header's tiles, the filters and a card per row; `advice`: what to do per status;
- `chart`: the queue and run time chart;
- `previews`: `<id>.portrait.jpg` and `<id>.poster.jpg` made where missing
  (see `prefect_runcomfy.engine.outputs.previews`);
- `writer`: `render_review_html` (pure) and `write_review_page` (reads, makes previews, writes).

```python
store = OutputStore("s3://bucket/videos")
manifest = store.read_manifest()
write_review_page(store, manifest, model)   # 's3://bucket/videos/index.html'
```
"""

from __future__ import annotations

from prefect_runcomfy.report.review.advice import advice_for
from prefect_runcomfy.report.review.chart import CHART_MAX_ROWS
from prefect_runcomfy.report.review.previews import read_input_image
from prefect_runcomfy.report.review.rows import ReviewRow, read_rows
from prefect_runcomfy.report.review.writer import (
    INDEX_NAME,
    render_review_html,
    render_rows,
    write_review_page,
)

__all__ = [
    "CHART_MAX_ROWS",
    "INDEX_NAME",
    "ReviewRow",
    "advice_for",
    "read_input_image",
    "read_rows",
    "render_review_html",
    "render_rows",
    "write_review_page",
]
