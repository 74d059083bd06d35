"""Streaming downloads of output URLs: constant memory, size checked, never with the token.

RunComfy's output URLs are public CDN links, fetched without credentials (RunComfy's own CLI
does the same). The HTTP client used here never carries an `Authorization` header. Every URL,
and every redirect before it is followed, is checked against an `OutputPolicy`
(`prefect_runcomfy.api.hosts`): allowed hosts, a video content type, a size cap.
"""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.backoff import Backoff, parse_retry_after, retry_after_of, retrying
from prefect_runcomfy.api.exceptions import DownloadError, OutputRefusedError
from prefect_runcomfy.api.hosts import MAX_REDIRECTS, OutputPolicy, short_url

DOWNLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=30.0)
MAX_RETRY_AFTER_S = 120.0
"""The longest `Retry-After` from an output host that a download waits for; a longer one is cut
to this (the download is tried again then), not given up on."""


@dataclass(frozen=True)
class DownloadedFile:
    """What a download wrote: where, how many bytes, their sha256, and the served type."""

    url: str
    path: str | None
    size: int
    sha256: str
    content_type: str | None


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every HTTP client of this process.

    Building one reads the whole CA bundle (about 30 ms of CPU); a batch creates clients by
    the thousand (one per task run, since each may run in its own event loop), so they share
    this one instead.
    """
    return httpx.create_ssl_context()


def output_http_client(**kwargs: object) -> httpx.AsyncClient:
    """A new HTTP client for output hosts: no token, a generous read timeout, and redirects
    not followed by httpx (a download follows them itself, each hop checked first)."""
    return httpx.AsyncClient(
        timeout=DOWNLOAD_TIMEOUT,
        verify=shared_ssl_context(),
        headers={"User-Agent": f"prefect-runcomfy/{__version__}"},
        follow_redirects=False,
        **kwargs,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def stream_output(
    http: httpx.AsyncClient, url: str, policy: OutputPolicy | None = None
) -> AsyncIterator[httpx.Response]:
    """Open an output URL for streaming, following up to `MAX_REDIRECTS` redirects, each one
    checked against `policy` before it is fetched (default: `OutputPolicy.build()`, RunComfy's
    output domains only), and the answer's type and announced size checked before its body.

    Raises:
        OutputRefusedError: a host, the type or the size is not allowed; nothing was kept.
        DownloadError: an error answer or a broken link.
    """
    policy = policy or OutputPolicy.build()
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        policy.check_url(current, first_url=url if hop else None)
        try:
            async with http.stream("GET", current, follow_redirects=False) as response:
                if response.is_redirect:
                    try:
                        current = str(response.url.join(response.headers["Location"]))
                    except httpx.InvalidURL:
                        raise OutputRefusedError(
                            f"The output {short_url(url)} redirected to an unusable URL; "
                            "nothing was downloaded.",
                            reason="url",
                            url=short_url(url),
                        ) from None
                    continue
                if response.status_code >= 400:
                    expired = response.status_code in (403, 404, 410)
                    hint = " (the output has probably expired)" if expired else ""
                    raise DownloadError(
                        f"Downloading {short_url(url)} failed with HTTP "
                        f"{response.status_code}{hint}.",
                        status_code=response.status_code,
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                policy.check_answer(url, response)
                yield response
                return
        except httpx.HTTPError as exc:
            raise DownloadError(
                f"Downloading {short_url(url)} broke off ({type(exc).__name__})."
            ) from None
    raise OutputRefusedError(
        f"The output {short_url(url)} redirected more than {MAX_REDIRECTS} times; nothing "
        "was downloaded.",
        reason="url",
        url=short_url(url),
    )


async def download_output(
    url: str,
    destination: str | os.PathLike[str] | IO[bytes],
    *,
    http: httpx.AsyncClient | None = None,
    chunk_size: int = 1 << 20,
    attempts: int = 3,
    backoff: Backoff | None = None,
    policy: OutputPolicy | None = None,
) -> DownloadedFile:
    """Stream `url` to `destination` (a path or a binary file), checking Content-Length.

    Memory stays at about one `chunk_size` whatever the size of the file. A broken transfer, a
    rate limit (429, honouring `Retry-After`) or a server error is tried again from the
    beginning, up to `attempts` times; an expired or forbidden link (403, 404, 410) is not,
    nor an output `policy` refuses (its host, a redirect's host, its type, its size; the
    default policy allows RunComfy's output domains only: pass the client's,
    `RunComfyClient.output_policy`, to allow the API's own host and the user's).

    Example:
        ```python
        done = await download_output(result.output_urls[0], "/tmp/video.mp4")
        print(done.size, done.sha256)
        ```

    Raises:
        DownloadError: the file could not be fetched completely.
        OutputRefusedError: the policy refused it; nothing of it is left at `destination`.
    """
    own = http is None
    client = http or output_http_client()
    rules = policy or OutputPolicy.build()
    try:
        return await retrying(
            lambda: _download_once(client, url, destination, chunk_size, rules),
            delays=backoff or Backoff(),
            attempts=max(1, attempts),
            retry_if=_download_may_be_retried,
            wait_hint=_capped_retry_after,
        )
    finally:
        if own:
            await client.aclose()


def _download_may_be_retried(error: BaseException) -> bool:
    # Gone or forbidden (403, 404, 410): another try will not help.
    return isinstance(error, DownloadError) and not error.expired


def _capped_retry_after(error: BaseException) -> float | None:
    hint = retry_after_of(error)
    return None if hint is None else min(hint, MAX_RETRY_AFTER_S)


async def _download_once(
    http: httpx.AsyncClient,
    url: str,
    destination: str | os.PathLike[str] | IO[bytes],
    chunk_size: int,
    policy: OutputPolicy,
) -> DownloadedFile:
    digest = hashlib.sha256()
    size = 0
    path: str | None = None
    async with stream_output(http, url, policy) as response:
        expected = response.headers.get("Content-Length")
        content_type = response.headers.get("Content-Type")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if isinstance(destination, (str, os.PathLike)):
            path = os.fspath(destination)
            handle: IO[bytes] = Path(path).open("wb")  # noqa: ASYNC230, SIM115 - closed below
            close = True
        else:
            handle = destination
            handle.seek(0)
            handle.truncate()
            close = False
        try:
            try:
                async for chunk in response.aiter_raw(chunk_size):
                    size += len(chunk)
                    policy.check_size(url, size)  # an answer may say nothing of its size
                    handle.write(chunk)
                    digest.update(chunk)
            except httpx.HTTPError as exc:
                raise DownloadError(
                    f"Downloading {short_url(url)} broke off after {size} bytes "
                    f"({type(exc).__name__})."
                ) from None
        except OutputRefusedError:
            if close and path is not None:  # nothing refused stays on disk
                handle.close()
                Path(path).unlink(missing_ok=True)  # noqa: ASYNC240 - one small unlink
            elif not close:
                handle.seek(0)
                handle.truncate()
            raise
        finally:
            if close:
                handle.close()
    if expected is not None and encoding == "identity" and int(expected) != size:
        raise DownloadError(f"Downloading {short_url(url)} ended after {size} of {expected} bytes.")
    return DownloadedFile(
        url=url, path=path, size=size, sha256=digest.hexdigest(), content_type=content_type
    )
