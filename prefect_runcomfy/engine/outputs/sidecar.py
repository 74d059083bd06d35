"""The row's sidecar, `<id>.json` beside its video: what was asked, what RunComfy answered,
what was stored.

`sidecar_of` says a record as its sidecar (written last, once the video is stored);
`with_sidecar` reads a sidecar back into a record, for a row an earlier run stored;
`read_sidecars` fetches many rows' sidecars at once.

```python
store.write_json(f"{outcome.id}.json", sidecar_of(outcome))
outcome = with_sidecar(RowOutcome(id="alice"), store.read_json("alice.json") or {})
```
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from prefect_runcomfy._version import __version__
from prefect_runcomfy.engine.outputs.store import OutputStore
from prefect_runcomfy.engine.record.outcome import RowOutcome, StoredFile, as_number
from prefect_runcomfy.engine.record.status import RowStatus


def sidecar_name(row_id: str) -> str:
    """The sidecar's file name beside the row's video: `<id>.json`."""
    return f"{row_id}.json"


def sidecar_of(outcome: RowOutcome) -> dict[str, Any]:
    """The row's `<id>.json`: what was asked, what RunComfy answered, what was stored."""
    data: dict[str, Any] = {
        "id": outcome.id,
        "model_id": outcome.model_id,
        "request_id": outcome.request_id,
        "inputs": outcome.sent,
        "submitted_at": outcome.submitted_at,
        "flow_run_id": outcome.flow_run_id,
        "prefect_runcomfy_version": __version__,
    }
    if outcome.sources is not None:
        data["sources"] = outcome.sources
    data.update(
        status=outcome.status.value if outcome.status else None,
        error=outcome.error,
        queue_seconds=outcome.queue_seconds,
        run_seconds=outcome.run_seconds,
        total_seconds=outcome.total_seconds,
        cost_usd=outcome.cost_usd,
        finished_at=outcome.finished_at,
    )
    if outcome.notes:  # why timings are bounds or unknown, ...: a later run reports them again
        data["notes"] = list(outcome.notes)
    if outcome.status is RowStatus.SUCCEEDED:
        data.update(
            created_at=outcome.created_at,
            api_finished_at=outcome.api_finished_at,
            output_urls=list(outcome.output_urls),
            files=[f.model_dump(mode="json") for f in outcome.files],
            stored_at=outcome.stored_at,
        )
    else:
        data.update(api_error=outcome.api_error, api_result=outcome.api_result)
    return data


def with_sidecar(outcome: RowOutcome, sidecar: Mapping[str, Any]) -> RowOutcome:
    """`outcome` with a stored row's facts read from its sidecar over it.

    Tolerant: an older or hand-edited sidecar must not fail a row that is stored, so a value
    of the wrong kind is read as unknown and a file entry as much as it says.
    """
    files = tuple(f for f in (stored_file(d) for d in sidecar.get("files") or []) if f is not None)
    inputs, sources = sidecar.get("inputs"), sidecar.get("sources")
    notes = sidecar.get("notes")
    kept = tuple(str(n) for n in notes if n) if isinstance(notes, list) else ()
    return outcome.evolve(
        notes=(*outcome.notes, *(n for n in kept if n not in outcome.notes)),
        status=RowStatus.parse(sidecar.get("status")) or outcome.status,
        error=sidecar.get("error") or outcome.error,
        request_id=sidecar.get("request_id") or outcome.request_id,
        queue_seconds=as_number(sidecar.get("queue_seconds")),
        run_seconds=as_number(sidecar.get("run_seconds")),
        total_seconds=as_number(sidecar.get("total_seconds")),
        cost_usd=as_number(sidecar.get("cost_usd")),
        submitted_at=sidecar.get("submitted_at"),
        finished_at=sidecar.get("finished_at"),
        sent=inputs if isinstance(inputs, dict) else outcome.sent,
        sources=sources if isinstance(sources, dict) else None,
        api_error=sidecar.get("api_error"),
        files=files or outcome.files,
    )


def read_sidecars(store: OutputStore, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The sidecars of the rows `ids` that have one, by row id, fetched at once. A sidecar
    that is not a JSON object is left out, as if missing: a report must not fail on one
    damaged file.

    Raises:
        StorageError: when the store cannot be read at all.
    """
    names = {sidecar_name(row_id): row_id for row_id in ids}
    found = {}
    for name, data in store.read_many_bytes(names).items():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            value = json.loads(data)
            if isinstance(value, dict):
                found[names[name]] = value
    return found


def stored_file(data: Any) -> StoredFile | None:
    """A sidecar's file entry, or None when it is not one. Facts it lacks are left blank
    (no uri, size 0, no checksum) rather than losing the ones it has, such as the probe."""
    if not isinstance(data, Mapping):
        return None
    try:
        return StoredFile.model_validate(
            {"uri": "", "source_url": "", "size": 0, "sha256": "", **data}
        )
    except ValueError:
        return None


__all__ = ["read_sidecars", "sidecar_name", "sidecar_of", "stored_file", "with_sidecar"]
