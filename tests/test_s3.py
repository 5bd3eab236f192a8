"""airflow_provider_smrt.s3: URIs, the one "not found" test, and S3 errors classified in words about S3."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from airflow_provider_smrt.async_inference import AsyncInferenceTracker, poll_async, poll_sync
from airflow_provider_smrt.classify import classify_error
from airflow_provider_smrt.exceptions import ConfigurationError, ParameterValidationError, ThrottlingError
from airflow_provider_smrt.s3 import (
    ObjectInfo,
    S3Location,
    describe_s3_error,
    error_code,
    is_not_found,
    is_s3_client_error,
    join_uri,
    split_s3,
)


def _error(code: str, status: int, op: str = "ListObjectsV2", message: str = "") -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, op)


def test_uris_and_object_info() -> None:
    loc = S3Location.parse("s3://b/dir/sub/k.out")
    assert (loc.bucket, loc.key, loc.directory, loc.uri) == ("b", "dir/sub/k.out", "dir/sub/", "s3://b/dir/sub/k.out")
    assert S3Location.parse("s3://b/k").directory == ""
    for bad in ("https://b/k", "s3://b", "s3://b/", "s3:///k"):
        with pytest.raises(ParameterValidationError):
            S3Location.parse(bad)
    assert split_s3("s3://b/p/k") == ("b", "p/k") and join_uri("s3://b/p/", "/k") == "s3://b/p/k"
    info = ObjectInfo.from_head("s3://b/k", {"ContentLength": 3, "ETag": '"abc"', "VersionId": "v1"})
    assert (info.size, info.etag, info.version_id) == (3, "abc", "v1")
    listed = ObjectInfo.from_listing("b", {"Key": "k", "Size": 5, "ETag": '"e"'})
    assert (listed.uri, listed.size, listed.etag) == ("s3://b/k", 5, "e")


def test_not_found_is_one_test() -> None:
    assert is_not_found(_error("NoSuchKey", 404, "GetObject"))
    assert is_not_found(_error("404", 404, "HeadObject"))
    assert not is_not_found(_error("NoSuchBucket", 404))  # a missing bucket is a configuration error
    assert not is_not_found(_error("AccessDenied", 403)) and not is_not_found(ValueError("x"))
    denied = _error("AccessDenied", 403, message="Access Denied")
    assert error_code(denied) == "AccessDenied" and is_s3_client_error(denied)
    assert describe_s3_error(denied) == "AccessDenied: Access Denied"
    assert not is_s3_client_error(ValueError("x")) and describe_s3_error(ValueError("x")) == "ValueError: x"


def test_s3_errors_speak_of_s3() -> None:
    err = classify_error(_error("NoSuchBucket", 404, message="The specified bucket does not exist"), s3_uri="s3://b")
    assert isinstance(err, ConfigurationError) and not err.retryable
    text = str(err)
    assert "S3 (s3://b)" in text and "bucket name" in text and "region" in text
    assert "endpoint" not in text
    slow = classify_error(_error("SlowDown", 503, message="Please reduce your request rate"), s3_uri="s3://b")
    assert isinstance(slow, ThrottlingError) and slow.retryable and "SlowDown" in str(slow)
    denied = classify_error(_error("AccessDenied", 403), s3_uri="s3://b/k")
    assert "s3:GetObject" in str(denied)


def test_no_such_bucket_while_polling_names_the_bucket(s3_client: Any) -> None:
    """On the real S3 server: a poll of a bucket that does not exist says S3, not "endpoint"."""
    bucket = "smrt-no-such-bucket-7f3a"
    invocations = [{"output_location": f"s3://{bucket}/out/{i}.out"} for i in range(2)]  # one listing
    with pytest.raises(ConfigurationError) as caught:
        poll_sync(AsyncInferenceTracker(invocations), s3_client)
    text = str(caught.value)
    assert caught.value.code == "NoSuchBucket"
    assert f"S3 (s3://{bucket})" in text and "bucket name" in text and "endpoint" not in text


def test_no_such_bucket_in_the_async_poll_too() -> None:
    import asyncio

    class Missing:
        async def list_objects_v2(self, **kwargs: Any) -> Any:
            raise _error("NoSuchBucket", 404, message="The specified bucket does not exist")

    invocations = [{"output_location": f"s3://nb/out/{i}.out"} for i in range(2)]
    with pytest.raises(ConfigurationError, match=r"NoSuchBucket from S3 \(s3://nb\)"):
        asyncio.run(poll_async(AsyncInferenceTracker(invocations), Missing()))
