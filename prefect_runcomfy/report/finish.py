"""The last phase of every flow: the manifest merged and written, the review page, the
summary artifacts, and one closing log line."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pandas as pd
from prefect.logging import get_run_logger

from prefect_runcomfy.engine.manifest import merge_manifests, parquet_safe, status_counts
from prefect_runcomfy.engine.outcome import RowOutcome
from prefect_runcomfy.engine.storage import MANIFEST_NAME, OutputStore
from prefect_runcomfy.report.artifacts import publish_summary, spending


async def finish_run(
    store: OutputStore,
    manifest: pd.DataFrame,
    output_uri: str,
    *,
    name: str = MANIFEST_NAME,
    input_storage_options: dict[str, object] | None = None,
    outcomes: Sequence[RowOutcome] = (),
    artifact_key: str | None = None,
) -> pd.DataFrame:
    """Merge this run's rows into the manifest at `name`, write it, draw the review page (for
    the output location's own manifest only: a shard's parent draws one for all), publish the
    summary (under `artifact_key`, when given), and return this run's rows (`attrs` holds `manifest_uri` and `review_page`).

    `outcomes`, the records behind `manifest` when the run holds them, draw their rows of the
    page without reading their sidecars back."""
    logger = get_run_logger()
    previous = await asyncio.to_thread(store.read_manifest, name)
    merged = parquet_safe(merge_manifests(previous, manifest))
    manifest_uri = await asyncio.to_thread(store.write_manifest, merged, name)
    page_uri = None
    if name == MANIFEST_NAME:
        from prefect_runcomfy.report.review import write_review_page

        try:
            page_uri = await asyncio.to_thread(
                write_review_page,
                store,
                merged,
                input_storage_options=input_storage_options,
                known={o.id: o.sidecar() for o in outcomes if o.metadata_uri},
            )
        except Exception as exc:  # the page is a view; the run's outputs are what count
            logger.warning("Could not write the review page: %s", exc)
    counts = {k: v for k, v in status_counts(manifest).items() if v}
    logger.info(
        "Done: %s. %s. Manifest: %s%s",
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        spending(manifest)[0],
        manifest_uri,
        f". Review page: {page_uri}" if page_uri else "",
    )
    await publish_summary(
        manifest,
        output_uri=output_uri,
        manifest_uri=manifest_uri,
        page_uri=page_uri,
        key_prefix=artifact_key,
    )
    manifest.attrs["review_page"] = page_uri
    manifest.attrs["manifest_uri"] = manifest_uri
    return manifest


__all__ = ["finish_run"]
