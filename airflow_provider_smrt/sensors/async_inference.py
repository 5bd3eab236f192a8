"""``SageMakerAsyncInferenceSensor``: wait for the results of InvokeEndpointAsync requests in S3."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk.bases.sensor import PokeReturnValue

from airflow_provider_smrt._compat import AirflowSensorTimeout, conf
from airflow_provider_smrt.async_inference import (
    AsyncInferenceTracker,
    AsyncInvocation,
    default_timeout_seconds,
    outcome_event,
    poll_sync,
    verdict,
)
from airflow_provider_smrt.async_inference.results import is_summary, read_records, with_wait
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.hooks.s3 import S3ClientMixin
from airflow_provider_smrt.operators._failures import fails_fast
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.triggers.async_inference import defer_wait, resume_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class SageMakerAsyncInferenceSensor(S3ClientMixin, AwsBaseSensor[S3Hook]):
    """Wait until every async invocation's output object exists; fail when a failure object appears.

    Give either ``invocations`` (the summary XCom of
    :class:`~airflow_provider_smrt.operators.invoke_endpoint_async.SageMakerInvokeEndpointAsyncOperator`,
    e.g. ``invoke.output`` or ``"{{ ti.xcom_pull('invoke') }}"``, whose invocations are read from its
    ledger in S3; or a list of invocation dicts) or one ``output_location`` with an optional
    ``failure_location``. Each poke makes the fewest S3 requests: one listing per output
    directory holding several pending keys, a HEAD otherwise (see :mod:`airflow_provider_smrt.async_inference`).

    When a failure object appears the sensor fails with the head of its message (at most 4 KiB), the
    input and the inference id, unless ``max_failures`` tolerates it. Returns (XCom), given the operator's
    summary, that summary with the wait's counts (``succeeded``, ``failed``, ``pending``) and
    ``first_failures``, the same size whatever the number of invocations (read the per-invocation
    statuses with :func:`~airflow_provider_smrt.async_inference.results.read_results`); given a list or
    ``output_location``, one dict per invocation: its fields plus ``status`` (``succeeded`` | ``failed``),
    ``output_size``, ``completed_at`` and ``time_to_completion_seconds`` (and ``failure_message`` when failed).

    Modes: ``poke`` keeps the statuses in the sensor between pokes, so finished locations are never
    polled again; ``reschedule`` starts each poke in a new process and derives every status from S3
    again (nothing is persisted between pokes; listings keep that cheap); ``deferrable=True`` hands the
    wait to :class:`~airflow_provider_smrt.triggers.async_inference.SageMakerAsyncInferenceTrigger`
    after one synchronous check.

    :param invocations: the invoke operator's summary, or dicts with at least ``output_location`` (and
        ``failure_location``, ``inference_id``, ``input``, ``submitted_at``, ``request_ttl_seconds``,
        ``invocation_timeout_seconds``); a JSON or Python-literal string of either is accepted. (templated)
    :param output_location: one ``s3://`` output location to wait for, instead of ``invocations``. (templated)
    :param failure_location: the failure location that goes with ``output_location``. (templated)
    :param max_failures: failed invocations tolerated; one more fails the sensor.
    :param deferrable: wait in the triggerer.
    :param timeout: seconds to wait at most; default the invocations' largest RequestTTLSeconds +
        InvocationTimeoutSeconds (service defaults 21600 + 900) plus 60 s.
    :param s3_retry_policy: retries of each S3 request on transient errors (not ``retry_policy``: that is
        Airflow's task retry policy).
    :param str|None aws_conn_id: the Airflow AWS connection. (templated)
    :param str|None region_name: the AWS region. (templated)
    :param bool|str|None verify: SSL certificate verification. (templated)
    :param dict|None botocore_config: botocore client configuration (dict).
    """

    aws_hook_class = S3Hook
    template_fields: Sequence[str] = aws_template_fields("invocations", "output_location", "failure_location")
    ui_color = "#c5e0b4"

    def __init__(
        self,
        *,
        invocations: Any = None,
        output_location: str | None = None,
        failure_location: str | None = None,
        max_failures: int = 0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        timeout: float | timedelta | None = None,
        poke_interval: float | timedelta = 30,
        s3_retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if timeout is not None:  # Airflow 3.0's BaseSensorOperator rejects None (3.1+ reads the default)
            kwargs["timeout"] = timeout
        super().__init__(poke_interval=poke_interval, **kwargs)
        if (invocations is None) == (output_location is None):
            raise ParameterValidationError("pass exactly one of invocations or output_location")
        if max_failures < 0:
            raise ParameterValidationError("max_failures must be 0 or more")
        self.invocations = invocations
        self.output_location = output_location
        self.failure_location = failure_location
        self.max_failures = max_failures
        self.deferrable = deferrable
        self.s3_retry_policy = s3_retry_policy
        self.timeout_from_ttl = timeout is None
        self._tracker: AsyncInferenceTracker | None = None

    # -- inputs ----------------------------------------------------------------------------------

    def resolve_invocations(self) -> list[AsyncInvocation]:
        """The rendered ``invocations`` (or the single ``output_location``) as :class:`AsyncInvocation`."""
        if self.output_location is not None:
            return [AsyncInvocation(output_location=self.output_location, failure_location=self.failure_location)]
        value = self._source()
        if is_summary(value):
            return [AsyncInvocation.from_value(item) for item in read_records(self.s3_client, value)]
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise ParameterValidationError(
                "invocations must be a non-empty list of dicts (the invoke operator's XCom), "
                f"got {type(value).__name__}"
            )
        return [AsyncInvocation.from_value(item) for item in value]

    def _source(self) -> Any:
        """The rendered ``invocations``, parsed when it is a string."""
        value = self.invocations
        if isinstance(value, str):
            value = _parse_literal(value)
        return value

    def _summary(self) -> Mapping[str, Any] | None:
        """The invoke operator's summary, when that is what ``invocations`` is."""
        if self.output_location is not None:
            return None
        value = self._source()
        return value if is_summary(value) else None

    # -- execute ---------------------------------------------------------------------------------

    @fails_fast
    def execute(self, context: Context) -> Any:
        invocations = self.resolve_invocations()
        if self.timeout_from_ttl:
            self.timeout = default_timeout_seconds(invocations)
        self._tracker = AsyncInferenceTracker(invocations)
        if not self.deferrable:
            return super().execute(context)
        result = self.poke(context)  # one synchronous check: no deferral when already done
        if result:
            return result.xcom_value if isinstance(result, PokeReturnValue) else None
        self.log.info("deferring: %s", self._tracker.summary())
        summary = self._summary()
        if summary is not None and summary.get("ledger_uri"):
            defer_wait(self, ledger_uri=str(summary["ledger_uri"]), timeout=self.timeout)
        defer_wait(self, invocations=[inv.to_dict() for inv in invocations], timeout=self.timeout)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """One poll and the one verdict of :mod:`~airflow_provider_smrt.async_inference.wait` (raises on failure)."""
        tracker = self._tracker
        if tracker is None:  # poke() called directly
            tracker = self._tracker = AsyncInferenceTracker(self.resolve_invocations())
        # poll_sync is looked up here, at call time, so it can be instrumented (bench).
        poll_sync(tracker, self.s3_client, retry_policy=self.s3_retry_policy)
        outcome = verdict(tracker, self.max_failures)
        if outcome is None:
            self.log.info("waiting for async results: %s (%d S3 requests so far)", tracker.summary(), tracker.requests)
            return False
        summary = self._summary()
        event = outcome_event(
            outcome.event(tracker, per_invocation=summary is None), log=self.log, timeout_error=AirflowSensorTimeout
        )
        self.log.info("async results ready: %s (%d S3 requests)", tracker.summary(), tracker.requests)
        return PokeReturnValue(is_done=True, xcom_value=self._result(summary, event))

    @fails_fast
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: return the result, or raise (a timeout as Airflow's sensor timeout)."""
        checked = resume_from_event(event, log=self.log)
        return self._result(self._summary(), checked)

    @staticmethod
    def _result(summary: Mapping[str, Any] | None, event: Mapping[str, Any]) -> Any:
        """The summary with the wait's counts, or (given a list) one status per invocation."""
        if summary is not None:
            return with_wait(summary, event)
        return list(event.get("invocations") or [])


def _parse_literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ParameterValidationError(
            "invocations is a string that is neither JSON nor a Python literal; pass the operator's XCom "
            "(e.g. invoke.output) or render_template_as_native_obj=True"
        ) from err
