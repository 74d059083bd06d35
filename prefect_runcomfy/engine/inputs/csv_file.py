"""Reading a CSV file as people make it: with Excel, in any country, by hand.

Entry points: `read_csv_file` (the table, every cell as text) and `duplicate_columns`. The
rules, each chosen so a row is never paid with a value its author did not write:

- every cell is text, and only an empty cell is missing: `NA`, `null`, `None` or `nan` are
  what the author typed (an id `NA`, a prompt `None`), not pandas' missing-value words;
- the separator is `,` (a tab for `.tsv`), unless the header has no comma and holds `;` or a
  tab: Excel writes `;` where the decimal mark is a comma (most of Europe);
- the file is UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes; any other
  encoding is refused, naming the file, the line and how to save it as UTF-8, because
  guessing one (Windows-1252? Latin-1?) could send a prompt with the wrong letters;
- two columns of one name are refused, naming them: pandas would keep the first and rename
  the second `name.1`, so a row would be paid with a prompt the author may not have meant.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import pandas as pd

from prefect_runcomfy.api.exceptions import InvalidInputError

_SEPARATORS = (";", "\t")
"""Separators read when a header holds no comma, in the order they are tried."""

_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}

_HEADER_LIMIT = 1 << 20
"""The most bytes of a header line read to choose the separator (a header is a line of names)."""

_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")

SAVE_AS_UTF8 = (
    "save it as UTF-8: in Excel, File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)'; in "
    "LibreOffice, tick 'Edit filter settings' and choose 'Unicode (UTF-8)'; or convert it "
    "(`iconv -f WINDOWS-1252 -t UTF-8 old.csv > new.csv`)"
)
"""What to do about a file that is not UTF-8."""


def read_csv_file(url: str, *, storage_options: dict[str, Any], tabs: bool) -> pd.DataFrame:
    """The CSV file at `url` (any fsspec URL, compression inferred), every cell as text.

    `tabs`: the file is a `.tsv` (the separator is a tab, whatever its header holds). Empty
    cells are missing (NaN); nothing else is.

    Raises:
        InvalidInputError: the file is not UTF-8, or two of its columns have one name.
    """
    header = _header_line(url, storage_options)
    sep = "\t" if tabs else separator(header)
    names = _header_names(header, sep)
    refusal = duplicates_refusal(url, names)
    if refusal is not None:
        raise refusal
    try:
        return pd.read_csv(
            url,
            dtype=str,
            sep=sep,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            storage_options=storage_options or None,
            compression="infer",
        )
    except UnicodeDecodeError as exc:
        raise _not_utf8(url, exc, storage_options) from None


def separator(header: str) -> str:
    """The separator a CSV header line is written with: `,` unless the comma makes one column
    and `;` or a tab makes more (the one that makes most)."""
    best, most = ",", len(_header_names(header, ","))
    if most > 1:
        return best
    for sep in _SEPARATORS:
        count = len(_header_names(header, sep))
        if count > most:
            best, most = sep, count
    return best


def duplicate_columns(names: Iterable[Any]) -> list[str]:
    """The column names given more than once (blank names aside: pandas names those
    `Unnamed: 3`, ...), in the order of their second appearance."""
    seen: set[str] = set()
    twice: list[str] = []
    for name in (str(n) for n in names):
        if name in seen and name not in twice and name.strip():
            twice.append(name)
        seen.add(name)
    return twice


def duplicates_refusal(source: str, names: Sequence[Any]) -> InvalidInputError | None:
    """The refusal of a table `source` whose column `names` hold one name twice, or None."""
    shown = [str(n) for n in names]
    twice = duplicate_columns(shown)
    if not twice:
        return None
    where = "; ".join(
        f"{name!r} is columns " + " and ".join(str(i + 1) for i, n in enumerate(shown) if n == name)
        for name in twice
    )
    return InvalidInputError(
        f"inputs: {source} has more than one column of the same name ({where}); a row would "
        "be run with only one of them. Delete or rename the extra columns, then run again",
        problems=[(name, "is more than one column") for name in twice],
    )


def _header_line(url: str, options: dict[str, Any]) -> str:
    """The file's first line, as text (a UTF-8 byte-order mark dropped)."""
    with fsspec.open(url, "rb", compression="infer", **options) as handle:
        raw: bytes = handle.readline(_HEADER_LIMIT)
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(_not_utf8_message(url, raw, 1, exc)) from None


def _header_names(header: str, sep: str) -> list[str]:
    return next(csv.reader([header], delimiter=sep), [])


def _not_utf8(url: str, exc: UnicodeDecodeError, options: dict[str, Any]) -> InvalidInputError:
    """The refusal of a file that is not UTF-8, naming its first line that is not."""
    with fsspec.open(url, "rb", compression="infer", **options) as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as found:
                return InvalidInputError(_not_utf8_message(url, line, number, found))
    return InvalidInputError(_not_utf8_message(url, exc.object, None, exc))


def _not_utf8_message(url: str, line: bytes, number: int | None, exc: UnicodeDecodeError) -> str:
    if number == 1 and line.startswith(_UTF16_MARKS):
        kind = "is UTF-16 text (Excel's 'Unicode Text')"
    else:
        bad = line[exc.start : exc.start + 1].hex()
        at = f"line {number} has" if number else "it has"
        kind = (
            f"is not UTF-8 text ({at} byte 0x{bad}, which UTF-8 never has there: it was "
            "probably saved as Windows-1252/Latin-1, Excel's plain 'CSV (Comma delimited)')"
        )
    return f"inputs: {url} {kind}; {SAVE_AS_UTF8}"


__all__ = [
    "SAVE_AS_UTF8",
    "duplicate_columns",
    "duplicates_refusal",
    "read_csv_file",
    "separator",
]
