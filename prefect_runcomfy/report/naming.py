"""The names a run is found by in Prefect: its artifact key and its tags.

A nightly job is followed on the Artifacts page, where one key holds every run's summary as a
version; the key is derived from the output location, so each run into the same place adds a
version under the same key, and two outputs never share one.
"""

from __future__ import annotations

import hashlib
import re

from prefect_runcomfy.api.exceptions import ConfigurationError
from prefect_runcomfy.models.base import ModelSpec

RUN_TAG = "runcomfy"
"""The tag on every flow run and row task run of this library."""

_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_KEY_MAX = 60  # leaves room for the "-summary" / "-rows" suffixes


def artifact_key(output_uri: str, given: str | None = None) -> str:
    """The stable key prefix of a run's summary artifacts.

    `given` (the flow's `artifact_key` parameter) wins when set; it must be lowercase letters,
    digits and dashes, as Prefect requires. Otherwise: `runcomfy-<readable part of the
    output location>-<8 hex digits of its hash>`.

    Example:
        >>> artifact_key("s3://My-Bucket/videos/")
        'runcomfy-s3-my-bucket-videos-83a483f5'
    """
    if given is not None:
        if not _KEY.match(given) or len(given) > _KEY_MAX:
            raise ConfigurationError(
                f"artifact_key {given!r} is not a Prefect artifact key: use lowercase letters, "
                f"digits and single dashes, at most {_KEY_MAX} characters (e.g. 'nightly-videos')"
            )
        return given
    location = output_uri.rstrip("/")
    digest = hashlib.sha256(location.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "-", location.lower()).strip("-")
    room = _KEY_MAX - len(RUN_TAG) - len(digest) - 2
    readable = readable[-room:].strip("-") if len(readable) > room else readable
    return "-".join(part for part in (RUN_TAG, readable, digest) if part)


def run_tags(model: ModelSpec) -> tuple[str, str]:
    """The tags on a run and its row task runs: `runcomfy` and the model's tag."""
    return RUN_TAG, model.tag


__all__ = ["RUN_TAG", "artifact_key", "run_tags"]
