"""Secrets in storage options never appear in a message: `secret_strings` finds them,
`scrub` hides them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every one of `secrets` replaced by `***` (longest first)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def secret_strings(options: Any) -> list[str]:
    """Every string in `storage_options` long enough to be a secret, longest first."""
    found: list[str] = []
    if isinstance(options, dict):
        for value in options.values():
            found.extend(secret_strings(value))
    elif isinstance(options, list | tuple):
        for value in options:
            found.extend(secret_strings(value))
    elif isinstance(options, str) and len(options) >= 4:
        found.append(options)
    return sorted(set(found), key=len, reverse=True)


__all__ = ["scrub", "secret_strings"]
