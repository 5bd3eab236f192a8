"""SageMakerRuntimeHook through boto3 against the local endpoint and moto's S3 server."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from airflow_provider_smrt.classify import classify_error
from airflow_provider_smrt.exceptions import (
    ConfigurationError,
    CredentialsError,
    InvocationError,
    ModelInputError,
    ModelNotReadyError,
    ModelServerError,
    ParameterValidationError,
    PayloadTooLargeError,
    ServiceError,
    StreamError,
    ThrottlingError,
    TransportError,
)
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
from airflow_provider_smrt.invocation import MAX_PAYLOAD_BYTES
from airflow_provider_smrt.retry import NO_RETRY, RetryPolicy
from tests.support import local_control

FAST = RetryPolicy(max_attempts=30, base_delay=0.001, max_delay=0.02, throttle_base_delay=0.002, deadline=60)


@pytest.fixture
def hook(local_stack: Any) -> SageMakerRuntimeHook:
    return SageMakerRuntimeHook(aws_conn_id="aws_default", retry_policy=FAST, read_timeout=2)


def error_of(hook: SageMakerRuntimeHook, endpoint: str, body: bytes = b"1,2\n", **kwargs: Any) -> InvocationError:
    with pytest.raises(InvocationError) as info:
        hook.invoke_endpoint(endpoint, body, content_type="text/csv", retry_policy=NO_RETRY, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("faults", "cls", "code", "status"),
    [
        ({"throttle_rate": 1.0}, ThrottlingError, "ThrottlingException", 400),
        ({"error_5xx_rate": 1.0, "error_5xx_code": "ServiceUnavailable"}, ServiceError, "ServiceUnavailable", 503),
        ({"error_5xx_rate": 1.0, "error_5xx_code": "InternalFailure"}, ServiceError, "InternalFailure", 500),
        (
            {"error_5xx_rate": 1.0, "error_5xx_code": "InternalDependencyException"},
            ServiceError,
            "InternalDependencyException",
            530,
        ),
        ({"model_not_ready_seconds": 600}, ModelNotReadyError, "ModelNotReadyException", 429),
        ({"poison_value": 2}, ModelInputError, "ModelError", 424),
    ],
)
def test_each_service_error_gets_its_class(
    hook: SageMakerRuntimeHook, make_endpoint: Any, faults: dict, cls: type, code: str, status: int
) -> None:
    endpoint = make_endpoint("sum", faults=faults)
    err = error_of(hook, endpoint)
    assert type(err) is cls
    assert err.code == code and err.http_status == status
    assert err.retryable is (cls is not ModelInputError)
    assert err.endpoint_name == endpoint and endpoint in str(err)
    assert isinstance(err.__cause__, ClientError)  # raised from the botocore error
    if cls is ModelInputError:
        assert err.original_status_code == 400  # type: ignore[attr-defined]
        assert endpoint in err.log_stream_arn  # type: ignore[attr-defined]


def test_model_server_error_from_a_container_is_retryable(
    hook: SageMakerRuntimeHook, make_endpoint: Any, failing_container: str
) -> None:
    endpoint = make_endpoint("forward", model_url=failing_container)
    err = error_of(hook, endpoint)
    assert isinstance(err, ModelServerError) and err.retryable
    assert err.original_status_code == 500 and err.http_status == 424


def test_unknown_endpoint_and_oversized_body_are_configuration_errors(
    hook: SageMakerRuntimeHook, make_endpoint: Any
) -> None:
    err = error_of(hook, "no-such-endpoint")
    assert type(err) is ConfigurationError and not err.retryable and err.http_status == 400
    small = make_endpoint("sum", max_payload_bytes=1_000)
    err = error_of(hook, small, body=b"1,2\n" * 500)
    assert type(err) is PayloadTooLargeError and not err.retryable


def test_transport_failures_are_retryable(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any
) -> None:
    reset = make_endpoint("sum", faults={"reset_rate": 1.0})
    err = error_of(hook, reset)
    assert type(err) is TransportError and err.retryable
    # The stall outlasts the hook's read timeout (2 s here) by far: the answer never comes in time.
    stall = make_endpoint("sum", faults={"stall_rate": 1.0, "stall_seconds": 60})
    err = error_of(hook, stall)
    assert type(err) is TransportError and err.code == "ReadTimeoutError" and err.retryable
    assert endpoint_stats(stall)["stalls"] == 1  # one attempt: botocore did not retry under the hook


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("ExpiredTokenException", CredentialsError),
        ("UnrecognizedClientException", CredentialsError),
        ("AccessDeniedException", CredentialsError),
        ("ThrottlingException", ThrottlingError),
        ("ValidationError", ConfigurationError),
    ],
)
def test_classifier_on_raw_client_errors(code: str, cls: type) -> None:
    raw = ClientError({"Error": {"Code": code, "Message": None}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "X")
    err = classify_error(raw, endpoint_name="e")
    assert type(err) is cls and err.code == code and err.retryable is (cls is ThrottlingError)
    assert type(classify_error(NoCredentialsError(), endpoint_name="e")) is CredentialsError


def test_calls_succeed_under_40_percent_throttling(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any
) -> None:
    endpoint = make_endpoint("sum", faults={"throttle_rate": 0.4, "seed": 3})
    retries: list[str] = []
    results = [
        hook.invoke_endpoint(
            endpoint, f"{i},1\n".encode(), content_type="text/csv", on_retry=lambda e, a, d: retries.append(e.code)
        )
        for i in range(60)
    ]
    assert [float(r.body) for r in results] == [i + 1.0 for i in range(60)]
    stats = endpoint_stats(endpoint)
    assert stats["throttled"] == len(retries) > 10
    assert set(retries) == {"ThrottlingException"}
    assert stats["invocations_ok"] == 60


def test_botocore_retries_are_off_and_timeouts_set(local_stack: Any) -> None:
    hook = SageMakerRuntimeHook(aws_conn_id="aws_default", max_pool_connections=33)
    config = hook.conn.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert config.read_timeout == 70 and config.max_pool_connections == 33


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint_name": "bad_name!"}, "not a valid SageMaker endpoint name"),
        ({"endpoint_name": "x" * 64}, "not a valid SageMaker endpoint name"),
        ({"body": b"x" * (MAX_PAYLOAD_BYTES + 1)}, "6,291,456"),
        ({"custom_attributes": "é"}, "visible ASCII"),
        ({"custom_attributes": "a" * 1025}, "1025 characters"),
        ({"inference_id": "i" * 65}, "inference_id"),
    ],
)
def test_invoke_endpoint_validation_sends_nothing(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any, kwargs: dict, message: str
) -> None:
    endpoint = make_endpoint("sum")
    params = {"endpoint_name": endpoint, "body": b"1\n", **kwargs}
    with pytest.raises(ParameterValidationError, match=message):
        hook.invoke_endpoint(params.pop("endpoint_name"), params.pop("body"), **params)
    assert endpoint_stats(endpoint)["requests"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        # botocore's validator, run once on the parameters every call shares
        ({"content_type": 5}, ConfigurationError, "ContentType"),
        ({"enable_explanations": True}, ConfigurationError, "EnableExplanations"),
        # the hook's own checks
        ({"custom_attributes": "é"}, ParameterValidationError, "visible ASCII"),
        ({"inference_id": "i" * 65}, ParameterValidationError, "inference_id"),
        ({"ContentType": "text/csv"}, ParameterValidationError, "unexpected parameter"),
    ],
)
def test_make_invoker_checks_the_shared_parameters_once_and_sends_nothing(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any, kwargs: dict, error: type, message: str
) -> None:
    endpoint = make_endpoint("sum")
    with pytest.raises(error, match=message) as info:
        hook.make_invoker(endpoint, **kwargs)
    assert type(info.value) is error
    assert endpoint_stats(endpoint)["requests"] == 0


def test_make_invoker_still_checks_every_body(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any
) -> None:
    endpoint = make_endpoint("sum")
    invoke = hook.make_invoker(endpoint, content_type="text/csv", accept="text/csv", custom_attributes="trace=1")
    assert float(invoke(b"1,2\n").body) == 3.0
    headers = endpoint_stats(endpoint)["last_request_headers"]
    assert (headers["Content-Type"], headers["Accept"]) == ("text/csv", "text/csv")
    with pytest.raises(ParameterValidationError, match="6,291,456"):
        invoke(b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ParameterValidationError, match="must be bytes"):
        invoke("1,2\n")  # type: ignore[arg-type]
    assert endpoint_stats(endpoint)["requests"] == 1
    # Only the invoker's own client skips botocore's per-call validation; the hook's keeps it.
    with pytest.raises(ConfigurationError, match="ContentType"):
        hook.invoke_endpoint(endpoint, b"1,2\n", content_type=5)  # type: ignore[arg-type]
    assert endpoint_stats(endpoint)["requests"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of input_location"),
        ({"input_location": "s3://b/k", "body": b"1"}, "exactly one of input_location"),
        ({"input_location": "ftp://b/k"}, "s3:// or https://"),
        ({"body": b"x" * 128_001}, "128,000"),
        ({"input_location": "s3://b/k", "request_ttl_seconds": 59}, "request_ttl_seconds=59"),
        ({"input_location": "s3://b/k", "request_ttl_seconds": 21_601}, "from 60 to 21600"),
        ({"input_location": "s3://b/k", "invocation_timeout_seconds": 0}, "invocation_timeout_seconds=0"),
        ({"input_location": "s3://b/k", "invocation_timeout_seconds": 3_601}, "from 1 to 3600"),
    ],
)
def test_invoke_endpoint_async_validation_sends_nothing(
    hook: SageMakerRuntimeHook, make_endpoint: Any, endpoint_stats: Any, kwargs: dict, message: str
) -> None:
    endpoint = make_endpoint("sum")
    with pytest.raises(ParameterValidationError, match=message):
        hook.invoke_endpoint_async(endpoint, **kwargs)
    assert endpoint_stats(endpoint)["requests"] == 0


def test_failing_call_logs_no_body_custom_attributes_or_credentials(
    make_endpoint: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, local_stack: Any
) -> None:
    key_id, secret = "AKIASENTINELKEY00001", "sentinel/secret/value/0000000000000000000"
    conn = json.loads(local_stack.airflow_conn)
    conn["login"], conn["password"] = key_id, secret
    # the local endpoint verifies SigV4: it must know this key pair to let the request reach the model
    local_control.control_request(
        local_stack.runtime_endpoint_url, "PUT", "credentials", {"access_key_id": key_id, "secret_access_key": secret}
    )
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_AWS", json.dumps(conn))
    hook = SageMakerRuntimeHook(aws_conn_id="sentinel_aws", retry_policy=FAST)
    endpoint = make_endpoint("sum", faults={"poison_value": 424242})
    body_sentinel, attributes_sentinel = "424242", "trace-SENTINEL-ATTR-7f3a"
    caplog.set_level(logging.DEBUG, logger="airflow_provider_smrt")
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelInputError) as info:
        hook.invoke_endpoint(
            endpoint, f"{body_sentinel},1\n".encode(), content_type="text/csv", custom_attributes=attributes_sentinel
        )
    err = info.value
    rendered = "".join(traceback.format_exception(err)) + repr(err) + str(err) + caplog.text
    for sentinel in (body_sentinel, attributes_sentinel, key_id, secret):
        assert sentinel not in rendered


def test_response_stream_end_to_end(hook: SageMakerRuntimeHook, make_endpoint: Any) -> None:
    endpoint = make_endpoint("sum")
    body = b"".join(f"{i},{i}\n".encode() for i in range(200))
    whole = hook.invoke_endpoint(endpoint, body, content_type="text/csv").body
    parts = list(hook.invoke_endpoint_with_response_stream(endpoint, body, content_type="text/csv"))
    assert len(parts) > 1 and b"".join(parts) == whole

    broken = make_endpoint("sum", faults={"stream_error_after_parts": 1})
    stream = hook.invoke_endpoint_with_response_stream(broken, body, content_type="text/csv")
    first = next(stream)
    assert first and whole.startswith(first)
    with pytest.raises(StreamError) as info:
        list(stream)
    assert info.value.code == "ModelStreamError" and not info.value.retryable


def test_async_invocation_end_to_end(
    hook: SageMakerRuntimeHook, make_endpoint: Any, s3_client: Any, s3_prefix: str
) -> None:
    endpoint = make_endpoint("sum")
    bucket, key = s3_prefix[5:].split("/", 1)
    s3_client.put_object(Bucket=bucket, Key=key + "in.csv", Body=b"1,2\n3,4\n")
    result = hook.invoke_endpoint_async(endpoint, input_location=f"{s3_prefix}in.csv", content_type="text/csv")
    assert result.inference_id and result.output_location.startswith("s3://")
    out_bucket, out_key = result.output_location[5:].split("/", 1)
    deadline = time.monotonic() + 30
    while True:
        try:
            body = s3_client.get_object(Bucket=out_bucket, Key=out_key)["Body"].read()
            break
        except ClientError:
            assert time.monotonic() < deadline, "the async output never appeared"
            time.sleep(0.1)
    assert [float(x) for x in body.split()] == [3.0, 7.0]
