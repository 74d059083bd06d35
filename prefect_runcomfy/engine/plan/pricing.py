"""What a run's new jobs will cost, estimated from the model's catalog entry before any POST.

RunComfy's catalog gives each model a `base_price_usd` and a `price_unit`: `second` (video:
billed per second of output) or `output` / `image` (billed per output). Per second, a row
costs `base_price_usd` times the seconds of output its model says the job makes at most
(`ModelSpec.output_seconds`), which the length of one of its media may cap (the model's
`length_from`) when that is known (a local file this process can read). Per output or
image, a row costs the base price.

`max_cost_usd` refuses a run whose estimate is over it, before anything is paid, naming the
estimate and the rows; a catalog that gives no usable price makes such a run refuse rather
than guess.

```python
price = await read_price(lambda: RunComfyClient(), model.model_id)
estimate = estimate_cost(rows_to_submit, price, model)
estimate.describe()   # 'estimated cost $0.2250 for 3 jobs (15.0 s of video at $0.0150 per second)'
check_cost_limit(estimate, max_cost_usd=0.10)  # CostLimitError
```
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prefect_runcomfy.api.client import RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError, CostLimitError, RunComfyError
from prefect_runcomfy.api.models import ModelInfo
from prefect_runcomfy.engine.inputs.table import PreparedRow, local_media_path
from prefect_runcomfy.models.base import ModelSpec

AUDIO_PROBE_LIMIT = 1000
"""At most this many local media files are probed for their length; beyond, the estimate uses
the model's bound alone (an upper bound), so a huge table is planned quickly."""


@dataclass(frozen=True)
class Price:
    """A model's price as its catalog entry gives it, or why there is none to use."""

    model_id: str
    base_price_usd: float | None = None
    price_unit: str | None = None
    pricing_note: str | None = None
    problem: str | None = None
    """Why no cost can be estimated (no price, an unknown unit, the catalog unreadable)."""

    @classmethod
    def from_model_info(cls, info: ModelInfo) -> Price:
        """The price of a catalog entry; `problem` says what is missing when it is unusable."""
        problem = None
        if not info.usable_price:
            given = f"base_price_usd={info.base_price_usd!r}, price_unit={info.price_unit!r}"
            problem = f"the catalog entry of {info.model_id} gives no usable price ({given})"
        return cls(
            model_id=info.model_id,
            base_price_usd=info.base_price_usd,
            price_unit=info.price_unit,
            pricing_note=info.pricing_note,
            problem=problem,
        )

    @property
    def usable(self) -> bool:
        """True when a cost can be estimated from this price."""
        return self.problem is None and self.base_price_usd is not None

    def row_cost(self, seconds: float) -> float | None:
        """One row's estimated cost in USD from the seconds of output it makes at most, or
        None without a usable price."""
        if not self.usable or self.base_price_usd is None:
            return None
        if self.price_unit == "second":
            return self.base_price_usd * seconds
        return self.base_price_usd  # one output per row

    def describe(self) -> str:
        """The price in words: `$0.0150 per second`."""
        if not self.usable:
            return f"no usable price ({self.problem})"
        return f"${self.base_price_usd:.4f} per {self.price_unit}"


def video_seconds(row: PreparedRow, model: ModelSpec, media_seconds: float | None = None) -> float:
    """Seconds of output a row makes at most, as its model counts them; `media_seconds`, the
    length of the row's `model.length_from` medium when known, may cap them."""
    return model.output_seconds(row.job, media_seconds)


@dataclass(frozen=True)
class CostEstimate:
    """The estimated cost of the rows a run would submit (and pay for)."""

    price: Price
    rows: tuple[str, ...] = ()
    """Ids of the rows to submit."""
    per_row: Mapping[str, float] = field(default_factory=dict)
    """Each row's estimate (empty without a usable price)."""
    seconds: float = 0.0
    """Seconds of video the rows make at most (with a price per second)."""

    @property
    def usd(self) -> float | None:
        """The whole estimate in USD; 0 when nothing is submitted, None without a price."""
        if not self.rows:
            return 0.0
        if not self.price.usable:
            return None
        return sum(self.per_row.values())

    def describe(self) -> str:
        """The estimate in one sentence, for the plan line and the command line."""
        jobs = f"{len(self.rows)} job{'s' if len(self.rows) != 1 else ''}"
        if not self.rows:
            return "estimated cost $0.0000 (no new jobs)"
        if self.usd is None:
            return f"cost of {jobs} not estimated: {self.price.describe()}"
        how = (
            f"{self.seconds:.1f} s of video at {self.price.describe()}"
            if self.price.price_unit == "second"
            else f"{self.price.describe()}"
        )
        return f"estimated cost ${self.usd:.4f} for {jobs} ({how}, from RunComfy's catalog)"


def estimate_cost(
    rows: Iterable[PreparedRow],
    price: Price,
    model: ModelSpec,
    media_seconds: Mapping[str, float] | None = None,
) -> CostEstimate:
    """Estimate what submitting `rows` of `model` costs at `price`; `media_seconds` (by row
    id) caps a row's seconds of output where its medium's length is known."""
    rows = list(rows)
    known = media_seconds or {}
    per_row: dict[str, float] = {}
    seconds = 0.0
    for row in rows:
        row_seconds = video_seconds(row, model, known.get(row.id))
        seconds += row_seconds
        cost = price.row_cost(row_seconds)
        if cost is not None:
            per_row[row.id] = cost
    return CostEstimate(
        price=price, rows=tuple(r.id for r in rows), per_row=per_row, seconds=seconds
    )


def check_cost_limit(estimate: CostEstimate, max_cost_usd: float | None) -> None:
    """Raise `CostLimitError`, before anything is sent, when the estimate is over
    `max_cost_usd`, or when there is none to compare (no usable price) and jobs would be
    submitted. None: no limit."""
    if max_cost_usd is None:
        return
    if not math.isfinite(max_cost_usd) or max_cost_usd < 0:
        raise ConfigurationError(f"max_cost_usd must be a number, 0 or more, not {max_cost_usd}.")
    if not estimate.rows:
        return
    shown = ", ".join(estimate.rows[:5]) + (
        f" and {len(estimate.rows) - 5} more" if len(estimate.rows) > 5 else ""
    )
    usd = estimate.usd
    if usd is None:
        raise CostLimitError(
            f"max_cost_usd={max_cost_usd:g} is set, but the cost of the {len(estimate.rows)} "
            f"new jobs cannot be estimated: {estimate.price.describe()}. Nothing was "
            f"submitted rather than guess. Rows to submit: {shown}. Run without max_cost_usd "
            "(max_submits still caps the count) or once the catalog gives a price.",
            estimate_usd=None,
            limit_usd=max_cost_usd,
            would_submit=len(estimate.rows),
        )
    if usd > max_cost_usd:
        raise CostLimitError(
            f"This run's {estimate.describe()} is more than max_cost_usd={max_cost_usd:g}; "
            f"nothing was submitted. Rows to submit: {shown}. Check the table, or raise "
            "max_cost_usd.",
            estimate_usd=usd,
            limit_usd=max_cost_usd,
            would_submit=len(estimate.rows),
        )


async def read_price(make_client: Callable[[], RunComfyClient], model_id: str) -> Price:
    """The model's price from RunComfy's catalog (`GET /v1/models/{model_id}`: a read, free).
    Never raises: a catalog that cannot be read gives a `Price` that says why."""
    try:
        async with make_client() as client:
            info = await client.model_info(model_id)
    except RunComfyError as exc:
        return Price(model_id=model_id, problem=f"the catalog could not be read: {exc}")
    except ValueError as exc:  # an entry whose fields have unexpected types
        return Price(model_id=model_id, problem=f"the catalog's entry could not be read: {exc}")
    return Price.from_model_info(info)


async def price_rows(
    make_client: Callable[[], RunComfyClient],
    model: ModelSpec,
    rows: list[PreparedRow],
    base_dir: str | None = None,
) -> tuple[CostEstimate, dict[str, float]]:
    """Estimate what submitting `rows` of `model` costs: the model's price and the lengths of
    the rows' local media that cap their output are read at once (nothing is read when there
    are no rows). Returns the estimate and the lengths it used, by row id."""
    if not rows:
        return estimate_cost([], Price(model_id=model.model_id), model), {}
    price, lengths = await asyncio.gather(
        read_price(make_client, model.model_id),
        asyncio.to_thread(local_media_seconds, rows, model, base_dir),
    )
    return estimate_cost(rows, price, model, lengths), lengths


def local_media_seconds(
    rows: Iterable[PreparedRow],
    model: ModelSpec,
    base_dir: str | None = None,
    *,
    limit: int = AUDIO_PROBE_LIMIT,
) -> dict[str, float]:
    """The length in seconds of each row's `model.length_from` medium that is a local file
    (read with PyAV, when it is installed), by row id; others are left out. Blocking I/O."""
    if model.length_from is None:
        return {}
    try:
        import av
    except ImportError:  # the `media` extra is not installed: the model's bound it is
        return {}
    lengths: dict[str, float] = {}
    for row in list(rows)[:limit]:
        path = local_media_path(row.input(model.length_from), base_dir)
        if path is None or not os.path.isfile(path):
            continue
        try:
            with av.open(path) as container:
                if container.duration:
                    lengths[row.id] = container.duration / av.time_base
                elif container.streams.audio:
                    stream = container.streams.audio[0]
                    if stream.duration and stream.time_base:
                        lengths[row.id] = float(stream.duration * stream.time_base)
        except Exception:  # noqa: S112 - not media PyAV can read: the model's bound it is
            continue
    return lengths


__all__ = [
    "AUDIO_PROBE_LIMIT",
    "CostEstimate",
    "Price",
    "check_cost_limit",
    "estimate_cost",
    "local_media_seconds",
    "read_price",
    "video_seconds",
]
