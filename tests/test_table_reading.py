"""Tables as people make them: Excel's CSVs in any country, NA words, duplicated columns, a
column given by both its names, prompts nobody can see.

Each table is a real file written to a temporary folder and read through the path a user's
`validate`, `plan` and `run` take (`plan_table`, the run's own plan, offline; the command as a
real process; the flow against the sandbox).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.settings import get_current_settings

from prefect_runcomfy import RunComfyCredentials, Spending, Waiting, generate_talking_videos
from prefect_runcomfy.engine.plan.planning import MediaSettings, TablePlan, plan_table
from prefect_runcomfy.exceptions import InvalidInputError
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.sandbox import Sandbox, sample_inputs

IMAGE = "https://x.test/face.png"
AUDIO = "https://x.test/speech.mp3"
CLI = str(Path(sys.executable).parent / "prefect-runcomfy")


async def planned(table: str | pd.DataFrame) -> TablePlan:
    """The table as `prefect-runcomfy validate` sees it: read, checked, media not fetched."""
    return await plan_table(table, None, INFINITE_TALK, media=MediaSettings(mode="offline"))


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


def messages(plan: TablePlan) -> list[str]:
    return [problem.message for problem in plan.invalid]


# --- 1. cells are text; only an empty cell is missing --------------------------------------------


async def test_na_words_are_what_the_author_typed(tmp_path: Path) -> None:
    """pandas reads `NA`, `null`, `None`, `nan`, `N/A` as missing: an id `NA` became a derived
    id and a prompt `None` "required but missing"."""
    lines = ["id,prompt,image,audio,steps,cfg,frames,seed"]
    for row_id, prompt in (("NA", "None"), ("null", "N/A"), ("None", "#N/A"), ("nan", "<NA>")):
        lines.append(f"{row_id},{prompt},{IMAGE},{AUDIO},8,1.5,250,")
    lines.append(f"007,NULL,{IMAGE},{AUDIO},,,,42")
    lines.append(f",,{IMAGE},{AUDIO},,,,")  # empty cells: no id (derived), no prompt
    plan = await planned(write(tmp_path / "rows.csv", "\n".join(lines) + "\n"))

    assert [r.id for r in plan.rows] == ["NA", "null", "None", "nan", "007"]
    assert [r.input("prompt") for r in plan.rows] == ["None", "N/A", "#N/A", "<NA>", "NULL"]
    first, last = plan.rows[0].job, plan.rows[-1].job
    assert (first.steps, first.cfg, first.frames, first.seed) == (8, 1.5, 250, 96860978)
    assert (last.steps, last.cfg, last.frames, last.seed) == (7, 1.0, 125, 42)  # defaults
    assert messages(plan) == ["row 5: prompt: is required but missing"]


# --- 2 and 3. separators and encodings as Excel writes them -------------------------------------


async def test_a_semicolon_csv_from_excel_in_europe_is_read(tmp_path: Path) -> None:
    """Excel writes `;` where the decimal mark is a comma, with a byte-order mark when saved
    as "CSV UTF-8"; before, every row was "prompt/image/audio: required but missing"."""
    text = (
        "id;prompt;image;audio;Kunde\r\n"
        f"zoe-1;Eine Frau spricht, lächelt;{IMAGE};{AUDIO};Müller\r\n"
        f'"NA";"a man; talking";{IMAGE};{AUDIO};\r\n'
    )
    plan = await planned(write(tmp_path / "kunden.csv", text, "utf-8-sig"))

    assert messages(plan) == []
    assert [r.id for r in plan.rows] == ["zoe-1", "NA"]
    assert [r.input("prompt") for r in plan.rows] == [
        "Eine Frau spricht, lächelt",
        "a man; talking",
    ]
    assert plan.rows[0].extras == {"Kunde": "Müller"}
    assert pd.isna(plan.rows[1].extras["Kunde"])


async def test_a_tab_separated_csv_is_read(tmp_path: Path) -> None:
    text = f"id\tprompt\timage\taudio\nada\ta man, talking\t{IMAGE}\t{AUDIO}\n"
    plan = await planned(write(tmp_path / "rows.csv", text))
    assert [(r.id, r.input("prompt")) for r in plan.rows] == [("ada", "a man, talking")]


async def test_a_comma_header_keeps_commas_even_when_cells_hold_semicolons(tmp_path: Path) -> None:
    text = f'id,prompt,image,audio\nada,"one; two",{IMAGE},{AUDIO}\n'
    plan = await planned(write(tmp_path / "rows.csv", text))
    assert [(r.id, r.input("prompt")) for r in plan.rows] == [("ada", "one; two")]


@pytest.mark.parametrize(
    ("encoding", "words"),
    [
        ("cp1252", ["line 2 has byte 0xe0", "Windows-1252"]),
        ("utf-16", ["UTF-16"]),
    ],
)
async def test_a_file_that_is_not_utf8_is_refused_saying_how_to_save_it(
    tmp_path: Path, encoding: str, words: list[str]
) -> None:
    text = f"id;prompt;image;audio\nada;un homme parle à Zoé;{IMAGE};{AUDIO}\n"
    path = write(tmp_path / "clients.csv", text, encoding)
    with pytest.raises(InvalidInputError) as caught:
        await planned(path)
    said = str(caught.value)
    assert path in said and "CSV UTF-8" in said, said
    for word in words:
        assert word in said, said
    assert "UnicodeDecodeError" not in said and "codec" not in said


@pytest.mark.usefixtures("prefect_api")
def test_the_command_refuses_a_windows_1252_file_without_a_traceback(tmp_path: Path) -> None:
    text = f"id,prompt,image,audio\nada,Größe,{IMAGE},{AUDIO}\n"
    path = write(tmp_path / "rows.csv", text, "cp1252")
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), "COLUMNS": "200"}
    result = subprocess.run(
        [CLI, "validate", path], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said
    assert "Traceback" not in said and "UnicodeDecodeError" not in said
    assert "rows.csv is not UTF-8 text (line 2" in said and "CSV UTF-8" in said


# --- 4. duplicate columns and twins --------------------------------------------------------------


async def test_a_csv_with_a_column_twice_is_refused_naming_it(tmp_path: Path) -> None:
    """pandas kept the first `prompt` and renamed the second `prompt.1`: a row was paid with a
    prompt its author may not have meant."""
    text = f"id,prompt,image,audio,prompt\nada,one,{IMAGE},{AUDIO},two\n"
    with pytest.raises(InvalidInputError) as caught:
        await planned(write(tmp_path / "rows.csv", text))
    said = str(caught.value)
    assert "rows.csv" in said and "'prompt' is columns 2 and 5" in said
    assert "rename" in said
    assert caught.value.problems == [("prompt", "is more than one column")]


async def test_a_column_named_like_pandas_renames_is_no_duplicate(tmp_path: Path) -> None:
    text = f"id,prompt,prompt.1,image,audio\nada,one,a note,{IMAGE},{AUDIO}\n"
    plan = await planned(write(tmp_path / "rows.csv", text))
    assert [(r.input("prompt"), r.extras) for r in plan.rows] == [("one", {"prompt.1": "a note"})]


async def test_a_dataframe_with_a_column_twice_is_refused_naming_it() -> None:
    """pandas gave a row the last `prompt` (with only a warning)."""
    frame = pd.DataFrame(
        [["ada", "one", IMAGE, AUDIO, "two"]], columns=["id", "prompt", "image", "audio", "prompt"]
    )
    with pytest.raises(InvalidInputError, match=r"DataFrame .*'prompt' is columns 2 and 5"):
        await planned(frame)


async def test_a_column_and_its_api_key_with_equal_values_are_one_input(tmp_path: Path) -> None:
    """`prompt` and `241_positive_prompt` (its API key) were refused as "prompt: is not an
    input of this model" even when they agreed; when they disagree, the row is refused."""
    text = (
        "id,prompt,image,audio,241_positive_prompt,steps,128_steps\n"
        f"same,a man talks,{IMAGE},{AUDIO}, a man talks ,8,8\n"
        f"other,a man talks,{IMAGE},{AUDIO},a woman sings,8,8\n"
        f"half,a man talks,{IMAGE},{AUDIO},,,9\n"
    )
    plan = await planned(write(tmp_path / "rows.csv", text))

    assert [(r.id, r.input("prompt"), r.input("steps")) for r in plan.rows] == [
        ("same", "a man talks", 8),
        ("half", "a man talks", 9),
    ]
    assert plan.rows[0].job.to_api_payload()["241_positive_prompt"] == "a man talks"
    (said,) = messages(plan)
    assert said.startswith("row 1 (id 'other'): ")
    assert "both 'prompt' and '241_positive_prompt'" in said and "'a woman sings'" in said


# --- 5. prompts nobody can see -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u200b \u2060\u00a0\u200d", "\u0301"],
)
async def test_a_prompt_with_no_visible_character_is_invalid(tmp_path: Path, prompt: str) -> None:
    text = f"id,prompt,image,audio\nblank,{prompt},{IMAGE},{AUDIO}\nok,hi\u200b,{IMAGE},{AUDIO}\n"
    plan = await planned(write(tmp_path / "rows.csv", text))
    assert [r.id for r in plan.rows] == ["ok"]
    (said,) = messages(plan)
    assert said.startswith("row 0 (id 'blank'): prompt: has no visible character"), said


def test_a_job_made_in_code_is_held_to_the_same_rule() -> None:
    from prefect_runcomfy import InfiniteTalkInput

    with pytest.raises(ValueError, match="no visible character"):
        InfiniteTalkInput(prompt="\u200b\u200b", image=IMAGE, audio=AUDIO)
    assert InfiniteTalkInput(prompt="🫨", image=IMAGE, audio=AUDIO).prompt == "🫨"


# --- end to end: a European Excel file run against the sandbox ----------------------------------


@pytest.mark.usefixtures("prefect_api")
async def test_an_excel_file_from_europe_runs_as_written(
    shared_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = shared_sandbox
    sb.reset(config=True)
    sample = sample_inputs(sb.base_url)[0]
    text = (
        "id;prompt;image;audio;resolution\r\n"
        f"NA;None;{sample['image']};{sample['audio']};480x480\r\n"
    )
    path = write(tmp_path / "tabelle.csv", text, "utf-8-sig")
    out = tmp_path / "out"
    manifest = await generate_talking_videos(
        path,
        str(out),
        RunComfyCredentials(api_token=sb.token, base_url=sb.base_url),
        waiting=Waiting(poll_initial_s=0.1, poll_max_s=0.5),
        spending=Spending(allow_failed_rows=True),
    )
    assert list(zip(manifest["id"], manifest["status"], strict=True)) == [("NA", "succeeded")]
    sidecar: dict[str, Any] = json.loads((out / "NA.json").read_text())
    assert sidecar["inputs"]["241_positive_prompt"] == "None"
    assert sb.stats()["submits_accepted"] == 1
