"""A table's plan holds what its run needs of each row and no more (issue 22: 100,000 rows
in one flow process; figures in benchmarks/scale_memory.py).

A plan keeps one `PreparedRow` and one decision per valid row until its run ends, so each
costs in proportion to the table: the row keeps its checked values, not a pydantic job
object (~1 KB); equal decisions are one object; the media are checked by a few workers,
not a task per row; and a run refused by its plan does not leave the plan behind.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pandas as pd
import pytest

from prefect_runcomfy.engine.inputs.media import MediaResolver
from prefect_runcomfy.engine.inputs.table import NO_EXTRAS, check_table, payload_fingerprint
from prefect_runcomfy.engine.plan.planning import RESOLVE_AT_ONCE, MediaSettings, plan_table
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.models.base import ModelInput


def table(n: int, **extra: Any) -> pd.DataFrame:
    """`n` distinct valid rows, as a table of them read from Parquet would hold them."""
    return pd.DataFrame(
        [
            {
                "id": f"m{i:05d}",
                "prompt": f"a person says hello to the camera #{i}",
                "image": "https://x.test/portrait.png",
                "audio": f"https://x.test/speech-{i % 7}.mp3",
                "resolution": "480x480",
                "frames": 125,
                **extra,
            }
            for i in range(n)
        ]
    )


def jobs_alive() -> int:
    gc.collect()
    return sum(isinstance(o, ModelInput) for o in gc.get_objects())


def test_a_checked_row_keeps_its_values_and_builds_an_equal_job_on_demand() -> None:
    frame = table(50)
    before = jobs_alive()
    check = check_table(frame, INFINITE_TALK)
    assert len(check.valid) == 50 and not check.invalid
    assert jobs_alive() == before, "no job object kept per row"
    row = check.valid[7]
    given = {k: v for k, v in frame.iloc[7].to_dict().items() if k != "id"}
    job = INFINITE_TALK.validate(given)
    assert row.job == job and row.job.model_dump() == job.model_dump()
    assert row.job.to_api_payload() == job.to_api_payload()
    assert row.fingerprint == payload_fingerprint(job.to_api_payload())
    assert row.input("audio") == "https://x.test/speech-0.mp3"
    assert row.input("resolution") == "480x480 (1:1)"
    assert row.extras is NO_EXTRAS, "a table without other columns: one shared empty mapping"
    with_extras = check_table(table(2, customer="acme"), INFINITE_TALK).valid
    assert [dict(r.extras) for r in with_extras] == [{"customer": "acme"}] * 2


def _traced_plan(rows: int) -> tuple[int, int]:
    """Bytes held after and at the peak of `validate`'s plan of `rows` rows (no output
    location, media not read), as the command makes it: in `asyncio.run`."""
    frame = table(rows)
    media = MediaSettings(mode="offline")
    gc.collect()
    tracemalloc.start()
    try:
        planned = asyncio.run(plan_table(frame, None, INFINITE_TALK, media=media))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(planned.rows) == rows and planned.describe() == f"{rows} to submit"
    assert len({id(d) for d in planned.decisions}) == 1, "equal decisions are one object"
    return held, peak


def test_a_plan_grows_by_a_few_hundred_bytes_a_row() -> None:
    """Growth from 2,000 to 4,000 rows, by tracemalloc (fixed costs cancel out). With a
    pydantic job and a decision per row, the table made into dicts all at once, and
    `asyncio.run` repr-ing the whole plan on its way out, it was 1.6 KB a row held and
    2.8 KB at the peak; now about 0.4 and 0.5 KB."""
    _traced_plan(200)  # first use: imports and caches, not rows
    held_small, peak_small = _traced_plan(2000)
    held_large, peak_large = _traced_plan(4000)
    held = (held_large - held_small) / 2000
    peak = (peak_large - peak_small) / 2000
    assert held < 800, f"{held:.0f} bytes a row held"
    assert peak < 1000, f"{peak:.0f} bytes a row at the peak"


def test_a_plan_says_its_size_in_its_repr_not_every_row() -> None:
    planned = asyncio.run(plan_table(table(300), None, INFINITE_TALK))
    assert repr(planned) == "<TablePlan of 300 rows: 300 to submit>"


def test_the_media_are_checked_by_a_few_workers_not_a_task_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen_tasks: list[int] = []
    resolve = MediaResolver.resolve

    async def counting(self: MediaResolver, value: str, kind: Any) -> Any:
        seen_tasks.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0)  # let the others start, as a real upload or signature would
        return await resolve(self, value, kind)

    monkeypatch.setattr(MediaResolver, "resolve", counting)
    media = MediaSettings(mode="check")
    planned = asyncio.run(plan_table(table(500), None, INFINITE_TALK, media=media))
    assert len(planned.rows) == 500 and len(seen_tasks) == 1000  # image and audio of each
    assert max(seen_tasks) <= RESOLVE_AT_ONCE + 1, max(seen_tasks)  # + the plan's own task
