"""Row ids: the one rule for what may name a row's files, wherever the outputs land.

Entry points: `id_problem` (why a value cannot be an id, or None), `safe_name` (the id, or
`InvalidInputError`). Used by the table's checks before anything is paid, and by every
writer of a row's files.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from prefect_runcomfy.api.exceptions import InvalidInputError

MAX_NAME_LENGTH = 128
"""The longest id `safe_name` accepts (file names get suffixes such as `.mp4` on top)."""

# Windows device names: a file called `con.mp4` cannot be created there, so ids must avoid them.
_RESERVED_NAMES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
# Names the output location uses itself (manifest.parquet, index.html, _ledger/).
_OWN_NAMES = frozenset({"manifest", "index", "_ledger"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def safe_name(id: str) -> str:
    """Return `id` unchanged if it can safely be used as a file name, else raise.

    Row ids become file names (`<id>.mp4`, `<id>.json`, `_ledger/<id>.json`); the rule is
    `id_problem`'s, the same one that checks the table's `id` column before anything is paid.

    Raises:
        InvalidInputError: naming the id and the reason.

    Example:
        ```python
        safe_name("alice-01")   # 'alice-01'
        safe_name("../etc")     # InvalidInputError: id '../etc' ... path separator
        ```
    """
    reason = id_problem(id)
    if reason:
        shown = repr(id) if len(str(id)) <= 60 else repr(str(id)[:57]) + "..."
        raise InvalidInputError(
            f"id {shown} cannot be used as a file name: {reason}",
            problems=[("id", reason)],
        )
    return id


def id_problem(name: Any) -> str | None:
    """Why `name` cannot be a row id, or None when it can: the one rule for ids, used by the
    table's validation (`engine.inputs.table.check_id`) and by storage (`safe_name`).

    An id names files wherever the outputs may land (a local disk on Linux, macOS or Windows,
    S3, GCS, ...), so it holds only ASCII letters, digits, `.`, `_` and `-`; starts with a
    letter or digit; has no `..`; does not end with `.` (Windows drops it); is at most 128
    characters; is not a Windows device name (`con`, `prn`, `aux`, `nul`, `com1`-`com9`,
    `lpt1`-`lpt9`, any case, with or without an extension) nor a name the output location
    uses itself (`manifest`, `index`). Whitespace at either end is refused, not trimmed: the
    files would be named otherwise than the row.
    """
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    if name in {".", ".."}:
        return "it is a relative folder reference"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\')"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if name.startswith("."):
        return "it starts with '.', which hides the file and is kept for temporary files"
    if name.endswith("."):
        return "it ends with '.', which Windows drops"
    if any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in name):
        return "it contains control characters"
    if ".." in name:
        return "it contains '..'"
    bad = sorted({c for c in name if c not in _ID_CHARS})
    if bad:
        shown = " ".join(repr(c) for c in bad[:8])
        return f"it contains {shown}; use ASCII letters, digits, '-', '_' or '.'"
    if not name[0].isalnum():
        return "it must start with a letter or a digit"
    stem = name.split(".", 1)[0].lower()
    if stem in _RESERVED_NAMES:
        return f"{stem!r} is a reserved device name on Windows"
    if stem in _OWN_NAMES:
        return f"{stem!r} is a name the output location uses itself"
    return None


__all__ = ["MAX_NAME_LENGTH", "id_problem", "safe_name"]
