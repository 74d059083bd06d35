"""Benchmark 3: peak memory while storing a 1 GiB output, to a local folder and to S3 (moto).

The sandbox serves its (tiny) rendered MP4 followed by `output_padding_bytes` zero bytes, streamed
in 1 MiB chunks, so the output is a 1 GiB file the sandbox never holds in memory. The store runs
in a fresh child process per destination, which calls the body of the real `store_outputs` task
(`store_outputs.fn`: download to a temporary file with sha256, probe with PyAV, `OutputStore.put_file`,
sidecar JSON last) with Prefect's run logger replaced by a plain logger (no flow run is needed).

Memory: the child resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), notes its RSS,
stores the file while a thread samples RSS every 20 ms, and reports growth = max(VmHWM, sampled
peak) - RSS before. moto's S3 server runs in the parent process (it keeps the object in memory
there, not in the measured process).

    .venv/bin/python benchmarks/streaming.py            # 1 GiB; about 1-2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    TOKEN,
    RssSampler,
    machine,
    peak_rss_bytes,
    reset_peak_rss,
    rows,
    rss_bytes,
    sandbox_process,
    save,
)

MiB = 1 << 20


def child(base_url: str, output_uri: str, options_json: str) -> None:
    """In a fresh process: get a finished request, then store its output while measuring."""
    import prefect_runcomfy.tasks as tasks
    from prefect_runcomfy.api.client import RunComfyClient
    from prefect_runcomfy.engine.run.waiting import PollPolicy, wait_until_finished

    tasks.get_run_logger = lambda: logging.getLogger("bench")  # type: ignore[assignment]
    options = json.loads(options_json) or None

    async def finished() -> Any:
        row = rows(base_url, 1)[0]
        async with RunComfyClient(api_token=TOKEN, base_url=base_url) as client:
            submitted = await client.submit(
                {
                    "241_positive_prompt": row["prompt"],
                    "284_image": row["image"],
                    "125_audio": row["audio"],
                }
            )
            outcome = await wait_until_finished(
                client,
                submitted.request_id,
                max_wait_s=60,
                policy=PollPolicy(initial_s=0.05, max_s=0.2),
            )
            return outcome.result

    result = asyncio.run(finished())
    # warm up the code path (imports, s3fs session) on a tiny file before measuring
    store_fn = tasks.store_outputs.fn
    from prefect_runcomfy.engine.outputs.store import OutputStore

    warm = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-warm.bin"
    warm.write_bytes(b"x" * 1024)
    OutputStore(output_uri, options).put_file(warm, "warm.bin")
    warm.unlink()

    reset_ok = reset_peak_rss()
    before = rss_bytes()
    started = time.monotonic()
    with RssSampler() as sampler:
        stored = asyncio.run(
            store_fn(result, "big", output_uri, storage_options=options, metadata={"id": "big"})
        )
    seconds = time.monotonic() - started
    peak = max(sampler.peak, peak_rss_bytes() if reset_ok else 0)
    print(
        json.dumps(
            {
                "rss_before_mib": round(before / MiB, 1),
                "peak_rss_mib": round(peak / MiB, 1),
                "growth_mib": round((peak - before) / MiB, 1),
                "vmhwm_reset": reset_ok,
                "seconds": round(seconds, 1),
                "size_bytes": stored.files[0].size,
                "sha256": stored.files[0].sha256,
                "video_probed": stored.files[0].video is not None,
            }
        )
    )


def measure(base_url: str, output_uri: str, options: dict[str, Any] | None) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, "child", base_url, output_uri, json.dumps(options or {})],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if answer.returncode:
        raise RuntimeError(answer.stderr[-3000:])
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--name", default="streaming")
    args = parser.parse_args()
    import hashlib
    import tempfile

    report: dict[str, Any] = {
        "machine": machine(),
        "command": "benchmarks/streaming.py " + " ".join(sys.argv[1:]),
        "output_mib": args.size_mib,
    }
    with sandbox_process(render="tiny", run_seconds=0.0, workers=4) as sb:
        # the output is the tiny MP4 (a few KiB) followed by size_mib MiB of zeros
        sb.post("/_sandbox/config", {"output_padding_bytes": args.size_mib * MiB})
        folder = tempfile.mkdtemp(prefix="bench-stream-")
        local = measure(sb.base_url, folder, None)
        stored = Path(folder) / "big.mp4"
        digest = hashlib.sha256()
        with stored.open("rb") as handle:
            for chunk in iter(lambda: handle.read(8 * MiB), b""):
                digest.update(chunk)
        local["stored_size_matches"] = stored.stat().st_size == local["size_bytes"]
        local["stored_sha256_matches"] = digest.hexdigest() == local["sha256"]
        stored.unlink()
        report["local"] = local
        print("local:", local, flush=True)

        from moto.server import ThreadedMotoServer

        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            import boto3

            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
            s3.create_bucket(Bucket="bench")
            options = {
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
            remote = measure(sb.base_url, "s3://bench/videos", options)
            head = s3.head_object(Bucket="bench", Key="videos/big.mp4")
            remote["stored_size_matches"] = head["ContentLength"] == remote["size_bytes"]
            report["s3_moto"] = remote
            print("s3:", remote, flush=True)
        finally:
            server.stop()
    print(f"saved {save(args.name, report)}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
