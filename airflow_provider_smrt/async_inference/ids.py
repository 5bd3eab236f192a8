"""What makes an async submission deterministic: the request, its InferenceId and its output's name.

1. **Deterministic inference id.** Each request's ``InferenceId`` is
   ``<task_id slug>-<sha256(dag_id, task_id, run_id, map_index, input)[:40]>`` (at most 64
   characters), where *input* is the InputLocation URI or ``inline:sha256:<hex>`` of the body. The
   same task instance always sends the same id for the same input.
2. **Deterministic output key.** ``Filename`` defaults to ``"{output_id}.out"`` (a digest of the
   inference id: the service allows 32 characters), so a request
   that *is* sent twice writes the same output key with the same content: a duplicate costs model
   time but never produces a second, divergent result.

The ledger (:mod:`~airflow_provider_smrt.async_inference.ledger`) records what was submitted. Airflow-free.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_smrt.async_inference.wait import Log
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import MAX_ASYNC_INLINE_BODY_BYTES, validate_invoke_endpoint_async_request

_SLUG = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True)
class AsyncRequest:
    """One InvokeEndpointAsync request to make: exactly one of an S3 ``input_location`` or an inline ``body``.

    :param input_location: an ``s3://`` (or ``https://``) URI of the payload.
    :param body: an inline payload of at most 128,000 bytes.
    """

    input_location: str | None = None
    body: bytes | None = None

    @property
    def identity(self) -> str:
        """What the request is keyed by: the URI, or ``inline:sha256:<hex>`` (never the body itself)."""
        if self.input_location is not None:
            return self.input_location
        return "inline:sha256:" + hashlib.sha256(self.body or b"").hexdigest()

    def __repr__(self) -> str:  # keep payloads out of logs and tracebacks
        if self.body is not None:
            return f"AsyncRequest(body=<{len(self.body)} bytes>)"
        return f"AsyncRequest(input_location={self.input_location!r})"


def deterministic_inference_id(
    *, dag_id: str, task_id: str, run_id: str, map_index: int, identity: str, prefix: str | None = None
) -> str:
    """The InferenceId of one request of one task instance: stable across tries, at most 64 characters."""
    digest = hashlib.sha256(json.dumps([dag_id, task_id, run_id, map_index, identity]).encode()).hexdigest()[:40]
    slug = _SLUG.sub("-", prefix if prefix is not None else task_id).strip("-")[:23] or "smrt"
    return f"{slug}-{digest}"


#: The default ``Filename`` of a request: ``{output_id}`` is a 24-character digest of its inference id,
#: so the name fits the service's 32-character limit and is the same on every try.
DEFAULT_FILENAME = "{output_id}.out"


def output_id(inference_id: str) -> str:
    """A 24-character name derived from an inference id (for ``Filename``, which allows 32 characters)."""
    return hashlib.sha256(inference_id.encode()).hexdigest()[:24]


def render_filename(template: str | None, inference_id: str) -> str | None:
    """The ``Filename`` of one request: ``{output_id}`` and ``{inference_id}`` replaced; None stays None."""
    if template is None:
        return None
    return template.replace("{output_id}", output_id(inference_id)).replace("{inference_id}", inference_id)


def is_per_request(template: str | None) -> bool:
    """Whether a ``Filename`` template names each request differently."""
    return template is not None and ("{output_id}" in template or "{inference_id}" in template)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def task_key(ti: Any) -> dict[str, Any]:
    """What identifies a task instance's submissions: ``dag_id``, ``task_id``, ``run_id``, ``map_index``."""
    map_index = getattr(ti, "map_index", None)
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "map_index": map_index if map_index is not None else -1,
    }


def requests_from(
    input_location: str | Sequence[str] | None, body: str | bytes | None, *, log: Log
) -> list[AsyncRequest]:
    """The requests of an invoke operator's (rendered) ``input_location`` or ``body``: one per distinct URI."""
    if (input_location is None) == (body is None):
        raise ParameterValidationError(
            "pass exactly one of input_location (an s3:// URI or a list of them) or body (inline, "
            f"<= {MAX_ASYNC_INLINE_BODY_BYTES:,} bytes)"
        )
    if body is not None:
        return [AsyncRequest(body=body.encode("utf-8") if isinstance(body, str) else bytes(body))]
    locations = [input_location] if isinstance(input_location, str) else list(input_location or [])
    if not locations:
        raise ParameterValidationError("input_location is an empty list: nothing to submit")
    for location in locations:
        if not isinstance(location, str):
            raise ParameterValidationError(f"input_location entries must be strings, got {type(location).__name__}")
    unique = list(dict.fromkeys(locations))
    for location in dict.fromkeys(loc for loc in locations if locations.count(loc) > 1):
        log.warning("input %s is listed more than once; it is submitted once", location)
    return [AsyncRequest(input_location=location) for location in unique]


def validate_requests(
    requests: Sequence[AsyncRequest],
    *,
    endpoint_name: str,
    filename: str | None,
    custom_attributes: str | None,
    request_ttl_seconds: int | None,
    invocation_timeout_seconds: int | None,
    s3_output_path_extension: str | None,
) -> None:
    """Check every request's InvokeEndpointAsync parameters before any is sent, and that ``filename`` names
    each request's output differently when there are several."""
    for request in requests:
        validate_invoke_endpoint_async_request(
            endpoint_name,
            input_location=request.input_location,
            body=request.body,
            custom_attributes=custom_attributes,
            inference_id=None,
            request_ttl_seconds=request_ttl_seconds,
            invocation_timeout_seconds=invocation_timeout_seconds,
            s3_output_path_extension=s3_output_path_extension,
            # Generated inference ids have up to 64 characters: the longest name a request can get.
            filename=render_filename(filename, "x" * 64),
        )
    if filename is not None and not is_per_request(filename) and len(requests) > 1:
        raise ParameterValidationError(
            f"filename {filename!r} would give all {len(requests)} outputs the same name: include "
            "'{output_id}' in it, or pass filename=None"
        )
