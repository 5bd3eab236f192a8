"""SageMaker Runtime request limits, parameter validation and result types.

Airflow-free and boto3-free: shared by the hook (which validates before every request) and by the
scoring core (which plans requests under the same limits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_provider_smrt.exceptions import ParameterValidationError

#: InvokeEndpoint body limit of a real-time endpoint (6 MiB).
MAX_PAYLOAD_BYTES = 6_291_456
#: InvokeEndpoint body limit of a serverless endpoint (4 MB).
MAX_SERVERLESS_PAYLOAD_BYTES = 4_000_000
#: InvokeEndpointAsync inline body limit.
MAX_ASYNC_INLINE_BODY_BYTES = 128_000
MAX_CUSTOM_ATTRIBUTES_CHARS = 1024
MAX_INPUT_LOCATION_CHARS = 1024
REQUEST_TTL_RANGE = (60, 21_600)
INVOCATION_TIMEOUT_RANGE = (1, 3_600)
#: AWS: the model must answer within 60 s; reads wait a little longer than that by default.
DEFAULT_READ_TIMEOUT_SECONDS = 70

_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_VISIBLE_ASCII = re.compile(r"^[\x20-\x7e]*$")
#: InferenceId (the service's ``\A\S[\p{Print}]*\z``, at most 64): a visible first character, then printable ASCII.
MAX_INFERENCE_ID_CHARS = 64
_INFERENCE_ID = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,63}$")
#: InvokeEndpointAsync's Filename (botocore's service model: 1-32 characters, at most one dot).
MAX_FILENAME_CHARS = 32
_FILENAME = re.compile(r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9\-_.]*$")
_S3_OUTPUT_PATH_EXTENSION = re.compile(r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]{1,512}$")


@dataclass(frozen=True)
class InvokeEndpointResult:
    """The response of InvokeEndpoint. ``body`` and ``custom_attributes`` are sensitive: never log them."""

    body: bytes
    content_type: str | None = None
    invoked_production_variant: str | None = None
    custom_attributes: str | None = None
    new_session_id: str | None = None
    closed_session_id: str | None = None

    def __repr__(self) -> str:  # keep payloads out of logs and tracebacks
        return (
            f"InvokeEndpointResult(body=<{len(self.body)} bytes>, content_type={self.content_type!r}, "
            f"invoked_production_variant={self.invoked_production_variant!r})"
        )


@dataclass(frozen=True)
class InvokeEndpointAsyncResult:
    """The response of InvokeEndpointAsync."""

    inference_id: str
    output_location: str
    failure_location: str | None = None


def validate_endpoint_name(endpoint_name: str) -> None:
    """Check an endpoint name against the service pattern (1-63 characters, letters, digits, hyphens)."""
    if not isinstance(endpoint_name, str) or not endpoint_name:
        raise ParameterValidationError("endpoint_name is required: pass the name of a SageMaker endpoint")
    if len(endpoint_name) > 63 or not _ENDPOINT_NAME.match(endpoint_name):
        raise ParameterValidationError(
            f"endpoint_name {endpoint_name!r} is not a valid SageMaker endpoint name: use 1-63 letters, digits "
            "and hyphens, starting and ending with a letter or digit"
        )


def validate_custom_attributes(custom_attributes: str | None) -> None:
    """CustomAttributes: at most 1024 visible ASCII characters. The value itself is never echoed."""
    if custom_attributes is None:
        return
    if not isinstance(custom_attributes, str):
        raise ParameterValidationError("custom_attributes must be a string")
    if len(custom_attributes) > MAX_CUSTOM_ATTRIBUTES_CHARS:
        raise ParameterValidationError(
            f"custom_attributes has {len(custom_attributes)} characters; the limit is "
            f"{MAX_CUSTOM_ATTRIBUTES_CHARS}: shorten it"
        )
    if not _VISIBLE_ASCII.match(custom_attributes):
        raise ParameterValidationError(
            "custom_attributes must be visible ASCII characters (0x20-0x7E) only: remove or encode the "
            "other characters (the value is not shown because it is sensitive)"
        )


def validate_body(body: bytes, *, limit: int = MAX_PAYLOAD_BYTES, what: str = "body") -> None:
    """Check a request body against a byte limit."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ParameterValidationError(f"{what} must be bytes, not {type(body).__name__}")
    if len(body) > limit:
        raise ParameterValidationError(
            f"{what} is {len(body):,} bytes; the limit is {limit:,}: split it into smaller requests, or use "
            "InvokeEndpointAsync with an S3 InputLocation for large payloads"
        )


def validate_range(name: str, value: int | None, bounds: tuple[int, int]) -> None:
    """Check an optional integer parameter against an inclusive range."""
    if value is None:
        return
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterValidationError(f"{name}={value!r} is out of range: use an integer from {low} to {high}")


def validate_inference_id(inference_id: str | None) -> None:
    """InferenceId: 1-64 printable ASCII characters, the first not a space."""
    if inference_id is not None and not _INFERENCE_ID.match(inference_id):
        raise ParameterValidationError(
            f"inference_id {inference_id!r} is invalid: use 1-64 printable ASCII characters, the first not a space"
        )


def validate_max_payload_bytes(max_payload_bytes: int, *, limit: int = MAX_PAYLOAD_BYTES) -> None:
    """A scoring request size limit: an integer number of bytes from 1 to ``limit``.

    The one check of ``max_payload_bytes`` (the scoring configuration and the request planner call it).

    :param limit: the largest body the service takes: InvokeEndpoint's, or more for InvokeEndpointAsync.
    """
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
        raise ParameterValidationError(
            f"max_payload_bytes must be an integer number of bytes, not {type(max_payload_bytes).__name__}"
        )
    if not 1 <= max_payload_bytes <= limit:
        raise ParameterValidationError(
            f"max_payload_bytes is {max_payload_bytes:,}; it must be between 1 and {limit:,} "
            + ("(the InvokeEndpoint body limit)" if limit == MAX_PAYLOAD_BYTES else "(the service limit)")
        )


def validate_filename(filename: str | None) -> None:
    """InvokeEndpointAsync's Filename: 1-32 letters, digits, ``-``, ``_`` and at most one dot."""
    if filename is None:
        return
    if len(filename) > MAX_FILENAME_CHARS or not _FILENAME.match(filename):
        raise ParameterValidationError(
            f"filename {filename!r} is not a valid InvokeEndpointAsync Filename: use 1-{MAX_FILENAME_CHARS} "
            "letters, digits, '-' and '_', starting with a letter or digit, with at most one '.'; the "
            "operator's '{output_id}' placeholder gives each request a unique 24-character name"
        )


def validate_s3_output_path_extension(extension: str | None) -> None:
    """InvokeEndpointAsync's S3OutputPathExtension: 1-512 characters of a key path, not a URI."""
    if extension is not None and not _S3_OUTPUT_PATH_EXTENSION.match(extension):
        raise ParameterValidationError(
            f"s3_output_path_extension {extension!r} is invalid: use a relative key path of 1-512 letters, "
            "digits and !_.*'()/- (not an s3:// or https:// URI)"
        )
