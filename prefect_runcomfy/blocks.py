"""`RunComfyCredentials`: the Prefect block that holds a RunComfy API token."""

from __future__ import annotations

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from prefect_runcomfy.api.client import DEFAULT_BASE_URL, RunComfyClient
from prefect_runcomfy.api.exceptions import ConfigurationError
from prefect_runcomfy.api.hosts import DEFAULT_MAX_OUTPUT_BYTES, HostRule, OutputPolicy


class RunComfyCredentials(CredentialsBlock):
    """A RunComfy API token (and where the API lives), saved once and loaded by name.

    The token is a secret: it is shown as `**********` in the UI, in reprs and in logs, and
    is sent only in the `Authorization` header of calls to `base_url`. Outputs are downloaded
    (without the token) only from RunComfy's output domains, `base_url`'s own host and the
    `output_hosts` added here (or in `RUNCOMFY_OUTPUT_HOSTS`).

    Example:
        Save it once (or create it in the Prefect UI, after
        `prefect block register -m prefect_runcomfy`):
        ```python
        from prefect_runcomfy import RunComfyCredentials

        RunComfyCredentials(api_token="rc_...").save("runcomfy", overwrite=True)
        ```

        Load it in a flow and talk to RunComfy:
        ```python
        from prefect import flow
        from prefect_runcomfy import RunComfyCredentials

        @flow
        async def check_model() -> None:
            credentials = await RunComfyCredentials.load("runcomfy")
            async with credentials.get_client() as client:
                info = await client.model_info()
                print(info.display_name, info.base_price_usd)
        ```
    """

    _block_type_name = "RunComfy Credentials"
    _block_type_slug = "runcomfy-credentials"
    _logo_url = "https://www.runcomfy.com/favicon.ico"  # type: ignore[assignment]
    _documentation_url = "https://docs.runcomfy.com/model-apis/quickstart"  # type: ignore[assignment]
    _description = "A RunComfy Model API token, for prefect-runcomfy's tasks and flows."

    api_token: SecretStr = Field(
        default=...,
        title="API token",
        description="Your RunComfy API token (RunComfy profile → API tokens). Kept secret.",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        title="Base URL",
        description=(
            "Where RunComfy's Model API lives. Change it only for a proxy or the local sandbox "
            "(`prefect-runcomfy sandbox`)."
        ),
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        title="Timeout (seconds)",
        description="How long one API call may take before it is treated as failed.",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        title="Max retries",
        description="How often a status, result or cancel call is retried (submits never blindly).",
    )

    output_hosts: list[str] = Field(
        default_factory=list,
        title="More output hosts",
        description=(
            # The UI renders this as markdown: patterns in backticks, or `*` turns to italics.
            "Hosts outputs may also be downloaded from, beside `*.runcomfy.net`, "
            "`*.runcomfy.com` and the base URL's host: `cdn.example.com`, `*.example.com` "
            "(https), or `http://10.0.0.5:8080`. Only add hosts you trust: a download goes "
            "nowhere else."
        ),
    )
    max_output_bytes: int = Field(
        default=DEFAULT_MAX_OUTPUT_BYTES,
        gt=0,
        title="Largest output (bytes)",
        description="An output larger than this is refused (default 2 GiB).",
    )

    @field_validator("output_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        patterns = [p.strip() for p in value if p.strip()]
        for pattern in patterns:
            try:
                HostRule.parse(pattern)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from exc
        return patterns

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with https:// (or http:// for a local sandbox)")
        return url

    def get_client(self, *args: Any, **kwargs: Any) -> RunComfyClient:
        """Return a new `RunComfyClient` for these credentials; close it with `async with`.

        A new client each call: Prefect runs each async task in its own event loop, and an
        HTTP connection pool must not outlive its loop.
        """
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "output_hosts": tuple(self.output_hosts),
            "max_output_bytes": self.max_output_bytes,
        }
        options.update(kwargs)
        return RunComfyClient(self.api_token, self.base_url, *args, **options)

    def output_policy(self) -> OutputPolicy:
        """Where outputs may be downloaded from with these credentials (see `get_client`)."""
        return OutputPolicy.build(
            self.base_url, extra_hosts=self.output_hosts, max_bytes=self.max_output_bytes
        )
