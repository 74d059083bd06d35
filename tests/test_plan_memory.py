"""A table's plan holds what its run needs of each row and no more (issue 22: 100,000 rows
in one flow process; figures in benchmarks/scale_memory.py).

A plan keeps one `PreparedRow` and one decision per valid row until its run ends, so each
costs in proportion to the table: the row keeps its checked values, not a pydantic job
object (~1 KB); equal decisions are one object; the media are checked by a few workers,
not a task per row; and a run refused by its plan does not leave the plan behind.
"""

from __future__ import annotations

import gc
from typing import Any

import pandas as pd

from prefect_runcomfy.engine.inputs.table import NO_EXTRAS, check_table, payload_fingerprint
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
