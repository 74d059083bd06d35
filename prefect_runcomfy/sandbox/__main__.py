"""`python -m prefect_runcomfy.sandbox`: run a local RunComfy sandbox in the foreground."""

from __future__ import annotations

import argparse

from prefect_runcomfy.sandbox.config import SandboxConfig, parse_duration
from prefect_runcomfy.sandbox.server import serve_sandbox


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m prefect_runcomfy.sandbox",
        description="A local server that speaks RunComfy's Model API and renders real MP4s.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=2, help="jobs that run at once")
    parser.add_argument("--queue-seconds", default="0", help="extra queue wait: S or MIN-MAX")
    parser.add_argument("--run-seconds", default="1-3", help="run duration: S or MIN-MAX")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies durations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token", default="sandbox-token", help="the token to accept")
    parser.add_argument("--render", choices=["full", "tiny"], default="full")
    args = parser.parse_args(argv)
    config = SandboxConfig(
        workers=args.workers,
        queue_seconds=parse_duration(args.queue_seconds),
        run_seconds=parse_duration(args.run_seconds),
        time_scale=args.time_scale,
        seed=args.seed,
        tokens=(args.token,),
        render=args.render,
    )
    serve_sandbox(config, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
