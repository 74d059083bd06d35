"""How the Prefect UI and the review point at files of the output location.

- An object store that can sign (S3, GCS): pre-signed https URLs, which a browser opens from
  the Prefect UI without credentials, for `RUNCOMFY_LINK_EXPIRES_S` seconds (default 7 days,
  the longest an S3 SigV4 signature lasts). Every place that shows one says until when.
- A local folder: its paths, as text to copy (a browser refuses `file://` links from an
  http page such as the Prefect UI).
- A store that cannot sign (or `RUNCOMFY_LINK_EXPIRES_S=0`): its URIs, as text.

```python
links = FileLinks.make(store, ["index.html", "alice.mp4"])
links.url("alice.mp4")   # 'https://bkt.s3.amazonaws.com/out/alice.mp4?X-Amz-...' or None
links.lifetime           # 'links work for 7 days, until 2026-02-07 12:00 UTC'
```
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect_runcomfy.engine.outputs.store import OutputStore

logger = logging.getLogger(__name__)

LINK_EXPIRES_ENV = "RUNCOMFY_LINK_EXPIRES_S"
"""Environment variable: seconds the pre-signed links of a run's artifacts and shared review
work (default `DEFAULT_LINK_EXPIRES_S`; 0 makes none)."""

DEFAULT_LINK_EXPIRES_S = 7 * 24 * 3600
"""7 days: the longest an S3 SigV4 pre-signed URL lasts."""

_S3_MAX_EXPIRES_S = 7 * 24 * 3600
_S3 = frozenset({"s3", "s3a"})


def link_expires_s(protocol: str | None = None) -> int:
    """The links' lifetime from `RUNCOMFY_LINK_EXPIRES_S` (seconds, 0 for no signed links),
    else 7 days; for S3 (`protocol`) at most 7 days, which S3 refuses to exceed."""
    raw = os.environ.get(LINK_EXPIRES_ENV, "").strip()
    try:
        value = int(float(raw)) if raw else DEFAULT_LINK_EXPIRES_S
    except ValueError:
        logger.warning(
            "%s=%r is not a number of seconds; using %d",
            LINK_EXPIRES_ENV,
            raw,
            DEFAULT_LINK_EXPIRES_S,
        )
        value = DEFAULT_LINK_EXPIRES_S
    if protocol in _S3 and value > _S3_MAX_EXPIRES_S:
        logger.warning(
            "%s=%d: S3 signs links for at most 7 days; using %d",
            LINK_EXPIRES_ENV,
            value,
            _S3_MAX_EXPIRES_S,
        )
        value = _S3_MAX_EXPIRES_S
    return max(0, value)


def duration_words(seconds: int) -> str:
    """A lifetime in words: `7 days`, `1 day`, `36 hours`, `15 minutes`, `40 seconds`."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if (seconds >= size and seconds % size == 0) or seconds >= 2 * size:
            count = round(seconds / size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


@dataclass(frozen=True)
class FileLinks:
    """The links to some files of one output location: pre-signed URLs when the store signs
    (`signed`), else none, and what a person reads about them."""

    store: OutputStore
    expires_s: int
    signed: Mapping[str, str] = field(default_factory=dict)
    """Pre-signed URL by file name (under the output location)."""
    expires_at: datetime | None = None

    @classmethod
    def make(
        cls, store: OutputStore, names: Iterable[str], expires_s: int | None = None
    ) -> FileLinks:
        """Sign `names` under `store` for `expires_s` seconds (default `link_expires_s`)."""
        expires = link_expires_s(store.protocol) if expires_s is None else expires_s
        wanted = list(names)
        signed = store.sign_many(wanted, expires) if expires > 0 and wanted else {}
        at = datetime.now(UTC) + timedelta(seconds=expires) if signed else None
        return cls(store, expires, signed, at)

    @property
    def signs(self) -> bool:
        """Whether these links are pre-signed URLs."""
        return bool(self.signed)

    def url(self, name: str) -> str | None:
        """The pre-signed URL of `name`, or None."""
        return self.signed.get(name)

    def name_of(self, uri: str) -> str | None:
        """`uri`'s name under the store (None when it is elsewhere)."""
        root = self.store.uri("").rstrip("/\\")
        for sep in ("/", os.sep):
            if uri.startswith(root + sep):
                return uri[len(root) + 1 :].replace(os.sep, "/")
        return None

    @property
    def lifetime(self) -> str:
        """How long the links work, in words (empty when they are not signed)."""
        if not self.signs or self.expires_at is None:
            return ""
        return (
            f"links work for {duration_words(self.expires_s)}, until "
            f"{self.expires_at.strftime('%Y-%m-%d %H:%M UTC')}"
        )

    @property
    def explained(self) -> str:
        """One sentence on the links of an artifact: how long they live, or why there are none."""
        if self.signs:
            return (
                f"Links are pre-signed: they {self.lifetime[len('links ') :]} "
                f"(`{LINK_EXPIRES_ENV}` sets how long; run again for fresh ones)."
            )
        if self.store.is_local:
            return (
                "The outputs are in a local folder: copy a path into a file browser or "
                "player (a browser does not open links to local files from a web page)."
            )
        if self.expires_s <= 0:
            return f"No pre-signed links: `{LINK_EXPIRES_ENV}=0`."
        return (
            f"No links: {self.store.protocol}:// files cannot be pre-signed here; "
            "open the URIs with the store's own tools."
        )


__all__ = [
    "DEFAULT_LINK_EXPIRES_S",
    "LINK_EXPIRES_ENV",
    "FileLinks",
    "duration_words",
    "link_expires_s",
]
