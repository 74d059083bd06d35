"""Where output files may be downloaded from, how big they may be, and what they may be.

An output URL comes from RunComfy's answer, and an answer can be spoofed or a CDN can redirect:
a worker in a cloud network would fetch whatever it names (instance metadata, internal
services) and write it into the user's bucket. So a download goes only to an allowed host,
every redirect hop is checked the same way before it is followed, and the answer must be a
video (or a generic binary) no larger than a cap. RunComfy's own clients do the same: its
ComfyUI nodes accept only https under `*.runcomfy.net`, its CLI keeps to `.runcomfy.net` and
`.runcomfy.com`, caps a download at 2 GiB and checks the content type.

By default: https on `*.runcomfy.net` and `*.runcomfy.com`, plus the API's own host with the
base URL's scheme and port (which is how the local sandbox serves its files). Users add host
patterns with `RunComfyCredentials.output_hosts` or `RUNCOMFY_OUTPUT_HOSTS` (comma-separated),
content types with `RUNCOMFY_OUTPUT_TYPES`, and change the cap with `max_output_bytes`.

A host pattern is `[scheme://]host[:port]`: the scheme defaults to https, the port to the
scheme's own (`*` for any), and the host is a name, an IP address, or `*.domain` for every
name under `domain`.

```python
policy = OutputPolicy.build("https://model-api.runcomfy.net", extra_hosts=["cdn.example.com"])
policy.check_url("https://files.runcomfy.net/out/a.mp4")      # fine
policy.check_url("http://169.254.169.254/latest/meta-data")  # OutputRefusedError
```

This module does not import Prefect.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx

from prefect_runcomfy.api.exceptions import ConfigurationError, OutputRefusedError

OUTPUT_HOSTS_ENV = "RUNCOMFY_OUTPUT_HOSTS"
"""Environment variable with more allowed output host patterns, comma-separated."""

OUTPUT_TYPES_ENV = "RUNCOMFY_OUTPUT_TYPES"
"""Environment variable with more allowed output content types (`image/png`, `image/*`)."""

DEFAULT_OUTPUT_HOSTS: tuple[str, ...] = ("*.runcomfy.net", "*.runcomfy.com")
"""RunComfy's output domains, https only."""

DEFAULT_CONTENT_TYPES: tuple[str, ...] = (
    "video/*",
    "application/octet-stream",
    "binary/octet-stream",
)
"""What an output may be served as (an answer without a Content-Type is accepted too)."""

DEFAULT_MAX_OUTPUT_BYTES = 2 * 1024**3
"""The largest output downloaded: 2 GiB, as RunComfy's CLI."""

MAX_REDIRECTS = 5
"""How many redirects a download follows, each checked against the policy first."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOW_TO_ALLOW_HOSTS = (
    f"{OUTPUT_HOSTS_ENV} (comma-separated host patterns) or RunComfyCredentials.output_hosts"
)


def short_url(url: str) -> str:
    """The URL without its query string: pre-signed queries are long and carry credentials."""
    return url.split("?", 1)[0]


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class HostRule:
    """One allowed place: a scheme, a host (or every host under a domain), and a port."""

    scheme: str
    host: str
    """The host, or for a wildcard the domain its hosts end with (without the `*.`)."""
    wildcard: bool = False
    port: int | None = None
    """The port, or None for any port."""

    @classmethod
    def parse(cls, pattern: str) -> HostRule:
        """Read `[scheme://]host[:port]` (`*.domain` for every host under it; port `*` for any).

        Raises:
            ConfigurationError: the pattern is not one (a path, an unknown scheme, a bare `*`).
        """
        text = pattern.strip()
        scheme = "https"
        if "://" in text:
            scheme, text = text.split("://", 1)
            scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ConfigurationError(
                f"Output host pattern {pattern!r}: the scheme must be https or http."
            )
        text = text.rstrip("/")
        if not text or "/" in text or "?" in text or "@" in text:
            raise ConfigurationError(
                f"Output host pattern {pattern!r}: give a host (and port), not a URL path, "
                "e.g. 'cdn.example.com', '*.example.com' or 'http://10.0.0.5:8080'."
            )
        port_text = ""
        if text.startswith("["):  # an IPv6 address
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:
            host = text
        host = _normal_host(host)
        wildcard = host.startswith("*.")
        if wildcard:
            host = host[2:]
        if not host or "*" in host:
            raise ConfigurationError(
                f"Output host pattern {pattern!r}: name the host or the domain ('*.example.com'); "
                "allowing every host would let any answer point downloads anywhere."
            )
        port: int | None
        if port_text == "*":
            port = None
        elif port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigurationError(f"Output host pattern {pattern!r}: bad port.")
            port = int(port_text)
        else:
            port = _DEFAULT_PORTS[scheme]
        return cls(scheme=scheme, host=host, wildcard=wildcard, port=port)

    @classmethod
    def of_url(cls, url: str) -> HostRule:
        """The rule that allows exactly `url`'s scheme, host and port."""
        parsed = httpx.URL(url)
        scheme = parsed.scheme.lower()
        return cls(
            scheme=scheme,
            host=_normal_host(parsed.host),
            port=parsed.port or _DEFAULT_PORTS.get(scheme),
        )

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        """True when a URL with this scheme, host and port (the scheme's own when None) fits."""
        if scheme != self.scheme:
            return False
        if self.port is not None and (port or _DEFAULT_PORTS.get(scheme)) != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        """The rule as a pattern, e.g. `https://*.runcomfy.net` or `http://127.0.0.1:8787`."""
        host = f"*.{self.host}" if self.wildcard else self.host
        if ":" in host:
            host = f"[{host}]"
        if self.port is None:
            return f"{self.scheme}://{host}:*"
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


def split_patterns(text: str | None) -> list[str]:
    """The patterns of a comma- (or whitespace-) separated list, blanks left out."""
    return [p for p in (text or "").replace(",", " ").split() if p]


@dataclass(frozen=True)
class OutputPolicy:
    """Which output URLs may be downloaded, and which answers kept: hosts, types, size."""

    rules: tuple[HostRule, ...]
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES

    @classmethod
    def build(
        cls,
        api_base_url: str | None = None,
        *,
        extra_hosts: Iterable[str] = (),
        max_bytes: int | None = None,
        extra_content_types: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> OutputPolicy:
        """RunComfy's output domains, the API's own host (`api_base_url`, with its scheme and
        port), `extra_hosts` and the patterns in `RUNCOMFY_OUTPUT_HOSTS`; video and binary
        types plus `extra_content_types` and `RUNCOMFY_OUTPUT_TYPES`; `max_bytes` (2 GiB).

        Raises:
            ConfigurationError: a host pattern or the size cap is not usable.
        """
        env = os.environ if environ is None else environ
        patterns = [
            *DEFAULT_OUTPUT_HOSTS,
            *extra_hosts,
            *split_patterns(env.get(OUTPUT_HOSTS_ENV)),
        ]
        rules = [HostRule.parse(p) for p in patterns]
        if api_base_url:
            rules.insert(0, HostRule.of_url(api_base_url))
        types = [
            *DEFAULT_CONTENT_TYPES,
            *extra_content_types,
            *split_patterns(env.get(OUTPUT_TYPES_ENV)),
        ]
        cap = DEFAULT_MAX_OUTPUT_BYTES if max_bytes is None else int(max_bytes)
        if cap <= 0:
            raise ConfigurationError(f"max_output_bytes must be positive, not {max_bytes!r}.")
        unique_rules = tuple(dict.fromkeys(rules))
        unique_types = tuple(dict.fromkeys(t.strip().lower() for t in types if t.strip()))
        return cls(rules=unique_rules, max_bytes=cap, content_types=unique_types)

    # -- the checks --------------------------------------------------------------------------

    def check_url(self, url: str, *, first_url: str | None = None) -> None:
        """Refuse `url` unless it is http(s) on an allowed host. `first_url` is the output URL
        when `url` is where it redirected to.

        Raises:
            OutputRefusedError: naming the host and how to allow it; nothing was fetched.
        """
        what = (
            f"The output {short_url(first_url)} redirected to {short_url(url)}"
            if first_url
            else f"The output {short_url(url)}"
        )
        try:
            parsed = httpx.URL(url)
            # httpx decodes an IDNA host lazily: a bad one (xn--...) raises here
            host = _normal_host(parsed.host)
        except (httpx.InvalidURL, ValueError, TypeError):  # UnicodeError is a ValueError
            raise OutputRefusedError(
                f"{what} is not a usable URL; nothing was downloaded.",
                reason="url",
                url=short_url(first_url or url),
            ) from None
        scheme = parsed.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not host:
            raise OutputRefusedError(
                f"{what} is not an http(s) URL; nothing was downloaded.",
                reason="url",
                url=short_url(first_url or url),
            )
        if any(rule.allows(scheme, host, parsed.port) for rule in self.rules):
            return
        origin = str(HostRule.of_url(url))
        raise OutputRefusedError(
            f"{what} is on {origin}, which is not an allowed output host, so nothing was "
            f"downloaded from it (allowed: {', '.join(str(r) for r in self.rules)}). If you "
            f"trust {host}, allow it with {_HOW_TO_ALLOW_HOSTS}, e.g. "
            f"{OUTPUT_HOSTS_ENV}={origin}.",
            reason="host",
            url=short_url(first_url or url),
            host=host,
        )

    def check_answer(self, url: str, response: httpx.Response) -> None:
        """Refuse an answer whose type is not a video or a generic binary, or whose
        Content-Length is over the cap (before a byte of the body is read).

        Raises:
            OutputRefusedError: naming the type or the size and how to allow it.
        """
        raw_type = response.headers.get("Content-Type")
        if raw_type is not None and not self.allows_type(raw_type):
            served = raw_type.split(";", 1)[0].strip().lower() or raw_type
            raise OutputRefusedError(
                f"The output {short_url(url)} was served as {served!r}, not as a video "
                f"({', '.join(self.content_types)}), so it was not kept (an error or login "
                "page looks like this). If that type is what the model makes, allow it with "
                f"{OUTPUT_TYPES_ENV}={served}.",
                reason="type",
                url=short_url(url),
                host=_normal_host(response.url.host),
            )
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit():
            self.check_size(url, int(length), announced=True)

    def check_size(self, url: str, size: int, *, announced: bool = False) -> None:
        """Refuse an output of more than `max_bytes` (announced, or counted while streaming).

        Raises:
            OutputRefusedError: naming the size, the cap and how to raise it.
        """
        if size <= self.max_bytes:
            return
        said = f"is {size} bytes" if announced else f"passed {self.max_bytes} bytes"
        raise OutputRefusedError(
            f"The output {short_url(url)} {said}, more than the {self.max_bytes} bytes an output "
            "may be, so it was not kept. If it is genuine, raise the cap with "
            "RunComfyCredentials.max_output_bytes (or max_output_bytes= on RunComfyClient).",
            reason="size",
            url=short_url(url),
        )

    def allows_type(self, content_type: str) -> bool:
        """True when `content_type` (parameters ignored) matches an allowed type or `type/*`."""
        served = content_type.split(";", 1)[0].strip().lower()
        for allowed in self.content_types:
            if allowed.endswith("/*"):
                if served.startswith(allowed[:-1]) and len(served) > len(allowed) - 1:
                    return True
            elif served == allowed:
                return True
        return False


__all__ = [
    "DEFAULT_CONTENT_TYPES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_OUTPUT_HOSTS",
    "MAX_REDIRECTS",
    "OUTPUT_HOSTS_ENV",
    "OUTPUT_TYPES_ENV",
    "HostRule",
    "OutputPolicy",
    "short_url",
    "split_patterns",
]
