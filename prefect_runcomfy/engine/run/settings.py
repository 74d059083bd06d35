"""A run's settings: what a person chose, frozen for the run, and the hooks of the face.

The sections (`Spending`, `Waiting`, `Concurrency`, `MediaOptions`) are pydantic models, so
the flows take them as parameters as they are: Prefect shows each as a section of the
parameter form, and a deployment passes them as JSON objects. `RunSettings` gathers what
the rows of one run share; `RunHooks` holds the callables the Prefect face gives the engine
(where clients come from, who hears a row end), so the engine imports neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.models import CancelOutcome
from prefect_runcomfy.engine.record.outcome import RowOutcome
from prefect_runcomfy.engine.run.waiting import PollPolicy, PollStrategy
from prefect_runcomfy.engine.shards.heartbeat import HEARTBEAT_S
from prefect_runcomfy.engine.shards.runs import STALE_AFTER_S
from prefect_runcomfy.models.base import ModelSpec


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Spending(_Section):
    """Guards on what a run may pay for, and what it pays for again."""

    max_submits: int | None = Field(
        default=None,
        description="The most new (paid) jobs this run may submit; checked before any POST. "
        "Rows collected, skipped or reported again are not counted; 0 allows only collecting. "
        "Empty: no limit.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        description="The most this run's new jobs may cost, estimated from the model's price in "
        "RunComfy's catalog; a run over it, or that cannot be estimated, submits nothing. "
        "Empty: no limit.",
    )
    allow_failed_rows: bool | int = Field(
        default=False,
        description="Rows needing a person (failed, invalid, timed_out, outcome_unknown) the run "
        "tolerates and still ends Completed: false none, true any number, or a count.",
    )
    retry_failed: bool = Field(
        default=False, description="Submit again (and pay again for) rows that failed earlier."
    )
    resubmit_unknown: bool = Field(
        default=False,
        description="Submit again rows whose earlier submit got no answer (this may pay twice).",
    )


class Waiting(_Section):
    """How a run reads its jobs' status while it waits."""

    poll_initial_s: float = Field(
        default=2.0, description="First polling interval; it doubles up to poll_max_s."
    )
    poll_max_s: float = Field(default=30.0, description="The longest polling interval.")
    not_found_grace_s: float = Field(
        default=30.0,
        description="How long after its submit a request RunComfy does not know yet is taken as "
        "not visible yet rather than gone.",
    )
    poll_strategy: PollStrategy = Field(
        default="learned",
        description="learned: read a job just after jobs of its kind finished in this run; "
        "doubling: each job on its own interval.",
    )
    cancel_queued_at_deadline: bool = Field(
        default=True, description="Cancel a job still queued at max_wait_s."
    )

    def policy(self) -> PollPolicy:
        """The polling policy these settings describe."""
        return PollPolicy(
            initial_s=self.poll_initial_s,
            max_s=self.poll_max_s,
            not_found_grace_s=self.not_found_grace_s,
            strategy=self.poll_strategy,
        )


class Concurrency(_Section):
    """Sharing RunComfy and the output location with other runs."""

    limit: str | None = Field(
        default=None,
        description="Name of a Prefect global concurrency limit shared by every run on one "
        "RunComfy account (prefect gcl create NAME --limit N); strict.",
    )
    single_writer: bool = Field(
        default=False,
        description="Take no claims on rows: only for storage that cannot create files "
        "exclusively, and only when no other run writes there at the same time.",
    )


class MediaOptions(_Section):
    """Reading the table and its media (`staging_uri` and `inline_media` are top-level)."""

    on_invalid: Literal["continue", "stop"] = Field(
        default="continue",
        description="continue: run the valid rows and report the others; stop: submit nothing "
        "when any row is invalid.",
    )
    input_storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for reading the table and remote media."
    )
    staging_storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for staging_uri (default: the input's)."
    )


class ShardRole(_Section):
    """What makes a run of `generate_talking_videos` one shard of a sharded run; set only by
    `generate_talking_videos_sharded` (its rows are read with the output's storage options)."""

    manifest_name: str = Field(description="The shard's own manifest under the output location.")
    heartbeat_name: str | None = Field(
        default=None, description="The file the shard rewrites while it works."
    )
    heartbeat_s: float = Field(default=HEARTBEAT_S, description="How often it is rewritten.")


class ShardWatching(_Section):
    """How a sharded parent tells a working shard run from a dead one."""

    heartbeat_s: float = Field(
        default=HEARTBEAT_S, description="How often each shard run writes its heartbeat."
    )
    stale_after_s: float = Field(
        default=STALE_AFTER_S,
        description="How long a started shard run may show no sign of life (no new heartbeat, "
        "no state change) before it is taken as dead.",
    )


@dataclass(frozen=True)
class RunSettings:
    """What the rows of one run share and nothing changes while it runs."""

    model: ModelSpec
    """The model every row of the run is a job of."""
    max_concurrency: int = 8
    max_wait_s: float = 3600.0
    spending: Spending = field(default_factory=Spending)
    waiting: Waiting = field(default_factory=Waiting)
    concurrency: Concurrency = field(default_factory=Concurrency)
    flow_run_id: str | None = None

    @property
    def model_id(self) -> str:
        """The RunComfy model id the run's jobs are submitted to."""
        return self.model.model_id

    @property
    def poll(self) -> PollPolicy:
        """The polling policy of the run's waits."""
        return self.waiting.policy()


@dataclass(frozen=True)
class RunHooks:
    """What the Prefect face lends the engine for one run."""

    make_client: Callable[[], RunComfyClient] = RunComfyClient
    """A new RunComfy client (the face decides where the token comes from)."""
    on_row_done: Callable[[RowOutcome], Awaitable[None]] | None = None
    """Hears each row's record as it ends (progress, events)."""
    cancel_job: Callable[[str], Awaitable[CancelOutcome]] | None = None
    """Cancels one request (collect's `cancel`); by default through a client of the run."""


__all__ = [
    "Concurrency",
    "MediaOptions",
    "RunHooks",
    "RunSettings",
    "ShardRole",
    "ShardWatching",
    "Spending",
    "Waiting",
]
