"""What claims cost a row: storage operations and wall time, claims on vs `single_writer=True`.

The flow runs in this process on a real Prefect API (`prefect_test_harness`) against an instant
sandbox in its own process, into a local folder and into moto's S3 server on loopback. Storage
operations are counted by wrapping `OutputStore`'s methods in this process (a measurement
hook, not a change of behaviour): every read, write, exclusive create, listing and delete the
run makes, divided by the rows. Modes alternate round by round (claims, single writer, ...), so
the wall-time ratio is taken side by side.

    .venv/bin/python benchmarks/claim_cost.py --rows 300 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKEN, machine, quiet_prefect_env, rows, sandbox_process, save

quiet_prefect_env()

COUNTED = (
    "create_exclusive",
    "read_bytes",
    "read_many_bytes",
    "write_bytes",
    "put_file",
    "commit_local",
    "list",
    "exists",
    "delete",
)


def count_store_calls() -> collections.Counter[str]:
    """Wrap OutputStore's I/O methods to count their calls (outer calls only)."""
    from prefect_runcomfy.engine.outputs.store import OutputStore

    counts: collections.Counter[str] = collections.Counter()
    depth = threading.local()  # calls run in many threads at once: nesting is per thread
    for name in COUNTED:
        original = getattr(OutputStore, name)

        @functools.wraps(original)
        def wrapped(
            self: Any, *args: Any, __original: Any = original, __name: str = name, **kw: Any
        ) -> Any:
            level = getattr(depth, "n", 0)
            if level == 0:
                counts[__name] += 1
            depth.n = level + 1
            try:
                return __original(self, *args, **kw)
            finally:
                depth.n = level

        setattr(OutputStore, name, wrapped)
    return counts


async def one_run(
    base_url: str, n: int, output: str, options: dict[str, Any] | None, single_writer: bool
) -> float:
    from prefect_runcomfy import Concurrency, RunComfyCredentials, Waiting, generate_talking_videos

    creds = RunComfyCredentials(api_token=TOKEN, base_url=base_url)
    start = time.perf_counter()
    manifest = await generate_talking_videos(
        rows(base_url, n),
        output,
        creds,
        max_concurrency=16,
        storage_options=options,
        waiting=Waiting(poll_initial_s=0.05, poll_max_s=0.2),
        concurrency=Concurrency(single_writer=single_writer),
    )
    elapsed = time.perf_counter() - start
    assert set(manifest["status"]) == {"succeeded"}, manifest["status"].value_counts()
    return elapsed


def s3_location() -> tuple[str, dict[str, Any], Any]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="claim-cost")
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return "s3://claim-cost", options, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    counts = count_store_calls()
    results: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds, "runs": []}
    s3_root, s3_options, s3_server = s3_location()
    with (
        prefect_test_harness(server_startup_timeout=120),
        sandbox_process(workers=64, run_seconds=0.0, render="tiny") as sandbox,
    ):
        for round_no in range(args.rounds):
            for where in ("local", "s3"):
                for single_writer in (False, True):
                    if where == "local":
                        output, options = tempfile.mkdtemp(prefix="claim-cost-"), None
                    else:
                        output, options = f"{s3_root}/r{round_no}-{single_writer}", s3_options
                    counts.clear()
                    wall = asyncio.run(
                        one_run(sandbox.base_url, args.rows, output, options, single_writer)
                    )
                    run = {
                        "round": round_no,
                        "where": where,
                        "claims": not single_writer,
                        "wall_s": round(wall, 2),
                        "store_calls_per_row": {
                            k: round(v / args.rows, 3) for k, v in sorted(counts.items())
                        },
                        "store_calls_per_row_total": round(sum(counts.values()) / args.rows, 3),
                    }
                    print(run, flush=True)
                    results["runs"].append(run)
    s3_server.stop()
    results["machine"] = machine()
    save("claim_cost", results)


if __name__ == "__main__":
    main()
