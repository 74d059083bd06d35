"""Counters the sandbox keeps so tests and benchmarks can check what really happened.

No token is ever stored: requests are tied to their owner by a hash of the token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Mutable counters, touched only on the server's event loop."""

    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    """Every HTTP request, by endpoint name (submit, status, result, cancel, files, catalog, ...)."""
    submits_accepted: int = 0
    """Jobs created (including those whose answer was then dropped or delayed by a fault)."""
    submits_by_payload: Counter[str] = field(default_factory=Counter)
    """Jobs created per sha256 of the canonical JSON payload."""
    submits_rejected: Counter[int] = field(default_factory=Counter)
    """Submits refused, by error code (400001, 400002, 400004, 422001, ...)."""
    cancels: int = 0
    """Cancel calls that reached a known request."""
    cancelled_jobs: int = 0
    """Jobs that a cancel stopped before they ran."""
    runs_started: int = 0
    """Jobs picked up by a worker."""
    runs_succeeded: int = 0
    """Jobs that ended with a video."""
    runs_failed: int = 0
    """Jobs that ended failed (planned failure or bad input)."""
    renders: int = 0
    """Videos actually encoded (cache misses)."""
    render_cache_hits: int = 0
    """Jobs served from the render cache."""
    billed_seconds: float = 0.0
    """Seconds of video produced by succeeded jobs."""
    file_requests: int = 0
    """Requests to /files/..."""
    file_requests_by_listener: Counter[str] = field(default_factory=Counter)
    """Requests to /files/..., by the listener they came in on: `api` or `foreign`."""
    file_requests_with_authorization: int = 0
    """Requests to /files/... that carried an Authorization header (should stay 0)."""
    file_bytes_served: int = 0
    """Bytes of output files sent in full answers."""

    def snapshot(
        self, *, price_per_second_usd: float, faults_fired: dict[str, int]
    ) -> dict[str, Any]:
        """A JSON-friendly copy of every counter plus the derived ones."""
        duplicates = {h: n for h, n in self.submits_by_payload.items() if n > 1}
        return {
            "requests_total": sum(self.requests_by_endpoint.values()),
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "submits_accepted": self.submits_accepted,
            "submits_by_payload": dict(self.submits_by_payload),
            # how many payloads were submitted more than once, and how many extra jobs that made
            "duplicate_submits": len(duplicates),
            "duplicate_submit_jobs": sum(n - 1 for n in duplicates.values()),
            "submits_rejected": {str(k): v for k, v in self.submits_rejected.items()},
            "cancels": self.cancels,
            "cancelled_jobs": self.cancelled_jobs,
            "runs_started": self.runs_started,
            "runs_succeeded": self.runs_succeeded,
            "runs_failed": self.runs_failed,
            "renders": self.renders,
            "render_cache_hits": self.render_cache_hits,
            "billed_seconds": round(self.billed_seconds, 6),
            "billed_usd": round(self.billed_seconds * price_per_second_usd, 6),
            "file_requests": self.file_requests,
            "file_requests_by_listener": {
                "api": self.file_requests_by_listener["api"],
                "foreign": self.file_requests_by_listener["foreign"],
            },
            "file_requests_with_authorization": self.file_requests_with_authorization,
            "authorization_headers_seen_on_files": self.file_requests_with_authorization,
            "file_bytes_served": self.file_bytes_served,
            "faults_fired": dict(faults_fired),
        }
