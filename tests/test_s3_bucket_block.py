"""prefect-aws's `S3Bucket` block as a flow's output location (the `aws` extra), against moto's
S3 server on loopback and a real Prefect API: the bucket's credentials stay in the blocks."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.callables import parameter_schema

prefect_aws = pytest.importorskip("prefect_aws")  # the `aws` extra; `make setup` installs it
from prefect_aws import AwsClientParameters, AwsCredentials, MinIOCredentials  # noqa: E402
from prefect_aws.s3 import S3Bucket  # noqa: E402
from s3_fixtures import S3Server  # noqa: E402

from prefect_runcomfy import (  # noqa: E402
    RunComfyCredentials,
    Waiting,
    generate_talking_videos,
)
from prefect_runcomfy.api.exceptions import ConfigurationError  # noqa: E402
from prefect_runcomfy.locations import storage_location, stored_location  # noqa: E402
from prefect_runcomfy.sandbox import Sandbox, sample_inputs  # noqa: E402

FAST = {"waiting": Waiting(poll_initial_s=0.1, poll_max_s=0.5)}


def moto_credentials(s3_server: S3Server) -> AwsCredentials:
    return AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint_url),
    )


def test_an_s3_bucket_is_its_folder_and_its_credentials_options() -> None:
    creds = AwsCredentials(
        aws_access_key_id="AKIA",
        aws_secret_access_key="s3cr3t",
        aws_session_token="tok",
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(
            endpoint_url="http://127.0.0.1:9",
            use_ssl=False,
            config={"retries": {"max_attempts": 7}},
        ),
    )
    bucket = S3Bucket(bucket_name="night", bucket_folder="/videos/", credentials=creds)
    uri, options = storage_location(bucket, {"use_listings_cache": False})
    assert uri == "s3://night/videos"
    assert options == {
        "key": "AKIA",
        "secret": "s3cr3t",
        "token": "tok",
        "config_kwargs": {"retries": {"max_attempts": 7}},
        "client_kwargs": {
            "use_ssl": False,
            "endpoint_url": "http://127.0.0.1:9",
            "region_name": "eu-west-1",
        },
        "use_listings_cache": False,
    }
    minio = MinIOCredentials(minio_root_user="admin", minio_root_password="pw")
    uri, options = storage_location(S3Bucket(bucket_name="b", credentials=minio), None)
    assert uri == "s3://b" and options is not None
    assert (options["key"], options["secret"]) == ("admin", "pw")
    profile = AwsCredentials(profile_name="nightly")
    _, options = storage_location(S3Bucket(bucket_name="b", credentials=profile), None)
    assert options is not None and options["profile"] == "nightly" and "key" not in options


def test_an_assumed_role_is_refused_with_what_to_do_instead() -> None:
    creds = AwsCredentials(assume_role_arn="arn:aws:iam::1:role/r")
    with pytest.raises(ConfigurationError, match="profile"):
        storage_location(S3Bucket(bucket_name="b", credentials=creds), None)


def test_the_run_form_offers_a_saved_s3_bucket() -> None:
    schema = parameter_schema(generate_talking_videos).model_dump()
    assert "S3Bucket" in str(schema["properties"]["output_uri"])
    assert "S3Bucket" in str(schema["properties"]["staging_uri"])


@pytest.mark.usefixtures("prefect_api")
async def test_a_run_into_a_saved_s3_bucket_writes_there_and_stores_no_secret(
    shared_sandbox: Sandbox, s3_server: S3Server, s3_bucket: str
) -> None:
    shared_sandbox.reset(config=True)
    bucket = S3Bucket(
        bucket_name=s3_bucket, bucket_folder="nightly", credentials=moto_credentials(s3_server)
    )
    await bucket.save(f"out-{s3_bucket}")
    saved = await S3Bucket.load(f"out-{s3_bucket}")
    creds = RunComfyCredentials(api_token=shared_sandbox.token, base_url=shared_sandbox.base_url)
    table = [dict(r, id=f"s{i}") for i, r in enumerate(sample_inputs(shared_sandbox.base_url)[:2])]

    state: Any = await generate_talking_videos(table, saved, creds, return_state=True, **FAST)
    assert state.is_completed(), state.message
    keys = {
        o["Key"]
        for o in s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    }
    assert {"nightly/s0.mp4", "nightly/s1.mp4", "nightly/manifest.parquet"} <= keys

    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    stored = run.parameters["output_uri"]
    assert set(stored) == {"$ref"} and "testing" not in str(run.parameters)
    # What a hook reads back from the stored run: the same place, with the block's options.
    uri, options = await stored_location(stored, None)
    assert uri == f"s3://{s3_bucket}/nightly"
    assert options is not None
    assert options["client_kwargs"]["endpoint_url"] == s3_server.endpoint_url

    # A second run finds every row stored: nothing is paid again.
    before = shared_sandbox.stats()["submits_accepted"]
    again: Any = await generate_talking_videos(table, saved, creds, **FAST)
    assert list(again["status"]) == ["succeeded", "succeeded"]
    assert shared_sandbox.stats()["submits_accepted"] == before
