"""Runs generate_talking_videos in its own process, for tests that kill it (SIGKILL).

Usage: python flow_runner.py ARGS.json — the file holds the flow's keyword arguments plus
`token` and `base_url` for a RunComfyCredentials block built here (never saved).
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
    print(json.dumps(manifest["status"].tolist()))


if __name__ == "__main__":
    main()
