"""The previews a review page shows beside its rows, made where they are missing:
`<id>.portrait.jpg` from the row's input image (read over HTTP, fsspec or a `data:` URI) and
`<id>.poster.jpg` from its stored video (see `prefect_runcomfy.engine.outputs.previews`).

A preview that cannot be made is left out, never an error: the page is drawn without it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import posixpath
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect_runcomfy.api.downloads import shared_ssl_context
from prefect_runcomfy.engine.outputs.previews import (
    MAX_IMAGE_BYTES,
    portrait_name,
    poster_name,
    store_poster,
    thumbnail,
)
from prefect_runcomfy.engine.outputs.scratch import staging_file, staging_folder
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.report.review.rows import ReviewRow, short_source

logger = logging.getLogger(__name__)


def read_input_image(
    value: str, *, storage_options: dict[str, Any] | None = None, timeout_s: float = 20.0
) -> bytes | None:
    """The bytes of a row's `image` as the user gave it, or None if it cannot be read.

    `http(s)://` is fetched with a plain GET (no credentials of ours are ever sent); `data:`
    URIs are decoded; anything else (`s3://`, `gs://`, a local path) is read through fsspec
    with `storage_options`. Never raises.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        if value.startswith("data:"):
            return _decode_data_uri(value)
        if value.lower().startswith(("http://", "https://")):
            return _fetch(value, timeout_s)
        import fsspec

        with fsspec.open(value, "rb", **(storage_options or {})) as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
            return None if len(data) > MAX_IMAGE_BYTES else bytes(data)
    except Exception as exc:  # any failure only means "no thumbnail"
        logger.debug("Cannot read the portrait %s: %s", short_source(value), exc)
        return None


def _fetch(url: str, timeout_s: float) -> bytes | None:
    """`url`'s body, or None when the answer is not 200 or is larger than an image may be."""
    import httpx

    with (
        httpx.Client(timeout=timeout_s, follow_redirects=True, verify=shared_ssl_context()) as http,
        http.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            return None
        chunks, total = [], 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > MAX_IMAGE_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def _decode_data_uri(value: str) -> bytes | None:
    head, _, payload = value.partition(",")
    try:
        if head.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


def missing_previews(
    rows: Iterable[ReviewRow], present: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The previews to make: `{row id: image}` for portraits, `{row id: video}` for posters."""
    portraits: dict[str, str] = {}
    posters: dict[str, str] = {}
    for row in rows:
        row_id = row.file_id
        if row_id is None:
            continue
        # A sidecar's image has no (pre-signed) query: only a public URL of it can be read.
        if row.image and portrait_name(row_id) not in present:
            portraits[row_id] = row.image
        if row.status == RowStatus.SUCCEEDED and poster_name(row_id) not in present:
            video = row.videos[0] if row.videos else f"{row_id}.mp4"
            if video in present:
                posters[row_id] = video
    return portraits, posters


def make_portraits(
    store: OutputStore,
    wanted: dict[str, str],
    input_storage_options: dict[str, Any] | None,
) -> set[str]:
    """Create `<id>.portrait.jpg` for every `{row id: image}`; returns the names written."""
    by_image: dict[str, list[str]] = {}
    for row_id, image in wanted.items():
        by_image.setdefault(image, []).append(row_id)

    def one(image: str, row_ids: list[str]) -> set[str]:
        # Rows often share a portrait: read and scale it once, store one copy per row.
        data = read_input_image(image, storage_options=input_storage_options)
        if not data:
            return set()
        done = set()
        with staging_file(".jpg") as tmp:
            if not thumbnail(data, tmp):
                return set()
            for row_id in row_ids:
                try:
                    store.put_file(tmp, portrait_name(row_id))
                    done.add(portrait_name(row_id))
                except Exception as exc:
                    logger.debug("Cannot store the portrait of %s: %s", row_id, exc)
        return done

    written: set[str] = set()
    if not by_image:
        return written
    with ThreadPoolExecutor(max_workers=min(8, len(by_image))) as pool:
        for names in pool.map(lambda item: one(*item), by_image.items()):
            written |= names
    return written


def make_posters(store: OutputStore, wanted: dict[str, str]) -> set[str]:
    """Create `<id>.poster.jpg` from each `{row id: video name}` in the store; names written."""

    def one(row_id: str, video: str) -> str | None:
        try:
            with staging_folder() as tmp:
                if store.is_local:
                    local = store.path(video)
                else:
                    local = os.path.join(tmp, "video" + posixpath.splitext(video)[1])
                    store.fs.get_file(store.path(video), local)
                _, made = store_poster(store, local, row_id, tmp)
                return poster_name(row_id) if made else None
        except Exception as exc:
            logger.debug("Cannot make the poster of %s: %s", row_id, exc)
            return None

    if not wanted:
        return set()
    with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
        return {n for n in pool.map(lambda item: one(*item), wanted.items()) if n}


__all__ = ["make_portraits", "make_posters", "missing_previews", "read_input_image"]
