"""What to do about a row that did not succeed, per status, in words a card can show."""

from __future__ import annotations

import re
import shlex

from prefect_runcomfy.engine.record.status import RowStatus


def advice_for(status: str, *, output_uri: str | None = None) -> str | None:
    """What the user should do about a row in `status` (plain text), or None when nothing.

    Example:
        ```python
        advice_for("invalid")  # 'Fix this row in the input table ... and run again. ...'
        ```
    """
    parsed = RowStatus.parse(status)
    if parsed is None:
        return None
    target = shlex.quote(output_uri) if output_uri else "OUTPUT"
    advice = {
        RowStatus.INVALID: (
            "Fix this row in the input table (the error names the column) and run again. "
            "Nothing was submitted or billed for it."
        ),
        RowStatus.FAILED: (
            "RunComfy did not deliver a video. Check the error; if the input is fine, run again "
            "with spending=Spending(retry_failed=True) (CLI: --retry-failed) to pay for "
            "another try."
        ),
        RowStatus.CANCELLED: (
            "The job was cancelled while still queued, so nothing was billed: running the "
            "table again submits it anew, with no flag."
        ),
        RowStatus.TIMED_OUT: (
            "The wait ended before the job finished, or its video's download passed its "
            "deadline; the job may still be running (and billed) on RunComfy, or be done and "
            f"waiting there. Collect it without paying again: prefect-runcomfy collect {target} "
            "(or run the same table again). If the error says it was cancelled while still "
            "queued, nothing was billed: run again with spending=Spending(retry_failed=True) "
            "(CLI: --retry-failed)."
        ),
        RowStatus.OUTCOME_UNKNOWN: (
            "A submit was sent but its answer was lost, so a job may have run and been billed. "
            "Check your RunComfy dashboard for it first; then, to submit it anew, run again "
            "with resubmit_unknown=True (CLI: --resubmit-unknown)."
        ),
    }
    return advice.get(parsed)


# Commands and options inside the advice, set as code so they stand out.
_CODE = re.compile(
    r"prefect-runcomfy collect .*?(?= \(or run)|retry_failed=True|resubmit_unknown=True"
    r"|--retry-failed|--resubmit-unknown"
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
