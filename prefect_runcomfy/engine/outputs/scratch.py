"""Local scratch folders for downloads and posters, removed afterwards, and swept when a killed
process left them behind.

Entry points: `staging_folder`, `staging_file`, `sweep_stale_staging`. Only the local disk:
the output location's own temporary files are `OutputStore`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = "prefect-runcomfy-"
"""Local temp folders for downloads and posters start with this (under the system temp folder)."""

STALE_STAGING_AGE_S = 24 * 3600.0
"""A staging folder untouched for this long was left by a killed process and may be removed."""

_sweep_lock = threading.Lock()
_swept = False


@contextlib.contextmanager
def staging_folder(*, dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Give a private local temp folder, removed afterwards (even after an exception).

    The first call in a process also removes staging folders that killed runs left behind
    (`sweep_stale_staging`): a SIGKILL or an OOM kill skips every `finally`, and a half-done
    download can be gigabytes that would otherwise stay in /tmp forever.
    """
    _sweep_once()
    folder = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dir)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staging_file(suffix: str = "", *, dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Give a fresh local path (not yet created) inside a private temp folder, removed afterwards.

    Use it for anything that must exist as a real local file before upload — an MP4 muxer
    seeks, so it cannot write straight into an object store.

    Example:
        ```python
        with staging_file(".mp4") as tmp:
            render_video(tmp)
            store.put_file(tmp, "alice.mp4")
        # tmp and its folder are gone here, even after an exception
        ```
    """
    with staging_folder(dir=dir) as folder:
        yield Path(folder) / f"staged{suffix}"


def sweep_stale_staging(
    root: str | os.PathLike[str] | None = None, *, max_age_s: float = STALE_STAGING_AGE_S
) -> list[str]:
    """Remove staging folders (`prefect-runcomfy-*`) under `root` (the system temp folder)
    in which nothing changed for `max_age_s`; return the folders removed.

    Age is judged by the newest modification time of the folder and everything in it, so a
    download still being written is never taken, whichever process (or container sharing
    the folder) writes it.
    """
    root = os.fspath(root) if root is not None else tempfile.gettempdir()
    cutoff = time.time() - max_age_s
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or _newest_change(entry.path) > cutoff:
                continue
        except OSError:
            continue  # gone meanwhile, or not ours to read
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        logger.info("Removed %d staging folder(s) left in %s by killed runs", len(removed), root)
    return removed


def _newest_change(folder: str) -> float:
    newest = os.stat(folder).st_mtime
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(os.path.join(parent, name)).st_mtime)
        newest = max(newest, os.stat(parent).st_mtime)
    return newest


def _sweep_once() -> None:
    global _swept
    with _sweep_lock:
        if _swept:
            return
        _swept = True
    try:
        sweep_stale_staging()
    except Exception as exc:  # tidying up must never fail a row
        logger.debug("Could not sweep old staging folders: %s", exc)


__all__ = [
    "STAGING_PREFIX",
    "STALE_STAGING_AGE_S",
    "staging_file",
    "staging_folder",
    "sweep_stale_staging",
]
