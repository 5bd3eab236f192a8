"""The one classifier of SageMaker Runtime (and S3) call errors: :func:`classify_error`.

It maps botocore ``ClientError`` codes, event-stream errors, credential errors and transport errors
to the :class:`~airflow_provider_smrt.exceptions.InvocationError` subclasses, so the retry policy,
the scoring pipeline and the operators decide on the class alone. It is the only place that knows
the service's error codes. botocore and aiohttp are imported lazily: the core imports this module
without them.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from airflow_provider_smrt.exceptions import (
    ConfigurationError,
    CredentialsError,
    InvocationError,
    ModelError,
    ModelInputError,
    ModelNotReadyError,
    ModelServerError,
    PayloadTooLargeError,
    RetryableStreamError,
    ServiceError,
    StreamError,
    ThrottlingError,
    TransportError,
)

_CREDENTIAL_CODES = frozenset(
    {
        "ExpiredTokenException",
        "ExpiredToken",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "AccessDenied",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)
_SERVICE_CODES = frozenset({"InternalFailure", "ServiceUnavailable", "InternalDependencyException"})

_FIX_BY_CLASS: dict[type[InvocationError], str] = {
    ThrottlingError: "lower `concurrency` or raise the endpoint's capacity; it was retried with backoff",
    ModelNotReadyError: "the model is still loading (e.g. a serverless endpoint warming up); it is retried",
    ServiceError: "a transient service failure; it is retried with backoff",
    TransportError: "check the network path to the endpoint and `read_timeout` (>= 70 s recommended)",
    ModelInputError: "the model rejected the input; check the content type, columns and the model's log stream",
    ModelServerError: "the model container failed; check the endpoint's CloudWatch log stream",
    ConfigurationError: "check the endpoint name, region and request parameters",
    PayloadTooLargeError: "send smaller requests (`max_payload_bytes`) or use the async operator",
    CredentialsError: "check the Airflow AWS connection's credentials, role and IAM policy",
    StreamError: "the model's response stream failed; check the endpoint's CloudWatch log stream",
    RetryableStreamError: "a transient stream failure; it is retried with backoff",
}


#: The same, for an S3 call (``classify_error(..., s3_uri=...)``).
_S3_FIX_BY_CLASS: dict[type[InvocationError], str] = {
    ThrottlingError: "S3 asked to slow down (SlowDown); it was retried with backoff: poll less often or spread "
    "the keys over more prefixes",
    ServiceError: "a transient S3 failure; it is retried with backoff",
    TransportError: "check the network path to S3 (the connection's endpoint URL, proxy and region)",
    ConfigurationError: "check the bucket name and its region (the connection's region_name) and the key",
    CredentialsError: "check that the connection's identity may s3:GetObject and s3:ListBucket there (IAM policy, "
    "bucket policy, KMS key)",
}


def _fix(cls: type[InvocationError], *, s3: bool = False) -> str:
    table = _S3_FIX_BY_CLASS if s3 else _FIX_BY_CLASS
    for klass in cls.__mro__:
        if klass in table:
            return table[klass]
    if s3:
        return "see the error code in the Amazon S3 API reference"
    return "see the error code in the SageMaker Runtime API reference"


_QUOTED_VALUE = re.compile(r"(?i)(value\s*)('[^']*'|\"[^\"]*\")")


def _redact(message: str) -> str:
    """Drop quoted values that AWS validation messages may echo (``Value 'x' at 'customAttributes'``)."""
    return _QUOTED_VALUE.sub(r"\1<redacted>", message)


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _class_for(code: str, http_status: int | None, message: str) -> type[InvocationError]:
    if code in _THROTTLING_CODES:
        return ThrottlingError
    if code == "ModelNotReadyException":
        return ModelNotReadyError
    if code in _SERVICE_CODES:
        return ServiceError
    if code in _CREDENTIAL_CODES:
        return CredentialsError
    if code == "ModelStreamError":
        return StreamError
    if code == "InternalStreamFailure":
        return RetryableStreamError
    if code in ("ValidationError", "ValidationException"):
        lowered = message.lower()
        about_size = any(word in lowered for word in ("length", "exceed", "too large", "size"))
        if about_size and any(word in lowered for word in ("body", "payload", "request entity")):
            return PayloadTooLargeError
        return ConfigurationError
    if http_status == 413:
        return PayloadTooLargeError
    if http_status is not None and http_status >= 500:
        return ServiceError
    if http_status == 429:
        return ThrottlingError
    return ConfigurationError


def classify_error(
    err: BaseException, *, endpoint_name: str | None = None, s3_uri: str | None = None
) -> InvocationError:
    """Map any error raised by a SageMaker Runtime (or S3) call to an :class:`InvocationError`.

    With ``s3_uri`` (the bucket or object called, e.g. ``s3://bucket``) the message names S3 and
    gives S3 fixes (bucket name and region, ``s3:GetObject``/``s3:ListBucket``, SlowDown).

    Handles botocore ``ClientError`` (every service error code), event-stream errors, botocore
    transport errors (connect/read timeouts, connection closed or reset), ``NoCredentialsError``
    and friends, and aiohttp/OS-level connection errors. Already-classified errors are returned
    unchanged. The caller raises the result ``from err``.
    """
    if isinstance(err, InvocationError):
        return err
    # Imported lazily: this module must import without boto3 for the pure core.
    from botocore import exceptions as bce

    s3 = s3_uri is not None
    if s3:
        where = f"S3 ({s3_uri})"
    else:
        where = f"endpoint {endpoint_name!r}" if endpoint_name else "SageMaker Runtime"

    def fix(cls: type[InvocationError]) -> str:
        return _fix(cls, s3=s3)

    if isinstance(err, bce.ClientError):
        response: dict[str, Any] = getattr(err, "response", {}) or {}
        error = response.get("Error", {}) or {}
        meta = response.get("ResponseMetadata", {}) or {}
        code = str(error.get("Code") or "Unknown")
        message = _redact(str(error.get("Message") or ""))
        http_status = _as_int(meta.get("HTTPStatusCode"))
        request_id = meta.get("RequestId")
        # The botocore error stays the cause of ours (tracebacks print it): keep payload text out of it.
        # A container's own message may quote the input, so a ModelError's is never shown.
        withheld = "the container's message is withheld (it may quote the payload)"
        shown_raw = withheld if code == "ModelError" else message
        err.args = (f"An error occurred ({code}) when calling the {err.operation_name} operation: {shown_raw}",)
        if code == "ModelError":
            original = _as_int(response.get("OriginalStatusCode") or error.get("OriginalStatusCode"))
            cls: type[ModelError] = (
                ModelServerError if original is None or original >= 500 or original == 429 else ModelInputError
            )
            original_message = response.get("OriginalMessage") or error.get("OriginalMessage")
            log_stream_arn = response.get("LogStreamArn") or error.get("LogStreamArn")
            headers = meta.get("HTTPHeaders") or {}
            variant = headers.get("x-amzn-invoked-production-variant") if isinstance(headers, dict) else None
            text = (
                f"ModelError from {where} (HTTP {http_status}, container status {original}): "
                f"{fix(cls)}"
                + (f"; log stream: {log_stream_arn}" if log_stream_arn else "")
                + (f"; request id {request_id}" if request_id else "")
            )
            return cls(
                text,
                code=code,
                endpoint_name=endpoint_name,
                http_status=http_status,
                request_id=request_id,
                original_status_code=original,
                original_message=original_message,
                log_stream_arn=log_stream_arn,
                invoked_production_variant=variant,
            )
        klass = _class_for(code, http_status, message)
        # Service messages for these codes never echo the body or CustomAttributes.
        shown = message.rstrip(". ") if message and message != "None" else "no message"
        text = (
            f"{code} from {where} (HTTP {http_status}): {shown}. {fix(klass)}"
            + (f" (request id {request_id})" if request_id else "")
        )
        return klass(text, code=code, endpoint_name=endpoint_name, http_status=http_status, request_id=request_id)

    if isinstance(err, bce.EventStreamError):  # pragma: no cover - subclass of ClientError above
        return classify_error(
            bce.ClientError(err.response, err.operation_name), endpoint_name=endpoint_name, s3_uri=s3_uri
        )

    if isinstance(err, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
        return CredentialsError(
            f"no usable AWS credentials for {where}: {type(err).__name__}. {fix(CredentialsError)}",
            code=type(err).__name__,
            endpoint_name=endpoint_name,
        )
    if isinstance(err, bce.ParamValidationError):
        return ConfigurationError(
            f"botocore rejected the request parameters for {where}: {err}. {fix(ConfigurationError)}",
            code="ParamValidationError",
            endpoint_name=endpoint_name,
        )
    if isinstance(err, bce.SSLError):
        return ConfigurationError(
            f"TLS failure calling {where}: check the connection's `verify` setting and CA bundle",
            code="SSLError",
            endpoint_name=endpoint_name,
        )
    transport_types: tuple[type[BaseException], ...] = (
        bce.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
        bce.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
        ConnectionError,
        TimeoutError,
    )
    try:  # aiohttp is present only with the async extra
        import aiohttp

        transport_types = (*transport_types, aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(err, transport_types):
        return TransportError(
            f"transport failure calling {where}: {type(err).__name__}. {fix(TransportError)}",
            code=type(err).__name__,
            endpoint_name=endpoint_name,
        )
    return InvocationError(
        f"unexpected {type(err).__name__} calling {where}", code=type(err).__name__, endpoint_name=endpoint_name
    )


def raise_classified(raw: BaseException, *, endpoint_name: str | None = None) -> NoReturn:
    """Raise ``raw`` classified (:func:`classify_error`), from ``raw``; an already classified error as it is.

    Call it in an ``except`` block around a SageMaker Runtime call.
    """
    err = classify_error(raw, endpoint_name=endpoint_name)
    if err is raw:
        raise raw
    raise err from raw
