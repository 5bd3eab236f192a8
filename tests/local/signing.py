"""Requests signed by hand with botocore's SigV4 signer, for what boto3 cannot send (chunked bodies, other
signing names, altered headers)."""

from __future__ import annotations

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def signed_headers(
    url: str,
    body: bytes,
    *,
    service: str = "sagemaker",
    region: str = "us-east-1",
    key: str = "testing",
    secret: str = "testing",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a POST of ``body`` to ``url`` signed by botocore's SigV4 signer."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "text/csv", **(headers or {})})
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(request)
    return dict(request.headers.items())
