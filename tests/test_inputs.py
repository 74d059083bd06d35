"""InfiniteTalkInput: the seed's schema, friendly names, and errors in the user's words."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_runcomfy.api.models import InfiniteTalkInput
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.models.infinite_talk import API_KEYS, FRAME_COUNTS, RESOLUTIONS

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"
BASE = {"prompt": "a man talks", "image": "https://x.test/p.png", "audio": "https://x.test/a.mp3"}


def _seed_schema() -> dict[str, Any]:
    text = next(SEED.glob("*.txt")).read_text()
    start = text.index('{\n"type": "object",\n"title": "Eingabeschema"')
    return json.JSONDecoder().raw_decode(text[start:])[0]


@pytest.mark.skipif(not SEED.exists(), reason="shared/seed is not beside this checkout")
def test_matches_the_seed_schema_exactly() -> None:
    schema = _seed_schema()
    props = schema["properties"]
    assert set(props) == set(API_KEYS.values())
    assert set(schema["required"]) == {"241_positive_prompt", "284_image", "125_audio"}
    assert tuple(props["245_valuex246_value"]["enum"]) == RESOLUTIONS
    assert tuple(props["270_value"]["enum"]) == FRAME_COUNTS
    fields = InfiniteTalkInput.model_fields
    for friendly, key in API_KEYS.items():
        field = fields[friendly]
        spec = props[key]
        if key not in schema["required"]:
            assert field.default == spec["default"], key
        for bound, attr in (("minimum", "ge"), ("maximum", "le")):
            if bound in spec:
                found = [getattr(m, attr) for m in field.metadata if hasattr(m, attr)]
                assert found == [spec[bound]], (key, bound)
    assert fields["frames"].annotation is int and fields["steps"].annotation is int
    assert fields["shift"].annotation is float and fields["cfg"].annotation is float


def test_friendly_names_and_api_keys_make_the_same_payload() -> None:
    friendly = InfiniteTalkInput(**BASE, resolution="480x720", frames=250, seed=1, steps=8)
    raw = InfiniteTalkInput.model_validate(
        {
            "241_positive_prompt": "a man talks",
            "284_image": "https://x.test/p.png",
            "125_audio": "https://x.test/a.mp3",
            "245_valuex246_value": "480x720 (2:3)",
            "270_value": 250,
            "128_seed": 1,
            "128_steps": 8,
        }
    )
    assert friendly.to_api_payload() == raw.to_api_payload()
    payload = friendly.to_api_payload()
    assert payload == {
        "241_positive_prompt": "a man talks",
        "284_image": "https://x.test/p.png",
        "125_audio": "https://x.test/a.mp3",
        "245_valuex246_value": "480x720 (2:3)",
        "270_value": 250,
        "128_seed": 1,
        "128_steps": 8,
        "128_shift": 11,
        "128_cfg": 1,
    }
    assert InfiniteTalkInput.from_api_payload(payload) == friendly
    assert (friendly.width, friendly.height, friendly.max_seconds) == (480, 720, 10.0)


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"resolution": "720x720"}, "resolution", "720x720 (1:1)"),
        ({"resolution": "1280x720 (16:9)"}, "resolution", "1280x720 (16:9)"),
        ({"resolution": " 540X960 "}, "resolution", "540x960 (9:16)"),
        ({"frames": "250"}, "frames", 250),
        ({"frames": 125.0}, "frames", 125),
        ({"steps": 6}, "steps", 6),
        ({"steps": "20"}, "steps", 20),
        ({"shift": 1}, "shift", 1.0),
        ({"shift": "15"}, "shift", 15.0),
        ({"cfg": 0.6}, "cfg", 0.6),
        ({"cfg": 2}, "cfg", 2.0),
        ({"seed": -5}, "seed", -5),
        ({"seed": "42"}, "seed", 42),
        ({"128_cfg": 1.5}, "cfg", 1.5),
        ({"prompt": "  padded  "}, "prompt", "padded"),
    ],
)
def test_accepted_inputs(changes: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(InfiniteTalkInput(**{**BASE, **changes}), field) == expected


@pytest.mark.parametrize(
    ("changes", "column", "words"),
    [
        ({"resolution": "1920x1080"}, "resolution", "not a resolution the model offers"),
        ({"resolution": "720x720 (16:9)"}, "resolution", "not a resolution"),
        ({"frames": 100}, "frames", "use 125"),
        ({"frames": 125.5}, "frames", "whole number"),
        ({"steps": 5}, "steps", "greater than or equal to 6"),
        ({"steps": 21}, "steps", "less than or equal to 20"),
        ({"steps": 7.5}, "steps", "whole number"),
        ({"steps": True}, "steps", "not a boolean"),
        ({"shift": 0.5}, "shift", "greater than or equal to 1"),
        ({"shift": 16}, "shift", "less than or equal to 15"),
        ({"shift": math.nan}, "shift", "finite"),
        ({"cfg": 0.5}, "cfg", "greater than or equal to 0.6"),
        ({"cfg": 2.5}, "cfg", "less than or equal to 2"),
        ({"cfg": "high"}, "cfg", "valid number"),
        ({"seed": "abc"}, "seed", "valid integer"),
        ({"seed": 2**70}, "seed", "64 bits"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   "}, "prompt", "at least 1 character"),
        ({"image": None}, "image", "valid string"),
        ({"unknown_column": 1}, "unknown_column", "not an input of this model"),
        ({"steps": 8, "128_steps": 9}, "(row)", "both 'steps' and '128_steps'"),
    ],
)
def test_rejected_inputs_name_the_column_and_the_reason(
    changes: dict[str, Any], column: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        InfiniteTalkInput(**{**BASE, **changes})
    problems = INFINITE_TALK.describe_error(caught.value)
    assert any(col == column and words in reason for col, reason in problems), problems


@pytest.mark.parametrize("missing", ["prompt", "image", "audio"])
def test_required_columns(missing: str) -> None:
    data = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ValidationError) as caught:
        InfiniteTalkInput(**data)
    assert (missing, "is required but missing") in INFINITE_TALK.describe_error(caught.value)


def test_raw_api_key_errors_are_reported_under_the_friendly_name() -> None:
    with pytest.raises(ValidationError) as caught:
        InfiniteTalkInput.model_validate({**BASE, "128_steps": 99})
    [(column, reason)] = INFINITE_TALK.describe_error(caught.value)
    assert column == "steps"
    assert "99" in reason


# --- ids: one rule for the table and for storage -------------------------------------------

UNUSABLE_IDS = [
    "con",
    "COM1",
    "com9.mp4",
    "Lpt1",
    "lpt9.txt",
    "nul.tar.gz",
    "PRN",
    "aux",
    "trailing.",
    "trailing ",
    " leading",
    "a..b",
    "..",
    "a/b",
    "a\\b",
    "bell\x07",
    "x" * 129,
    "manifest",
    "名前",
]


@pytest.mark.parametrize("bad", UNUSABLE_IDS)
def test_ids_that_cannot_be_file_names_anywhere_are_invalid_rows(bad: str) -> None:
    import pandas as pd

    from prefect_runcomfy.engine.inputs.ids import safe_name
    from prefect_runcomfy.engine.inputs.table import check_table
    from prefect_runcomfy.exceptions import InvalidInputError

    check = check_table(
        pd.DataFrame([{**BASE, "id": bad}, {**BASE, "id": "fine", "seed": 1}]), INFINITE_TALK
    )
    assert [r.id for r in check.valid] == ["fine"]
    (problem,) = check.invalid
    assert problem.problems[0][0] == "id" and "cannot name a file" in problem.message
    # storage refuses exactly what validation refuses: one rule
    with pytest.raises(InvalidInputError):
        safe_name(bad)


@pytest.mark.parametrize("good", ["ada", "row-001", "a.b_c", "x" * 128, "console", "com10", "7"])
def test_usable_ids_pass_validation_and_storage_alike(good: str) -> None:
    from prefect_runcomfy.engine.inputs.ids import safe_name
    from prefect_runcomfy.engine.inputs.table import check_id

    assert check_id(good) == safe_name(good) == good


def test_numeric_ids_are_read_as_their_digits() -> None:
    from prefect_runcomfy.engine.inputs.table import check_id

    assert check_id(7.0) == "7" and check_id(12) == "12"


def test_ids_that_differ_only_in_case_are_one_id() -> None:
    """`Ada.mp4` and `ada.mp4` are one file (and one ledger entry) on macOS and Windows."""
    import pandas as pd

    from prefect_runcomfy.engine.inputs.table import check_table

    check = check_table(
        pd.DataFrame(
            [
                {**BASE, "id": "Ada"},
                {**BASE, "id": "ada", "seed": 1},
                {**BASE, "id": "com0", "seed": 2},
            ]
        ),
        INFINITE_TALK,
    )
    assert check.valid == []
    reasons = [p.message for p in check.invalid]
    assert "differ only in case" in reasons[0] and "differ only in case" in reasons[1]
    assert "reserved device name" in reasons[2]
