"""Artifact keys and run tags (pure functions)."""

from __future__ import annotations

import re

import pytest

from prefect_runcomfy.exceptions import ConfigurationError
from prefect_runcomfy.models import INFINITE_TALK
from prefect_runcomfy.report.naming import artifact_key, run_tags


def test_the_key_is_stable_readable_and_distinct_per_location() -> None:
    key = artifact_key("s3://My-Bucket/videos/")
    assert key == artifact_key("s3://My-Bucket/videos")
    assert key.startswith("runcomfy-s3-my-bucket-videos-")
    assert artifact_key("s3://my-bucket/videos") != key  # case matters in S3 keys
    long = artifact_key("/data/" + "x" * 300)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", long) and len(long) <= 60


def test_a_given_key_is_checked() -> None:
    assert artifact_key("s3://b/v", "nightly-videos") == "nightly-videos"
    with pytest.raises(ConfigurationError, match="lowercase"):
        artifact_key("s3://b/v", "Nightly Videos")


def test_tags_name_the_library_and_the_model() -> None:
    assert run_tags(INFINITE_TALK) == ("runcomfy", "infinite-talk")
