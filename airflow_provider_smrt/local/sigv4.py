"""Server-side check of the SigV4 signature of a SageMaker Runtime request, with botocore's own signer.

The endpoint rebuilds the request (method, raw path and query, the headers named in ``SignedHeaders``,
the body) as a :class:`botocore.awsrequest.AWSRequest` and lets :class:`botocore.auth.SigV4Auth`
compute the canonical request, the string to sign and the signature for the secret it knows, with the
signing name ``sagemaker`` and the stack's region; the result is compared with the one sent. The
rejections are the service's: 403 with ``x-amzn-ErrorType`` ``MissingAuthenticationTokenException``,
``UnrecognizedClientException`` or ``InvalidSignatureException``.

Which keys are known, and what is checked for session credentials the stack did not issue, is described in
``docs/local-stack.md`` ("Authentication").
"""

from __future__ import annotations

import hmac
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from airflow_provider_smrt.local.wire import REGION, ServiceError

SIGNING_NAME = "sagemaker"
ALGORITHM = "AWS4-HMAC-SHA256"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


def _denied(code: str, message: str) -> ServiceError:
    return ServiceError(code, message)


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str


class _ChosenHeadersSigV4Auth(SigV4Auth):
    """botocore's SigV4 signer, canonicalising exactly the headers the client said it signed.

    botocore's own choice (every header but ``user-agent``, ``expect``...) is right for a client; a server
    must sign what the client listed in ``SignedHeaders``, whatever SDK sent it.
    """

    def __init__(self, credentials: Credentials, *, region_name: str, signed_headers: tuple[str, ...]) -> None:
        super().__init__(credentials, SIGNING_NAME, region_name)
        self._chosen = signed_headers

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self._chosen:
            for value in request.headers.get_all(name) or []:
                chosen[name] = value
        return chosen


class SignatureVerifier:
    """Checks the SigV4 ``Authorization`` of requests against the key pairs the stack knows.

    :param credentials: access key id → secret access key accepted from the start.
    :param region: the region requests must be signed for.
    :param enabled: ``False`` accepts every request (for users fronting a container of their own).
    """

    def __init__(self, *, credentials: Mapping[str, str], region: str = REGION, enabled: bool = True) -> None:
        self.region = region
        self.enabled = enabled
        self._secrets = dict(credentials)
        self._lock = threading.Lock()

    def register(self, access_key_id: str, secret_access_key: str) -> None:
        """Accept requests signed with this key pair from now on (session tokens are not checked)."""
        with self._lock:
            self._secrets[access_key_id] = secret_access_key

    def access_key_ids(self) -> list[str]:
        """The access key ids accepted (never the secrets)."""
        with self._lock:
            return sorted(self._secrets)

    def check_header(self, headers: Message) -> SignedRequest | None:
        """What can be decided before the body is read: raise the 403 for a missing or unknown key.

        Returns the parsed ``Authorization``, or ``None`` when verification is off.
        """
        if not self.enabled:
            return None
        authorization = headers.get("Authorization")
        if not authorization:
            raise _denied("MissingAuthenticationTokenException", "Missing Authentication Token")
        parsed = _parse(authorization)
        if parsed is None:
            raise _denied(
                "IncompleteSignatureException",
                f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters "
                f"of the {ALGORITHM} algorithm.",
            )
        with self._lock:
            known = parsed.access_key in self._secrets
        if not known and not headers.get("X-Amz-Security-Token"):
            raise _denied("UnrecognizedClientException", "The security token included in the request is invalid.")
        return parsed

    def verify(
        self, parsed: SignedRequest | None, *, method: str, raw_path: str, headers: Message, body: bytes
    ) -> None:
        """Raise the service's 403 unless the request is signed for this stack (a no-op when off)."""
        if parsed is None:
            return
        if parsed.service != SIGNING_NAME:
            raise _denied(
                "InvalidSignatureException", f"Credential should be scoped to correct service: '{SIGNING_NAME}'."
            )
        if parsed.region != self.region or parsed.terminator != "aws4_request":
            raise _denied("InvalidSignatureException", "Credential should be scoped to a valid region.")
        amz_date = headers.get("X-Amz-Date") or ""
        if "x-amz-date" not in parsed.signed_headers or not amz_date.startswith(parsed.date):
            raise _denied(
                "InvalidSignatureException",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{parsed.date}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        if "host" not in parsed.signed_headers:
            raise _denied("InvalidSignatureException", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
        token = headers.get("X-Amz-Security-Token")
        if token and "x-amz-security-token" not in parsed.signed_headers:
            raise _denied("InvalidSignatureException", _MISMATCH)
        with self._lock:
            secret = self._secrets.get(parsed.access_key)
        if secret is None:
            # Session credentials from an STS the stack does not share: the secret cannot be known here.
            return
        request = AWSRequest(method=method, url=f"http://{headers.get('Host') or 'localhost'}{raw_path}", data=body)
        for name in parsed.signed_headers:
            for value in headers.get_all(name) or []:
                request.headers[name] = _wire_text(value)  # a repeated header keeps all its values ("a,b")
        request.context["timestamp"] = amz_date
        signer = _ChosenHeadersSigV4Auth(
            Credentials(parsed.access_key, secret, token), region_name=self.region, signed_headers=parsed.signed_headers
        )
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, parsed.signature):
            raise _denied("InvalidSignatureException", _MISMATCH)


def _wire_text(value: str) -> str:
    """A header value as the client signed it: the server decodes header bytes as Latin-1, clients sign the
    UTF-8 text those bytes encode."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _parse(authorization: str) -> SignedRequest | None:
    match = _AUTHORIZATION.match(authorization.strip())
    if match is None:
        return None
    scope = match["credential"].split("/")
    if len(scope) != 5:
        return None
    access_key, date, region, service, terminator = scope
    return SignedRequest(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=tuple(match["signed"].lower().split(";")),
        signature=match["signature"],
    )
