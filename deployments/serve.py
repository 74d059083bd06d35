"""Serve the nightly deployment from this process: `python deployments/serve.py`.

A long-running process that registers the deployment with the Prefect server named by
`PREFECT_API_URL` and runs its scheduled (and manually triggered) runs itself; no work pool
or worker is needed. Schedules need a real Prefect server (`prefect server start`), not the
temporary one Prefect starts for a plain script.

Settings come from the environment:

- `RUNCOMFY_INPUTS`: the input table (CSV / Parquet / JSON lines, any fsspec URL)
- `RUNCOMFY_OUTPUT_URI`: where videos, sidecars and manifest.parquet go
- `RUNCOMFY_CREDENTIALS`: the name of a saved RunComfyCredentials block (optional; without
  it the runs read `RUNCOMFY_API_TOKEN`, then `RUNCOMFY_TOKEN`, then `RUNCOMFY_API_KEY`)
- `RUNCOMFY_CRON`: the schedule (default `0 2 * * *`, 02:00 every night, UTC)
- `RUNCOMFY_DEPLOYMENT_NAME`: the deployment's name (default `nightly`)

Local media files in the table (`face.png`, `/data/voice.mp3`) are uploaded to a staging
folder and pre-signed for RunComfy. Set it once on the Prefect server, for this deployment and
every other run: `prefect variable set runcomfy_staging_uri s3://bucket/staging` (or
`prefect variable set runcomfy_inline_media true` to send them inline as data: URIs). Each run
reads it when it starts, so a change needs no restart of this script; a `staging_uri` or
`inline_media` parameter wins over it. Against the local sandbox (a base URL on loopback) they
go inline without any setting; otherwise, without one, their rows are `invalid`, saying this.
"""

from __future__ import annotations

import os

from prefect import serve

from prefect_runcomfy.flows import Spending, collect_outstanding_requests, generate_talking_videos


def main() -> None:
    """Build both deployments from the environment and serve them until interrupted."""
    name = os.environ.get("RUNCOMFY_DEPLOYMENT_NAME", "nightly")
    credentials = os.environ.get("RUNCOMFY_CREDENTIALS") or None
    output_uri = os.environ["RUNCOMFY_OUTPUT_URI"]
    nightly = generate_talking_videos.to_deployment(
        name=name,
        cron=os.environ.get("RUNCOMFY_CRON", "0 2 * * *"),
        parameters={
            "inputs": os.environ["RUNCOMFY_INPUTS"],
            "output_uri": output_uri,
            "credentials": credentials,
            # a section of the run form: a table that grew by mistake submits nothing
            "spending": Spending(max_submits=1000),
        },
        tags=["runcomfy", "video"],
    )
    collect = collect_outstanding_requests.to_deployment(
        name=f"{name}-collect",
        parameters={"output_uri": output_uri, "credentials": credentials},
        tags=["runcomfy", "video"],
    )
    serve(nightly, collect)


if __name__ == "__main__":
    main()
