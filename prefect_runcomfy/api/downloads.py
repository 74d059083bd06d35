"""Streaming downloads of output URLs: constant memory, size checked, never with the token.

RunComfy's output URLs are public CDN links, fetched without credentials (RunComfy's own CLI
does the same). The HTTP client used here never carries an `Authorization` header. Every URL,
and every redirect before it is followed, is checked against an `OutputPolicy`
(`prefect_runcomfy.api.hosts`): allowed hosts, a video content type, a size cap.

Each output's download has a deadline, retries included, and a long one says how far it got
(`prefect_runcomfy.api.download_deadline`). A download to a path writes a hidden file beside
it and renames it over the path only when complete: a broken, refused or late download never
leaves a partial file under the name asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeGuard

import httpx

from prefect_runcomfy._version import __version__
from prefect_runcomfy.api.backoff import Backoff, parse_retry_after, retry_after_of, retrying
from prefect_runcomfy.api.download_deadline import (
    DownloadClock,
    DownloadLimits,
    ProgressListener,
    log_progress,
)
from prefect_runcomfy.api.exceptions import (
    DownloadError,
    DownloadTimedOutError,
    OutputRefusedError,
)
from prefect_runcomfy.api.hosts import MAX_REDIRECTS, OutputPolicy, short_url

DOWNLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=30.0)
"""The output client's timeouts; a download replaces `read` with its stall limit
(`DownloadLimits.stall_s`) and is bounded overall by its deadline."""
PARTIAL_PREFIX = ".tmp-"
"""A download in progress is a hidden file beside its destination with this prefix (the one
`engine.outputs.store` sweeps from output folders when a killed run left one behind)."""
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
    http: httpx.AsyncClient,
    url: str,
    policy: OutputPolicy | None = None,
    *,
    timeouts: httpx.Timeout | None = None,
) -> AsyncIterator[httpx.Response]:
    """Open an output URL for streaming, following up to `MAX_REDIRECTS` redirects, each one
    checked against `policy` before it is fetched (default: `OutputPolicy.build()`, RunComfy's
    output domains only), and the answer's type and announced size checked before its body.
    `timeouts` replace the client's own for these requests.

    Raises:
        OutputRefusedError: a host, the type or the size is not allowed; nothing was kept.
        DownloadError: an error answer or a broken link.
    """
    policy = policy or OutputPolicy.build()
    timeout = httpx.USE_CLIENT_DEFAULT if timeouts is None else timeouts
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        policy.check_url(current, first_url=url if hop else None)
        try:
            async with http.stream(
                "GET", current, follow_redirects=False, timeout=timeout
            ) as response:
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
            # `from None`: an httpx error's text carries the whole URL, signature and all.
            stall = (timeouts or http.timeout).read
            raise DownloadError(
                f"Downloading {short_url(url)} {_what_broke(exc, stall)}."
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
    limits: DownloadLimits | None = None,
    started: float | None = None,
    on_progress: ProgressListener | None = None,
) -> DownloadedFile:
    """Stream `url` to `destination` (a path or a binary file), checking Content-Length.

    Memory stays at about one `chunk_size` (the file's write buffer) whatever the size of the
    file. A broken transfer, a stall, a rate limit (429, honouring `Retry-After`) or a server
    error is tried again from the beginning, up to `attempts` times; an expired or forbidden
    link (403, 404, 410) is not, nor an output `policy` refuses (its host, a redirect's host,
    its type, its size; the default policy allows RunComfy's output domains only: pass the
    client's, `RunComfyClient.output_policy`, to allow the API's own host and the user's).

    All tries share one deadline (`limits`; from the environment when None: see
    `api.download_deadline`) counted from `started` (`time.monotonic()`; now when None). A
    long download, and each failed try, is told to `on_progress` (default: a log line). A
    path gets the file only when complete (written beside it under a hidden name, renamed).

    Example:
        ```python
        done = await download_output(result.output_urls[0], "/tmp/video.mp4")
        print(done.size, done.sha256)
        ```

    Raises:
        DownloadTimedOutError: the deadline passed (a trickle or a stall).
        DownloadError: the file could not be fetched completely.
        OutputRefusedError: the policy refused it; nothing of it is left at `destination`.
    """
    own = http is None
    client = http or output_http_client()
    rules = policy or OutputPolicy.build()
    clock = DownloadClock(
        short_url(url),
        limits or DownloadLimits.from_env(),
        max_bytes=rules.max_bytes,
        started=started,
        on_progress=on_progress or log_progress,
    )
    job = _Download(client, url, chunk_size, max(1, attempts), backoff, rules, clock)
    try:
        if isinstance(destination, (str, os.PathLike)):
            return await job.to_path(os.fspath(destination))
        return await job.within_deadline(destination)
    finally:
        if own:
            await client.aclose()


@dataclasses.dataclass(frozen=True)
class _Download:
    """One output's download: what every try of it uses."""

    http: httpx.AsyncClient
    url: str
    chunk_size: int
    attempts: int
    backoff: Backoff | None
    policy: OutputPolicy
    clock: DownloadClock

    async def to_path(self, final: str) -> DownloadedFile:
        """Download beside `final` under a hidden name, renamed over it only when complete."""
        partial = _partial_path(final)
        try:
            done = await self.within_deadline(partial)
            os.replace(partial, final)  # complete: only now under the name asked for
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)  # a broken, refused or late download: never left behind
        return dataclasses.replace(done, path=final)

    async def within_deadline(self, destination: str | IO[bytes]) -> DownloadedFile:
        """Every try, and the pauses between them, within the clock's deadline."""
        http, url, policy, clock = self.http, self.url, self.policy, self.clock
        return await clock.run(
            lambda: retrying(
                lambda: _download_once(http, url, destination, self.chunk_size, policy, clock),
                delays=self.backoff or Backoff(),
                attempts=self.attempts,
                retry_if=_download_may_be_retried,
                wait_hint=_capped_retry_after,
                on_retry=clock.note_retry,
            )
        )


def _is_path(
    destination: str | os.PathLike[str] | IO[bytes],
) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(destination, (str, os.PathLike))


def _partial_path(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def _download_may_be_retried(error: BaseException) -> bool:
    # Gone or forbidden (403, 404, 410), or past the deadline: another try will not help.
    if isinstance(error, DownloadTimedOutError):
        return False
    return isinstance(error, DownloadError) and not error.expired


def _capped_retry_after(error: BaseException) -> float | None:
    hint = retry_after_of(error)
    return None if hint is None else min(hint, MAX_RETRY_AFTER_S)


def _what_broke(exc: httpx.HTTPError, stall_s: float | None) -> str:
    if isinstance(exc, httpx.ReadTimeout) and stall_s is not None:
        # The read timeout is the stall limit: the connection stayed open and sent nothing.
        return f"stalled: nothing arrived for {stall_s:g} s"
    return f"broke off ({type(exc).__name__})"


def _try_timeouts(http: httpx.AsyncClient, stall_s: float) -> httpx.Timeout:
    """The client's timeouts with the stall limit as the read timeout."""
    base = http.timeout
    return httpx.Timeout(connect=base.connect, read=stall_s, write=base.write, pool=base.pool)


def _announced_size(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


async def _download_once(
    http: httpx.AsyncClient,
    url: str,
    destination: str | os.PathLike[str] | IO[bytes],
    chunk_size: int,
    policy: OutputPolicy,
    clock: DownloadClock,
) -> DownloadedFile:
    clock.begin_try()
    digest = hashlib.sha256()
    timeouts = _try_timeouts(http, clock.limits.stall_s)
    async with stream_output(http, url, policy, timeouts=timeouts) as response:
        expected = _announced_size(response)
        clock.announce(expected)
        content_type = response.headers.get("Content-Type")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        with _opened(destination, chunk_size) as handle:
            size = await _receive(response, handle, digest, url, policy, clock)
    if expected is not None and encoding == "identity" and expected != size:
        raise DownloadError(f"Downloading {short_url(url)} ended after {size} of {expected} bytes.")
    path = os.fspath(destination) if _is_path(destination) else None
    return DownloadedFile(
        url=url, path=path, size=size, sha256=digest.hexdigest(), content_type=content_type
    )


@contextlib.contextmanager
def _opened(destination: str | os.PathLike[str] | IO[bytes], buffer: int) -> Iterator[IO[bytes]]:
    """The file a try writes: a path opened anew, or the caller's file emptied first (and
    emptied again when the policy refuses what arrived)."""
    if isinstance(destination, (str, os.PathLike)):
        # The write buffer holds the pieces the network gives (often a few KiB) until a
        # chunk's worth is there: few writes, whatever the transfer's pace.
        with Path(destination).open("wb", buffering=max(buffer, io.DEFAULT_BUFFER_SIZE)) as opened:
            yield opened
        return
    destination.seek(0)
    destination.truncate()
    try:
        yield destination
    except OutputRefusedError:
        destination.seek(0)
        destination.truncate()
        raise


async def _receive(
    response: httpx.Response,
    handle: IO[bytes],
    digest: hashlib._Hash,
    url: str,
    policy: OutputPolicy,
    clock: DownloadClock,
) -> int:
    """Write the body as it arrives (pieces as the network gives them, so the clock sees a
    trickle byte by byte); return its size."""
    size = 0
    try:
        async for piece in response.aiter_raw():
            size += len(piece)
            policy.check_size(url, size)  # an answer may say nothing of its size
            handle.write(piece)
            digest.update(piece)
            clock.arrived(len(piece))
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"Downloading {short_url(url)} {_what_broke(exc, clock.limits.stall_s)} "
            f"after {size} bytes."
        ) from None
    return size
