"""Runs generate_talking_videos in its own process, for tests that kill it (SIGKILL) or run
two at once.

Usage: python flow_runner.py ARGS.json — the file holds the flow's keyword arguments plus
`token` and `base_url` for a RunComfyCredentials block built here (never saved). The last
line printed is the manifest's rows (id, status, error, note, ...) as JSON.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from prefect_runcomfy import RunComfyCredentials, generate_talking_videos

    with open(sys.argv[1]) as handle:
        kwargs = json.load(handle)
    credentials = RunComfyCredentials(
        api_token=kwargs.pop("token"), base_url=kwargs.pop("base_url"), max_retries=3
    )
    from prefect_runcomfy.exceptions import RowsNeedAttentionError

    try:
        manifest = generate_talking_videos(credentials=credentials, **kwargs)
    except RowsNeedAttentionError as exc:  # the rows' statuses are what the tests check
        manifest = exc.manifest
    columns = ["id", "status", "error", "note", "submitted_by_this_run", "request_id"]
    records = manifest[[c for c in columns if c in manifest.columns]].astype(object)
    print(json.dumps(records.where(records.notna(), None).to_dict(orient="records")))


if __name__ == "__main__":
    main()
