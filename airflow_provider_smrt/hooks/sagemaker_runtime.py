"""``SageMakerRuntimeHook``: every SageMaker Runtime call, validated, classified and retried."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from copy import deepcopy
from typing import Any, Protocol

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

from airflow_provider_smrt.classify import classify_error, raise_classified
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.hooks._requests import (
    invoke_endpoint_async_result,
    invoke_endpoint_result,
    iter_stream,
    request_params,
)
from airflow_provider_smrt.hooks.transport import (
    LeanTransport,
    lean_transport_for,
)
from airflow_provider_smrt.hooks.transport import Transport as Transport  # the operators' transport= type
from airflow_provider_smrt.hooks.transport import check_transport as check_transport
from airflow_provider_smrt.invocation import (
    InvokeEndpointAsyncResult,
    InvokeEndpointResult,
    validate_body,
    validate_inference_id,
    validate_invoke_endpoint_async_request,
    validate_invoke_endpoint_request,
)
from airflow_provider_smrt.retry import OnRetry, RetryPolicy

#: botocore's own retries are off: the hook's :class:`RetryPolicy` is the only one.
_NO_BOTOCORE_RETRIES = {"total_max_attempts": 1, "mode": "standard"}


class EndpointInvoker(Protocol):
    """What :meth:`SageMakerRuntimeHook.make_invoker` returns: one InvokeEndpoint attempt per call."""

    def __call__(self, body: bytes, inference_id: str | None = None) -> InvokeEndpointResult: ...


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
    :param transport: how ``make_invoker`` and ``invoke_endpoint_async`` send their requests.
        ``"auto"`` (the default) takes the lean path (:mod:`~airflow_provider_smrt.hooks.transport`:
        botocore's serializer, SigV4 signer, HTTP session and parser with the client's credentials,
        endpoint URL, TLS and timeouts, without the client's per-call machinery) unless the client
        has a setting it does not take over (a proxy, a client certificate, another signature
        version, event handlers of its own), and then the botocore client; ``"botocore"`` always
        uses the botocore client. The hook logs which one it uses.
    :param args: passed to ``AwsBaseHook`` (``aws_conn_id``, ``region_name``, ``verify``, ``config``).
    """

    def __init__(
        self,
        *args: Any,
        retry_policy: RetryPolicy | None = None,
        max_pool_connections: int = 10,
        read_timeout: float = 70,
        transport: Transport = "auto",
        **kwargs: Any,
    ) -> None:
        check_transport(transport)
        kwargs["client_type"] = "sagemaker-runtime"
        super().__init__(*args, **kwargs)
        self.retry_policy = retry_policy or RetryPolicy()
        self.max_pool_connections = max_pool_connections
        self.read_timeout = read_timeout
        self.transport = transport
        self._conn_lean: tuple[Any, LeanTransport | None] | None = None  # (hook.conn, its transport)
        #: The path the last built invoker or client uses: ``"lean"`` or ``"botocore"`` (None before any).
        self.transport_in_use: str | None = None

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

    def lean_transport(self, client: Any) -> LeanTransport | None:
        """The lean transport over ``client``, or ``None`` for the botocore path; logs which one."""
        lean, reason = lean_transport_for(client, self.transport)
        self.transport_in_use = "lean" if lean is not None else "botocore"
        if lean is not None:
            self.log.info(
                "SageMaker Runtime transport: lean (botocore's signer and HTTP session to %s)", client.meta.endpoint_url
            )
        else:
            self.log.info("SageMaker Runtime transport: botocore client (%s)", reason)
        return lean

    def _conn_transport(self) -> tuple[Any, LeanTransport | None]:
        """``hook.conn`` and its lean transport (or ``None``), decided once per client.

        Two threads racing here may each decide (and log) once; both transports are equal.
        """
        client = self.conn
        if self._conn_lean is None or self._conn_lean[0] is not client:
            self._conn_lean = (client, self.lean_transport(client))
        return self._conn_lean

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
        client = self.conn
        params = request_params(
            client,
            "InvokeEndpoint",
            endpoint_name=endpoint_name,
            body=body,
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
        policy = retry_policy or self.retry_policy
        return policy.call(
            lambda: invoke_endpoint_result(client.invoke_endpoint(**params)),
            endpoint_name=endpoint_name,
            on_retry=on_retry,
            cancel=cancel,
        )

    #: Check InvokeEndpoint parameters without sending anything.
    validate_invoke_endpoint = staticmethod(validate_invoke_endpoint_request)

    def _check_invoker_params(self, method: str, endpoint_name: str, params: dict[str, Any]) -> None:
        self.validate_invoke_endpoint(
            endpoint_name,
            b"",
            custom_attributes=params.get("custom_attributes"),
            inference_id=params.get("inference_id"),
        )
        if {"endpoint_name", "body"} & params.keys():
            raise ParameterValidationError(f"{method}() takes the endpoint name first and the body per call")

    def make_invoker(self, endpoint_name: str, **params: Any) -> EndpointInvoker:
        """A callable ``invoke(body, inference_id=None)`` for the scoring core: one attempt per call.

        The core applies the retry policy itself (it counts retries and throttles and adapts its
        concurrency), so this callable makes exactly one request; errors come back classified.

        Every parameter but the body is the same for each call, so they are checked once, here: the
        hook's checks, then botocore's validator (a bad one raises
        :class:`~airflow_provider_smrt.exceptions.ConfigurationError`). The calls then take the lean
        path (the request serialized once, only the body swapped and the request signed per call)
        or, with ``transport="botocore"`` or a client setting the lean path does not take over, go
        through a botocore client of their own built with ``parameter_validation=False``. The body is
        checked (type and size) on every call, and so is the call's own ``inference_id`` (sent as the
        request's InferenceId; the fixed ``inference_id`` of ``params`` otherwise).

        :param params: ``invoke_endpoint``'s keyword arguments other than the body and the retry ones.
        """
        from botocore.exceptions import ParamValidationError as BotocoreParamValidationError
        from botocore.validate import validate_parameters

        self._check_invoker_params("make_invoker", endpoint_name, params)
        # Built now, once, rather than on the first of many worker threads.
        client = self.get_client_type(
            region_name=self.region_name, config=deepcopy(self.config).merge(Config(parameter_validation=False))
        )
        fixed = request_params(client, "InvokeEndpoint", endpoint_name=endpoint_name, **params)
        input_shape = client.meta.service_model.operation_model("InvokeEndpoint").input_shape
        try:
            validate_parameters({**fixed, "Body": b""}, input_shape)
        except BotocoreParamValidationError as err:
            raise classify_error(err, endpoint_name=endpoint_name) from err

        lean = self.lean_transport(client)
        if lean is not None:
            call = lean.prepare("InvokeEndpoint", fixed)
            id_header = input_shape.members["InferenceId"].serialization["name"]

            def send(body: bytes, inference_id: str | None) -> dict[str, Any]:
                return lean.send(call, body, {id_header: inference_id} if inference_id is not None else None)

        else:

            def send(body: bytes, inference_id: str | None) -> dict[str, Any]:
                per_call = {"InferenceId": inference_id} if inference_id is not None else {}
                response: dict[str, Any] = client.invoke_endpoint(**fixed, **per_call, Body=body)
                return response

        def invoke(body: bytes, inference_id: str | None = None) -> InvokeEndpointResult:
            validate_body(body)
            validate_inference_id(inference_id)
            try:
                return invoke_endpoint_result(send(body, inference_id))
            except Exception as raw:  # noqa: BLE001 - raised again, classified
                raise_classified(raw, endpoint_name=endpoint_name)

        return invoke

    def make_stream_invoker(self, endpoint_name: str, **params: Any) -> EndpointInvoker:
        """:meth:`make_invoker` over InvokeEndpointWithResponseStream: ``invoke(body)`` sends one request,
        joins every PayloadPart and returns the whole payload as one :class:`InvokeEndpointResult`.

        One attempt per call, like :meth:`make_invoker`: an error opening the stream or in the middle of
        it (ModelStreamError, InternalStreamFailure) is raised classified, and the caller's retry policy
        sends the whole request again; no partial payload is ever returned.

        :param params: ``invoke_endpoint_with_response_stream``'s keyword arguments other than the body
            and the retry ones (None ones are left out).
        """
        params = {key: value for key, value in params.items() if value is not None}
        self._check_invoker_params("make_stream_invoker", endpoint_name, params)
        client = self.get_client_type(region_name=self.region_name, config=deepcopy(self.config))
        fixed = request_params(client, "InvokeEndpointWithResponseStream", endpoint_name=endpoint_name, **params)

        def invoke(body: bytes, inference_id: str | None = None) -> InvokeEndpointResult:
            validate_body(body)
            request = fixed if inference_id is None else {**fixed, "InferenceId": inference_id}
            try:
                response = client.invoke_endpoint_with_response_stream(**request, Body=body)
            except Exception as raw:  # noqa: BLE001 - raised again, classified
                raise_classified(raw, endpoint_name=endpoint_name)
            return invoke_endpoint_result({**response, "Body": b"".join(iter_stream(response["Body"], endpoint_name))})

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
            s3_output_path_extension=s3_output_path_extension,
            filename=filename,
        )
        client, lean = self._conn_transport()
        params = request_params(
            client,
            "InvokeEndpointAsync",
            endpoint_name=endpoint_name,
            input_location=input_location,
            body=body,
            content_type=content_type,
            accept=accept,
            custom_attributes=custom_attributes,
            inference_id=inference_id,
            request_ttl_seconds=request_ttl_seconds,
            invocation_timeout_seconds=invocation_timeout_seconds,
            s3_output_path_extension=s3_output_path_extension,
            filename=filename,
        )
        if lean is not None:
            lean_transport = lean
            fixed = {key: value for key, value in params.items() if key != "Body"}

            def attempt() -> InvokeEndpointAsyncResult:
                # botocore's validator, as the client runs it; its error is classified like the client's.
                lean_transport.validate("InvokeEndpointAsync", params)
                call = lean_transport.prepare("InvokeEndpointAsync", fixed)
                return invoke_endpoint_async_result(lean_transport.send(call, body))

        else:

            def attempt() -> InvokeEndpointAsyncResult:
                return invoke_endpoint_async_result(client.invoke_endpoint_async(**params))

        policy = retry_policy or self.retry_policy
        return policy.call(attempt, endpoint_name=endpoint_name, on_retry=on_retry)

    #: Check InvokeEndpointAsync parameters without sending anything.
    validate_invoke_endpoint_async = staticmethod(validate_invoke_endpoint_async_request)

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
        client = self.conn
        params = request_params(
            client,
            "InvokeEndpointWithResponseStream",
            endpoint_name=endpoint_name,
            body=body,
            content_type=content_type,
            accept=accept,
            custom_attributes=custom_attributes,
            target_variant=target_variant,
            target_container_hostname=target_container_hostname,
            inference_id=inference_id,
            inference_component_name=inference_component_name,
            session_id=session_id,
        )
        policy = retry_policy or self.retry_policy
        response = policy.call(
            lambda: client.invoke_endpoint_with_response_stream(**params),
            endpoint_name=endpoint_name,
            on_retry=on_retry,
        )
        return iter_stream(response["Body"], endpoint_name)

    # -- asyncio ---------------------------------------------------------------------------------

    async def get_async_conn(self) -> Any:
        """An aiobotocore ``sagemaker-runtime`` client (use as ``async with``), for triggers."""
        return await super().get_async_conn()
