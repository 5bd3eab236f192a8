"""The local endpoint verifies SigV4 as the service does: unsigned, unknown, wrongly signed requests get 403."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError

from airflow_provider_smrt.local.endpoint import EndpointServer, verify_signatures_default
from tests.local.signing import signed_headers
from tests.support import local_control

BODY = b"1,2,3\n4,5,6\n"
_HTTP = urllib3.PoolManager()


def _client(local_stack: Any, **overrides: Any) -> Any:
    settings = {
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        **overrides,
    }
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=local_stack.runtime_endpoint_url,
        config=Config(retries={"total_max_attempts": 1}),
        **settings,
    )


def _error(client: Any, name: str) -> ClientError:
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv")
    return info.value


def _post(url: str, body: bytes, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
    return _HTTP.request("POST", url, body=body, headers=headers, retries=False)


def _error_type(response: urllib3.BaseHTTPResponse) -> str:
    return str(response.headers["x-amzn-ErrorType"]).split(":", 1)[0]


def test_unsigned_request_is_missing_authentication_token(
    local_stack: Any, make_endpoint: Any, endpoint_stats: Any
) -> None:
    name = make_endpoint("sum")
    url = f"{local_stack.runtime_endpoint_url}/endpoints/{name}/invocations"
    response = _post(url, BODY, {"Content-Type": "text/csv"})
    assert response.status == 403
    assert _error_type(response) == "MissingAuthenticationTokenException"
    assert json.loads(response.data) == {"message": "Missing Authentication Token"}
    assert endpoint_stats(name)["requests"] == 0  # rejected before the endpoint


def test_unknown_access_key_is_unrecognized_client(local_stack: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    err = _error(_client(local_stack, aws_access_key_id="AKIAUNKNOWNKEY000001"), name)
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.response["Error"]["Code"] == "UnrecognizedClientException"
    assert err.response["Error"]["Message"] == "The security token included in the request is invalid."


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aws_secret_access_key": "not-the-secret"}, "The request signature we calculated does not match"),
        ({"region_name": "eu-west-1"}, "Credential should be scoped to a valid region."),
    ],
    ids=["wrong-secret", "wrong-region"],
)
def test_wrong_secret_or_region_is_invalid_signature(
    local_stack: Any, make_endpoint: Any, endpoint_stats: Any, overrides: dict[str, str], message: str
) -> None:
    name = make_endpoint("sum")
    err = _error(_client(local_stack, **overrides), name)
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.response["Error"]["Code"] == "InvalidSignatureException"
    assert err.response["Error"]["Message"].startswith(message)
    assert endpoint_stats(name)["requests"] == 0
    # the same client with the stack's own settings is accepted
    ok = _client(local_stack).invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv")
    assert ok["Body"].read() == b"6.0\n15.0\n"


def test_signing_name_and_body_are_part_of_the_signature(local_stack: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    url = f"{local_stack.runtime_endpoint_url}/endpoints/{name}/invocations"
    right = _post(url, BODY, signed_headers(url, BODY))
    assert right.status == 200 and right.data == b"6.0\n15.0\n"  # the hand-signed request is right
    other_service = _post(url, BODY, signed_headers(url, BODY, service="execute-api"))
    assert other_service.status == 403
    assert _error_type(other_service) == "InvalidSignatureException"
    assert json.loads(other_service.data)["message"] == "Credential should be scoped to correct service: 'sagemaker'."
    tampered = _post(url, b"7,8,9\n", signed_headers(url, BODY))  # signed for another body
    assert tampered.status == 403
    assert _error_type(tampered) == "InvalidSignatureException"
    assert json.loads(tampered.data)["message"].startswith("The request signature we calculated does not match")
    changed_header = signed_headers(url, BODY, headers={"X-Amzn-SageMaker-Target-Model": "a.tar.gz"})
    changed_header["X-Amzn-SageMaker-Target-Model"] = "b.tar.gz"  # a signed header altered on the way
    assert _post(url, BODY, changed_header).status == 403


def test_registered_key_pair_is_accepted(local_stack: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    key, secret = "AKIAREGISTERED000001", "registered/secret/key/0000000000000000000"
    client = _client(local_stack, aws_access_key_id=key, aws_secret_access_key=secret)
    assert _error(client, name).response["Error"]["Code"] == "UnrecognizedClientException"
    local_control.control_request(
        local_stack.runtime_endpoint_url, "PUT", "credentials", {"access_key_id": key, "secret_access_key": secret}
    )
    assert client.invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv")["Body"].read()
    listed = local_control.control_request(local_stack.runtime_endpoint_url, "GET", "credentials")
    assert listed["verify_signatures"] is True
    assert key in listed["access_key_ids"] and secret not in json.dumps(listed)
    wrong = _client(local_stack, aws_access_key_id=key, aws_secret_access_key="other")
    assert _error(wrong, name).response["Error"]["Code"] == "InvalidSignatureException"
    # a registered key used as session credentials: the signature (over the token header too) is verified
    session = _client(local_stack, aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token="tok")
    assert session.invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv")["Body"].read()
    wrong_session = _client(local_stack, aws_access_key_id=key, aws_secret_access_key="other", aws_session_token="t")
    assert _error(wrong_session, name).response["Error"]["Code"] == "InvalidSignatureException"


def test_session_credentials_of_another_sts_have_their_scope_checked(local_stack: Any, make_endpoint: Any) -> None:
    """Temporary keys the stack did not issue (assume-role through moto's STS): the secret cannot be known,
    everything else is checked (docs/local-stack.md, Authentication)."""
    name = make_endpoint("sum")
    session = {"aws_access_key_id": "ASIATEMPORARY0000001", "aws_secret_access_key": "s", "aws_session_token": "t"}
    ok = _client(local_stack, **session).invoke_endpoint(EndpointName=name, Body=BODY, ContentType="text/csv")
    assert ok["Body"].read() == b"6.0\n15.0\n"
    err = _error(_client(local_stack, region_name="eu-west-1", **session), name)
    assert err.response["Error"]["Code"] == "InvalidSignatureException"
    url = f"{local_stack.runtime_endpoint_url}/endpoints/{name}/invocations"
    headers = signed_headers(url, BODY, key="ASIATEMPORARY0000001", secret="s", token="t", service="s3")
    assert _error_type(_post(url, BODY, headers)) == "InvalidSignatureException"


def test_control_api_needs_no_signature(local_stack: Any) -> None:
    response = _HTTP.request("GET", f"{local_stack.runtime_endpoint_url}/_local/health", retries=False)
    assert response.status == 200 and json.loads(response.data)["verify_signatures"] is True


@pytest.fixture
def unverified_server() -> Iterator[EndpointServer]:
    server = EndpointServer(default_endpoints=False, verify_signatures=False)
    server.registry.put("plain", {"model": "sum"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_verification_can_be_switched_off(unverified_server: EndpointServer) -> None:
    response = _post(f"{unverified_server.url}/endpoints/plain/invocations", BODY, {"Content-Type": "text/csv"})
    assert response.status == 200 and response.data == b"6.0\n15.0\n"
    health = _HTTP.request("GET", urllib.parse.urljoin(unverified_server.url, "/_local/health"), retries=False)
    assert json.loads(health.data)["verify_signatures"] is False


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("0", False), ("off", False)])
def test_verification_default_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("SMRT_LOCAL_VERIFY_SIGNATURES", raising=False)
    else:
        monkeypatch.setenv("SMRT_LOCAL_VERIFY_SIGNATURES", value)
    assert verify_signatures_default() is expected


def test_cli_flag_switches_verification_off() -> None:
    from airflow_provider_smrt.local.__main__ import _parser

    assert _parser().parse_args(["up"]).verify_signatures is None  # the environment decides
    assert _parser().parse_args(["run", "--no-verify-signatures", "--", "true"]).verify_signatures is False
