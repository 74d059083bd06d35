"""A pytest plugin: moto's S3 server on 127.0.0.1 and a fresh bucket per test.

Loaded by `tests/conftest.py` (`pytest_plugins = ["s3_fixtures"]`); usable alone with
`PYTHONPATH=tests pytest -p s3_fixtures`. Nothing here leaves the loopback interface.

```python
def test_upload(s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.pipe(f"{s3_bucket}/hello.txt", b"hi")
```
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Dummy credentials: boto3 and s3fs refuse to start without some, and a developer's real ones
# must never be used (or leaked into a signed URL) by the tests.
_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could point boto at a real account or endpoint behind our back.
_CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class S3Server:
    """Where the moto server listens and how to reach it from s3fs / fsspec / boto3."""

    endpoint_url: str
    storage_options: dict[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        # Lets tests treat the server like the dict the brief promised: s3_server["endpoint_url"].
        return getattr(self, key)

    def boto3_client(self) -> Any:
        """A boto3 S3 client pointed at this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


def _clear_s3fs_cache() -> None:
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is a dev dependency
        return
    # s3fs caches instances (and their directory listings) by their options; a cached instance
    # from an earlier test could answer from a listing of a bucket that no longer exists.
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in (*_DUMMY_ENV, *_CLEARED_ENV)}
    os.environ.update(_DUMMY_ENV)
    for name in _CLEARED_ENV:
        os.environ.pop(name, None)

    # werkzeug logs every request at INFO; hundreds of lines per test drown the real output.
    werkzeug = logging.getLogger("werkzeug")
    saved_level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            },
        )
    finally:
        server.stop()
        werkzeug.setLevel(saved_level)
        _clear_s3fs_cache()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket on the moto server; its name is yielded."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_server.boto3_client().create_bucket(Bucket=name)
    _clear_s3fs_cache()
    try:
        yield name
    finally:
        _clear_s3fs_cache()
