"""A nightly pipeline: write the day's table, turn every row into a talking video, publish
the videos that made it.

A plain sync `@flow`, as most Prefect pipelines are: `generate_talking_videos` runs inside it as
a subflow and hands back the manifest (a pandas DataFrame); a downstream task takes the
succeeded rows from there.

Against the built-in sandbox (no token, no credits; real MP4 files):

    python examples/nightly_pipeline.py --sandbox --output ./nightly

Against RunComfy (RUNCOMFY_API_TOKEN set, or --credentials NAME of a saved block), with a
table you already have:

    python examples/nightly_pipeline.py --table s3://in/rows.parquet --output s3://out/nightly
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import fsspec
import pandas as pd
from prefect import flow, task

from prefect_runcomfy import Spending, Waiting, generate_talking_videos
from prefect_runcomfy.exceptions import RowsNeedAttentionError


@task
def write_table(rows: list[dict[str, Any]], table_uri: str) -> str:
    """Write the day's rows as Parquet through fsspec (any URL: a folder, s3://, gs://)."""
    with fsspec.open(table_uri, "wb") as handle:
        pd.DataFrame(rows).to_parquet(handle, index=False)
    return table_uri


@task
def publish(videos: pd.DataFrame, output_uri: str) -> str:
    """The downstream step: a playlist of the stored videos, next to them. Swap in your own
    (a database load, a CMS upload, a message to a channel)."""
    playlist = [
        {"id": r["id"], "video": r["video_uri"], "seconds": r["duration_s"]}
        for r in videos.to_dict("records")
    ]
    uri = f"{output_uri.rstrip('/')}/playlist.json"
    with fsspec.open(uri, "w") as handle:
        json.dump(playlist, handle, indent=2)
    return uri


@flow(name="nightly-talking-videos", log_prints=True)
def nightly(
    table_uri: str,
    output_uri: str,
    credentials: str | None = None,
    rows: list[dict[str, Any]] | None = None,
    waiting: Waiting = Waiting(),
) -> str:
    """Write today's `rows` to `table_uri` (when given; else the table there is read as it is),
    run it, publish what succeeded; fail the night (after publishing) when rows need a person,
    so the failure shows in the UI and reaches automations."""
    if rows is not None:
        table_uri = write_table(rows, table_uri)
    try:
        manifest = generate_talking_videos(
            table_uri,
            output_uri,
            credentials=credentials,
            spending=Spending(max_submits=1000),  # a table that grew by mistake pays nothing
            waiting=waiting,
        )
    except RowsNeedAttentionError as exc:
        ok = exc.manifest[exc.manifest["status"] == "succeeded"]
        print(f"Publishing {len(ok)} videos; {exc}")
        publish(ok, output_uri)
        raise
    playlist = publish(manifest[manifest["status"] == "succeeded"], output_uri)
    print(f"{len(manifest)} videos published: {playlist}")
    return playlist


def main() -> None:
    """Parse the command line and run the pipeline (with `--sandbox`, against a local one)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="Where videos go (folder, s3://...).")
    parser.add_argument("--table", help="The input table's URI (written here with --sandbox).")
    parser.add_argument("--credentials", help="Name of a saved RunComfyCredentials block.")
    parser.add_argument("--sandbox", action="store_true", help="Run against a local sandbox.")
    args = parser.parse_args()
    if not args.sandbox:
        if not args.table:
            parser.error("--table is required unless --sandbox")
        nightly(args.table, args.output, credentials=args.credentials)
        return

    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from prefect_runcomfy.sandbox import SandboxConfig, run_sandbox, sample_inputs

    # Without a Prefect server, Prefect starts a temporary one; its first start (a new
    # database) can take longer than Prefect's default 20 s on a busy machine.
    with (
        temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90}),
        run_sandbox(SandboxConfig(workers=2, run_seconds=(1.0, 2.0))) as sandbox,
    ):
        os.environ["RUNCOMFY_BASE_URL"] = sandbox.base_url
        os.environ["RUNCOMFY_API_TOKEN"] = sandbox.token
        table = args.table or f"{args.output.rstrip('/')}/inputs/rows.parquet"
        nightly(
            table,
            args.output,
            rows=sample_inputs(sandbox.base_url),
            waiting=Waiting(poll_max_s=1.0),
        )


if __name__ == "__main__":
    main()
