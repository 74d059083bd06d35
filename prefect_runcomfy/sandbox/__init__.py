"""A local server that speaks RunComfy's Model API, for tests, demos and credit-free pipelines.

It queues jobs on a configurable number of workers, fetches each job's image and audio and
renders a real MP4 (H.264 + AAC, 25 fps, the requested size, `min(frames, audio * 25)` frames)
in which a drawn mouth follows the speech. Switches pick a reading for every behaviour the
API docs leave open, and scripted faults act out rate limits, server errors, dropped
connections and slow answers.

    from prefect_runcomfy.sandbox import SandboxConfig, run_sandbox, sample_inputs

    with run_sandbox(SandboxConfig(workers=2, run_seconds=(0.5, 1.0))) as sb:
        sb.base_url, sb.token            # point the client here
        sb.add_fault(endpoint="submit", kind="drop_after_accept")
        sb.set(result_ttl_s=0.5)         # any SandboxConfig field, at runtime
        sb.stats()["submits_accepted"]

Endpoints (token needed unless noted):

- `POST /v1/models/{model_id}`, `GET /v1/requests/{id}/status`, `GET /v1/requests/{id}/result`
  (`?include_cost=true`), `POST /v1/requests/{id}/cancel`, `GET /v1/models[/{model_id}]`.
- `GET /files/{name}` (public): rendered videos. `GET /samples/{name}` (public): the shipped
  sample portrait and speech clips.
- `/_sandbox/...` (no token): `GET stats`, `GET requests`, `GET|POST faults`, `GET|POST config`,
  `POST reset`, `GET health`.

`queue_position` counts the queued jobs ahead of this one (0 = next) unless
`queue_position_base=1`.

Per-row triggers, written anywhere in the prompt:

- `[sandbox:fail]`: the run fails (error type `SandboxFailure`).
- `[sandbox:expire]`: the result and files expire as soon as the job finishes.
- `[sandbox:run=SECONDS]`: this job runs SECONDS (times `time_scale`) instead of a drawn duration.
- `[sandbox:queue=SECONDS]`: this job waits SECONDS (times `time_scale`) before it may start.

Run from a shell: `python -m prefect_runcomfy.sandbox --port 8787 --workers 2`.
"""

from __future__ import annotations

from prefect_runcomfy.sandbox.config import SandboxConfig
from prefect_runcomfy.sandbox.faults import ENDPOINTS, KINDS, Fault
from prefect_runcomfy.sandbox.samples import sample_inputs
from prefect_runcomfy.sandbox.server import Sandbox, run_sandbox, serve_sandbox

__all__ = [
    "ENDPOINTS",
    "KINDS",
    "Fault",
    "Sandbox",
    "SandboxConfig",
    "run_sandbox",
    "sample_inputs",
    "serve_sandbox",
]
