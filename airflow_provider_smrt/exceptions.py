"""The one error hierarchy of airflow-provider-smrt: every error the package raises is defined here.

Every error raised by the hook, the scoring core, the sensors, triggers and operators is a
:class:`SmrtError`. Errors returned by SageMaker Runtime (or by the transport under it) are turned
into an :class:`InvocationError` subclass by
:func:`~airflow_provider_smrt.classify.classify_error`, the only place that knows the service's
error codes. Each carries ``code``, ``retryable``, ``http_status`` and ``request_id``; a
:class:`ModelError` also carries ``original_status_code``, ``original_message`` and
``log_stream_arn``.

Messages never contain request or response bodies, CustomAttributes or credentials.
This module imports nothing but the standard library.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SmrtError(Exception):
    """Base class of every error raised by airflow-provider-smrt.

    ``retryable`` tells whether the same call may succeed if made again: False for every error but
    the transient invocation errors (:class:`RetryableInvocationError`, :class:`ModelServerError`,
    :class:`RetryableStreamError`), so callers can branch on one attribute.
    """

    retryable: ClassVar[bool] = False


class ParameterValidationError(SmrtError, ValueError):
    """A parameter is invalid; raised before any request is sent."""


class InputDataError(SmrtError):
    """The input dataset cannot be scored as configured (file, column, type or row problem)."""


class OutputError(SmrtError):
    """The output location cannot be used (not writable, not empty, inside the input, ...)."""


class PredictionCountMismatchError(SmrtError):
    """The endpoint returned a different number of predictions than rows sent (model contract)."""


class ErrorRatioExceededError(SmrtError):
    """More rows failed than ``max_error_ratio`` allows."""


class ScoringCancelledError(SmrtError):
    """The scoring run was stopped (``on_kill``, task timeout or a fatal error elsewhere)."""


class InvocationError(SmrtError):
    """An invocation of SageMaker Runtime failed.

    :param message: what happened and what to do; never a payload or a CustomAttributes value.
    :param code: the service's error code (e.g. ``ModelError``) or a transport error name.
    :param endpoint_name: the endpoint called.
    :param http_status: the HTTP status of the response, if there was one.
    :param request_id: the request id of the response, if there was one.

    ``attempts`` is set by the retry policy to the attempts made for the request that raised it
    (None when the error did not come through the policy).
    """

    #: True for errors that mean "slow down" (drive adaptive concurrency).
    throttled: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str,
        endpoint_name: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.endpoint_name = endpoint_name
        self.http_status = http_status
        self.request_id = request_id
        self.attempts: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # keep keyword arguments across pickling
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[InvocationError], message: str, state: dict[str, Any]) -> InvocationError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class RetryableInvocationError(InvocationError):
    """A transient failure of the service; the same request may succeed later."""

    retryable = True


class ThrottlingError(RetryableInvocationError):
    """The service or the model asked the caller to slow down (ThrottlingException)."""

    throttled = True


class ModelNotReadyError(RetryableInvocationError):
    """The model is not ready yet (ModelNotReadyException, HTTP 429): wait and retry."""

    throttled = True


class ServiceError(RetryableInvocationError):
    """InternalFailure, ServiceUnavailable or InternalDependencyException (HTTP 5xx)."""


class TransportError(RetryableInvocationError):
    """Connection refused or reset, connect or read timeout: no valid response arrived."""


class ModelError(InvocationError):
    """The model container answered with an error (ModelError, HTTP 424).

    :param original_status_code: the status code the container returned.
    :param original_message: the container's message (may be truncated).
    :param log_stream_arn: the CloudWatch log stream of the container.
    :param invoked_production_variant: the production variant that answered, if the response named it.
    """

    def __init__(
        self,
        message: str,
        *,
        original_status_code: int | None = None,
        original_message: str | None = None,
        log_stream_arn: str | None = None,
        invoked_production_variant: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.original_status_code = original_status_code
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn
        self.invoked_production_variant = invoked_production_variant


class ModelInputError(ModelError):
    """The container rejected the input (original status 4xx other than 429): not retryable."""


class ModelServerError(ModelError):
    """The container failed (original status 5xx or 429): retryable."""

    retryable = True


class ConfigurationError(InvocationError):
    """The request cannot succeed as configured (ValidationError: unknown endpoint, bad header...)."""


class PayloadTooLargeError(ConfigurationError):
    """The request body is over the service limit; split it and send smaller requests."""


class CredentialsError(InvocationError):
    """Credentials are missing, expired, unrecognised, or not allowed to call this endpoint."""


class StreamError(InvocationError):
    """A response stream failed part-way (ModelStreamError or InternalStreamFailure)."""


class RetryableStreamError(StreamError):
    """InternalStreamFailure: the stream broke in the service; the request may be retried."""

    retryable = True


# ---------------------------------------------------------------------------------------------
# Model contract and input errors of the scoring core


class ResponseDecodeError(SmrtError, ValueError):
    """A response body does not have a shape the codec understands (model contract).

    The message names the content type, the body size and the shape found, never the body itself.
    """


class PredictionRowCountError(PredictionCountMismatchError):
    """The response holds a different number of predictions than the rows sent.

    The message is composable (``"expected 500 predictions, got 499"``); the caller prefixes the
    file and row range. ``expected`` and ``got`` carry the counts.

    :param expected: rows sent.
    :param got: predictions found in the response.
    :param detail: an optional hint appended to the message (never a value from the body).
    """

    def __init__(self, *, expected: int, got: int, detail: str = "") -> None:
        message = f"expected {expected} predictions, got {got}" + (f" ({detail})" if detail else "")
        super().__init__(message)
        self.expected = expected
        self.got = got
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only __init__: keep pickling working
        return (_rebuild_count_error, (type(self), self.expected, self.got, self.detail))


def _rebuild_count_error(
    cls: type[PredictionRowCountError], expected: int, got: int, detail: str
) -> PredictionRowCountError:
    return cls(expected=expected, got=got, detail=detail)


class RowTooLargeError(InputDataError):
    """A single row encodes to more than the request limit, so no InvokeEndpoint request can carry it.

    The message is composable: it does not say where the row is; the caller prefixes the file and
    the absolute row number (``row_offset`` is the row's position in the batch planned).

    :param row_offset: the row's offset within the batch given to :meth:`RequestPlanner.split`.
    :param row_bytes: the row's encoded size.
    :param limit: the request limit in bytes.
    :param content_type: the request content type.
    :param service_limit: the largest body the service takes (InvokeEndpoint's 6 MiB by default).
    """

    def __init__(
        self, *, row_offset: int, row_bytes: int, limit: int, content_type: str, service_limit: int = 6_291_456
    ) -> None:
        fits_service = limit < service_limit and row_bytes <= service_limit
        hint = f"; or raise max_payload_bytes (up to {service_limit:,})" if fits_service else ""
        super().__init__(
            f"the row encodes to {row_bytes:,} bytes as {content_type}, over the "
            f"{limit:,}-byte request limit, so no InvokeEndpoint request can carry it: set oversize_endpoint_name "
            f"to an async endpoint of the same model (such rows then go through InvokeEndpointAsync), score "
            f"them with SageMakerInvokeEndpointAsyncOperator (request bodies read from S3), or drop or shrink its "
            f"features{hint}"
        )
        self.row_offset = row_offset
        self.row_bytes = row_bytes
        self.limit = limit
        self.content_type = content_type
        self.service_limit = service_limit

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only __init__: keep pickling working
        return (
            _rebuild_row_error,
            (type(self), self.row_offset, self.row_bytes, self.limit, self.content_type, self.service_limit),
        )


def _rebuild_row_error(
    cls: type[RowTooLargeError], row_offset: int, row_bytes: int, limit: int, content_type: str, service_limit: int
) -> RowTooLargeError:
    return cls(
        row_offset=row_offset, row_bytes=row_bytes, limit=limit, content_type=content_type, service_limit=service_limit
    )


# ---------------------------------------------------------------------------------------------
# Asynchronous inference


class AsyncInferenceFailedError(SmrtError):
    """One or more async invocations failed (their failure objects appeared in S3).

    :param message: the failures: inference id, input and the head of each failure message.
    :param failures: the status dicts of the first failed invocations (at most 10).
    """

    def __init__(self, message: str, *, failures: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.failures = failures
