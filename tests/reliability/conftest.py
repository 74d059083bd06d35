"""The reliability suite's shared fixture: every log record of the session, for the secret scan.

The suite's tests run together, in file order, on one process (tests/conftest.py sends them to
one xdist worker as one unit): the secret scan comes last and reads that process's harness
database and log records after the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted still counts, as its parts
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.lines.append(text)


@pytest.fixture(scope="session", autouse=True)
def all_log_lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Every log line (any logger, any level) emitted from the first reliability test on.

    At the end of the session they are written under pytest's temporary folder, where the
    whole-run secret scan (tests/conftest.py) reads them with every other file.
    """
    keep = _Keep()
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in ("prefect", "prefect_runcomfy")),
    ]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(keep)
    logging.getLogger("prefect_runcomfy").setLevel(logging.DEBUG)
    try:
        yield keep.lines
    finally:
        for lg, level in saved:
            lg.removeHandler(keep)
            lg.setLevel(level)
        dump = tmp_path_factory.getbasetemp() / "reliability-log-lines.txt"
        dump.write_text("\n".join(keep.lines), encoding="utf-8", errors="backslashreplace")
