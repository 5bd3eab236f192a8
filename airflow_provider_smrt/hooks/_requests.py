"""SageMaker Runtime requests and responses as botocore's service model names them: one mapping for every call.

Keyword arguments of the hook are the snake-case names of each operation's input members; responses
become :class:`~airflow_provider_smrt.invocation.InvokeEndpointResult` /
:class:`~airflow_provider_smrt.invocation.InvokeEndpointAsyncResult`; a response stream's events become
the bytes of its payload parts, or a classified error.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from botocore import xform_name

from airflow_provider_smrt.classify import classify_error, raise_classified
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import InvokeEndpointAsyncResult, InvokeEndpointResult


@functools.lru_cache(maxsize=32)
def _api_names(service_model: Any, operation_name: str) -> dict[str, str]:
    """The hook's keyword argument for each input member of ``operation_name`` (``xform_name`` of it) -> the member."""
    return {xform_name(member): member for member in service_model.operation_model(operation_name).input_shape.members}


def request_params(client: Any, operation_name: str, **kwargs: Any) -> dict[str, Any]:
    """The request parameters of ``operation_name`` from the hook's keyword arguments (None ones left out).

    The one mapping for every invoke method: each keyword is the snake-case name of the
    operation's input member, as botocore's service model spells it.
    """
    names = _api_names(client.meta.service_model, operation_name)
    unknown = sorted(set(kwargs) - names.keys())
    if unknown:
        shared = sorted(set(names) - {"endpoint_name", "body"})
        raise ParameterValidationError(f"{operation_name} got unexpected parameter(s) {unknown}: use {shared}")
    return {names[key]: value for key, value in kwargs.items() if value is not None}


def invoke_endpoint_result(response: dict[str, Any]) -> InvokeEndpointResult:
    body = response["Body"]
    return InvokeEndpointResult(
        body=body if isinstance(body, bytes) else body.read(),
        content_type=response.get("ContentType"),
        invoked_production_variant=response.get("InvokedProductionVariant"),
        custom_attributes=response.get("CustomAttributes"),
        new_session_id=response.get("NewSessionId"),
        closed_session_id=response.get("ClosedSessionId"),
    )


def invoke_endpoint_async_result(response: dict[str, Any]) -> InvokeEndpointAsyncResult:
    return InvokeEndpointAsyncResult(
        inference_id=response["InferenceId"],
        output_location=response["OutputLocation"],
        failure_location=response.get("FailureLocation"),
    )


def iter_stream(stream: Any, endpoint_name: str) -> Iterator[bytes]:
    try:
        for event in stream:
            if "PayloadPart" in event:
                yield event["PayloadPart"].get("Bytes", b"")
                continue
            for code in ("ModelStreamError", "InternalStreamFailure"):
                if code in event:
                    from botocore.exceptions import ClientError

                    detail = event[code]
                    raw = ClientError(
                        {"Error": {"Code": code, "Message": detail.get("Message", "")}},
                        "InvokeEndpointWithResponseStream",
                    )
                    raise classify_error(raw, endpoint_name=endpoint_name) from raw
    except Exception as raw:  # noqa: BLE001 - raised again, classified
        raise_classified(raw, endpoint_name=endpoint_name)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
