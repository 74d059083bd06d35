"""Helpers shared by the reliability suite: rows, credentials, and output checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import av

from prefect_runcomfy import RunComfyCredentials, Spending, Waiting
from prefect_runcomfy.engine.outputs.probe import probe_video
from prefect_runcomfy.engine.outputs.store import TEMP_PREFIX
from prefect_runcomfy.sandbox import Sandbox, SandboxConfig, sample_inputs

# These tests check each row's status; the run's own verdict is tested in
# tests/test_run_outcome.py, so failed rows are tolerated here.
FAST = {
    "waiting": Waiting(poll_initial_s=0.05, poll_max_s=0.3),
    "spending": Spending(allow_failed_rows=True),
}
"""Poll settings scaled for sub-second sandbox jobs."""

TOKEN = "reliability-secret-token-3f9c1b7e"
"""The token every reliability test uses; the secret scan looks for it everywhere."""

TRANSIENT_OR_FINAL = {"succeeded", "failed", "cancelled", "invalid", "timed_out", "outcome_unknown"}


def config(**changes: Any) -> SandboxConfig:
    """Quick tiny jobs that accept TOKEN."""
    base: dict[str, Any] = {
        "workers": 4,
        "queue_seconds": 0.0,
        "run_seconds": 0.1,
        "render": "tiny",
        "tokens": (TOKEN,),
    }
    base.update(changes)
    return SandboxConfig(**base)


def creds(sb: Sandbox, token: str = TOKEN) -> RunComfyCredentials:
    return RunComfyCredentials(api_token=token, base_url=sb.base_url, max_retries=3)


def rows(sb: Sandbox, n: int, prefix: str = "r") -> list[dict[str, Any]]:
    samples = sample_inputs(sb.base_url)
    out = []
    for i in range(n):
        row = dict(samples[i % len(samples)])
        row["id"] = f"{prefix}{i}"
        row["prompt"] = f"{row['prompt']} #{prefix}{i}"
        out.append(row)
    return out


def duplicate_submits(sb: Sandbox) -> int:
    """Extra jobs created for a payload that was already submitted (must stay 0)."""
    return int(sb.stats()["duplicate_submit_jobs"])


def check_outputs(out: Path, *, unfinished_ok: bool = False) -> dict[str, int]:
    """Every stored video matches its sidecar's size and sha256; no temporary files are visible.

    `unfinished_ok`: right after a kill, a row may have its video stored but not yet its
    sidecar (written last, so the row does not look finished; the re-run stores it again).
    Such a video must still be whole: PyAV reads every one of its frames.

    Returns counts: videos, sidecars, unfinished (videos without a sidecar).
    """
    temps = [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not temps, f"temporary files visible: {temps}"
    videos = sorted(out.glob("*.mp4"))
    sidecars = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    unfinished = 0
    for video in videos:
        sidecar = sidecars.get(video.stem)
        if sidecar is None and unfinished_ok:
            info = probe_video(video)
            assert info and info["frames"], f"{video.name}: not a whole video"
            with av.open(str(video)) as container:
                decoded = sum(1 for _ in container.decode(video=0))
            assert decoded == info["frames"], f"{video.name}: {decoded} of {info['frames']} frames"
            unfinished += 1
            continue
        assert sidecar is not None, f"{video.name} has no sidecar"
        assert sidecar["status"] == "succeeded", (video.name, sidecar["status"])
        facts = {f["uri"].rsplit("/", 1)[-1]: f for f in sidecar["files"]}
        fact = facts[video.name]
        data = video.read_bytes()
        assert len(data) == fact["size"], f"{video.name}: {len(data)} != {fact['size']}"
        assert hashlib.sha256(data).hexdigest() == fact["sha256"], f"{video.name}: sha256"
    for stem, sidecar in sidecars.items():
        if sidecar.get("status") == "succeeded":
            for f in sidecar["files"]:
                assert (out / f["uri"].rsplit("/", 1)[-1]).exists(), (
                    f"{stem}: sidecar without video"
                )
    return {"videos": len(videos), "sidecars": len(sidecars), "unfinished": unfinished}
