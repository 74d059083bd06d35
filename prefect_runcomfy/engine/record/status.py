"""The words a row's state is said in, and how they relate.

- `RowStatus`: how a row *ended* (the manifest's `status` column).
- `LedgerState`: where a row *stands* in the ledger; it adds the in-flight states
  `submitting` and `submitted`, and says `stored` where the row succeeded.
- `RowPlan`: what a run *may do* with a row, decided from its ledger entry.

`LedgerState.row_status` maps a ledger state to the status a row reports when a run only
repeats what the ledger says.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class RowStatus(StrEnum):
    """How a row ended, as the manifest's `status` column says it."""

    SUCCEEDED = "succeeded"
    """The video is stored with its sidecar (now, or by an earlier run)."""
    FAILED = "failed"
    """RunComfy refused the job, the job failed, or its outputs could not be stored."""
    CANCELLED = "cancelled"
    """The job was cancelled before it ran."""
    INVALID = "invalid"
    """The row was rejected before anything was submitted; `error` says why."""
    TIMED_OUT = "timed_out"
    """Waiting passed `max_wait_s`, or a video's download passed its deadline; a job that was
    running, or whose video is still there, can be collected later without paying again."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """A submit was sent but its answer was lost; not submitted again without asking."""

    @classmethod
    def parse(cls, value: Any) -> RowStatus | None:
        """The status `value` names, or None when it names none (a stored file read back may
        hold anything)."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def label(self) -> str:
        """The status in words, as people read it: `timed out`, `outcome unknown`."""
        return self.value.replace("_", " ")

    @property
    def needs_attention(self) -> bool:
        """True for the statuses a person has to look at: `failed`, `invalid`, `timed_out`,
        `outcome_unknown` (a cancelled row was cancelled on purpose)."""
        return self in _NEEDS_ATTENTION


class LedgerState(StrEnum):
    """Where a row stands in the ledger.

    - `submitting`: a POST is about to be (or was) sent; its answer was not recorded yet.
    - `submitted`: RunComfy accepted the job; `request_id` is known.
    - `stored`: the outputs and the metadata are in the output location.
    - `failed` / `cancelled`: the job ended without outputs.
    - `timed_out`: waiting stopped at the deadline (the job may still run), or the job
      succeeded and its video could not be downloaded (past the download's deadline, a broken
      stream); either way it is paid for and can be collected.
    - `outcome_unknown`: a POST was sent but its answer was lost; a job may be running and billed.
    - `invalid`: the input was rejected (locally or by RunComfy); nothing was paid for.
    - `output_refused`: the job succeeded and is paid for, but its output was refused (a host,
      type or size the output policy does not allow); a run or `collect` that allows it
      stores it from the request id, without a new submit.
    """

    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    STORED = "stored"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    OUTCOME_UNKNOWN = "outcome_unknown"
    INVALID = "invalid"
    OUTPUT_REFUSED = "output_refused"

    @property
    def row_status(self) -> RowStatus:
        """The status a row in this state reports (in-flight states report `outcome_unknown`:
        a POST may have been sent)."""
        return _ROW_STATUS.get(self, RowStatus.OUTCOME_UNKNOWN)


_NEEDS_ATTENTION = frozenset(
    {RowStatus.FAILED, RowStatus.INVALID, RowStatus.TIMED_OUT, RowStatus.OUTCOME_UNKNOWN}
)

_ROW_STATUS = {
    LedgerState.STORED: RowStatus.SUCCEEDED,
    LedgerState.FAILED: RowStatus.FAILED,
    LedgerState.CANCELLED: RowStatus.CANCELLED,
    LedgerState.TIMED_OUT: RowStatus.TIMED_OUT,
    LedgerState.INVALID: RowStatus.INVALID,
    LedgerState.OUTPUT_REFUSED: RowStatus.FAILED,
}


class RowPlan(StrEnum):
    """What a run may do with one row; decided by `plan_row`."""

    SUBMIT = "submit"
    """POST the job (new, or a retry the user allowed)."""
    RESUME = "resume"
    """Wait for the known request id again and store its outputs; nothing new is paid for."""
    SKIP_STORED = "skip_stored"
    """The outputs are already stored; nothing to do."""
    UNKNOWN = "unknown"
    """An earlier POST's outcome is unknown; report `outcome_unknown` and never submit."""
    KEEP_FAILED = "keep_failed"
    """The row failed or was cancelled earlier; report that again without paying for a retry."""


__all__ = ["LedgerState", "RowPlan", "RowStatus"]
