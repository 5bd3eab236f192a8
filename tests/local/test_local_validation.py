"""What the service rejects, the local endpoint rejects: body size counted on the wire, the model's header
rules, unknown variants and sessions; and what issue 15's features need of it: stateful sessions, variants and
inference components with their own models, async-only and real-time-only endpoints."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.local.signing import signed_headers

BODY = b"1,2,3\n4,5,6\n"
MIB = 1 << 20


def _invoke(client: Any, name: str, body: bytes = BODY, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("ContentType", "text/csv")
    response = client.invoke_endpoint(EndpointName=name, Body=body, **kwargs)
    response["Body"] = response["Body"].read()
    return response


def _rejected(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400, response
    assert response["Error"]["Code"] == "ValidationError", response
    return response["Error"]


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    line = b"1,2\n"
    piece = line * (size // len(line))
    sent = 0
    while sent < total:
        chunk = piece[: total - sent]
        sent += len(chunk)
        yield chunk


def _post_chunked(runtime_url: str, name: str, total: int) -> tuple[int, bytes]:
    """POST a signed body of ``total`` bytes with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    body = b"".join(_chunks(total))
    url = f"{runtime_url}/endpoints/{name}/invocations"
    headers = signed_headers(url, body)
    headers["Transfer-Encoding"] = "chunked"
    parsed = urllib.parse.urlsplit(runtime_url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=60)
    try:
        conn.request(
            "POST", f"/endpoints/{name}/invocations", body=_chunks(total), headers=headers, encode_chunked=True
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_counted_and_rejected(
    local_stack: Any, make_endpoint: Any, endpoint_stats: Any
) -> None:
    name = make_endpoint("sum")
    status, data = _post_chunked(local_stack.runtime_endpoint_url, name, 8 * MIB)
    assert status == 400
    assert b"Request payload size 8388608 bytes exceeds the limit of 6291456 bytes." in data
    stats = endpoint_stats(name)
    assert stats["validation_errors"] == 1 and stats["invocations_ok"] == 0
    status, data = _post_chunked(local_stack.runtime_endpoint_url, name, 3 * MIB)  # signed, chunked, under: fine
    assert status == 200
    assert data.count(b"\n") == 3 * MIB // 4


@pytest.mark.parametrize(
    ("kwargs", "member", "constraint"),
    [
        ({"CustomAttributes": "a" * 1025}, "customAttributes", "length less than or equal to 1024"),
        ({"CustomAttributes": "caf\u00e9-SENTINEL"}, "customAttributes", "regular expression pattern"),
        ({"InferenceId": "i" * 65}, "inferenceId", "length less than or equal to 64"),
        ({"SessionId": "a b"}, "sessionId", "regular expression pattern"),
        ({"EnableExplanations": "x" * 65}, "enableExplanations", "length less than or equal to 64"),
        ({"TargetModel": "m" * 1025}, "targetModel", "length less than or equal to 1024"),
        ({"TargetVariant": "bad_variant"}, "targetVariant", "regular expression pattern"),
        ({"TargetVariant": "v" * 64}, "targetVariant", "length less than or equal to 63"),
        ({"TargetContainerHostname": "-host"}, "targetContainerHostname", "regular expression pattern"),
        ({"InferenceComponentName": "ic-"}, "inferenceComponentName", "regular expression pattern"),
        ({"InferenceComponentName": "c" * 64}, "inferenceComponentName", "length less than or equal to 63"),
    ],
)
def test_invoke_endpoint_header_rules(
    runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, kwargs: dict[str, str], member: str, constraint: str
) -> None:
    name = make_endpoint("sum")
    error = _rejected(runtime_client.invoke_endpoint, EndpointName=name, Body=BODY, ContentType="text/csv", **kwargs)
    assert error["Message"].startswith("1 validation error detected: ")
    assert f"at '{member}' failed to satisfy constraint: Member must" in error["Message"]
    assert constraint in error["Message"]
    if member == "customAttributes":
        assert "SENTINEL" not in error["Message"] and "aaaa" not in error["Message"]  # never echoed
    stats = endpoint_stats(name)
    assert stats["validation_errors"] == 1 and stats["invocations_ok"] == 0


def test_header_values_at_the_limits_are_accepted(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum", variants={"v" * 63: 1.0})
    response = _invoke(
        runtime_client,
        name,
        CustomAttributes="a" * 1024,
        InferenceId="i" * 64,
        EnableExplanations="x" * 64,
        TargetModel="m" * 1024,
        TargetVariant="v" * 63,
        TargetContainerHostname="h" * 63,
        InferenceComponentName="c" * 63,
    )
    assert response["Body"] == b"6.0\n15.0\n" and response["InvokedProductionVariant"] == "v" * 63


def test_several_broken_rules_are_listed_together(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    error = _rejected(
        runtime_client.invoke_endpoint,
        EndpointName=name,
        Body=BODY,
        ContentType="text/csv",
        InferenceId="i" * 65,
        TargetVariant="bad_variant",
    )
    assert error["Message"].startswith("2 validation errors detected: ")
    assert "'targetVariant'" in error["Message"] and "'inferenceId'" in error["Message"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"InputLocation": "http://127.0.0.1/in.csv"}, "at 'inputLocation' failed to satisfy constraint"),
        ({"InputLocation": "s3://smrt-local"}, "Member must name an object"),
        ({"InputLocation": "s3://smrt-local/"}, "Member must name an object"),
        ({"Filename": "two.dots.out"}, "at 'filename' failed to satisfy constraint"),
        ({"Filename": "f" * 33}, "length less than or equal to 32"),
        ({"S3OutputPathExtension": "s3:out"}, "at 's3OutputPathExtension' failed"),
        ({"S3OutputPathExtension": "a b"}, "at 's3OutputPathExtension' failed"),
        ({"RequestTTLSeconds": 21_601}, "value less than or equal to 21600"),
        ({"InvocationTimeoutSeconds": 3_601}, "value less than or equal to 3600"),
        ({"CustomAttributes": "a" * 1025}, "at 'customAttributes' failed"),
    ],
)
def test_invoke_endpoint_async_header_rules(
    runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, kwargs: dict[str, Any], message: str
) -> None:
    name = make_endpoint("sum")
    kwargs.setdefault("InputLocation", "s3://smrt-local/in/rows.csv")
    error = _rejected(runtime_client.invoke_endpoint_async, EndpointName=name, ContentType="text/csv", **kwargs)
    assert message in error["Message"]
    stats = endpoint_stats(name)
    assert stats["validation_errors"] == 1 and stats["async_submitted"] == 0


def test_async_ttl_under_the_minimum_is_rejected_by_the_endpoint(local_stack: Any, make_endpoint: Any) -> None:
    """botocore refuses a TTL under 60 itself; the endpoint also does, for clients that do not."""
    name = make_endpoint("sum")
    url = f"{local_stack.runtime_endpoint_url}/endpoints/{name}/async-invocations"
    headers = signed_headers(
        url,
        b"",
        headers={
            "X-Amzn-SageMaker-InputLocation": "s3://smrt-local/in.csv",
            "X-Amzn-SageMaker-RequestTTLSeconds": "59",
        },
    )
    parsed = urllib.parse.urlsplit(local_stack.runtime_endpoint_url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=30)
    try:
        conn.request("POST", f"/endpoints/{name}/async-invocations", body=b"", headers=headers)
        response = conn.getresponse()
        status, data = response.status, response.read()
    finally:
        conn.close()
    assert status == 400
    assert b"value greater than or equal to 60" in data


def test_unknown_target_variant_is_rejected(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", variants={"Blue": 1.0, "Green": 1.0})
    error = _rejected(
        runtime_client.invoke_endpoint, EndpointName=name, Body=BODY, ContentType="text/csv", TargetVariant="Red"
    )
    assert "Red" in error["Message"] and "Blue, Green" in error["Message"]
    assert endpoint_stats(name)["invocations_ok"] == 0
    assert _invoke(runtime_client, name, TargetVariant="Green")["InvokedProductionVariant"] == "Green"


def test_stateful_session_open_use_close(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum")
    opened = _invoke(runtime_client, name, SessionId="NEW_SESSION")
    assert opened["Body"] == b"6.0\n15.0\n"
    match = re.fullmatch(r"([0-9a-f]{32}); Expires=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", opened["NewSessionId"])
    assert match, opened["NewSessionId"]
    session = match.group(1)
    used = _invoke(runtime_client, name, SessionId=session)
    assert used["Body"] == b"6.0\n15.0\n" and "NewSessionId" not in used and "ClosedSessionId" not in used
    unknown = _rejected(
        runtime_client.invoke_endpoint, EndpointName=name, Body=BODY, ContentType="text/csv", SessionId="abc123"
    )
    assert "abc123" in unknown["Message"] and "NEW_SESSION" in unknown["Message"]
    closed = _invoke(
        runtime_client, name, body=b'{"requestType": "CLOSE"}', ContentType="application/json", SessionId=session
    )
    assert closed["ClosedSessionId"] == session
    after = _rejected(
        runtime_client.invoke_endpoint, EndpointName=name, Body=BODY, ContentType="text/csv", SessionId=session
    )
    assert session in after["Message"]
    stats = endpoint_stats(name)
    assert (stats["sessions_opened"], stats["sessions_closed"], stats["invocations_ok"]) == (1, 1, 2)


def test_response_stream_cannot_open_a_session(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    error = _rejected(
        runtime_client.invoke_endpoint_with_response_stream,
        EndpointName=name,
        Body=BODY,
        ContentType="text/csv",
        SessionId="NEW_SESSION",
    )
    assert "at 'sessionId' failed to satisfy constraint" in error["Message"]


def test_variants_with_their_own_models(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint(
        "sum",
        variants={"prod": {"weight": 1.0}, "shadow": {"weight": 0.0, "model": "sum", "outputs": ["max"]}},
    )
    assert _invoke(runtime_client, name, TargetVariant="prod")["Body"] == b"6.0\n15.0\n"
    assert _invoke(runtime_client, name, TargetVariant="shadow")["Body"] == b"3.0\n6.0\n"
    drawn = {_invoke(runtime_client, name)["InvokedProductionVariant"] for _ in range(10)}
    assert drawn == {"prod"}  # weight 0: only reached when targeted


def test_inference_components_with_their_own_models(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint(
        "sum", inference_components={"ic-sum": {"model": "sum"}, "ic-mean": {"model": "sum", "outputs": ["mean"]}}
    )
    assert _invoke(runtime_client, name, InferenceComponentName="ic-sum")["Body"] == b"6.0\n15.0\n"
    assert _invoke(runtime_client, name, InferenceComponentName="ic-mean")["Body"] == b"2.0\n5.0\n"
    missing = _rejected(runtime_client.invoke_endpoint, EndpointName=name, Body=BODY, ContentType="text/csv")
    assert "InferenceComponentName is required" in missing["Message"]
    unknown = _rejected(
        runtime_client.invoke_endpoint,
        EndpointName=name,
        Body=BODY,
        ContentType="text/csv",
        InferenceComponentName="ic-other",
    )
    assert "ic-other" in unknown["Message"]


def test_async_and_realtime_endpoints_side_by_side(runtime_client: Any, make_endpoint: Any, s3_client: Any) -> None:
    realtime = make_endpoint("sum", mode="realtime")
    asynchronous = make_endpoint("sum", mode="async")
    assert _invoke(runtime_client, realtime)["Body"] == b"6.0\n15.0\n"
    error = _rejected(runtime_client.invoke_endpoint, EndpointName=asynchronous, Body=BODY, ContentType="text/csv")
    assert "asynchronous endpoint" in error["Message"]
    s3_client.put_object(Bucket="smrt-local", Key=f"in/{asynchronous}.csv", Body=BODY)
    location = f"s3://smrt-local/in/{asynchronous}.csv"
    accepted = runtime_client.invoke_endpoint_async(
        EndpointName=asynchronous, InputLocation=location, ContentType="text/csv"
    )
    assert accepted["OutputLocation"].startswith(f"s3://smrt-local/async-output/{asynchronous}/")
    error = _rejected(
        runtime_client.invoke_endpoint_async, EndpointName=realtime, InputLocation=location, ContentType="text/csv"
    )
    assert "real-time endpoint" in error["Message"]
