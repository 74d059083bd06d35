"""The cost estimate from a catalog entry, and the `max_cost_usd` guard (no network: the
flow, CLI and sandbox tests show the same over HTTP)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from prefect_runcomfy.api.models import ModelInfo
from prefect_runcomfy.engine.inputs.table import PreparedRow, check_table
from prefect_runcomfy.engine.plan.pricing import (
    Price,
    check_cost_limit,
    estimate_cost,
    video_seconds,
)
from prefect_runcomfy.exceptions import ConfigurationError, CostLimitError
from prefect_runcomfy.models import INFINITE_TALK

BASE = {"prompt": "talks", "image": "https://x.test/p.png", "audio": "https://x.test/a.mp3"}


def prepared(*frames: int) -> list[PreparedRow]:
    table = pd.DataFrame([{**BASE, "id": f"r{i}", "frames": f} for i, f in enumerate(frames)])
    return check_table(table, INFINITE_TALK).valid


def price(**entry: Any) -> Price:
    return Price.from_model_info(ModelInfo.model_validate({"model_id": "m", **entry}))


def test_per_second_is_frames_over_25_capped_by_the_audio() -> None:
    rows = prepared(125, 250)
    assert [video_seconds(r, INFINITE_TALK) for r in rows] == [5.0, 10.0]
    assert video_seconds(rows[1], INFINITE_TALK, media_seconds=3.5) == 3.5
    assert (
        video_seconds(rows[0], INFINITE_TALK, media_seconds=60.0) == 5.0
    )  # the frames cut longer speech
    estimate = estimate_cost(
        rows, price(base_price_usd=0.015, price_unit="second"), INFINITE_TALK, {"r1": 4.0}
    )
    assert estimate.per_row == {"r0": pytest.approx(0.075), "r1": pytest.approx(0.06)}
    assert estimate.usd == pytest.approx(0.135) and estimate.seconds == 9.0
    assert estimate.describe() == (
        "estimated cost $0.1350 for 2 jobs (9.0 s of video at $0.0150 per second, "
        "from RunComfy's catalog)"
    )


@pytest.mark.parametrize("unit", ["output", "image", "Image"])
def test_per_output_or_image_is_one_price_a_row(unit: str) -> None:
    estimate = estimate_cost(
        prepared(125, 250), price(base_price_usd="0.25", price_unit=unit), INFINITE_TALK
    )
    assert estimate.usd == 0.5


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"base_price_usd": 0.01},
        {"price_unit": "second"},
        {"base_price_usd": "free", "price_unit": "second"},
        {"base_price_usd": -1, "price_unit": "second"},
        {"base_price_usd": float("nan"), "price_unit": "second"},
        {"base_price_usd": 0, "price_unit": "second"},  # 0 may mean unknown: not guessed free
        {"base_price_usd": 0.01, "price_unit": "minute"},
    ],
)
def test_no_usable_price_is_said_and_refuses_a_limit(entry: dict[str, Any]) -> None:
    no_price = price(**entry)
    assert not no_price.usable and "no usable price" in no_price.describe()
    estimate = estimate_cost(prepared(125), no_price, INFINITE_TALK)
    assert estimate.usd is None
    assert estimate.describe().startswith("cost of 1 job not estimated: no usable price")
    check_cost_limit(estimate, None)  # no limit: the run goes on
    with pytest.raises(CostLimitError, match="cannot be estimated") as caught:
        check_cost_limit(estimate, 1000.0)
    assert caught.value.estimate_usd is None and caught.value.would_submit == 1


def test_the_limit() -> None:
    estimate = estimate_cost(
        prepared(*[125] * 7), price(base_price_usd=0.1, price_unit="output"), INFINITE_TALK
    )
    check_cost_limit(estimate, 0.7)  # equal is within
    with pytest.raises(CostLimitError) as caught:
        check_cost_limit(estimate, 0.69)
    assert "r0, r1, r2, r3, r4 and 2 more" in str(caught.value)
    assert caught.value.limit_usd == 0.69
    with pytest.raises(ConfigurationError, match="0 or more"):
        check_cost_limit(estimate, -1)
    with pytest.raises(ConfigurationError, match="not nan"):
        check_cost_limit(estimate, float("nan"))  # NaN compares false: it would allow any cost
    nothing = estimate_cost([], price(), INFINITE_TALK)
    assert nothing.usd == 0.0 and "no new jobs" in nothing.describe()
    check_cost_limit(nothing, 0)  # nothing new fits any limit, even without a price


async def test_a_catalog_entry_of_unexpected_types_gives_no_price_and_no_error(
    shared_sandbox: Any,
) -> None:
    """A catalog whose entry has a field of another type must not stop the run."""
    from prefect_runcomfy.api.client import RunComfyClient
    from prefect_runcomfy.engine.plan.pricing import read_price

    class OddCatalog(RunComfyClient):
        async def model_info(self, model_id: str) -> ModelInfo:
            return ModelInfo.model_validate({"model_id": None, "display_name": {"x": 1}})

    sb = shared_sandbox
    odd = await read_price(lambda: OddCatalog(api_token=sb.token, base_url=sb.base_url), "m/x")
    assert not odd.usable and "entry could not be read" in odd.describe()
