"""The output location: files under one fsspec URL, written so nothing half-written looks finished.

`OutputStore` wraps any fsspec URL — a local folder (relative or absolute), `file://`,
`memory://`, `s3://`, `gs://`, `az://`, ... — and offers the few operations the tasks need:
upload a finished local file, write and read JSON, list, hash, and the Parquet manifest.

Every write is atomic: on local disks a hidden temporary file in the same folder is renamed
over the final name; on object stores (S3, GCS, Azure, memory) a single PUT is already atomic.
Errors from fsspec, botocore or the OS become `StorageError`s that name the URI and what to
check; `storage_options` (which may hold secrets) never appear in a message or repr.

The methods are synchronous; async callers run them with `asyncio.to_thread`.

```python
store = OutputStore("s3://my-bucket/talking-heads", storage_options={"profile": "prod"})
store.put_file("/tmp/render.mp4", "alice.mp4")
store.write_json("alice.json", {"id": "alice", "status": "succeeded"})
store.uri("alice.mp4")  # 's3://my-bucket/talking-heads/alice.mp4'
```
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from prefect_runcomfy.api.exceptions import StorageError
from prefect_runcomfy.engine.outputs.scratch import staging_file
from prefect_runcomfy.engine.outputs.secrets import scrub, secret_strings

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
"""The file name of the manifest under the output location."""

TEMP_PREFIX = ".tmp-"
"""Temporary files start with this (hidden) prefix; `OutputStore.list` never returns them."""

# A single PUT on these stores either lands whole or not at all, so no temp name is needed.
_ATOMIC_PUT_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oci", "oss", "r2"}
)
_OBJECT_STORE_HINT = (
    "check that the bucket/container exists, that the credentials (storage_options or the "
    "environment) are valid, and that they allow reading and writing there"
)
_LOCAL_HINT = "check that the folder exists or can be created and that it is writable"

_CHUNK = 1024 * 1024


STALE_TEMP_AGE_S = 15 * 60.0
"""A hidden temp file in a local output folder untouched for this long was left by a killed
run: a download in progress writes to its file every MiB it receives, and one that falls far
below the minimum rate (`RUNCOMFY_DOWNLOAD_MIN_RATE`, 256 KiB/s: a MiB every 4 s) ends at its
deadline."""


class OutputStore:
    """One output location (any fsspec URL) with atomic writes and friendly errors.

    Names passed to the methods are relative to the root and use `/` (`"_ledger/a.json"`);
    they may not contain `..`. Local roots are created when missing; buckets are not (a
    missing bucket is reported, never created behind the user's back).

    Args:
        output_uri: a local path (relative or absolute), `file://...`, `memory://...`,
            `s3://bucket/prefix`, `gs://...`, or any other fsspec URL.
        storage_options: passed to the fsspec filesystem (credentials, endpoint, ...).

    Example:
        ```python
        store = OutputStore("out")              # ./out, created if missing
        store.write_json("a.json", {"x": 1})
        store.read_json("a.json")               # {'x': 1}
        store.list()                            # ['a.json']
        ```
    """

    def __init__(self, output_uri: str, storage_options: dict[str, Any] | None = None) -> None:
        if not isinstance(output_uri, str | os.PathLike) or not str(output_uri).strip():
            raise StorageError(f"output_uri must be a folder path or URL, got {output_uri!r}")
        self.output_uri = str(os.fspath(output_uri)).strip()
        self._secrets = secret_strings(storage_options or {})
        try:
            fs, root = fsspec.core.url_to_fs(self.output_uri, **(storage_options or {}))
        except ImportError as exc:
            raise StorageError(
                f"Cannot open output location {self.output_uri}: {self._scrub(str(exc))}. "
                "Install the fsspec implementation for this protocol (for example "
                "`pip install s3fs` for s3://, `gcsfs` for gs://, `adlfs` for az://)."
            ) from None
        except Exception as exc:
            raise self._error("open", self.output_uri, exc) from None
        self.fs: fsspec.AbstractFileSystem = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        self.protocol: str = str(protocols[0])
        self._atomic_put = bool(set(protocols) & _ATOMIC_PUT_PROTOCOLS)
        if self.is_local:
            self.root = os.path.abspath(root)
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise self._error("create", self.root, exc) from None
        else:
            self.root = root.rstrip("/")

    def __repr__(self) -> str:
        # Never show storage_options: they may hold keys.
        return f"OutputStore({self.uri('')!r})"

    # -- names and URIs --------------------------------------------------------------------

    def path(self, name: str) -> str:
        """The filesystem path (as fsspec sees it, no protocol) of `name` under the root."""
        if not isinstance(name, str):
            raise StorageError(f"file names must be strings, got {type(name).__name__}")
        clean = name.replace("\\", "/").strip("/") if self.is_local else name.strip("/")
        parts = [p for p in clean.split("/") if p not in {"", "."}]
        if any(p == ".." for p in parts):
            raise StorageError(f"{name!r} would leave the output location {self.uri('')}")
        if not parts:
            return self.root
        if self.is_local:
            return os.path.join(self.root, *parts)
        return posixpath.join(self.root, *parts) if self.root else "/".join(parts)

    def uri(self, name: str = "") -> str:
        """The full URL of `name` under the root (an absolute path for local folders).

        Example:
            ```python
            OutputStore("s3://bkt/out").uri("a.mp4")  # 's3://bkt/out/a.mp4'
            OutputStore("out").uri("a.mp4")           # '/home/me/out/a.mp4'
            ```
        """
        path = self.path(name) if name else self.root
        if self.is_local:
            return path
        return self.fs.unstrip_protocol(path)

    def _name_of(self, path: str) -> str:
        path = path.replace(os.sep, "/") if self.is_local else path
        root = self.root.replace(os.sep, "/") if self.is_local else self.root
        root = root.rstrip("/")
        rel = path.lstrip("/")[len(root.lstrip("/")) :] if root else path
        return rel.lstrip("/")

    # -- errors ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _error(self, action: str, where: str, exc: BaseException) -> StorageError:
        hint = _LOCAL_HINT if getattr(self, "is_local", False) else _OBJECT_STORE_HINT
        if isinstance(exc, PermissionError):
            hint = "the credentials or file permissions do not allow this; " + hint
        reason = self._scrub(f"{type(exc).__name__}: {exc}")
        if len(reason) > 400:
            reason = reason[:397] + "..."
        return StorageError(self._scrub(f"Cannot {action} {where}: {reason}. To fix it, {hint}."))

    @contextlib.contextmanager
    def _translate(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            where = self.uri(name) if name else self.uri("")
            raise self._error(action, where, exc) from exc

    # -- reading ---------------------------------------------------------------------------

    def _fresh(self, path: str) -> None:
        # Another task or process may have written since this fs cached a listing; listings
        # are cheap next to acting on a stale one. s3fs answers a read of a file from the
        # cached listing of its folder when it has one (`_info` before `get_object`): a file
        # another process wrote after the listing reads as absent, which once let a run pay
        # for a row twice. `invalidate_cache` drops the path's listing and its parents'.
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)

    def exists(self, name: str) -> bool:
        """True when `name` exists under the root."""
        path = self.path(name)
        with self._translate("check", name):
            self._fresh(path)
            return bool(self.fs.exists(path))

    def size(self, name: str) -> int:
        """The size of `name` in bytes; `StorageError` if it does not exist."""
        path = self.path(name)
        with self._translate("read the size of", name):
            self._fresh(path)
            return int(self.fs.size(path))

    def sha256(self, name: str) -> str:
        """The sha256 (hex) of `name`, streamed in 1 MiB chunks."""
        digest = hashlib.sha256()
        self._fresh(self.path(name))
        with self._translate("read", name), self.fs.open(self.path(name), "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def read_bytes(self, name: str) -> bytes | None:
        """The content of `name`, or None if it does not exist."""
        path = self.path(name)
        with self._translate("read", name):
            self._fresh(path)
            try:
                return bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in `name`, or None if it does not exist.

        Raises:
            StorageError: if the file exists but does not hold a JSON object.
        """
        data = self.read_bytes(name)
        return None if data is None else self._parse_json(name, data)

    def _parse_json(self, name: str, data: bytes) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{self.uri(name)} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise StorageError(f"{self.uri(name)} holds {type(value).__name__}, not an object")
        return value

    def read_many_bytes(self, names: Iterable[str]) -> dict[str, bytes]:
        """Read many files at once; returns `{name: content}` for those that exist.

        One `fs.cat` on the whole list, so s3fs/gcsfs fetch the files concurrently; files that
        do not exist are left out.
        """
        by_path = {self.path(n): n for n in dict.fromkeys(names)}
        if not by_path:
            return {}
        with self._translate("read", ""):
            for path in by_path:
                self._fresh(path)
            raw = self.fs.cat(list(by_path), on_error="return")
        if not isinstance(raw, dict):  # pragma: no cover - fsspec returns a dict for lists
            raw = {next(iter(by_path)): raw}
        found: dict[str, bytes] = {}
        for path, data in raw.items():
            name = by_path.get(path) or by_path.get(self.fs._strip_protocol(path))
            if name is None or isinstance(data, FileNotFoundError):
                continue
            if isinstance(data, BaseException):
                raise self._error("read", self.uri(name), data)
            found[name] = bytes(data)
        return {n: found[n] for n in by_path.values() if n in found}

    def read_many_json(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Read many JSON files at once (see `read_many_bytes`); `{name: object}` for those
        that exist. A file that is not a JSON object raises `StorageError`."""
        return {
            name: self._parse_json(name, data) for name, data in self.read_many_bytes(names).items()
        }

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the root, sorted) of the files whose name starts with `prefix`.

        Temporary files of unfinished writes are never listed.

        Example:
            ```python
            store.list("_ledger/")  # ['_ledger/alice.json', '_ledger/bob.json']
            ```
        """
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.path(folder)
        with self._translate("list", folder):
            self._fresh(base)
            try:
                paths = self.fs.find(base)
            except FileNotFoundError:
                if not self.is_local and self.protocol in _ATOMIC_PUT_PROTOCOLS - {"memory"}:
                    raise
                paths = []
        names = (self._name_of(p) for p in paths)
        return sorted(
            n
            for n in names
            if n.startswith(prefix) and not posixpath.basename(n).startswith(TEMP_PREFIX)
        )

    # -- links -----------------------------------------------------------------------------

    def sign(self, name: str, expires_s: int) -> str | None:
        """A pre-signed https URL of `name` that works for `expires_s` seconds, or None when
        this store cannot sign (a local folder, `memory://`, a store whose fsspec
        implementation has no `sign`, credentials that cannot sign). Signing is local: no
        request is sent, and the file need not exist.

        Example:
            ```python
            OutputStore("s3://bkt/out").sign("a.mp4", 3600)  # 'https://bkt.s3...&X-Amz-Signature=...'
            OutputStore("out").sign("a.mp4", 3600)            # None
            ```
        """
        return self.sign_many([name], expires_s).get(name)

    def sign_many(self, names: Iterable[str], expires_s: int) -> dict[str, str]:
        """Pre-signed URLs (`sign`) of many files at once, by name; empty when this store
        cannot sign. An async fsspec implementation (s3fs) signs them all in one pass of
        its event loop instead of one round through it per file."""
        wanted = list(dict.fromkeys(names))
        if self.is_local or not wanted or self.protocol == "memory":
            return {}
        paths = [self.path(n) for n in wanted]
        try:
            urls = self._sign_paths(paths, int(expires_s))
        except NotImplementedError:
            return {}
        except Exception as exc:  # credentials that cannot sign, a missing region, ...
            logger.warning("Cannot sign links to %s: %s", self.uri(""), self._scrub(str(exc)))
            return {}
        return {n: str(u) for n, u in zip(wanted, urls, strict=True) if u}

    def _sign_paths(self, paths: builtins.list[str], expires_s: int) -> builtins.list[str]:
        fs = self.fs
        one = getattr(fs, "_url", None)
        if getattr(fs, "async_impl", False) and one is not None and getattr(fs, "loop", None):
            from fsspec.asyn import sync

            async def all_of() -> builtins.list[str]:
                return [await one(p, expires=expires_s) for p in paths]

            return list(sync(fs.loop, all_of))
        return [fs.sign(p, expiration=expires_s) for p in paths]

    # -- writing ---------------------------------------------------------------------------

    def _temp_path(self, path: str) -> str:
        folder, base = (os.path.split if self.is_local else posixpath.split)(path)
        temp = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}"
        return os.path.join(folder, temp) if self.is_local else posixpath.join(folder, temp)

    def put_file(self, local_path: str | os.PathLike[str], name: str) -> str:
        """Upload a finished local file as `name`, atomically; returns its URI.

        Readers see the old file (or none) until the new one is complete: local disks get a
        hidden temporary copy renamed over the final name; object stores get a single PUT
        (multipart uploads also become visible only when complete).
        """
        local = os.fspath(local_path)
        if not os.path.isfile(local):
            raise StorageError(f"Cannot upload {local} to {self.uri(name)}: it is not a file")
        return self._write_atomically(
            name,
            lambda dst: _copy_synced(local, dst),
            lambda path: self.fs.put_file(
                local, path, **self._upload_options(), **self._content_type(name)
            ),
        )

    def _upload_options(self) -> dict[str, Any]:
        # s3fs uploads big files in 50 MiB parts, ten at a time, all held in memory: about the
        # whole video per row in flight. Small parts, two at a time, keep it near 16 MiB.
        if self.protocol in ("s3", "s3a"):
            return {"chunksize": 8 * 2**20, "max_concurrency": 2}
        return {}

    def _content_type(self, name: str) -> dict[str, Any]:
        # A bucket serves an object with the type it was given, else as a download: a review
        # page opened by its (pre-signed) link must come as text/html, a video as video/mp4.
        guessed, _ = mimetypes.guess_type(name)
        if not guessed:
            return {}
        if self.protocol in ("s3", "s3a"):
            return {"ContentType": guessed}
        if self.protocol in ("gs", "gcs"):
            return {"content_type": guessed}
        return {}

    def write_bytes(self, name: str, data: bytes, *, durable: bool = True) -> str:
        """Write `data` as `name`, atomically (see `put_file`); returns its URI.

        On a local disk the file is also durable (synced to disk with its folder) unless
        `durable=False`: then a process crash still leaves the old file or the new one, whole,
        but a power loss may lose the write. Object stores are durable once the PUT returns.
        """
        return self._write_atomically(
            name,
            lambda dst: _write_synced(dst, data, sync=durable),
            lambda path: self.fs.pipe_file(path, data, **self._content_type(name)),
            durable=durable,
        )

    def _write_atomically(
        self,
        name: str,
        write_local: Callable[[str], None],
        write_remote: Callable[[str], None],
        *,
        durable: bool = True,
    ) -> str:
        """The one place that decides how a file appears whole: a local temp file and a rename,
        one PUT on an object store, or a temp name and a move elsewhere."""
        path = self.path(name)
        with self._translate("write", name):
            if self.is_local:
                self._local_replace(path, write_local, sync_folder=durable)
            elif self._atomic_put:
                write_remote(path)
            else:
                temp = self._temp_path(path)
                try:
                    write_remote(temp)
                    self.fs.mv(temp, path)
                finally:
                    with contextlib.suppress(Exception):
                        if self.fs.exists(temp):
                            self.fs.rm_file(temp)
            self._fresh(path)
        return self.uri(name)

    def write_json(self, name: str, obj: Any, *, durable: bool = True) -> str:
        """Write `obj` as JSON (sorted keys, indent 2, unknown types via `str`); returns its URI.
        `durable`: see `write_bytes`."""
        text = json.dumps(obj, sort_keys=True, indent=2, default=str, ensure_ascii=False)
        return self.write_bytes(name, (text + "\n").encode("utf-8"), durable=durable)

    def _local_replace(self, path: str, write: Any, *, sync_folder: bool = True) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = self._temp_path(path)
        try:
            write(temp)  # the writers sync the file themselves when asked to
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _rename_over(temp, path, sync_file=False, sync_folder=sync_folder)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create `name` holding `data` only if no file of that name exists: True when this
        call created it, False when it already existed. The one atomic "first one wins" step
        that claims are built on (`engine.claims.claim`).

        Local folders: `O_CREAT | O_EXCL`, not synced to disk: a claim only orders runs that
        are alive (they share the page cache); after a power cut the ledger, which is synced
        before every POST, says what happened. Object stores:
        fsspec's `mode="xb"`, which s3fs, gcsfs and adlfs send as a conditional write
        (`If-None-Match: *`). A backend that cannot create exclusively raises here
        (`NotImplementedError`, `ValueError`, ...); one that silently ignores the mode is
        found by `OutputStore.supports_exclusive_create`.
        """
        path = self.path(name)
        with self._translate("create", name):
            if self.is_local:
                return _create_local_exclusive(path, data)
            self._fresh(path)  # the backend decides, never a cached listing
            try:
                with self.fs.open(path, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                return False
            finally:
                self._fresh(path)
            return True

    def supports_exclusive_create(self) -> str | None:
        """None when a second exclusive create of one name fails as it must; else what is
        wrong (the backend refuses the mode, or ignores it and overwrites). Writes and removes
        one small hidden probe file (`_claims/.probe-*`)."""
        name = f"_claims/{TEMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
        try:
            if not self.create_exclusive(name, b"first"):
                return f"a new file {self.uri(name)} was reported as existing"
            if self.create_exclusive(name, b"second"):
                return (
                    f"{self.uri(name)} was created twice in exclusive mode: "
                    f"this {self.protocol}:// backend ignores exclusive create"
                )
            if self.read_bytes(name) != b"first":
                return f"an exclusive create overwrote {self.uri(name)}"
            return None
        except StorageError as exc:
            return f"this {self.protocol}:// backend cannot create files exclusively ({exc})"
        finally:
            with contextlib.suppress(StorageError):
                self.delete(name)

    # -- writing in place (local folders) ------------------------------------------------

    def local_temp(self, name: str) -> str:
        """A fresh hidden path beside `name` in a local output folder (the folder is created):
        write a file there, then `commit_local` it as `name`. Saves a copy of every video
        through a staging folder. Local folders only; hidden files are never listed.

        Example:
            ```python
            temp = store.local_temp("alice.mp4")
            await download_output(url, temp)
            store.commit_local(temp, "alice.mp4")
            ```
        """
        if not self.is_local:
            raise StorageError(f"{self.uri('')} is not a local folder: stage files elsewhere")
        path = self.path(name)
        with self._translate("write", name):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return self._temp_path(path)

    def commit_local(self, temp: str, name: str, *, durable: bool = True) -> str:
        """Rename a finished `local_temp` file over `name`, atomically; returns its URI.
        `durable` (default): the file and the rename are synced to disk first (see
        `write_bytes`). The temp file is removed if the rename fails."""
        path = self.path(name)
        with self._translate("write", name):
            _rename_over(temp, path, sync_file=durable, sync_folder=durable)
            self._fresh(path)
        return self.uri(name)

    def delete(self, name: str) -> None:
        """Delete `name`; deleting a file that does not exist is not an error."""
        path = self.path(name)
        with self._translate("delete", name):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)
            self._fresh(path)

    def remove_stale_temp_files(self, max_age_s: float = STALE_TEMP_AGE_S) -> builtins.list[str]:
        """Remove hidden temp files (`.tmp-*`) that a killed run left in a local output
        folder (a download in progress is one) and that nothing wrote to for `max_age_s`;
        return their names. Nothing to do for object stores (a PUT is never half-written)."""
        if not self.is_local or not os.path.isdir(self.root):
            return []
        cutoff = time.time() - max_age_s
        removed: list[str] = []
        for parent, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(parent, name)
                if not name.startswith(TEMP_PREFIX):
                    continue
                with contextlib.suppress(OSError):
                    if os.stat(path).st_mtime < cutoff:
                        os.remove(path)
                        removed.append(os.path.relpath(path, self.root))
        if removed:
            logger.info(
                "Removed %d unfinished temp file(s) left in %s by killed runs",
                len(removed),
                self.uri(""),
            )
        return removed

    def check_writable(self) -> None:
        """Write, read back and delete a small hidden probe file; `StorageError` if any step fails.

        Call it before paying for anything, so a wrong bucket or missing permission is found
        before the first job is submitted.
        """
        name = f"{TEMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
        self.write_bytes(name, b"ok")
        try:
            if self.read_bytes(name) != b"ok":
                raise StorageError(f"{self.uri(name)} did not read back what was written")
        finally:
            self.delete(name)

    # -- the manifest ----------------------------------------------------------------------

    def write_manifest(self, df: pd.DataFrame, name: str = MANIFEST_NAME) -> str:
        """Write `df` as Parquet to `name`, atomically (local temp file, then `put_file`).

        Returns the manifest's URI.
        """
        with staging_file(".parquet") as tmp:
            try:
                df.to_parquet(tmp, index=False)
            except Exception as exc:
                raise StorageError(f"Cannot write the manifest as Parquet: {exc}") from exc
            return self.put_file(tmp, name)

    def read_manifest(self, name: str = MANIFEST_NAME) -> pd.DataFrame | None:
        """Read the Parquet manifest `name`, or None if it does not exist yet."""
        import pandas as pd

        with staging_file(".parquet") as tmp:
            path = self.path(name)
            with self._translate("read", name):
                try:
                    self.fs.get_file(path, os.fspath(tmp))
                except FileNotFoundError:
                    return None
            if not tmp.exists():
                return None
            try:
                return pd.read_parquet(tmp)
            except Exception as exc:
                raise StorageError(
                    f"{self.uri(name)} is not a readable Parquet file: {exc}"
                ) from exc


def _copy_synced(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def _write_synced(dst: str, data: bytes, *, sync: bool = True) -> None:
    with open(dst, "wb") as fout:
        fout.write(data)
        if sync:
            fout.flush()
            os.fsync(fout.fileno())


def _create_local_exclusive(path: str, data: bytes) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


def _rename_over(temp: str, path: str, *, sync_file: bool, sync_folder: bool) -> None:
    """The one atomic step of every local write: `temp` renamed over `path` (removed if that
    fails), synced to disk first and after as asked."""
    try:
        if sync_file:
            _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if sync_folder:
        _fsync_dir(os.path.dirname(path))


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:  # Windows syncs only handles open for writing
        os.fsync(handle.fileno())


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable (POSIX); not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "MANIFEST_NAME",
    "STALE_TEMP_AGE_S",
    "TEMP_PREFIX",
    "OutputStore",
]
