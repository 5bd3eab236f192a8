"""Wire-level pieces of SageMaker Runtime: service errors and AWS event-stream framing.

The shapes follow botocore's ``sagemaker-runtime`` 2017-05-13 model (protocol ``rest-json``):
an error is an HTTP status, an ``x-amzn-ErrorType`` header naming the code, and a JSON body with
``message`` plus the modeled members of the error shape (``OriginalStatusCode`` ... for ModelError).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.sagemaker/"

#: HTTP status of every error code the local endpoint can return.
ERROR_STATUS: dict[str, int] = {
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
    "ValidationError": 400,
    "ModelError": 424,
    "InternalDependencyException": 530,
    "ModelNotReadyException": 429,
    "ThrottlingException": 400,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
}
#: Codes raised by the service's authentication layer (their ``x-amzn-ErrorType`` names another namespace).
_AUTH_CODES = frozenset(
    {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
    }
)
_AUTH_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.coral.service/"
#: Codes allowed for the ``error_5xx_code`` fault.
FAULT_5XX_CODES = frozenset({"ServiceUnavailable", "InternalFailure", "InternalDependencyException"})


class ServiceError(Exception):
    """A SageMaker Runtime error response (status, ``x-amzn-ErrorType`` and JSON body).

    :param code: the error code, a key of :data:`ERROR_STATUS`.
    :param message: the ``message`` of the body; ``None`` is sent as JSON ``null``.
    :param fields: further modeled members of the error shape, placed at the top of the body.
    """

    def __init__(self, code: str, message: str | None, **fields: Any) -> None:
        super().__init__(message or code)
        self.code = code
        self.status = ERROR_STATUS[code]
        self.message = message
        self.fields = fields

    def headers(self) -> dict[str, str]:
        """The response headers of this error."""
        suffix = _AUTH_ERROR_TYPE_SUFFIX if self.code in _AUTH_CODES else _ERROR_TYPE_SUFFIX
        return {"x-amzn-ErrorType": self.code + suffix, "Content-Type": "application/json"}

    def body(self) -> bytes:
        """The JSON body of this error."""
        return orjson.dumps({"message": self.message, **self.fields})


def log_stream_arn(endpoint_name: str) -> str:
    """The CloudWatch log group ARN a ModelError points at."""
    return f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{endpoint_name}"


def model_error(*, endpoint_name: str, original_status: int, original_message: str) -> ServiceError:
    """A ModelError as SageMaker returns it when the model container answered with a 4xx/5xx."""
    kind = "client" if original_status < 500 else "server"
    arn = log_stream_arn(endpoint_name)
    message = (
        f'Received {kind} error ({original_status}) from primary with message "{original_message}". '
        f"See {arn} in account {ACCOUNT_ID} for more information."
    )
    return ServiceError(
        "ModelError",
        message,
        OriginalStatusCode=original_status,
        OriginalMessage=original_message,
        LogStreamArn=arn,
    )


def endpoint_not_found(endpoint_name: str) -> ServiceError:
    """The ValidationError for an unknown endpoint."""
    return ServiceError("ValidationError", f"Endpoint {endpoint_name} of account {ACCOUNT_ID} not found.")


def _encode_headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        out += struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    return bytes(out)


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC32), headers, payload, message CRC32."""
    raw_headers = _encode_headers(headers)
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data``."""
    headers = {":message-type": "event", ":event-type": "PayloadPart", ":content-type": "application/octet-stream"}
    return event_message(headers, data)


def stream_exception(exception_type: str, message: str, *, error_code: str | None = None) -> bytes:
    """A modeled exception event (``ModelStreamError`` or ``InternalStreamFailure``)."""
    body: dict[str, Any] = {"Message": message}
    if error_code is not None:
        body["ErrorCode"] = error_code
    headers = {":message-type": "exception", ":exception-type": exception_type, ":content-type": "application/json"}
    return event_message(headers, orjson.dumps(body))
