"""Scripted faults: a list of "the next N calls to endpoint E misbehave like K".

Faults are consumed when they fire, first added first. Kinds that replace the answer
(`rate_limit`, `server_error`, `drop_before_accept`, `error_code_200`) stop the request before
it is processed; kinds that spoil the answer (`drop_after_accept`, `slow`) let it be processed
first, so for a submit the job exists and will run and be billed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("submit", "status", "result", "cancel", "files", "catalog", "any")
"""Where a fault may be aimed; `any` matches every API endpoint (not /samples or /_sandbox)."""

BEFORE_KINDS = ("rate_limit", "server_error", "drop_before_accept", "error_code_200")
"""Fault kinds that answer instead of processing the request."""

AFTER_KINDS = ("drop_after_accept", "slow")
"""Fault kinds that process the request and then spoil or delay the answer."""

KINDS = BEFORE_KINDS + AFTER_KINDS
"""Every fault kind."""


@dataclass
class Fault:
    """One scripted fault and how many more times it fires."""

    endpoint: str
    """Which endpoint it hits: one of ENDPOINTS."""
    kind: str
    """What happens: one of KINDS."""
    count: int = 1
    """How many requests it still affects."""
    retry_after: float | None = None
    """`rate_limit`: the Retry-After header (default 1); `slow`: the delay in seconds."""
    error_code: int | None = None
    """The `error_code` in the body (`rate_limit`, `server_error`, `error_code_200`)."""
    http_status: int | None = None
    """`server_error`: 500 (default), 502 or 503; `rate_limit`: 429 unless given."""

    def __post_init__(self) -> None:
        """Reject faults the server could not act out."""
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, not {self.endpoint!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.kind == "slow" and not self.retry_after:
            raise ValueError("a slow fault needs retry_after (the delay in seconds)")
        if self.http_status is not None and not 100 <= self.http_status <= 599:
            raise ValueError("http_status must be an HTTP status code")

    @property
    def before(self) -> bool:
        """True when the fault answers instead of processing the request."""
        return self.kind in BEFORE_KINDS

    def as_dict(self) -> dict[str, Any]:
        """The fault as JSON-friendly values."""
        return dataclasses.asdict(self)


class FaultBook:
    """The pending faults. Used from the server's event loop only, so it needs no lock."""

    def __init__(self) -> None:
        """Start with no faults."""
        self._faults: list[Fault] = []
        self.fired: dict[str, int] = {}
        """How many times each kind has fired."""

    def add(self, fault: Fault) -> None:
        """Queue a fault behind the ones already pending."""
        self._faults.append(fault)

    def take(self, endpoint: str) -> Fault | None:
        """Consume one firing of the first fault aimed at `endpoint` (or `any`), if there is one."""
        for fault in self._faults:
            if fault.endpoint in (endpoint, "any"):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                self.fired[fault.kind] = self.fired.get(fault.kind, 0) + 1
                return dataclasses.replace(fault, count=1)
        return None

    def pending(self) -> list[dict[str, Any]]:
        """The faults still to fire, in order."""
        return [f.as_dict() for f in self._faults]

    def clear(self) -> None:
        """Forget every pending fault and the firing counts."""
        self._faults.clear()
        self.fired.clear()
