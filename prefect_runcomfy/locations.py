"""Where outputs and staged media go: a URI with fsspec options, or a Prefect filesystem block.

A flow's `output_uri` and `staging_uri` take either; `storage_location` turns both into the
`(uri, storage_options)` the engine works with, in this one place. A `RemoteFileSystem`'s
`settings` are its fsspec options, so the credentials of a bucket live in the block (saved in
Prefect, masked in the UI) rather than in a parameter dict; a `LocalFileSystem` is its
folder. (prefect-aws's `S3Bucket` is not among them: this package does not depend on
prefect-aws; a `RemoteFileSystem` with `basepath="s3://bucket/prefix"` serves.)

```python
from prefect.filesystems import RemoteFileSystem

RemoteFileSystem(basepath="s3://bucket/videos", settings={"key": "...", "secret": "..."}).save("videos")
generate_talking_videos(table, RemoteFileSystem.load("videos"))
```
"""

from __future__ import annotations

import os
from typing import Any, overload

from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from prefect_runcomfy.api.exceptions import ConfigurationError

Location = str | RemoteFileSystem | LocalFileSystem
"""A place to write: a URI (a local folder, `s3://...`, `gs://...`) or a filesystem block."""


@overload
def storage_location(
    where: Location, storage_options: dict[str, Any] | None
) -> tuple[str, dict[str, Any] | None]: ...


@overload
def storage_location(
    where: Location | None, storage_options: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any] | None]: ...


def storage_location(
    where: Location | None, storage_options: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any] | None]:
    """`(uri, storage_options)` of a location given as a URI or a filesystem block; options
    given beside a block are added to its settings (and win, key by key)."""
    if where is None or isinstance(where, str):
        return where, storage_options
    if isinstance(where, RemoteFileSystem):
        options = {**(where.settings or {}), **(storage_options or {})}
        return where.basepath, options or None
    if isinstance(where, LocalFileSystem):
        folder = os.path.abspath(os.path.expanduser(where.basepath or "."))
        return folder, storage_options
    raise ConfigurationError(
        f"A location is a URI or a RemoteFileSystem / LocalFileSystem block, not "
        f"{type(where).__name__}"
    )


async def stored_location(
    stored: Any, storage_options: dict[str, Any] | None
) -> tuple[str, dict[str, Any] | None]:
    """The location a flow run's stored parameter names (a URI, or a saved block by its
    reference), for the hooks that read a run back; `ConfigurationError` for an unsaved
    block, whose settings were not stored."""
    if isinstance(stored, dict) and isinstance(stored.get("$ref"), dict):
        block = await Block.aload_from_ref(stored["$ref"])
        return storage_location(block, storage_options)
    if isinstance(stored, str):
        return stored, storage_options
    raise ConfigurationError(
        "the run was given an unsaved filesystem block, whose settings are not stored with "
        "the run; save the block to let a hook find the output location again"
    )


def block_parameter(block: Block) -> dict[str, Any]:
    """How a block given as a flow parameter is stored with the run: a saved one by reference
    (its settings stay in the block); an unsaved one by its kind and path alone."""
    if block._block_document_id is not None:
        return {"$ref": {"block_document_id": str(block._block_document_id)}}
    return {
        "block_type_slug": block.get_block_type_slug(),
        "basepath": getattr(block, "basepath", None),
        "settings": "<not stored: they may hold credentials>",
    }


__all__ = ["Location", "block_parameter", "storage_location", "stored_location"]
