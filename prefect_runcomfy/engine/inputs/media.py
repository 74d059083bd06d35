"""Input media resolution (sign / stage / inline) and output video probing.

RunComfy fetches a job's image and audio itself, from URLs, with no cookies or auth, and
has no upload endpoint. So every `image` / `audio` value of a row must become something it
can fetch:

| given | becomes | `how` |
|---|---|---|
| `https://...` (or `http://...`) | the same URL | `passthrough` |
| `data:<mime>;base64,...` | the same URI, checked (well-formed, within the caps, right kind) | `passthrough` |
| `s3://`, `gs://`, `az://`, ... object | a pre-signed HTTPS URL (`fs.sign`) | `signed` |
| local file, `inline_media=True` | a `data:` URI (image ≤ 6 MiB, audio ≤ 16 MiB) | `inline` |
| local file, `staging_uri=...` | uploaded to `<staging_uri>/<sha256>.<ext>`, then signed | `staged` |

Relative paths are read relative to `base_uri` (the folder of the input table), which may
itself be remote (`s3://bkt/tables`): then the joined URL is signed. Everything else — an
unknown scheme, a folder, a missing file — is a `MediaError` that says what to do, raised
before anything is paid for.

```python
resolver = MediaResolver(base_uri="s3://bkt/batch-7", expires_s=24 * 3600)
image = await resolver.resolve("portraits/alice.png", "image")
image.url   # 'https://bkt.s3.amazonaws.com/batch-7/portraits/alice.png?X-Amz-...'
```
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import posixpath
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from prefect_runcomfy.api.exceptions import MediaError, StorageError
from prefect_runcomfy.engine.outputs.secrets import scrub, secret_strings
from prefect_runcomfy.engine.outputs.store import OutputStore

MediaKind = Literal["image", "audio"]
"""Which input a value is for: the portrait `image` or the speech `audio`."""

MiB = 1024 * 1024

INLINE_CAPS: dict[str, int] = {"image": 6 * MiB, "audio": 16 * MiB}
"""The largest file sent inline as a `data:` URI, by kind (RunComfy's own ComfyUI nodes' caps)."""

DEFAULT_EXPIRES_S = 7 * 24 * 3600
"""How long pre-signed URLs stay valid by default: 7 days, the most S3 allows."""

SIGNABLE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci"})
"""Object stores whose fsspec filesystem can pre-sign a URL that RunComfy can fetch."""

STAGING_VARIABLE = "runcomfy_staging_uri"
"""The Prefect Variable that gives every run without `staging_uri` its staging folder."""

INLINE_VARIABLE = "runcomfy_inline_media"
"""The Prefect Variable that, set to true, sends every run's local media files inline."""

LOCAL_FILE_FIX = (
    "RunComfy fetches media only from URLs, so a local file needs a staging folder: pass "
    "staging_uri='s3://bucket/staging' (CLI --staging-uri; for every run of a deployment, once: "
    f"prefect variable set {STAGING_VARIABLE} s3://bucket/staging), or send it inline with "
    f"inline_media=True (--inline-media; variable {INLINE_VARIABLE} true)"
)
"""What to do about a local file when no setting says where local files go."""


@dataclass(frozen=True)
class LocalFiles:
    """Where a run's local media files go, and which setting said so.

    Attributes:
        staging_uri: the folder they are uploaded to (then signed), or None.
        inline: sent as `data:` URIs instead.
        why: the setting that decided (`"the staging_uri parameter"`, `"the Prefect Variable
            runcomfy_staging_uri"`, `"the API at http://127.0.0.1:8787 is on this machine
            (the sandbox)"`), or "" when nothing did: then a local file is invalid.
    """

    staging_uri: str | None = None
    inline: bool = False
    why: str = ""

    def describe(self) -> str:
        """In words: `local media files are sent inline (the sandbox's default)`."""
        if self.staging_uri:
            how = f"staged to {self.staging_uri}"
        elif self.inline:
            how = "sent inline as data: URIs"
        else:
            return "local media files cannot be sent (no staging_uri or inline_media is set)"
        return f"local media files are {how} ({self.why})"


_S3_MAX_EXPIRES_S = 7 * 24 * 3600
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")
_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.DOTALL | re.IGNORECASE)
_HEAD_BYTES = 64
_CHUNK = 1024 * 1024

# format -> (kind, mime, extension)
_FORMATS: dict[str, tuple[str, str, str]] = {
    "PNG": ("image", "image/png", "png"),
    "JPEG": ("image", "image/jpeg", "jpg"),
    "WEBP": ("image", "image/webp", "webp"),
    "MP3": ("audio", "audio/mpeg", "mp3"),
    "AAC": ("audio", "audio/aac", "aac"),
    "WAV": ("audio", "audio/wav", "wav"),
    "OGG": ("audio", "audio/ogg", "ogg"),
    "FLAC": ("audio", "audio/flac", "flac"),
    "M4A": ("audio", "audio/mp4", "m4a"),
}
_ACCEPTED = {
    kind: ", ".join(f for f, (k, _, _) in _FORMATS.items() if k == kind)
    for kind in ("image", "audio")
}
_NOUN = {"image": "an image", "audio": "an audio file"}


def sniff_format(head: bytes) -> str | None:
    """Name the media format of a file from its first bytes (`"PNG"`, `"MP3"`, ...), or None.

    Knows PNG, JPEG and WEBP images and MP3, AAC, WAV, OGG, FLAC and M4A audio.

    Example:
        ```python
        sniff_format(b"\\x89PNG\\r\\n\\x1a\\n...")  # 'PNG'
        ```
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV"
    if head.startswith(b"OggS"):
        return "OGG"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head[4:8] == b"ftyp":
        return "M4A"
    if head.startswith(b"ID3"):
        return "MP3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS sync word, layer 0
            return "AAC"
        if head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
            return "MP3"
    return None


@dataclass(frozen=True)
class ResolvedMedia:
    """An image or audio value made fetchable by RunComfy.

    Attributes:
        url: what to send in the payload (https URL, pre-signed URL or `data:` URI).
        source: the value as the row gave it.
        how: `passthrough`, `signed`, `staged` or `inline`.
        size: the file's size in bytes, when known.
        sha256: the content's sha256 (hex), when it was read.
    """

    url: str
    source: str
    how: Literal["passthrough", "signed", "staged", "inline"]
    size: int | None = None
    sha256: str | None = None

    def __repr__(self) -> str:
        # A data: URI can be megabytes and a signed URL's query is a credential: show neither.
        shown = self.url
        if shown.startswith("data:"):
            shown = shown.split(",", 1)[0] + ",..."
        elif "?" in shown:
            shown = shown.split("?", 1)[0] + "?..."
        return (
            f"ResolvedMedia(url={shown!r}, source={self.source[:120]!r}, how={self.how!r}, "
            f"size={self.size!r}, sha256={self.sha256!r})"
        )


def _protocol(value: str) -> str | None:
    match = _SCHEME.match(value)
    # One letter before ':' is a Windows drive (C:\...), not a scheme.
    if not match or len(match.group(1)) < 2:
        return None
    return match.group(1).lower()


def _join_remote(base_uri: str, relative: str) -> str:
    scheme, rest = base_uri.split("://", 1)
    joined = posixpath.normpath(posixpath.join(rest.rstrip("/"), relative.replace("\\", "/")))
    return f"{scheme}://{joined}"


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


class MediaResolver:
    """Resolve row media with one set of options, caching answers for the run.

    Resolving the same `(value, kind)` twice returns the first answer (no second upload or
    signature) while at least half of the signature's lifetime is left. Safe to share between
    tasks running on different event loops and threads: the blocking fsspec work runs in
    `asyncio.to_thread`, guarded by a per-value thread lock.

    Args:
        base_uri: the folder relative paths are read from (usually the input table's folder);
            local or remote. Default: the working directory.
        staging_uri: an object-store folder (`s3://...`, `gs://...`) where local files are
            uploaded, content-addressed, and then pre-signed.
        inline_media: send local files as `data:` URIs instead (wins over `staging_uri`).
        storage_options: fsspec options for reading `s3://` / `gs://` inputs and `base_uri`.
        staging_storage_options: fsspec options for `staging_uri`; default `storage_options`.
        expires_s: lifetime of pre-signed URLs; it must outlast the queue and the run.
        check_only: apply every rule and write nothing: a local file to stage is checked
            (and the staging folder's kind), not uploaded; its answer is not fetchable
            (`prefect-runcomfy plan`).
        offline: as `check_only`, and read no network either: remote objects are not looked
            at (`prefect-runcomfy validate`).

    Example:
        ```python
        resolver = MediaResolver(staging_uri="s3://bkt/staging")
        audio = await resolver.resolve("speech/alice.mp3", "audio")
        audio.how   # 'staged'
        ```
    """

    def __init__(
        self,
        *,
        base_uri: str | None = None,
        staging_uri: str | None = None,
        inline_media: bool = False,
        storage_options: dict[str, Any] | None = None,
        staging_storage_options: dict[str, Any] | None = None,
        expires_s: int = DEFAULT_EXPIRES_S,
        check_only: bool = False,
        offline: bool = False,
    ) -> None:
        if isinstance(expires_s, bool) or not isinstance(expires_s, int) or expires_s <= 0:
            raise MediaError(f"expires_s must be a positive number of seconds, got {expires_s!r}")
        self.base_uri = os.fspath(base_uri) if base_uri else None
        self.staging_uri = staging_uri or None
        self.inline_media = bool(inline_media)
        self.storage_options = dict(storage_options or {})
        self.staging_storage_options = dict(
            self.storage_options if staging_storage_options is None else staging_storage_options
        )
        self.expires_s = expires_s
        self.offline = bool(offline)
        self.check_only = bool(check_only) or self.offline
        self._secrets = secret_strings([self.storage_options, self.staging_storage_options])
        self._staging_store: OutputStore | None = None
        self._cache: dict[tuple[str, str], tuple[ResolvedMedia, float]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MediaResolver(base_uri={self.base_uri!r}, staging_uri={self.staging_uri!r}, "
            f"inline_media={self.inline_media!r}, expires_s={self.expires_s!r})"
        )

    async def resolve(self, value: str, kind: MediaKind) -> ResolvedMedia:
        """Make `value` fetchable by RunComfy (see the module docstring for the rules).

        Raises:
            MediaError: saying what is wrong with the value and what to do instead.
        """
        quick = self._resolve_without_io(value, kind)
        if quick is not None:
            return quick
        return await asyncio.to_thread(self.resolve_sync, value, kind)

    def _resolve_without_io(self, value: str, kind: MediaKind) -> ResolvedMedia | None:
        """A fresh cached answer, or an http(s) URL (passed through as it is): answers that
        need no disk or network, so no trip to a worker thread (two per row otherwise)."""
        if not isinstance(value, str) or kind not in INLINE_CAPS:
            return None
        cached = self._cache.get((value, kind))
        if cached and not self._stale(*cached):
            return cached[0]
        if value.strip().lower().startswith(("https://", "http://")):
            return self._resolve(value, kind)
        return None

    def resolve_sync(self, value: str, kind: MediaKind) -> ResolvedMedia:
        """The blocking twin of `resolve`, for sync callers (it does network and disk I/O)."""
        if kind not in INLINE_CAPS:
            raise MediaError(f"kind must be 'image' or 'audio', got {kind!r}")
        key = (value if isinstance(value, str) else repr(value), kind)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._cache.get(key)
            if cached and not self._stale(*cached):
                return cached[0]
            media = self._resolve(value, kind)
            # Inline data URIs can be megabytes each; a batch of them must not pile up in memory
            # (building one again reads a local file, which is cheap).
            if media.how != "inline":
                self._cache[key] = (media, time.monotonic())
            return media

    def _stale(self, media: ResolvedMedia, at: float) -> bool:
        # Re-sign once half the lifetime is gone, so a cached URL never expires in a queue.
        signed = media.how in {"signed", "staged"}
        return signed and time.monotonic() - at > self.expires_s / 2

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    # -- the rules -------------------------------------------------------------------------

    def _resolve(self, value: Any, kind: str) -> ResolvedMedia:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise MediaError(
                f"{kind} is empty: give an https:// URL, an s3:// or gs:// URL, or a local file path"
            )
        text = value.strip()
        low = text.lower()
        if low.startswith(("https://", "http://")):
            if not urlsplit(text).netloc:
                raise MediaError(f"{kind} {text!r} is not a valid URL: it has no host")
            return ResolvedMedia(url=text, source=value, how="passthrough")
        if low.startswith("data:"):
            return self._check_data_uri(text, value, kind)
        where, target = self._locate(text, kind)
        if where == "sign":
            return self._sign(target, value, kind, self.storage_options)
        return self._local(target, value, kind)

    def names_local_file(self, value: Any) -> bool:
        """Whether `value` names a file on this machine (which needs `staging_uri` or
        `inline_media` to reach RunComfy). Reads nothing but the file system's names."""
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            return False
        text = value.strip()
        if text.lower().startswith(("https://", "http://", "data:")):
            return False
        try:
            return self._locate(text, "image")[0] == "local"
        except MediaError:
            return False

    def _locate(self, text: str, kind: str) -> tuple[Literal["sign", "local"], str]:
        """Where a value that is no http(s) URL and no `data:` URI points: an object store
        URL to sign, or a local path (absolute); a `MediaError` for anything else."""
        low = text.lower()
        protocol = _protocol(text)
        if protocol and not low.startswith(f"{protocol}://") and os.path.exists(text):
            protocol = None  # a local name with a colon in it ("take:1.png"), not a URL
        if protocol in SIGNABLE_PROTOCOLS:
            return "sign", text
        if protocol in _LOCAL_PROTOCOLS:
            return "local", LocalFileSystem._strip_protocol(text)
        if protocol is not None:
            raise MediaError(
                f"{kind} {text!r}: RunComfy cannot fetch {protocol}: URLs. Give an https:// URL, "
                "an s3://, gs:// or az:// object (pre-signed for you), or a local file path "
                "(with staging_uri=... or inline_media=True)"
            )
        path = os.path.expanduser(text)
        if not os.path.isabs(path) and self.base_uri:
            base_protocol = _protocol(self.base_uri)
            if base_protocol in SIGNABLE_PROTOCOLS:
                return "sign", _join_remote(self.base_uri, path)
            if base_protocol in _LOCAL_PROTOCOLS:
                path = os.path.join(LocalFileSystem._strip_protocol(self.base_uri), path)
            elif base_protocol is None:
                path = os.path.join(os.path.expanduser(self.base_uri), path)
            else:
                raise MediaError(
                    f"{kind} {text!r} is relative to base_uri {self.base_uri!r}, but "
                    f"{base_protocol}: files cannot be pre-signed for RunComfy; use absolute "
                    "https:// or s3:// / gs:// URLs in the table"
                )
        return "local", os.path.abspath(path)

    def _check_data_uri(self, text: str, value: str, kind: str) -> ResolvedMedia:
        match = _DATA_URI.match(text)
        if not match:
            raise MediaError(f"{kind} data: URI is malformed: expected data:<mime>;base64,<data>")
        mime, params, payload = (
            match.group(1).strip().lower(),
            match.group(2).lower(),
            match.group(3),
        )
        if "base64" not in [p.strip() for p in params.split(";")]:
            raise MediaError(f"{kind} data: URI must be base64-encoded (data:<mime>;base64,...)")
        if not mime:
            raise MediaError(
                f"{kind} data: URI has no media type; write it as data:{'image/png' if kind == 'image' else 'audio/mpeg'};base64,..."
            )
        if not mime.startswith(f"{kind}/"):
            raise MediaError(f"{kind} data: URI says {mime}, which is not {_NOUN[kind]}")
        cap = INLINE_CAPS[kind]
        if len(payload) * 3 // 4 > cap + 3:
            raise MediaError(
                f"{kind} data: URI holds about {_mib(len(payload) * 3 // 4)}; inline {kind} is "
                f"capped at {_mib(cap)}. Use an https:// or s3:// URL for larger files"
            )
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"{kind} data: URI is not valid base64: {exc}") from None
        if not data:
            raise MediaError(f"{kind} data: URI is empty")
        if len(data) > cap:
            raise MediaError(
                f"{kind} data: URI holds {_mib(len(data))} ({len(data)} bytes); inline {kind} "
                f"is capped at {_mib(cap)}. Use an https:// or s3:// URL for larger files"
            )
        self._check_kind(data[:_HEAD_BYTES], f"the {kind} data: URI", kind)
        return ResolvedMedia(
            url=text,
            source=value,
            how="passthrough",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def _check_kind(self, head: bytes, label: str, kind: str) -> str:
        fmt = sniff_format(head)
        if fmt is None or _FORMATS[fmt][0] != kind:
            what = f"it holds {fmt} data" if fmt else "its content is not a format RunComfy reads"
            raise MediaError(f"{label} is not {_NOUN[kind]}: {what} (accepted: {_ACCEPTED[kind]})")
        return fmt

    def _local(self, path: str, value: str, kind: str) -> ResolvedMedia:
        if os.path.isdir(path):
            raise MediaError(f"{kind} {path} is a folder, not a file")
        if not os.path.isfile(path):
            raise MediaError(f"{kind} file {path} does not exist; check the path in the table")
        size = os.path.getsize(path)
        if size == 0:
            raise MediaError(f"{kind} file {path} is empty")
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
        fmt = self._check_kind(head, os.path.basename(path), kind)
        _, mime, ext = _FORMATS[fmt]

        if self.inline_media:
            cap = INLINE_CAPS[kind]
            if size > cap:
                raise MediaError(
                    f"{kind} file {path} is {_mib(size)} ({size} bytes); inline {kind} is capped "
                    f"at {_mib(cap)}. Pass staging_uri=<an s3:// or gs:// folder> so it is uploaded "
                    "and signed instead, or use a smaller file"
                )
            with open(path, "rb") as fh:
                data = fh.read()
            encoded = base64.b64encode(data).decode("ascii")
            return ResolvedMedia(
                url=f"data:{mime};base64,{encoded}",
                source=value,
                how="inline",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        if self.staging_uri:
            if self.check_only:
                self._check_staging()
                return ResolvedMedia(url=path, source=value, how="staged", size=size)
            return self._stage(path, value, kind, size, ext)
        raise MediaError(f"local file {path}: {LOCAL_FILE_FIX}")

    def _check_staging(self) -> None:
        if _protocol(self.staging_uri or "") not in SIGNABLE_PROTOCOLS:
            raise MediaError(
                f"staging_uri {self.staging_uri!r} cannot pre-sign URLs for RunComfy; use an "
                "object-store folder such as s3://bucket/staging or gs://bucket/staging"
            )

    def _stage(self, path: str, value: str, kind: str, size: int, ext: str) -> ResolvedMedia:
        assert self.staging_uri is not None
        self._check_staging()
        digest = _file_sha256(path)
        name = f"{digest}.{ext}"
        try:
            if self._staging_store is None:
                self._staging_store = OutputStore(self.staging_uri, self.staging_storage_options)
            store = self._staging_store
            # Content-addressed: the same bytes under the same name are already there.
            if not (store.exists(name) and store.size(name) == size):
                store.put_file(path, name)
            staged = store.uri(name)
        except StorageError as exc:
            raise MediaError(f"cannot stage {kind} file {path}: {exc}") from exc
        signed = self._sign(staged, value, kind, self.staging_storage_options)
        return ResolvedMedia(url=signed.url, source=value, how="staged", size=size, sha256=digest)

    def _sign(
        self, url: str, value: str, kind: str, storage_options: dict[str, Any]
    ) -> ResolvedMedia:
        protocol = _protocol(url) or ""
        if protocol in {"s3", "s3a"} and self.expires_s > _S3_MAX_EXPIRES_S:
            raise MediaError(
                f"S3 pre-signed URLs last at most 7 days ({_S3_MAX_EXPIRES_S} s); "
                f"expires_s={self.expires_s} is too long"
            )
        if self.offline:  # not looked at: the run reads and signs it
            return ResolvedMedia(url=url, source=value, how="signed")
        try:
            fs, path = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError:
            package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(
                protocol, "adlfs"
            )
            raise MediaError(
                f"{kind} {url}: install {package} to read {protocol}:// URLs"
            ) from None
        except Exception as exc:
            raise MediaError(self._scrub(f"{kind} {url}: cannot open it ({exc})")) from None
        try:
            fs.invalidate_cache(path)
            info = fs.info(path)
        except FileNotFoundError:
            raise MediaError(
                f"{kind} {url} does not exist; check the path, that the bucket exists, and "
                "that the credentials can read it"
            ) from None
        except Exception as exc:
            raise MediaError(
                self._scrub(
                    f"{kind} {url} cannot be read ({type(exc).__name__}: {exc}); check the "
                    "credentials (storage_options or the environment) and permissions"
                )
            ) from None
        if info.get("type") != "file":
            raise MediaError(f"{kind} {url} is a folder, not a file")
        size = info.get("size")
        if size == 0:
            raise MediaError(f"{kind} {url} is empty")
        try:
            signed = fs.sign(path, expiration=self.expires_s)
        except NotImplementedError:
            raise MediaError(
                f"{kind} {url}: {protocol}:// files cannot be pre-signed; give an https:// URL, "
                "or a local copy with staging_uri=<an s3:// or gs:// folder> or inline_media=True"
            ) from None
        except Exception as exc:
            raise MediaError(
                self._scrub(f"{kind} {url}: signing failed ({type(exc).__name__}: {exc})")
            ) from None
        return ResolvedMedia(
            url=str(signed),
            source=value,
            how="signed",
            size=int(size) if size is not None else None,
        )


__all__ = [
    "DEFAULT_EXPIRES_S",
    "INLINE_CAPS",
    "INLINE_VARIABLE",
    "LOCAL_FILE_FIX",
    "SIGNABLE_PROTOCOLS",
    "STAGING_VARIABLE",
    "LocalFiles",
    "MediaKind",
    "MediaResolver",
    "ResolvedMedia",
    "sniff_format",
]
