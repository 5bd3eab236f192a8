"""``SageMakerRuntimeHook``: every SageMaker Runtime call, validated, classified and retried."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

from airflow_provider_smrt.classify import classify_error
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import (
    DEFAULT_READ_TIMEOUT_SECONDS,
    INVOCATION_TIMEOUT_RANGE,
    MAX_ASYNC_INLINE_BODY_BYTES,
    MAX_INPUT_LOCATION_CHARS,
    REQUEST_TTL_RANGE,
    InvokeEndpointAsyncResult,
    InvokeEndpointResult,
    validate_body,
    validate_custom_attributes,
    validate_endpoint_name,
    validate_inference_id,
    validate_range,
)
from airflow_provider_smrt.retry import OnRetry, RetryPolicy

#: botocore's own retries are off: the hook's :class:`RetryPolicy` is the only one.
_NO_BOTOCORE_RETRIES = {"total_max_attempts": 1, "mode": "standard"}


def _drop_none(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


#: ``invoke_endpoint``'s keyword arguments that :meth:`SageMakerRuntimeHook.make_invoker` forwards, and their
#: InvokeEndpoint names.
_INVOKE_ENDPOINT_KWARGS = {
    "content_type": "ContentType",
    "accept": "Accept",
    "custom_attributes": "CustomAttributes",
    "target_model": "TargetModel",
    "target_variant": "TargetVariant",
    "target_container_hostname": "TargetContainerHostname",
    "inference_id": "InferenceId",
    "enable_explanations": "EnableExplanations",
    "inference_component_name": "InferenceComponentName",
    "session_id": "SessionId",
}


def _invoke_endpoint_params(endpoint_name: str, body: bytes | None, **kwargs: Any) -> dict[str, Any]:
    """InvokeEndpoint's request parameters from ``invoke_endpoint``'s keyword arguments (None ones left out)."""
    return _drop_none(
        EndpointName=endpoint_name, Body=body, **{_INVOKE_ENDPOINT_KWARGS[key]: value for key, value in kwargs.items()}
    )


def _invoke_endpoint_once(client: Any, params: dict[str, Any]) -> InvokeEndpointResult:
    """One InvokeEndpoint call with its response body read."""
    response = client.invoke_endpoint(**params)
    return InvokeEndpointResult(
        body=response["Body"].read(),
        content_type=response.get("ContentType"),
        invoked_production_variant=response.get("InvokedProductionVariant"),
        custom_attributes=response.get("CustomAttributes"),
        new_session_id=response.get("NewSessionId"),
        closed_session_id=response.get("ClosedSessionId"),
    )


class SageMakerRuntimeHook(AwsBaseHook):
    """Interact with Amazon SageMaker Runtime (InvokeEndpoint, InvokeEndpointAsync, response streams).

    Credentials, assume-role, region and per-service endpoint URLs (``service_config`` in the
    connection extras) come from the Airflow AWS connection, exactly as for every Amazon provider
    hook. On top of :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook` it validates
    every request before sending it, classifies every error
    (:func:`~airflow_provider_smrt.exceptions.classify_error`) and retries what can succeed with one
    :class:`~airflow_provider_smrt.retry.RetryPolicy`. botocore's own retries are switched off.

    Request and response bodies, CustomAttributes and credentials are never logged.

    :param retry_policy: attempts, backoff and deadline for every call (default: 8 attempts,
        full-jitter exponential backoff, 10 minutes overall).
    :param max_pool_connections: HTTP connections kept to the endpoint; size it to the number of
        requests you keep in flight.
    :param read_timeout: seconds to wait for a response (>= 70 recommended: models have 60 s).
    :param args: passed to ``AwsBaseHook`` (``aws_conn_id``, ``region_name``, ``verify``, ``config``).
    """

    def __init__(
        self,
        *args: Any,
        retry_policy: RetryPolicy | None = None,
        max_pool_connections: int = 10,
        read_timeout: float = DEFAULT_READ_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        kwargs["client_type"] = "sagemaker-runtime"
        super().__init__(*args, **kwargs)
        self.retry_policy = retry_policy or RetryPolicy()
        self.max_pool_connections = max_pool_connections
        self.read_timeout = read_timeout

    # -- clients ---------------------------------------------------------------------------------

    def _get_config(self, config: Config | None = None) -> Config:
        """The connection's botocore config over this hook's defaults, with botocore retries off."""
        user = deepcopy(config if config is not None else self.config)
        defaults = Config(
            read_timeout=self.read_timeout,
            connect_timeout=10,
            max_pool_connections=self.max_pool_connections,
            tcp_keepalive=True,
        )
        merged = defaults.merge(user).merge(Config(retries=dict(_NO_BOTOCORE_RETRIES)))
        return super()._get_config(merged)

    # -- InvokeEndpoint --------------------------------------------------------------------------

    def invoke_endpoint(
        self,
        endpoint_name: str,
        body: bytes,
        *,
        content_type: str | None = None,
        accept: str | None = None,
        custom_attributes: str | None = None,
        target_model: str | None = None,
        target_variant: str | None = None,
        target_container_hostname: str | None = None,
        inference_id: str | None = None,
        enable_explanations: str | None = None,
        inference_component_name: str | None = None,
        session_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        cancel: threading.Event | None = None,
    ) -> InvokeEndpointResult:
        """Call InvokeEndpoint and return the response with its body read.

        :param retry_policy: overrides the hook's policy for this call (``NO_RETRY`` for one attempt).
        :param on_retry: called with (error, attempt, delay) before each retry.
        :param cancel: an event that, once set, stops further retries.
        :raises InvocationError: a classified error, raised from the botocore error.
        """
        self.validate_invoke_endpoint(
            endpoint_name, body, custom_attributes=custom_attributes, inference_id=inference_id
        )
        params = _invoke_endpoint_params(
            endpoint_name,
            body,
            content_type=content_type,
            accept=accept,
            custom_attributes=custom_attributes,
            target_model=target_model,
            target_variant=target_variant,
            target_container_hostname=target_container_hostname,
            inference_id=inference_id,
            enable_explanations=enable_explanations,
            inference_component_name=inference_component_name,
            session_id=session_id,
        )
        client = self.conn
        policy = retry_policy or self.retry_policy
        return policy.call(
            lambda: _invoke_endpoint_once(client, params), endpoint_name=endpoint_name, on_retry=on_retry, cancel=cancel
        )

    @staticmethod
    def validate_invoke_endpoint(
        endpoint_name: str,
        body: bytes,
        *,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
    ) -> None:
        """Check InvokeEndpoint parameters without sending anything."""
        validate_endpoint_name(endpoint_name)
        validate_body(body)
        validate_custom_attributes(custom_attributes)
        validate_inference_id(inference_id)

    def make_invoker(self, endpoint_name: str, **params: Any) -> Callable[[bytes], InvokeEndpointResult]:
        """A one-argument callable ``invoke(body)`` for the scoring core: one attempt per call.

        The core applies the retry policy itself (it counts retries and throttles and adapts its
        concurrency), so this callable makes exactly one request; errors come back classified.

        Every parameter but the body is the same for each call, so botocore's validator checks them
        once, here (a bad one raises :class:`~airflow_provider_smrt.exceptions.ConfigurationError`),
        and the calls go through a client of their own built with ``parameter_validation=False``.
        botocore otherwise validates every call again: 69 of the ~3,740 Python calls and ~4% of the
        CPU of an InvokeEndpoint call, all of it holding the GIL (``docs/performance.md``). The body is
        still checked (type and size) on every call.

        :param params: ``invoke_endpoint``'s keyword arguments other than the body and the retry ones.
        """
        from botocore.exceptions import ParamValidationError as BotocoreParamValidationError
        from botocore.validate import validate_parameters

        from airflow_provider_smrt.retry import NO_RETRY

        self.validate_invoke_endpoint(
            endpoint_name,
            b"",
            custom_attributes=params.get("custom_attributes"),
            inference_id=params.get("inference_id"),
        )
        unknown = sorted(set(params) - _INVOKE_ENDPOINT_KWARGS.keys())
        if unknown:
            raise ParameterValidationError(
                f"make_invoker() got unexpected parameter(s) {unknown}: use {sorted(_INVOKE_ENDPOINT_KWARGS)}"
            )
        fixed = _invoke_endpoint_params(endpoint_name, None, **params)
        # Built now, once, rather than on the first of many worker threads.
        client = self.get_client_type(
            region_name=self.region_name, config=deepcopy(self.config).merge(Config(parameter_validation=False))
        )
        input_shape = client.meta.service_model.operation_model("InvokeEndpoint").input_shape
        try:
            validate_parameters({**fixed, "Body": b""}, input_shape)
        except BotocoreParamValidationError as err:
            raise classify_error(err, endpoint_name=endpoint_name) from err

        def invoke(body: bytes) -> InvokeEndpointResult:
            validate_body(body)
            request = {**fixed, "Body": body}
            return NO_RETRY.call(lambda: _invoke_endpoint_once(client, request), endpoint_name=endpoint_name)

        return invoke

    # -- InvokeEndpointAsync ---------------------------------------------------------------------

    def invoke_endpoint_async(
        self,
        endpoint_name: str,
        *,
        input_location: str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        request_ttl_seconds: int | None = None,
        invocation_timeout_seconds: int | None = None,
        s3_output_path_extension: str | None = None,
        filename: str | None = None,
        retry_policy: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ) -> InvokeEndpointAsyncResult:
        """Call InvokeEndpointAsync (202 Accepted) with exactly one of ``input_location`` or ``body``."""
        self.validate_invoke_endpoint_async(
            endpoint_name,
            input_location=input_location,
            body=body,
            custom_attributes=custom_attributes,
            inference_id=inference_id,
            request_ttl_seconds=request_ttl_seconds,
            invocation_timeout_seconds=invocation_timeout_seconds,
        )
        params = _drop_none(
            EndpointName=endpoint_name,
            InputLocation=input_location,
            Body=body,
            ContentType=content_type,
            Accept=accept,
            CustomAttributes=custom_attributes,
            InferenceId=inference_id,
            RequestTTLSeconds=request_ttl_seconds,
            InvocationTimeoutSeconds=invocation_timeout_seconds,
            S3OutputPathExtension=s3_output_path_extension,
            Filename=filename,
        )
        client = self.conn

        def attempt() -> InvokeEndpointAsyncResult:
            response = client.invoke_endpoint_async(**params)
            return InvokeEndpointAsyncResult(
                inference_id=response["InferenceId"],
                output_location=response["OutputLocation"],
                failure_location=response.get("FailureLocation"),
            )

        policy = retry_policy or self.retry_policy
        return policy.call(attempt, endpoint_name=endpoint_name, on_retry=on_retry)

    @staticmethod
    def validate_invoke_endpoint_async(
        endpoint_name: str,
        *,
        input_location: str | None = None,
        body: bytes | None = None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        request_ttl_seconds: int | None = None,
        invocation_timeout_seconds: int | None = None,
    ) -> None:
        """Check InvokeEndpointAsync parameters without sending anything."""
        validate_endpoint_name(endpoint_name)
        if (input_location is None) == (body is None):
            raise ParameterValidationError(
                "pass exactly one of input_location (an s3:// or https:// URI) or body (inline, "
                f"<= {MAX_ASYNC_INLINE_BODY_BYTES:,} bytes)"
            )
        if input_location is not None:
            if not input_location.startswith(("s3://", "https://")) or len(input_location) > MAX_INPUT_LOCATION_CHARS:
                raise ParameterValidationError(
                    f"input_location {input_location!r} must be an s3:// or https:// URI of at most "
                    f"{MAX_INPUT_LOCATION_CHARS} characters"
                )
        if body is not None:
            validate_body(body, limit=MAX_ASYNC_INLINE_BODY_BYTES, what="inline async body")
        validate_custom_attributes(custom_attributes)
        validate_inference_id(inference_id)
        validate_range("request_ttl_seconds", request_ttl_seconds, REQUEST_TTL_RANGE)
        validate_range("invocation_timeout_seconds", invocation_timeout_seconds, INVOCATION_TIMEOUT_RANGE)

    # -- InvokeEndpointWithResponseStream --------------------------------------------------------

    def invoke_endpoint_with_response_stream(
        self,
        endpoint_name: str,
        body: bytes,
        *,
        content_type: str | None = None,
        accept: str | None = None,
        custom_attributes: str | None = None,
        target_variant: str | None = None,
        target_container_hostname: str | None = None,
        inference_id: str | None = None,
        inference_component_name: str | None = None,
        session_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ) -> Iterator[bytes]:
        """Call InvokeEndpointWithResponseStream and yield the bytes of each PayloadPart.

        Opening the stream is retried by the policy; an error in the middle of the stream
        (ModelStreamError, InternalStreamFailure) is raised classified, since parts were already
        handed to the caller.
        """
        self.validate_invoke_endpoint(
            endpoint_name, body, custom_attributes=custom_attributes, inference_id=inference_id
        )
        params = _drop_none(
            EndpointName=endpoint_name,
            Body=body,
            ContentType=content_type,
            Accept=accept,
            CustomAttributes=custom_attributes,
            TargetVariant=target_variant,
            TargetContainerHostname=target_container_hostname,
            InferenceId=inference_id,
            InferenceComponentName=inference_component_name,
            SessionId=session_id,
        )
        client = self.conn
        policy = retry_policy or self.retry_policy
        response = policy.call(
            lambda: client.invoke_endpoint_with_response_stream(**params),
            endpoint_name=endpoint_name,
            on_retry=on_retry,
        )
        return self._iter_stream(response["Body"], endpoint_name)

    @staticmethod
    def _iter_stream(stream: Any, endpoint_name: str) -> Iterator[bytes]:
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
        except Exception as raw:
            err = classify_error(raw, endpoint_name=endpoint_name)
            if err is raw:
                raise
            raise err from raw
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    # -- asyncio ---------------------------------------------------------------------------------

    async def get_async_conn(self) -> Any:
        """An aiobotocore ``sagemaker-runtime`` client (use as ``async with``), for triggers."""
        return await super().get_async_conn()
