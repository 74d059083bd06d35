"""What to do about a row that did not succeed, per status, in words a card can show."""

from __future__ import annotations

import re

from prefect_runcomfy.engine.record import hints
from prefect_runcomfy.engine.record.hints import RESUBMIT_UNKNOWN, RETRY_FAILED, Surface
from prefect_runcomfy.engine.record.status import RowStatus


def advice_for(
    status: str, *, output_uri: str | None = None, surface: Surface = "both"
) -> str | None:
    """What the user should do about a row in `status` (plain text), or None when nothing.

    Its hints (a flag, a command) are said for `surface`: the review page, read by Python and
    command-line users alike, says both forms; the command line says its own.

    Example:
        ```python
        advice_for("invalid")  # 'Fix this row in the input table ... and run again. ...'
        ```
    """
    parsed = RowStatus.parse(status)
    if parsed is None:
        return None
    retry = RETRY_FAILED.said(surface)
    collect = hints.collect(output_uri or "OUTPUT").said(surface)
    advice = {
        RowStatus.INVALID: (
            "Fix this row in the input table (the error names the column) and run again. "
            "Nothing was submitted or billed for it."
        ),
        RowStatus.FAILED: (
            "RunComfy did not deliver a video. Check the error; if the input is fine, run again "
            f"with {retry} to pay for another try."
        ),
        RowStatus.CANCELLED: (
            "The job was cancelled while still queued, so nothing was billed: running the "
            "table again submits it anew, with no flag."
        ),
        RowStatus.TIMED_OUT: (
            "The wait ended before the job finished, or its video's download passed its "
            "deadline; the job may still be running (and billed) on RunComfy, or be done and "
            f"waiting there. Collect it without paying again: {collect} "
            "(or run the same table again). If the error says it was cancelled while still "
            f"queued, nothing was billed: run again with {retry}."
        ),
        RowStatus.OUTCOME_UNKNOWN: (
            "A submit was sent but its answer was lost, so a job may have run and been billed. "
            "Check your RunComfy dashboard for it first; then, to submit it anew, run again "
            f"with {RESUBMIT_UNKNOWN.said(surface)}."
        ),
    }
    return advice.get(parsed)


# Commands and options inside the advice, set as code so they stand out.
_CODE = re.compile(
    "|".join(
        [
            *(
                re.escape(form)
                for h in (RETRY_FAILED, RESUBMIT_UNKNOWN)
                for form in (h.python, h.cli)
            ),
            r"collect_outstanding_requests\((?:'[^']*'|\"[^\"]*\")\)",
            r"prefect-runcomfy collect (?:'[^']*'|[^\s()]+)",
        ]
    )
)


def advice_parts(advice: str) -> list[tuple[str, bool]]:
    """`advice` in pieces, each (text, shown as code): the commands and options stand out."""
    parts: list[tuple[str, bool]] = []
    end = 0
    for match in _CODE.finditer(advice):
        if match.start() > end:
            parts.append((advice[end : match.start()], False))
        parts.append((match.group(0), True))
        end = match.end()
    if end < len(advice):
        parts.append((advice[end:], False))
    return parts


__all__ = ["advice_for", "advice_parts"]
