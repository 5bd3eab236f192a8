"""Every error the local endpoint returns arrives through boto3 as the right ClientError."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError


def _invoke_error(runtime_client: Any, name: str, body: bytes = b"1,2,3\n", **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv", **kwargs)
    return info.value


def test_unknown_endpoint_is_validation_error(runtime_client: Any) -> None:
    err = _invoke_error(runtime_client, "no-such-endpoint")
    assert err.response["Error"]["Code"] == "ValidationError"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.response["Error"]["Message"] == "Endpoint no-such-endpoint of account 123456789012 not found."


@pytest.mark.parametrize(
    ("spec", "size", "limit"),
    [({}, 6_291_457, 6_291_456), ({"serverless": True}, 4_000_001, 4_000_000), ({"max_payload_bytes": 100}, 101, 100)],
)
def test_payload_over_limit_is_validation_error(
    runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, spec: dict[str, Any], size: int, limit: int
) -> None:
    name = make_endpoint("sum", **spec)
    err = _invoke_error(runtime_client, name, body=b"1" * size)
    assert err.response["Error"]["Code"] == "ValidationError"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert str(limit) in err.response["Error"]["Message"]
    # exactly at the limit is accepted (the connection is still usable after the drained oversized body)
    body = b"[[1, 2]]" + b" " * (limit - 8)  # JSON allows whitespace: one row, exactly at the limit
    assert len(body) == limit
    ok = runtime_client.invoke_endpoint(EndpointName=name, Body=body, ContentType="application/json")
    assert ok["Body"].read() == b'{"predictions":[3.0]}'
    stats = endpoint_stats(name)
    assert stats["validation_errors"] == 1
    assert stats["invocations_ok"] == 1


def test_model_error_fields_are_top_level(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("diabetes")
    err = _invoke_error(runtime_client, name, body=b"1,2,3\n")
    response = err.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "expected 10 features" in response["OriginalMessage"] and "got 3" in response["OriginalMessage"]
    assert response["LogStreamArn"] == f"arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/{name}"
    assert "Received client error (400)" in response["Error"]["Message"]
    assert endpoint_stats(name)["model_errors"] == 1


def test_throttling_is_400_with_null_message(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", faults={"throttle_rate": 1.0})
    err = _invoke_error(runtime_client, name)
    assert err.response["Error"]["Code"] == "ThrottlingException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.response["Error"]["Message"] is None
    stats = endpoint_stats(name)
    assert (stats["throttled"], stats["invocations_ok"], stats["requests"]) == (1, 0, 1)


@pytest.mark.parametrize(
    ("code", "status"),
    [("ServiceUnavailable", 503), ("InternalFailure", 500), ("InternalDependencyException", 530)],
)
def test_5xx_faults(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, code: str, status: int) -> None:
    name = make_endpoint("sum", faults={"error_5xx_rate": 1.0, "error_5xx_code": code})
    err = _invoke_error(runtime_client, name)
    assert err.response["Error"]["Code"] == code
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err.response["Error"]["Message"]
    assert endpoint_stats(name)["errors_5xx"] == 1


def test_model_not_ready_then_ready(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", faults={"model_not_ready_requests": 2})
    for _ in range(2):
        err = _invoke_error(runtime_client, name)
        assert err.response["Error"]["Code"] == "ModelNotReadyException"
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    ok = runtime_client.invoke_endpoint(EndpointName=name, Body=b"1,2,3\n", ContentType="text/csv")
    assert ok["Body"].read() == b"6.0\n"
    stats = endpoint_stats(name)
    assert (stats["not_ready"], stats["invocations_ok"]) == (2, 1)


def test_model_not_ready_for_a_time_window(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum", faults={"model_not_ready_seconds": 600})
    err = _invoke_error(runtime_client, name)
    assert err.response["Error"]["Code"] == "ModelNotReadyException"


def test_unsupported_content_type_is_model_error_415(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint(EndpointName=name, Body=b"x", ContentType="image/png")
    assert info.value.response["Error"]["Code"] == "ModelError"
    assert info.value.response["OriginalStatusCode"] == 415
