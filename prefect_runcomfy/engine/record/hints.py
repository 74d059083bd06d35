"""What a user can do next, said for the surface that shows it.

A `Hint` holds one action in two forms: the Python form (a flow argument, a function) and
the CLI form (a `prefect-runcomfy` command or flag). Messages the library builds (a row's
error, a plan's reason, a log line) say their hints in the Python form, the form of the
code that made them; the command line prints the same messages through `for_cli`, which
says each hint in its CLI form instead. A place both kinds of users read (the review page)
says both (`Hint.said("both")`).

Example:
    ```python
    from prefect_runcomfy.engine.record.hints import RETRY_FAILED, for_cli

    text = f"run again with {RETRY_FAILED} to pay for another try"
    for_cli(text)  # 'run again with --retry-failed to pay for another try'
    ```
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from typing import Literal

Surface = Literal["python", "cli", "both"]
"""Who reads a hint: Python code's user, the command line's, or either (the review page)."""


@dataclass(frozen=True)
class Hint:
    """One thing the user can do, in its Python form and its CLI form."""

    python: str
    cli: str

    def said(self, surface: Surface = "python") -> str:
        """The hint in the words of `surface` ("both": the Python form, the CLI's after it)."""
        if surface == "cli":
            return self.cli
        if surface == "python":
            return self.python
        return f"{self.python} (CLI: {self.cli})"

    def __str__(self) -> str:
        return self.python


# The run options a hint may name, as flow argument and as `prefect-runcomfy run` flag.
_FLAGS = {
    "retry_failed": "--retry-failed",
    "resubmit_unknown": "--resubmit-unknown",
    "max_submits": "--max-submits",
    "max_cost_usd": "--max-cost",
}

RETRY_FAILED = Hint("spending=Spending(retry_failed=True)", _FLAGS["retry_failed"])
"""Pay again for rows that failed, or were cancelled, in an earlier run."""
RESUBMIT_UNKNOWN = Hint("spending=Spending(resubmit_unknown=True)", _FLAGS["resubmit_unknown"])
"""Submit again rows whose earlier submit has an unknown outcome (may pay twice)."""
SINGLE_WRITER = Hint("concurrency=Concurrency(single_writer=True)", "--single-writer")
"""Run without claims on rows (storage that cannot create files exclusively)."""


def collect(output_uri: str | None = None, *, cancel: bool = False) -> Hint:
    """Collect (or with `cancel`, cancel) what runs left at RunComfy under `output_uri`."""
    if output_uri is None:
        return Hint("collect_outstanding_requests", "prefect-runcomfy collect")
    python_cancel, cli_cancel = (", cancel=True", " --cancel") if cancel else ("", "")
    return Hint(
        f"collect_outstanding_requests({output_uri!r}{python_cancel})",
        f"prefect-runcomfy collect {shlex.quote(output_uri)}{cli_cancel}",
    )


def save_credentials(name: str) -> Hint:
    """Save a `RunComfyCredentials` block called `name`."""
    return Hint(
        f"RunComfyCredentials(api_token=...).save({name!r})",
        f"`prefect block create runcomfy-credentials` (then name it {shlex.quote(name)})",
    )


_STRING = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_OPTION = "|".join(_FLAGS)
_TO_CLI: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(re.escape(SINGLE_WRITER.python)), SINGLE_WRITER.cli),
    (re.compile(rf"spending=Spending\(({_OPTION})=True\)"), None),
    (
        re.compile(
            rf"collect_outstanding_requests\((?P<uri>{_STRING})(?P<cancel>, cancel=True)?\)"
        ),
        None,
    ),
    (re.compile(r"collect_outstanding_requests\(\.\.\., cancel=True\)"), None),
    (
        re.compile(r"RunComfyCredentials\(api_token=\.\.\.\)\.save\((?P<name>" + _STRING + r")\)"),
        None,
    ),
    (re.compile(r"\bcollect_outstanding_requests\b"), "prefect-runcomfy collect"),
    (re.compile(rf"\b({_OPTION})=(True\b|[0-9][0-9.e+-]*)"), None),
    (re.compile(rf"\b({_OPTION})\b"), None),
]


def _cli_form(match: re.Match[str]) -> str:
    """The CLI form of one hint found in Python form."""
    text = match.group(0)
    groups = match.groupdict()
    if groups.get("uri"):
        return collect(ast.literal_eval(groups["uri"]), cancel=bool(groups.get("cancel"))).cli
    if groups.get("name"):
        return save_credentials(ast.literal_eval(groups["name"])).cli
    if text.startswith("collect_outstanding_requests(..."):
        return "prefect-runcomfy collect OUTPUT --cancel"
    option = match.group(1)
    flag = _FLAGS[option]
    value = text.partition("=")[2] if "=" in text and not text.startswith("spending") else ""
    return flag if value in ("", "True") else f"{flag} {value}"


def for_cli(text: str) -> str:
    """`text`, said for Python, with every hint in it said for the command line."""
    for pattern, fixed in _TO_CLI:
        text = pattern.sub(fixed if fixed is not None else _cli_form, text)
    return text


__all__ = [
    "RESUBMIT_UNKNOWN",
    "RETRY_FAILED",
    "SINGLE_WRITER",
    "Hint",
    "Surface",
    "collect",
    "for_cli",
    "save_credentials",
]
