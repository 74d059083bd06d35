"""Reading a table of inputs and checking every row before anything is paid for.

A table is a pandas DataFrame, a list of dicts, or the path/URL of a CSV, Parquet or JSON-lines
file (read through fsspec, so `s3://...` works). Each row becomes a job of the run's model
(its `ModelSpec`'s input model) or a `RowProblem` that names the row, the column and the reason. No network calls beyond reading
the table itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

import fsspec
import pandas as pd
from pydantic import ValidationError

from prefect_runcomfy.api.exceptions import InvalidInputError
from prefect_runcomfy.engine.inputs.csv_file import duplicates_refusal, read_csv_file
from prefect_runcomfy.engine.inputs.ids import id_problem
from prefect_runcomfy.engine.record.outcome import RowOutcome, is_blank
from prefect_runcomfy.engine.record.status import RowStatus
from prefect_runcomfy.models.base import ModelInput, ModelSpec

TableLike: TypeAlias = pd.DataFrame | list[dict[str, Any]] | str
"""What a flow accepts as `inputs`."""

ID_COLUMN = "id"


def payload_fingerprint(payload: dict[str, Any]) -> str:
    """The sha256 (hex) of the canonical JSON of an API payload.

    Canonical: sorted keys, no whitespace, ASCII escapes, unknown types via `str`, so equal payloads
    give equal fingerprints whatever their key order.

    Fingerprint the payload *as the user wrote it* (media sources such as `s3://...` or a
    local path), not after media resolution: pre-signed URLs change on every run and would make
    every row look changed.

    Example:
        ```python
        payload_fingerprint({"b": 1, "a": 2}) == payload_fingerprint({"a": 2, "b": 1})  # True
        ```
    """
    # ASCII escapes (json's default) keep the bytes hashed independent of any encoding choice.
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


NO_EXTRAS: Mapping[str, Any] = MappingProxyType({})
"""The other columns of a row of a table that has none: one shared (read-only) empty mapping
instead of an empty dict per row."""


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """A valid row: its position, its id, the job as the user gave it, and the other columns.

    A plan holds one per valid row until its run ends (100,000 on a big night), so the row
    keeps the job's checked values in a tuple (about 100 bytes) and builds the job
    (`ModelInput`) when asked: a pydantic instance holds a `__dict__` and a set of its fields
    (about 1 KB). The values were checked once; building skips validation. Make one with
    `PreparedRow.of`.
    """

    row: int
    id: str
    fingerprint: str
    extras: Mapping[str, Any]
    job_type: type[ModelInput]
    values: tuple[Any, ...]
    """The job's values, in the order of `job_type.model_fields`."""

    @classmethod
    def of(
        cls,
        row: int,
        id: str,
        job: ModelInput,
        fingerprint: str,
        extras: Mapping[str, Any] = NO_EXTRAS,
    ) -> PreparedRow:
        """The row at position `row`, named `id`, whose checked job is `job`."""
        kind = type(job)
        values = tuple(getattr(job, name) for name in _field_names(kind))
        return cls(row, id, fingerprint, extras, kind, values)

    @property
    def job(self) -> ModelInput:
        """The row's job, built anew from its checked values (an equal one each time)."""
        names = _field_names(self.job_type)
        return self.job_type.model_construct(**dict(zip(names, self.values, strict=True)))

    def input(self, name: str) -> Any:
        """One input's value by its field name, without building the job."""
        return self.values[_field_names(self.job_type).index(name)]


@functools.cache
def _field_names(kind: type[ModelInput]) -> tuple[str, ...]:
    return tuple(kind.model_fields)


@dataclass(frozen=True)
class RowProblem:
    """An invalid row: which row, its id when known, and each (column, reason)."""

    row: int
    id: str | None
    problems: list[tuple[str, str]]
    extras: Mapping[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    """The input columns as given (friendly names), so a report can show what was wrong."""

    @property
    def message(self) -> str:
        """One line a person can act on: `row 3 (id 'ada'): steps: ... (got 30)`."""
        where = f"row {self.row}" + (f" (id {self.id!r})" if self.id else "")
        return where + ": " + "; ".join(f"{col}: {reason}" for col, reason in self.problems)


@dataclass
class TableCheck:
    """The result of checking a table: rows ready to run and rows that are not."""

    valid: list[PreparedRow]
    invalid: list[RowProblem]

    @property
    def ok(self) -> bool:
        """True when every row is valid."""
        return not self.invalid


def check_id(value: Any) -> str:
    """Return `value` as a row id usable as a file name, or raise `ValueError` saying why not.

    Ids name the row's files (`<id>.mp4`), so the rule is storage's own (`id_problem`): ASCII
    letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 128
    characters, no `..`, no trailing `.`, no Windows device name (`con`, `com1`, `lpt9.txt`, ...).
    A number (from a CSV or Parquet column) is read as its digits.
    """
    text = _float_id(value) if isinstance(value, float) else str(value)
    problem = id_problem(text)
    if problem:
        shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
        raise ValueError(f"{shown} cannot name a file: {problem}")
    return text


def _float_id(value: float) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else str(value)


def read_table(inputs: TableLike, *, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read `inputs` into a DataFrame: a DataFrame (copied), a list of dicts, or a file URL.

    Files are read by their extension: `.csv`/`.tsv` (as `read_csv_file` reads them: every
    cell as text, so ids keep leading zeros and `NA` stays `NA`; UTF-8; `,`, `;` or tab),
    `.parquet`, `.jsonl`/`.ndjson` (JSON lines) or `.json` (a list of objects), optionally
    compressed (`.gz`, ...).

    Raises:
        InvalidInputError: the table cannot be read, is of an unknown kind, is not UTF-8
            text, or has two columns of one name.
    """
    if isinstance(inputs, pd.DataFrame):
        refusal = duplicates_refusal("the DataFrame", list(inputs.columns))
        if refusal is not None:
            raise refusal
        return inputs.reset_index(drop=True).copy()
    if isinstance(inputs, (list, tuple)):
        if not all(isinstance(r, Mapping) for r in inputs):
            raise InvalidInputError("inputs: a list of inputs must hold one dict per row")
        return pd.DataFrame.from_records([dict(r) for r in inputs])
    if not isinstance(inputs, str):
        raise InvalidInputError(
            f"inputs: expected a DataFrame, a list of dicts or a file path/URL, not {type(inputs).__name__}"
        )
    url = inputs
    name = url.split("?", 1)[0].lower()
    for ext in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        name = name.removesuffix(ext)
    options = dict(storage_options or {})
    try:
        if name.endswith(".csv") or name.endswith(".tsv"):
            return read_csv_file(url, storage_options=options, tabs=name.endswith(".tsv"))
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(url, storage_options=options or None)
        if name.endswith(".jsonl") or name.endswith(".ndjson"):
            return pd.read_json(
                url, lines=True, dtype=False, storage_options=options or None, compression="infer"
            )
        if name.endswith(".json"):
            with fsspec.open(url, "rt", compression="infer", **options) as handle:
                data = json.load(handle)
            if not isinstance(data, list):
                raise InvalidInputError(f"inputs: {url} must hold a JSON list of objects")
            return read_table(data)
    except InvalidInputError:
        raise
    except FileNotFoundError:
        raise InvalidInputError(f"inputs: no table at {url}") from None
    except Exception as exc:
        raise InvalidInputError(
            f"inputs: could not read {url}: {type(exc).__name__}: {exc}"
        ) from None
    raise InvalidInputError(
        f"inputs: {url} is not a .csv, .parquet, .jsonl or .json file; convert it or pass a DataFrame"
    )


RECORDS_AT_ONCE = 1000
"""Rows turned into Python dicts at a time while a table is checked: a 100,000-row table
made into dicts at once would hold 100,000 of them (about 1 KB each) at the same time."""


def _records(df: pd.DataFrame) -> Iterator[tuple[int, dict[Any, Any]]]:
    """Each row of `df` as a dict (`to_dict(orient="records")`), with its position, made a
    chunk of `RECORDS_AT_ONCE` at a time."""
    for start in range(0, len(df), RECORDS_AT_ONCE):
        chunk = df.iloc[start : start + RECORDS_AT_ONCE].to_dict(orient="records")
        yield from enumerate(chunk, start)


def _ids(df: pd.DataFrame) -> Iterator[Any]:
    """The cells of the `id` column as `_records` gives them, `RECORDS_AT_ONCE` at a time:
    from the column alone when its name is the only one of its kind (else as a row's dict
    would hold it: the last column of that name)."""
    if not df.columns.is_unique:
        yield from (record.get(ID_COLUMN) for _, record in _records(df))
        return
    column = df[ID_COLUMN]
    for start in range(0, len(column), RECORDS_AT_ONCE):
        yield from column.iloc[start : start + RECORDS_AT_ONCE].tolist()


def _explicit_id_counts(values: Iterable[Any]) -> dict[str, int]:
    """How many rows name each id given in the `id` column, case folded: `Ada.mp4` and
    `ada.mp4` are one file on macOS and Windows disks, and one ledger entry, so the second
    row would be paid again on every run."""
    counts: dict[str, int] = {}
    for value in values:
        if not is_blank(value):
            key = str(_float_id(value) if isinstance(value, float) else value)
            key = key.strip().casefold()
            counts[key] = counts.get(key, 0) + 1
    return counts


def check_table(df: pd.DataFrame, model: ModelSpec) -> TableCheck:
    """Check every row of `df` as jobs of `model`; return the valid rows and a `RowProblem` for each invalid one.

    Empty cells count as "not given" (so an optional column falls back to its default). Rows
    that would pay twice for the same video are refused: two rows with the same id, or (without
    ids) two rows with the same inputs.

    Example:
        ```python
        check = check_table(read_table("inputs.csv"), INFINITE_TALK)
        for problem in check.invalid:
            print(problem.message)   # row 3 (id 'ada'): steps: ... (got 30)
        ```
    """
    columns = [str(c) for c in df.columns]
    has_id = ID_COLUMN in columns
    input_columns = model.input_columns
    checker = _RowChecker(
        model,
        input_columns,
        extra_columns=[c for c in columns if c not in input_columns and c != ID_COLUMN],
        has_id=has_id,
        explicit_counts=_explicit_id_counts(_ids(df)) if has_id else {},
    )
    check = TableCheck(valid=[], invalid=[])
    for position, record in _records(df):
        checked = checker.check(position, record)
        if isinstance(checked, PreparedRow):
            check.valid.append(checked)
        else:
            check.invalid.append(checked)
    return check


@dataclass
class _RowChecker:
    """Checks the rows of one table, one at a time, remembering the ids already taken."""

    model: ModelSpec
    input_columns: frozenset[str]
    extra_columns: list[str]
    has_id: bool
    explicit_counts: dict[str, int]
    seen_ids: dict[str, int] = field(default_factory=dict)

    def check(self, position: int, record: dict[Any, Any]) -> PreparedRow | RowProblem:
        """The row at `position` (a dict of its cells) as a valid row or a problem."""
        model = self.model
        extras = {c: record.get(c) for c in self.extra_columns} if self.extra_columns else NO_EXTRAS
        inputs = self.input_columns
        given = {str(k): v for k, v in record.items() if str(k) in inputs and not is_blank(v)}
        problems: list[tuple[str, str]] = []
        row_id: str | None = None
        raw_id = record.get(ID_COLUMN) if self.has_id else None
        if self.has_id and not is_blank(raw_id):
            try:
                row_id = check_id(raw_id)
            except ValueError as exc:
                problems.append((ID_COLUMN, str(exc)))
        job: ModelInput | None = None
        try:
            job = model.validate(given)
        except ValidationError as exc:
            problems.extend(model.describe_error(exc))
        if job is not None and not problems:
            digest = payload_fingerprint(job.to_api_payload())
            id_given = row_id is not None
            row_id = row_id if row_id is not None else f"row-{digest[:16]}"
            problems.extend(self._twice(row_id, id_given))
            if not problems:
                self.seen_ids[row_id] = position
                return PreparedRow.of(position, row_id, job, digest, extras)
        return RowProblem(position, row_id, problems, extras, model.friendly(given))

    def _twice(self, row_id: str, id_given: bool) -> list[tuple[str, str]]:
        """Why a row named `row_id` would pay twice for one video, if it would."""
        named = self.explicit_counts.get(row_id.casefold(), 0) if id_given else 0
        if named > 1:
            reason = (
                f"{row_id!r} names {named} rows (ids that differ only in case count as one: "
                "they name one file on macOS and Windows); ids must be unique"
            )
            return [(ID_COLUMN, reason)]
        if row_id in self.seen_ids:
            reason = (
                f"same inputs as row {self.seen_ids[row_id]}: it would pay twice for the same "
                "video; give each row its own id to generate both"
            )
            return [("(row)", reason)]
        return []


def rows_as_records(rows: Iterable[PreparedRow]) -> list[dict[str, Any]]:
    """The valid rows back as plain dicts (friendly names plus `id` and the extra columns)."""
    return [
        {"id": r.id, **r.job.model_dump(), **r.extras}
        for r in rows  # keep the table's order
    ]


def _local_path(value: str, base_dir: str | None) -> str | None:
    """The local file a media value names, or None when it is a URL or a data: URI."""
    if value.startswith("data:") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        return value[len("file://") :] if value.startswith("file://") else None
    if base_dir and not value.startswith("/"):
        return f"{base_dir.rstrip('/')}/{value}"
    return value


def local_media_path(value: str, base_dir: str | None = None) -> str | None:
    """The local file a media value names (a relative path read against `base_dir`), or None
    when it is a URL or a `data:` URI."""
    return _local_path(value, base_dir)


def check_local_media(
    check: TableCheck, model: ModelSpec, *, base_dir: str | None = None
) -> TableCheck:
    """Move rows whose local media file (an input `model` names as media) does not exist
    to the invalid rows.

    Offline: URLs and remote paths are not touched (the flow checks them before submitting).
    Relative paths are read against `base_dir` (the folder of a local table).
    """
    import os

    valid: list[PreparedRow] = []
    invalid = list(check.invalid)
    for row in check.valid:
        problems = []
        for column in model.media:
            path = _local_path(row.input(column), base_dir)
            if path is not None and not os.path.isfile(path):
                problems.append((column, f"no such local file: {path}"))
        if problems:
            invalid.append(RowProblem(row.row, row.id, problems, row.extras, row.job.model_dump()))
        else:
            valid.append(row)
    invalid.sort(key=lambda p: p.row)
    return TableCheck(valid=valid, invalid=invalid)


def is_local_uri(uri: str) -> bool:
    """True for a local path (relative, absolute or `file://`), False for any other URL."""
    return "://" not in uri or uri.startswith("file://")


def table_folder(table_uri: str | None) -> str | None:
    """The folder a table file sits in (an absolute local path, or a URL prefix); relative
    media paths in the table are read against it. None for in-memory tables."""
    import os

    if not table_uri:
        return None
    if is_local_uri(table_uri):
        return os.path.dirname(os.path.abspath(table_uri.removeprefix("file://")))
    return table_uri.split("?", 1)[0].rsplit("/", 1)[0]


def invalid_outcome(problem: RowProblem) -> RowOutcome:
    """The record of a row rejected before anything was submitted."""
    return RowOutcome.start(problem).ended(RowStatus.INVALID, problem.message)
