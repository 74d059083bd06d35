"""SandboxConfig: every knob of the sandbox, one switch per undocumented API reading and fault.

A config is immutable; `SandboxConfig.updated(**changes)` returns a checked copy, which is how
switches change at runtime (`Sandbox.set(...)`, `POST /_sandbox/config`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

Duration = float | tuple[float, float]
"""A fixed number of seconds, or a `(min, max)` range drawn uniformly per job."""

_CHOICES: dict[str, tuple[Any, ...]] = {
    "submit_status_code": (200, 202),
    "failed_status_word": ("completed", "failed"),
    "cancelled_spelling": ("cancelled", "canceled"),
    "error_shape": ("object", "string", "failure_reason"),
    "output_shape": ("video", "videos"),
    "timestamp_format": ("iso", "epoch"),
    "auth_http_status": (401, 403),
    "error_body_shape": ("error_code", "detail", "code"),
    "render": ("full", "tiny"),
    "queue_position_base": (0, 1),
    "request_id_shape": ("uuid", "malformed"),
    "price_unit": ("second", "output", "image"),
    "unknown_model_http_status": (404, 400),
    "output_urls_on": ("api", "foreign"),
    "files_redirect": ("none", "foreign", "self"),
}


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves. Every field can also be changed while it runs.

    Durations of the queue (`queue_seconds`, `run_seconds`, the `[sandbox:run=S]` trigger) are
    multiplied by `time_scale`; protocol windows (`not_found_after_submit_s`, `result_ttl_s`,
    `transient_window_s`) are real seconds.
    """

    # --- the queue
    workers: int = 2
    """How many jobs run at once; the others wait in FIFO order."""
    queue_seconds: Duration = 0.0
    """Extra wait after submit before a job may be picked up (seconds or a (min, max) range)."""
    run_seconds: Duration = (1.0, 3.0)
    """How long a job runs once picked up (seconds or a (min, max) range); a job ends at the
    later of this and its render time."""
    time_scale: float = 1.0
    """Multiplies queue and run durations: 0.01 makes a 100 s job take 1 s."""
    seed: int = 0
    """Seed of the random draws (durations, `fail_rate`), for reproducible schedules."""
    queue_position_base: int = 0
    """`queue_position` of the next job to run: 0 (jobs ahead of it) or 1 (its place in line)."""

    # --- auth and money
    tokens: tuple[str, ...] = ("sandbox-token",)
    """Bearer tokens the server accepts."""
    no_balance_tokens: tuple[str, ...] = ()
    """Tokens that are valid but out of money: submits answer 400002 (HTTP 402)."""
    price_per_second_usd: float = 0.015
    """The catalog's `base_price_usd` of InfiniteTalk, and the `cost` reported with
    `?include_cost=true`: per second of output video (per output with another `price_unit`)."""
    price_unit: str = "second"
    """The catalog's `price_unit` of InfiniteTalk: `second`, `output` or `image`."""
    catalog_priced: bool = True
    """False: InfiniteTalk's catalog entry gives no price (`base_price_usd` and `price_unit`
    null), as for a model whose pricing is not published."""

    # --- one switch per [GAP] reading
    submit_status_code: int = 200
    """200 (documented) or 202 (then the answer also carries `status: in_queue`)."""
    failed_status_word: str = "completed"
    """What `/status` says about a failed run: `completed` (then `/result` says failed) or `failed`."""
    cancelled_spelling: str = "cancelled"
    """`cancelled` or `canceled`, on `/status`, `/result` and the cancel answer's `status`."""
    transient_states: bool = False
    """Report `pending` (just queued) and `starting` (just picked up) for `transient_window_s`."""
    transient_window_s: float = 0.3
    """How long the transient words are reported after submit and after pick-up."""
    error_shape: str = "object"
    """A failed run's reason in `/result`: `object` → `error: {type, message}`, `string` →
    `error: "..."`, `failure_reason` → `failure_reason: "..."`."""
    output_shape: str = "video"
    """`video` → `output: {video: url}`; `videos` → `output: {videos: [url]}`."""
    timestamp_format: str = "iso"
    """`created_at`/`finished_at` as ISO-8601 UTC strings (`iso`) or epoch seconds (`epoch`)."""
    not_found_after_submit_s: float = 0.0
    """For this long after a submit, status/result/cancel of that request answer 404001."""
    result_ttl_s: float | None = None
    """Seconds after a job finishes when its result and files expire (404); None keeps them."""
    fail_rate: float = 0.0
    """Probability that a run fails (drawn from the seeded generator at submit)."""
    auth_http_status: int = 401
    """HTTP status of a 400004 (token missing or unknown): 401 or 403."""
    unknown_model_http_status: int = 404
    """HTTP status of an unknown model (error 400001) on the catalog and on submit: 404 (what
    RunComfy's CLI reads as "model not found") or 400."""
    request_id_shape: str = "uuid"
    """`uuid`: submit answers carry the job's id; `malformed`: they carry an id that is not one
    (`../<id>?next=...`) while the job is created and runs as usual."""
    error_body_shape: str = "error_code"
    """Error bodies: `error_code` → `{error_code, error_message}`, `detail` → `{detail}`,
    `code` → `{code, error}`; a schema rejection adds its reasons as `detail` (a list)."""

    # --- where outputs are served (the foreign listener: `Sandbox(foreign_host="127.0.0.2")`)
    output_urls_on: str = "api"
    """`api`: output URLs are on the API's own host; `foreign`: on the sandbox's foreign
    listener (another loopback address), as a spoofed answer would name another host."""
    files_without_length: bool = False
    """Serve output files chunked, without Content-Length (a client must count the bytes)."""
    output_content_type: str = "video/mp4"
    """The Content-Type output files are served with (`text/html` plays an error page)."""
    files_redirect: str = "none"
    """What the API host's file route answers: the file (`none`), a 302 to the same file on the
    foreign listener (`foreign`), or a 302 to itself under another path (`self`)."""
    files_bytes_per_s: float | None = None
    """Serve output files at about this many bytes per second (a trickling CDN or proxy);
    None: as fast as the connection goes."""
    files_stall_after_bytes: int | None = None
    """Send this many bytes of an output file, then nothing more while the connection stays
    open (until the client leaves, at most `app.STALL_HOLD_S`): a stalled CDN. None: never."""

    # --- rendering
    render: str = "full"
    """`full`: fetch the inputs and render the portrait video; `tiny`: a 64x64 one-second MP4
    made without fetching anything (for scale benchmarks)."""
    x264_preset: str = "ultrafast"
    """x264 speed preset of full renders."""
    fetch_timeout_s: float = 30.0
    """Timeout of each input download."""
    max_media_bytes: int = 100 * 1024 * 1024
    """Inputs larger than this fail the run."""
    render_threads: int = 2
    """Renders that may run at the same time (they are CPU-bound)."""
    output_dir: str | None = None
    """Where rendered files go; None means a temporary directory removed on shutdown."""
    output_padding_bytes: int = 0
    """Serve every output file followed by this many zero bytes (streamed, never held in
    memory), so a 64x64 video becomes a file of any size: for streaming benchmarks."""

    def __post_init__(self) -> None:
        """Normalise JSON-ish values (lists to tuples) and reject impossible settings."""
        for name in ("queue_seconds", "run_seconds"):
            object.__setattr__(self, name, _duration(name, getattr(self, name)))
        for name in ("tokens", "no_balance_tokens"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if not self.tokens:
            raise ValueError("tokens must hold at least one token")
        if self.render_threads < 1:
            raise ValueError("render_threads must be at least 1")
        if self.output_padding_bytes < 0:
            raise ValueError("output_padding_bytes must not be negative")
        if self.files_bytes_per_s is not None and not self.files_bytes_per_s > 0:
            raise ValueError("files_bytes_per_s must be None or positive")
        if self.files_stall_after_bytes is not None and self.files_stall_after_bytes < 0:
            raise ValueError("files_stall_after_bytes must be None or >= 0")
        if self.result_ttl_s is not None and self.result_ttl_s < 0:
            raise ValueError("result_ttl_s must be None or >= 0")

    def updated(self, **changes: Any) -> SandboxConfig:
        """Return a copy with `changes` applied; unknown names raise ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown sandbox setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly values, with tokens replaced by how many there are."""
        data = dataclasses.asdict(self)
        data["tokens"] = f"<{len(self.tokens)} token(s)>"
        data["no_balance_tokens"] = f"<{len(self.no_balance_tokens)} token(s)>"
        return data


def draw_seconds(rng: random.Random, duration: Duration) -> float:
    """Draw one duration: the number itself, or uniform in the (min, max) range."""
    if isinstance(duration, tuple):
        low, high = duration
        return low if high <= low else rng.uniform(low, high)
    return float(duration)


def parse_duration(text: str) -> Duration:
    """Parse `"2"` or `"1-3"` (a range) as given on the command line."""
    if "-" in text.strip().lstrip("-"):
        low, high = text.split("-", 1)
        return (float(low), float(high))
    return float(text)


def _duration(name: str, value: Any) -> Duration:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"{name} range must be (min, max)")
        low, high = float(value[0]), float(value[1])
        if low < 0 or high < low:
            raise ValueError(f"{name} range must satisfy 0 <= min <= max")
        return (low, high)
    seconds = float(value)
    if seconds < 0:
        raise ValueError(f"{name} must not be negative")
    return seconds
