"""A render cache: identical inputs at the same size and length render once.

Keyed by (image sha256, audio sha256, width, height, frames, mode); concurrent requests for
one key share a single render. Renders run in a small thread pool so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect_runcomfy.sandbox.render import RenderedVideo

CacheKey = tuple[str, str, int, int, int, str]
"""(image sha256, audio sha256, width, height, frames, render mode)."""


class RenderCache:
    """Rendered videos on disk, by key, with one render per key at a time."""

    def __init__(self, directory: Path, threads: int) -> None:
        """Store files under `directory`; run at most `threads` renders at once."""
        self.directory = directory
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox-render")
        self._entries: dict[CacheKey, asyncio.Future[RenderedVideo]] = {}

    async def get(
        self, key: CacheKey, make: Callable[[Path], RenderedVideo]
    ) -> tuple[RenderedVideo, bool]:
        """Return (video, True) from the cache or (video, False) after `make(path)` rendered it."""
        entry = self._entries.get(key)
        if entry is not None:
            if not entry.done() or entry.exception() is None:
                return await asyncio.shield(entry), True
            del self._entries[key]
        loop = asyncio.get_running_loop()
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:24] + ".mp4"
        entry = loop.run_in_executor(self._pool, make, self.directory / name)
        self._entries[key] = entry
        try:
            return await asyncio.shield(entry), False
        except Exception:
            # a failed render is not cached: the next identical job tries again
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise

    async def close(self) -> None:
        """Stop the render threads, letting a render in progress finish (they take seconds)."""
        # waiting keeps a finishing render from calling back into a closed event loop
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        self._entries.clear()
