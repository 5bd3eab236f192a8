"""Fault injection, capacity, variants and the stats of the control API, through boto3."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.support.local_control import wait_for_stats

BODY = b"1,2,3\n4,5,6\n"


def _invoke(client: Any, name: str, **kwargs: Any) -> dict[str, Any]:
    response = client.invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv", **kwargs)
    response["Body"] = response["Body"].read()
    return response


def test_latency(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum", faults={"latency_ms": 150, "latency_jitter_ms": 50, "seed": 1})
    started = time.perf_counter()
    assert _invoke(runtime_client, name)["Body"] == b"6.0\n15.0\n"
    elapsed = time.perf_counter() - started
    assert 0.15 <= elapsed < 30  # the bound only catches a unit mistake (150 s), never a slow machine


def _invoke_held(
    client: Any, url: str, name: str, patch_faults: Any, *, requests: int, inside: int
) -> tuple[list[bytes], float]:
    """Send ``requests`` at once to an endpoint created with ``hold_after_requests=0``; once all arrived and
    ``inside`` are in the model, release them. Returns the bodies and the seconds from the release to the
    last answer."""
    with ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(_invoke, client, name) for _ in range(requests)]
        try:
            wait_for_stats(url, name, lambda s: s["requests"] == requests and s["concurrent"] == inside)
        finally:
            released = time.perf_counter()
            patch_faults(name, {"hold_after_requests": None})
        bodies = [future.result()["Body"] for future in futures]
    return bodies, time.perf_counter() - released


def test_capacity_queues_requests(
    local_stack: Any, runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any
) -> None:
    # Held until all 8 arrived: 2 in the model, 6 waiting for a slot.
    name = make_endpoint("sum", faults={"capacity": 2, "latency_ms": 100, "hold_after_requests": 0})
    url = local_stack.runtime_endpoint_url
    bodies, elapsed = _invoke_held(runtime_client, url, name, patch_faults, requests=8, inside=2)
    assert bodies == [b"6.0\n15.0\n"] * 8
    stats = endpoint_stats(name)
    assert stats["max_concurrent"] == 2
    assert stats["invocations_ok"] == 8 and stats["rows_ok"] == 16
    assert elapsed >= 0.4  # 8 requests, 2 at a time, 100 ms each
    assert stats["busy_seconds"] >= 0.4


def test_unbounded_capacity_serves_concurrently(
    local_stack: Any, runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any
) -> None:
    # Held until all 6 are in the model at once (the wait fails if the endpoint served fewer together).
    name = make_endpoint("sum", faults={"hold_after_requests": 0})
    bodies, _ = _invoke_held(runtime_client, local_stack.runtime_endpoint_url, name, patch_faults, requests=6, inside=6)
    assert bodies == [b"6.0\n15.0\n"] * 6
    assert endpoint_stats(name)["max_concurrent"] == 6


def test_seeded_rates_are_reproducible(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    def outcomes() -> list[str]:
        name = make_endpoint("sum", faults={"throttle_rate": 0.5, "seed": 42})
        codes = []
        for _ in range(30):
            try:
                _invoke(runtime_client, name)
                codes.append("ok")
            except ClientError as err:
                codes.append(err.response["Error"]["Code"])
        stats = endpoint_stats(name)
        assert stats["throttled"] == codes.count("ThrottlingException")
        assert stats["invocations_ok"] == codes.count("ok")
        assert stats["requests"] == 30
        return codes

    first = outcomes()
    assert 5 < first.count("ThrottlingException") < 25
    assert outcomes() == first


def test_reset_closes_the_connection(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", faults={"reset_rate": 1.0})
    with pytest.raises((ConnectionClosedError, ConnectionError)):
        _invoke(runtime_client, name)
    stats = endpoint_stats(name)
    assert (stats["resets"], stats["invocations_ok"]) == (1, 0)


def test_stall_triggers_read_timeout(local_stack: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", faults={"stall_rate": 1.0, "stall_seconds": 1.5})
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=local_stack.runtime_endpoint_url,
        region_name="us-east-1",
        config=Config(read_timeout=0.5, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ReadTimeoutError):
        _invoke(client, name)
    assert endpoint_stats(name)["stalls"] == 1


def test_poison_rows_are_counted(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", faults={"poison_value": 13})
    body = b"1,2\n13,0\n5,13\n7,7\n"
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv")
    response = info.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["OriginalStatusCode"] == 400
    assert response["OriginalMessage"].startswith("2 of 4 rows")
    clean = runtime_client.invoke_endpoint(EndpointName=name, Body=b"1,2\n7,7\n", ContentType="text/csv")
    assert clean["Body"].read() == b"3.0\n14.0\n"
    stats = endpoint_stats(name)
    assert (stats["model_errors"], stats["invocations_ok"], stats["rows_ok"]) == (1, 1, 2)


def test_patch_faults_and_reset_stats(
    runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any, local_stack: Any
) -> None:
    from tests.support import local_control

    name = make_endpoint("sum")
    _invoke(runtime_client, name)
    faults = patch_faults(name, {"throttle_rate": 1.0})
    assert faults["throttle_rate"] == 1.0 and faults["latency_ms"] == 0.0
    with pytest.raises(ClientError):
        _invoke(runtime_client, name)
    patch_faults(name, {"throttle_rate": 0.0})
    _invoke(runtime_client, name)
    stats = endpoint_stats(name)
    assert (stats["requests"], stats["invocations_ok"], stats["throttled"]) == (3, 2, 1)
    reset = local_control.reset_stats(local_stack.runtime_endpoint_url, name)
    assert reset["requests"] == 0
    assert endpoint_stats(name)["invocations_ok"] == 0
    with pytest.raises(local_control.ControlError, match="unknown fault"):
        patch_faults(name, {"no_such_fault": 1})


def test_hold_after_requests_counts_and_releases(
    local_stack: Any, runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any
) -> None:
    from tests.support import local_control

    url = local_stack.runtime_endpoint_url
    name = make_endpoint("sum", faults={"hold_after_requests": 2})
    assert [_invoke(runtime_client, name)["Body"] for _ in range(2)] == [b"6.0\n15.0\n"] * 2
    with ThreadPoolExecutor(2) as pool:
        third, fourth = (pool.submit(_invoke, runtime_client, name) for _ in range(2))
        try:
            held = wait_for_stats(url, name, lambda s: s["concurrent"] == 2)  # both wait in the model
            assert (held["requests"], held["invocations_ok"]) == (4, 2) and not third.done()
            patch_faults(name, {"hold_after_requests": 3})  # one more may go on
            wait_for_stats(url, name, lambda s: s["invocations_ok"] == 3)
            assert endpoint_stats(name)["concurrent"] == 1
        finally:
            patch_faults(name, {"hold_after_requests": None})
        assert third.result()["Body"] == fourth.result()["Body"] == b"6.0\n15.0\n"
    assert endpoint_stats(name)["invocations_ok"] == 4
    for bad in (-1, True, "2"):
        with pytest.raises(local_control.ControlError, match="hold_after_requests"):
            patch_faults(name, {"hold_after_requests": bad})


def test_variants_and_recorded_headers(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", variants={"Blue": 1.0, "Green": 1.0}, faults={"seed": 3})
    seen = {_invoke(runtime_client, name)["InvokedProductionVariant"] for _ in range(20)}
    assert seen == {"Blue", "Green"}
    response = _invoke(
        runtime_client,
        name,
        Accept="application/json",
        TargetVariant="Green",
        TargetModel="model-a.tar.gz",
        TargetContainerHostname="c1",
        InferenceId="inf-1",
        EnableExplanations="`true`",
        InferenceComponentName="ic-1",
        CustomAttributes="secret-sentinel-123",
    )
    assert response["InvokedProductionVariant"] == "Green"
    assert response["CustomAttributes"] == "secret-sentinel-123"
    assert response["ContentType"] == "application/json"
    headers = endpoint_stats(name)["last_request_headers"]
    assert headers == {
        "Content-Type": "text/csv",
        "Accept": "application/json",
        "X-Amzn-SageMaker-Target-Model": "model-a.tar.gz",
        "X-Amzn-SageMaker-Target-Variant": "Green",
        "X-Amzn-SageMaker-Target-Container-Hostname": "c1",
        "X-Amzn-SageMaker-Inference-Id": "inf-1",
        "X-Amzn-SageMaker-Enable-Explanations": "`true`",
        "X-Amzn-SageMaker-Inference-Component": "ic-1",
    }
    assert "secret-sentinel-123" not in str(endpoint_stats(name))


def test_stats_count_requests_and_rows_per_variant(
    runtime_client: Any, make_endpoint: Any, endpoint_stats: Any
) -> None:
    name = make_endpoint("sum", variants={"Blue": 1.0, "Green": {"weight": 1.0, "poison_value": 13}})
    for _ in range(3):
        _invoke(runtime_client, name, TargetVariant="Blue")
    _invoke(runtime_client, name, TargetVariant="Green")
    with pytest.raises(ClientError):  # the Green variant's model rejects a row holding 13
        runtime_client.invoke_endpoint(
            EndpointName=name, Body=b"13,1,1\n", ContentType="text/csv", TargetVariant="Green"
        )
    stats = endpoint_stats(name)
    assert stats["by_variant"] == {"Blue": {"requests": 3, "rows_ok": 6}, "Green": {"requests": 2, "rows_ok": 2}}
    assert stats["requests"] == 5 and stats["rows_ok"] == 8


def test_many_concurrent_connections(
    local_stack: Any, make_endpoint: Any, endpoint_stats: Any, patch_faults: Any
) -> None:
    # Held until the 80 clients' requests are all in the model at once, however loaded the machine is.
    name = make_endpoint("sum", faults={"hold_after_requests": 0})
    url = local_stack.runtime_endpoint_url
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=80, read_timeout=300),
    )
    bodies, _ = _invoke_held(client, url, name, patch_faults, requests=80, inside=80)
    assert bodies == [b"6.0\n15.0\n"] * 80
    stats = endpoint_stats(name)
    assert stats["invocations_ok"] == 80
    assert stats["max_concurrent"] == 80
