"""Where a run's local media files go: one rule for a run, `prefect-runcomfy plan` and
`prefect-runcomfy validate`, whether a script, the CLI or a deployment starts it.

RunComfy fetches a job's image and audio from URLs; a local file must be uploaded to a
staging folder (then pre-signed) or sent inline as a `data:` URI. The first of these that
says where wins:

1. the run's parameters: `staging_uri=` (CLI `--staging-uri`) or `inline_media=True`
   (`--inline-media`);
2. the Prefect Variables of the Prefect server the run talks to, set once for every
   deployment, CLI run and script: `runcomfy_staging_uri` (a folder such as
   `s3://bucket/staging`) or `runcomfy_inline_media` (`true`);
3. the sandbox: when the API's base URL is on this machine's loopback (`localhost`,
   `127.0.0.0/8`, `::1`), it is the built-in sandbox (real RunComfy never is), which takes
   `data:` URIs: local files are sent inline;
4. nothing: a row that names a local file is `invalid`, its error naming the three fixes.

The Variables are read only when a row to submit names a local file and no parameter
decided, so a table of URLs costs no Prefect API call.

```python
media = media_settings(None, False, base_url="http://127.0.0.1:8787", mode="offline")
# a row with "face.png": sent inline (the sandbox), unless a Variable names a staging folder
```
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prefect_runcomfy.api.client import resolve_base_url
from prefect_runcomfy.api.exceptions import ConfigurationError
from prefect_runcomfy.engine.inputs.media import INLINE_VARIABLE, STAGING_VARIABLE, LocalFiles
from prefect_runcomfy.engine.plan.planning import MediaMode, MediaSettings

if TYPE_CHECKING:  # the block imports Prefect (over a second): `validate` needs neither
    from prefect_runcomfy.blocks import RunComfyCredentials


def is_local_api(base_url: str) -> bool:
    """Whether the API at `base_url` runs on this machine's loopback (`localhost`, any
    `127.x.x.x`, `::1`): the built-in sandbox, never RunComfy.

    Example:
        ```python
        is_local_api("http://127.0.0.1:8787")          # True
        is_local_api("https://model-api.runcomfy.net")  # False
        ```
    """
    host = (urlsplit(base_url.strip()).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def choose_local_files(
    *,
    base_url: str,
    staging_variable: Any = None,
    inline_variable: Any = None,
) -> LocalFiles:
    """Where local files go when no parameter says (steps 2 to 4 of the module's rule),
    from the two Prefect Variables' values (None: not set) and the API's base URL.

    Raises `ConfigurationError` for a Variable that holds something else than it should.
    """
    if staging_variable not in (None, ""):
        if not isinstance(staging_variable, str):
            raise ConfigurationError(
                f"The Prefect Variable {STAGING_VARIABLE} must be a folder URL such as "
                f"s3://bucket/staging, not {staging_variable!r}: "
                f"prefect variable set {STAGING_VARIABLE} s3://bucket/staging --overwrite"
            )
        return LocalFiles(
            staging_uri=staging_variable.strip(), why=f"the Prefect Variable {STAGING_VARIABLE}"
        )
    if _flag(inline_variable):
        return LocalFiles(inline=True, why=f"the Prefect Variable {INLINE_VARIABLE}")
    if is_local_api(base_url):
        return LocalFiles(
            inline=True, why=f"the API at {base_url} is on this machine: the local sandbox"
        )
    return LocalFiles()


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", ""}:
        return value.strip().lower() == "true"
    raise ConfigurationError(
        f"The Prefect Variable {INLINE_VARIABLE} must be true or false, not {value!r}: "
        f"prefect variable set {INLINE_VARIABLE} true --overwrite"
    )


async def read_local_files(base_url: str) -> LocalFiles:
    """Where local files go by the Prefect Variables and the sandbox rule (the module's
    steps 2 to 4), read from the Prefect API now; said in the run's log when in a run."""
    from prefect.variables import Variable

    try:
        staging = await Variable.aget(STAGING_VARIABLE)
        inline = await Variable.aget(INLINE_VARIABLE) if not staging else None
    except Exception as exc:
        raise ConfigurationError(
            f"A row names a local file and no staging_uri or inline_media was given, and the "
            f"Prefect Variables {STAGING_VARIABLE} / {INLINE_VARIABLE} could not be read "
            f"({type(exc).__name__}: {exc}); pass --staging-uri or --inline-media"
        ) from exc
    local = choose_local_files(base_url=base_url, staging_variable=staging, inline_variable=inline)
    _say(local)
    return local


def _say(local: LocalFiles) -> None:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    with contextlib.suppress(MissingContextError):  # plan / validate: no run to log to
        get_run_logger().info("Media: %s", local.describe())


def api_base_url(credentials: RunComfyCredentials | None) -> str:
    """The base URL a run's calls go to: the block's, else `RUNCOMFY_BASE_URL`, else
    RunComfy's."""
    return credentials.base_url if credentials is not None else resolve_base_url(None)


def media_settings(
    staging_uri: str | None,
    inline_media: bool,
    *,
    base_url: str,
    mode: MediaMode = "resolve",
    storage_options: dict[str, Any] | None = None,
    staging_storage_options: dict[str, Any] | None = None,
) -> MediaSettings:
    """The media settings of a run (`mode="resolve"`), `plan` (`"check"`) or `validate`
    (`"offline"`) against the API at `base_url`: the parameters first, then, when a row
    names a local file, the Prefect Variables and the sandbox rule (`read_local_files`)."""

    async def unset_local() -> LocalFiles:
        return await read_local_files(base_url)

    return MediaSettings(
        staging_uri=staging_uri or None,
        inline_media=bool(inline_media),
        storage_options=storage_options,
        staging_storage_options=staging_storage_options,
        mode=mode,
        unset_local=unset_local,
    )


__all__ = [
    "api_base_url",
    "choose_local_files",
    "is_local_api",
    "media_settings",
    "read_local_files",
]
