"""InvokeEndpointAsync against the local endpoint and moto's S3 server."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _wait_for(s3_client: Any, uri: str, timeout: float = 15.0) -> bytes:
    bucket, key = _split(uri)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3_client.exceptions.NoSuchKey:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _exists(s3_client: Any, uri: str) -> bool:
    bucket, key = _split(uri)
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def _put(s3_client: Any, uri: str, body: bytes) -> None:
    bucket, key = _split(uri)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def test_async_writes_output(
    runtime_client: Any, s3_client: Any, make_endpoint: Any, s3_prefix: str, endpoint_stats: Any
) -> None:
    name = make_endpoint("sum", s3_output_path=f"{s3_prefix}out", s3_failure_path=f"{s3_prefix}fail")
    _put(s3_client, f"{s3_prefix}in.csv", b"1,2\n3,4\n")
    response = runtime_client.invoke_endpoint_async(
        EndpointName=name,
        InputLocation=f"{s3_prefix}in.csv",
        ContentType="text/csv",
        Accept="application/json",
        InferenceId="inf-42",
        S3OutputPathExtension="run-1",
        Filename="result.json",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["InferenceId"] == "inf-42"
    assert response["OutputLocation"] == f"{s3_prefix}out/run-1/result.json"
    assert response["FailureLocation"] == f"{s3_prefix}fail/run-1/inf-42-error.out"
    assert _wait_for(s3_client, response["OutputLocation"]) == b'{"predictions":[3.0,7.0]}'
    assert not _exists(s3_client, response["FailureLocation"])
    stats = endpoint_stats(name)
    assert (stats["async_submitted"], stats["async_succeeded"], stats["async_failed"]) == (1, 1, 0)


def test_async_default_locations_and_generated_id(runtime_client: Any, s3_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    response = runtime_client.invoke_endpoint_async(EndpointName=name, Body=b"5,6\n", ContentType="text/csv")
    inference_id = response["InferenceId"]
    assert len(inference_id) == 36
    assert response["OutputLocation"] == f"s3://smrt-local/async-output/{name}/{inference_id}.out"
    assert response["FailureLocation"] == f"s3://smrt-local/async-failures/{name}/{inference_id}-error.out"
    assert _wait_for(s3_client, response["OutputLocation"]) == b"11.0\n"


def test_async_failures_write_the_failure_object(
    runtime_client: Any, s3_client: Any, make_endpoint: Any, s3_prefix: str, endpoint_stats: Any
) -> None:
    name = make_endpoint("sum", faults={"fail_async_marker": "BOOM", "poison_value": -1})
    bad_inputs = {"marker": b"1,2\nBOOM\n", "poison": b"1,-1\n", "non-numeric": b"1,x\n"}
    responses = {}
    for label, body in bad_inputs.items():
        _put(s3_client, f"{s3_prefix}{label}.csv", body)
        responses[label] = runtime_client.invoke_endpoint_async(
            EndpointName=name, InputLocation=f"{s3_prefix}{label}.csv", ContentType="text/csv"
        )
    messages = {label: _wait_for(s3_client, r["FailureLocation"]).decode() for label, r in responses.items()}
    assert "failure marker" in messages["marker"]
    assert "1 of 1 rows contain the poison value -1" in messages["poison"]
    assert "not numeric" in messages["non-numeric"]
    assert not any(_exists(s3_client, r["OutputLocation"]) for r in responses.values())
    stats = endpoint_stats(name)
    assert (stats["async_submitted"], stats["async_failed"], stats["async_succeeded"]) == (3, 3, 0)


def test_async_ttl_and_timeout(
    runtime_client: Any, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any
) -> None:
    # Both held until released; then one worker: the first request holds it 1.2 s, longer than the second
    # one's (scaled) TTL of 60 * 0.01 s, however long the second took to arrive.
    name = make_endpoint(
        "sum",
        faults={"hold_after_requests": 0, "async_capacity": 1, "async_delay_seconds": 1.2, "async_limits_scale": 0.01},
    )
    first = runtime_client.invoke_endpoint_async(
        EndpointName=name, Body=b"1\n", ContentType="text/csv", InvocationTimeoutSeconds=300
    )
    second = runtime_client.invoke_endpoint_async(
        EndpointName=name, Body=b"2\n", ContentType="text/csv", RequestTTLSeconds=60
    )
    assert endpoint_stats(name)["async_submitted"] == 2
    assert not _exists(s3_client, first["OutputLocation"])  # held: nothing processed
    patch_faults(name, {"hold_after_requests": None})
    assert _wait_for(s3_client, first["OutputLocation"]) == b"1.0\n"
    assert "expired" in _wait_for(s3_client, second["FailureLocation"]).decode()
    # processing (1.2 s) longer than the InvocationTimeoutSeconds (100 * 0.01 = 1 s)
    third = runtime_client.invoke_endpoint_async(
        EndpointName=name, Body=b"3\n", ContentType="text/csv", InvocationTimeoutSeconds=100
    )
    assert "timed out" in _wait_for(s3_client, third["FailureLocation"]).decode()
    stats = endpoint_stats(name)
    assert (stats["async_succeeded"], stats["async_failed"]) == (1, 2)


def test_async_large_input(runtime_client: Any, s3_client: Any, make_endpoint: Any, s3_prefix: str) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-1000, 1000, size=(400_000, 4))
    body = "\n".join(",".join(map(str, row)) for row in values.tolist()).encode()
    assert len(body) > 6_291_456
    _put(s3_client, f"{s3_prefix}big.csv", body)
    name = make_endpoint("sum")
    response = runtime_client.invoke_endpoint_async(
        EndpointName=name, InputLocation=f"{s3_prefix}big.csv", ContentType="text/csv"
    )
    out = np.array(_wait_for(s3_client, response["OutputLocation"], timeout=60).split(), dtype=float)
    np.testing.assert_array_equal(out, values.sum(axis=1))


def test_async_validation(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    for kwargs in ({"Body": b"1" * 128_001}, {"Body": b"1\n", "InputLocation": "s3://smrt-local/x"}, {}):
        try:
            runtime_client.invoke_endpoint_async(EndpointName=name, ContentType="text/csv", **kwargs)
        except ClientError as err:
            assert err.response["Error"]["Code"] == "ValidationError"
            assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        else:
            raise AssertionError(f"accepted {sorted(kwargs)}")


class _BodyFailsInTransit:
    """A real S3 client whose first ``failures`` GetObject bodies fail their checksum when read."""

    def __init__(self, client: Any, failures: int) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.failures = failures
        self.reads = 0

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import FlexibleChecksumError

        response = self._client.get_object(**kwargs)
        self.reads += 1
        if self.reads <= self.failures:
            response["Body"].read()
            response["Body"] = _Raises(FlexibleChecksumError(error_msg="Expected checksum a did not match b"))
        return response


class _Raises:
    def __init__(self, err: Exception) -> None:
        self.err = err

    def read(self) -> bytes:
        raise self.err


def test_an_input_body_failing_in_transit_is_read_again_up_to_three_times(s3_client: Any, s3_prefix: str) -> None:
    from types import SimpleNamespace

    from botocore.exceptions import FlexibleChecksumError

    from airflow_provider_smrt.local.async_jobs import AsyncProcessor

    uri = s3_prefix + "payload.csv"
    _put(s3_client, uri, b"1,2,3\n")
    job: Any = SimpleNamespace(inline_body=None, input_location=uri)
    flaky = _BodyFailsInTransit(s3_client, failures=2)
    assert AsyncProcessor(s3_factory=lambda: flaky)._read_input(job) == b"1,2,3\n"
    assert flaky.reads == 3
    broken = _BodyFailsInTransit(s3_client, failures=3)
    with pytest.raises(FlexibleChecksumError):  # failing on every read, it fails the invocation
        AsyncProcessor(s3_factory=lambda: broken)._read_input(job)
    assert broken.reads == 3
