"""InvokeEndpointWithResponseStream: event-stream framing parsed by botocore."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EventStreamError

BODY = b"1,2\n3,4\n5,6\n7,8\n"


def test_stream_yields_payload_parts(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any) -> None:
    name = make_endpoint("sum", stream_parts=3, variants={"Only": 1.0})
    response = runtime_client.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=BODY, ContentType="text/csv", Accept="application/jsonlines", CustomAttributes="c=1"
    )
    assert response["ContentType"] == "application/jsonlines"
    assert response["InvokedProductionVariant"] == "Only"
    assert response["CustomAttributes"] == "c=1"
    events = list(response["Body"])
    assert len(events) == 3
    assert all(set(event) == {"PayloadPart"} for event in events)
    assert b"".join(event["PayloadPart"]["Bytes"] for event in events) == b"3.0\n7.0\n11.0\n15.0\n"
    stats = endpoint_stats(name)
    assert (stats["invocations_ok"], stats["rows_ok"]) == (1, 4)


@pytest.mark.parametrize("error_type", ["ModelStreamError", "InternalStreamFailure"])
def test_stream_error_mid_stream(runtime_client: Any, make_endpoint: Any, endpoint_stats: Any, error_type: str) -> None:
    name = make_endpoint("sum", faults={"stream_error_after_parts": 2, "stream_error_type": error_type})
    response = runtime_client.invoke_endpoint_with_response_stream(EndpointName=name, Body=BODY, ContentType="text/csv")
    parts = []
    with pytest.raises(EventStreamError) as info:
        for event in response["Body"]:
            parts.append(event["PayloadPart"]["Bytes"])
    assert len(parts) == 2
    assert info.value.response["Error"]["Code"] == error_type
    assert info.value.response["Error"]["Message"]
    stats = endpoint_stats(name)
    assert (stats["stream_errors"], stats["invocations_ok"]) == (1, 0)


def test_stream_model_error_before_streaming(runtime_client: Any, make_endpoint: Any) -> None:
    from botocore.exceptions import ClientError

    name = make_endpoint("diabetes")
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint_with_response_stream(EndpointName=name, Body=b"1,2\n", ContentType="text/csv")
    assert info.value.response["Error"]["Code"] == "ModelError"
    assert info.value.response["OriginalStatusCode"] == 400
