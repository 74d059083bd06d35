"""Bad input corpus: malformed rows get a clear error naming the row and the column, nothing is
submitted for them, and nothing is written outside `output_uri`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from reliability_helpers import FAST, config, creds, rows

from prefect_runcomfy import generate_talking_videos
from prefect_runcomfy.sandbox import Sandbox, run_sandbox

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with run_sandbox(config()) as sandbox:
        yield sandbox


def corpus(sb: Sandbox, media: Path) -> list[tuple[dict[str, Any], str]]:
    """(row, the column its error must name); ids are unique unless the case is about ids."""
    good = rows(sb, 1)[0]
    unreadable = media / "locked.png"
    unreadable.write_bytes(b"\x89PNG")
    unreadable.chmod(0)
    folder = media / "a-folder.mp3"
    folder.mkdir()

    def row(case: str, **changes: Any) -> dict[str, Any]:
        base = {**good, "id": case}
        for key, value in changes.items():
            if value is _DROP:
                base.pop(key, None)
            else:
                base[key] = value
        return base

    cases: list[tuple[dict[str, Any], str]] = [
        # missing or empty required fields
        (row("no-prompt", prompt=_DROP), "prompt"),
        (row("no-image", image=_DROP), "image"),
        (row("no-audio", audio=_DROP), "audio"),
        (row("none-prompt", prompt=None), "prompt"),
        (row("nan-prompt", prompt=math.nan), "prompt"),  # Prefect sends NaN as null
        (row("blank-prompt", prompt="   "), "prompt"),
        # wrong types
        (row("int-prompt", prompt=42), "prompt"),
        (row("dict-prompt", prompt={"say": "hi"}), "prompt"),
        (row("bytes-audio", audio=b"ID3..."), "audio"),
        (row("text-steps", steps="many"), "steps"),
        (row("text-frames", frames="long"), "frames"),
        (row("int-resolution", resolution=720), "resolution"),
        (row("text-seed", seed="lucky"), "seed"),
        # out of range / bad enum
        (row("steps-99", steps=99), "steps"),
        (row("steps-0", steps=0), "steps"),
        (row("steps-fraction", steps=7.5), "steps"),
        (row("shift-0", shift=0), "shift"),
        (row("shift-100", shift=100), "shift"),
        (row("cfg-5", cfg=5), "cfg"),
        (row("cfg-negative", cfg=-1), "cfg"),
        (row("frames-100", frames=100), "frames"),
        (row("frames-fraction", frames=125.5), "frames"),
        (row("resolution-999", resolution="999x999"), "resolution"),
        (row("resolution-ratio", resolution="480x480 (9:9)"), "resolution"),
        (row("seed-huge", seed=2**80), "seed"),
        # media that cannot be used
        (row("ftp-image", image="ftp://example.test/face.png"), "image"),
        (row("missing-file", image=str(media / "nope.png")), "image"),
        (row("locked-file", image=str(unreadable)), "image"),
        (row("folder-audio", audio=str(folder)), "audio"),
        (row("bad-data-uri", image="data:image/png;base64,!!!not base64!!!"), "image"),
        # ids that must not name a file
        (row("../escape"), "id"),
        (row("/etc/passwd"), "id"),
        (row("a/b"), "id"),
        (row("..\\windows"), "id"),
        (row(".hidden"), "id"),
        (row("manifest"), "id"),
        (row("_ledger"), "id"),
        (row("nul\x00byte"), "id"),
        (row("x" * 300), "id"),
        (row("dup"), "id"),
        (row("dup", prompt="another prompt"), "id"),
        # huge strings (kept under Prefect's 512 KiB limit on flow parameters; the CSV test
        # below sends a 2 MB one)
        (row("huge-prompt", prompt="talk " * 30_000), "prompt"),
        (row("huge-seed", seed="9" * 50_000), "seed"),
    ]
    return cases


_DROP = object()


def _tree(root: Path, skip: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if skip not in p.parents and p not in (skip, skip.parent) and p.name != "a-folder.mp3"
    }


async def test_every_bad_row_is_named_and_nothing_is_paid(sb: Sandbox, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    out = tmp_path / "deep" / "out"
    cases = corpus(sb, media)
    assert len(cases) >= 30
    table = [*rows(sb, 2, prefix="good-"), *(case for case, _ in cases)]
    before = _tree(tmp_path, out)
    try:
        manifest = await generate_talking_videos(
            table, str(out), creds(sb), inline_media=True, **FAST
        )
    finally:
        (media / "locked.png").chmod(0o600)
    assert len(manifest) == len(table)
    by_row = manifest.set_index("row")
    assert list(by_row.loc[[0, 1], "status"]) == ["succeeded", "succeeded"]
    wrong: list[str] = []
    for offset, (case, column) in enumerate(cases):
        position = offset + 2
        status, error = by_row.loc[position, "status"], str(by_row.loc[position, "error"])
        if status != "invalid" or f"row {position}" not in error or f"{column}:" not in error:
            wrong.append(f"{case['id'][:20]!r}: {status}: {error[:200]}")
        assert len(error) < 2_000, f"{case['id'][:20]!r}: the error repeats a huge value"
    assert not wrong, "\n".join(wrong)
    # only the two good rows were paid for, and only they have files
    assert sb.stats()["submits_accepted"] == 2
    assert sorted(p.name for p in out.glob("*.mp4")) == ["good-0.mp4", "good-1.mp4"]
    # nothing was written anywhere but under output_uri
    assert _tree(tmp_path, out) == before
    assert not (tmp_path / "deep" / "escape.mp4").exists()
    assert not any("passwd" in name for name in os.listdir(out))


async def test_a_csv_with_infinities_and_a_huge_prompt(sb: Sandbox, tmp_path: Path) -> None:
    """Through a file (no parameter size limit, no JSON round trip): inf, -inf, 2 MB strings."""
    good = rows(sb, 1)[0]
    table = pd.DataFrame(
        [
            {**good, "id": "ok"},
            {**good, "id": "cfg-inf", "cfg": math.inf},
            {**good, "id": "shift-minus-inf", "shift": -math.inf},
            {**good, "id": "steps-1e400", "steps": "1e400"},
            {**good, "id": "huge-prompt", "prompt": "talk " * 400_000},
            {**good, "id": "huge-id-" + "x" * 5_000},
        ]
    )
    path = tmp_path / "rows.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "out"
    manifest = await generate_talking_videos(str(path), str(out), creds(sb), **FAST)
    expected = {1: "cfg", 2: "shift", 3: "steps", 4: "prompt", 5: "id"}
    assert manifest.loc[0, "status"] == "succeeded"
    for position, column in expected.items():
        status, error = manifest.loc[position, "status"], str(manifest.loc[position, "error"])
        assert status == "invalid", (position, status, error[:300])
        assert f"row {position}" in error and f"{column}:" in error, error[:300]
        assert len(error) < 2_000, "the error repeats a huge value"
    assert sb.stats()["submits_accepted"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rows.csv"]
