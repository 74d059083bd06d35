"""Fetch a job's media the way RunComfy does: public http(s) URLs (no auth) or `data:` URIs."""

from __future__ import annotations

import base64
import binascii
import urllib.parse

import httpx

from prefect_runcomfy.sandbox.render import MediaError


def decode_data_uri(uri: str) -> bytes:
    """Return the bytes of a `data:[<mime>][;base64],<data>` URI."""
    header, sep, body = uri.partition(",")
    if not sep:
        raise MediaError("MediaFetchError", "malformed data: URI (no comma)")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(body, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError("MediaFetchError", f"malformed base64 in data: URI: {exc}") from exc
    return urllib.parse.unquote_to_bytes(body)


async def fetch_media(client: httpx.AsyncClient, uri: str, max_bytes: int, what: str) -> bytes:
    """Download one input, or raise MediaError naming `what` (image/audio) and the reason."""
    if uri.startswith("data:"):
        data = decode_data_uri(uri)
    elif uri.lower().startswith(("http://", "https://")):
        data = await _download(client, uri, max_bytes, what)
    else:
        # RunComfy only fetches public URLs; a bare file name or local path cannot be reached
        raise MediaError(
            "MediaFetchError",
            f"the {what} {_short(uri)!r} is not an http(s) URL or a data: URI",
        )
    if len(data) > max_bytes:
        raise MediaError("MediaFetchError", f"the {what} is larger than {max_bytes} bytes")
    if not data:
        raise MediaError("MediaFetchError", f"the {what} is empty")
    return data


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        # no cookies, no Authorization: a public fetch, as RunComfy's servers do
        async with client.stream("GET", url, follow_redirects=True) as answer:
            if answer.status_code != 200:
                raise MediaError(
                    "MediaFetchError",
                    f"fetching the {what} {_short(url)} answered HTTP {answer.status_code}",
                )
            async for chunk in answer.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise MediaError(
                        "MediaFetchError", f"the {what} is larger than {max_bytes} bytes"
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise MediaError(
            "MediaFetchError", f"fetching the {what} {_short(url)} failed: {type(exc).__name__}"
        ) from exc
    return b"".join(chunks)


def _short(text: str) -> str:
    # never echo a whole data URI (or a signed URL's query) into an error message
    text = text.split("?", 1)[0]
    return text if len(text) <= 120 else text[:117] + "..."
