"""Where outputs and staged media go: a URI with fsspec options, or a Prefect filesystem block.

A flow's `output_uri` and `staging_uri` take either; `storage_location` turns both into the
`(uri, storage_options)` the engine works with, in this one place. A `RemoteFileSystem`'s
`settings` are its fsspec options, so the credentials of a bucket live in the block (saved in
Prefect, masked in the UI) rather than in a parameter dict; a `LocalFileSystem` is its
folder. prefect-aws's `S3Bucket` is accepted where prefect-aws is installed (the `aws` extra):
its bucket and folder are the location, its `AwsCredentials` or `MinIOCredentials` become
s3fs's options (`s3fs_options`).

```python
from prefect.filesystems import RemoteFileSystem

RemoteFileSystem(basepath="s3://bucket/videos", settings={"key": "...", "secret": "..."}).save("videos")
generate_talking_videos(table, RemoteFileSystem.load("videos"))
```
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TypeAlias, Union, overload

from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from prefect_runcomfy.api.exceptions import ConfigurationError

if TYPE_CHECKING:
    from prefect_aws.s3 import S3Bucket
else:
    try:  # optional: the `aws` extra
        from prefect_aws.s3 import S3Bucket
    except ImportError:
        S3Bucket = None

LOCATION_BLOCKS: tuple[type[Block], ...] = tuple(
    kind for kind in (RemoteFileSystem, LocalFileSystem, S3Bucket) if kind is not None
)
"""The kinds of block a location may be given as (prefect-aws's `S3Bucket` where installed)."""

if TYPE_CHECKING:
    Location: TypeAlias = str | RemoteFileSystem | LocalFileSystem | S3Bucket
else:
    # Built from what is installed: Prefect reads it for the parameter form and validation.
    Location = Union[(str, *LOCATION_BLOCKS)]
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
    if S3Bucket is not None and isinstance(where, S3Bucket):
        options = {**s3fs_options(where.credentials), **(storage_options or {})}
        return bucket_uri(where), options or None
    raise ConfigurationError(
        f"A location is a URI or a RemoteFileSystem / LocalFileSystem / S3Bucket block, not "
        f"{type(where).__name__}"
    )


def bucket_uri(bucket: S3Bucket) -> str:
    """`s3://bucket/folder` of a prefect-aws `S3Bucket` block."""
    folder = (bucket.bucket_folder or "").strip("/")
    return f"s3://{bucket.bucket_name}/{folder}" if folder else f"s3://{bucket.bucket_name}"


def s3fs_options(credentials: Any) -> dict[str, Any]:
    """s3fs's options for prefect-aws's `AwsCredentials` or `MinIOCredentials`: the keys, the
    profile, the region and the client parameters (endpoint, SSL, botocore config).

    An assumed role is refused: its credentials expire within the hour while a night's run
    lasts longer; a profile whose `role_arn` is in `~/.aws/config` renews them and serves.
    """
    if getattr(credentials, "assume_role_arn", None):
        raise ConfigurationError(
            "the S3Bucket's AwsCredentials assume a role (assume_role_arn), which s3fs cannot "
            "renew during a long run; name a profile with that role_arn in ~/.aws/config "
            "(profile_name) instead"
        )
    minio = hasattr(credentials, "minio_root_user")
    secret = credentials.minio_root_password if minio else credentials.aws_secret_access_key
    given = {
        "key": credentials.minio_root_user if minio else credentials.aws_access_key_id,
        "secret": secret.get_secret_value() if secret is not None else None,
        "token": None if minio else credentials.aws_session_token,
        "profile": None if minio else credentials.profile_name,
    }
    options: dict[str, Any] = {k: v for k, v in given.items() if v}
    client = credentials.aws_client_parameters.model_dump(exclude_none=True)
    if "verify_cert_path" in client:
        client["verify"] = str(client.pop("verify_cert_path"))
    if "config" in client:
        options["config_kwargs"] = client.pop("config")
    if credentials.region_name:
        client["region_name"] = credentials.region_name
    if client:
        options["client_kwargs"] = client
    return options


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
        "basepath": _path_of(block),
        "settings": "<not stored: they may hold credentials>",
    }


def _path_of(block: Block) -> str | None:
    if S3Bucket is not None and isinstance(block, S3Bucket):
        return bucket_uri(block)
    return getattr(block, "basepath", None)


__all__ = [
    "LOCATION_BLOCKS",
    "Location",
    "block_parameter",
    "bucket_uri",
    "s3fs_options",
    "storage_location",
    "stored_location",
]
