"""``SageMakerInvokeEndpointAsyncOperator``: submit InvokeEndpointAsync requests, idempotently.

Requests are idempotent under task retries, cleared tasks and a worker killed mid-submission:
deterministic inference ids and output names, and a ledger of submissions in S3 that a later try reads
first (how, and why not XCom: :mod:`airflow_provider_smrt.async_inference.ledger`).

Bounded submission is :mod:`airflow_provider_smrt.operators._async_submit`; the wait (in the worker or
the triggerer) is :mod:`airflow_provider_smrt.async_inference.wait`, shared with the sensor.

Parquet datasets
----------------
Scoring a Parquet dataset through async inference is
:class:`~airflow_provider_smrt.operators.async_batch_score.SageMakerAsyncBatchScoreOperator`; this
operator's ``input_uri=`` (and the other Parquet parameters) still run it, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_provider_smrt._compat import AirflowSensorTimeout, conf
from airflow_provider_smrt.async_inference import (
    AsyncInferenceTracker,
    AsyncInvocation,
    Watch,
    default_timeout_seconds,
    outcome_event,
    poll_sync,
    wait_sync,
)
from airflow_provider_smrt.async_inference.ids import requests_from, validate_requests
from airflow_provider_smrt.async_inference.ledger import (
    DEFAULT_FILENAME,
    LEDGER_DIRNAME,
    AsyncRequest,
    Record,
    SubmissionLedger,
    deterministic_inference_id,
    now_iso,
    render_filename,
    task_key,
)
from airflow_provider_smrt.async_inference.results import submission_summary, with_wait
from airflow_provider_smrt.exceptions import InvocationError, ModelError, ParameterValidationError
from airflow_provider_smrt.hooks.s3 import S3ClientMixin
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook, Transport, check_transport
from airflow_provider_smrt.lineage import RunLineage, async_lineage_after_wait, async_run_lineage, to_operator_lineage
from airflow_provider_smrt.links import SageMakerEndpointLink, SageMakerModelLogsLink, persist_links
from airflow_provider_smrt.operators._async_submit import submit_all
from airflow_provider_smrt.operators._failures import fails_fast
from airflow_provider_smrt.operators._masking import MaskSensitiveFieldsMixin
from airflow_provider_smrt.operators.async_batch_score import (
    DEFAULT_ASYNC_PAYLOAD_BYTES,
    MAX_ASYNC_PAYLOAD_BYTES,
    PARQUET_PARAMETERS,
    SageMakerAsyncBatchScoreOperator,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.triggers.async_inference import defer_wait, resume_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "DEFAULT_ASYNC_PAYLOAD_BYTES",
    "DEFAULT_FILENAME",
    "LEDGER_DIRNAME",
    "MAX_ASYNC_PAYLOAD_BYTES",
    "AsyncRequest",
    "SageMakerInvokeEndpointAsyncOperator",
    "deterministic_inference_id",
]


class SageMakerInvokeEndpointAsyncOperator(
    MaskSensitiveFieldsMixin, S3ClientMixin, AwsBaseOperator[SageMakerRuntimeHook]
):
    """Submit InvokeEndpointAsync requests (S3 inputs or inline bodies) and optionally wait for their results.

    Requests are sent with at most ``concurrency`` in flight and the hook's retry policy. They are
    idempotent under task retries (see the module documentation: deterministic inference ids and
    output names, and an S3 ledger of submissions). Returns (XCom) a summary of the same size whatever
    the number of requests: ``endpoint_name``, ``ledger_uri`` (the S3 object holding every request's
    record), ``requests``, ``submitted`` (by this try), ``resumed`` (recorded by an earlier try),
    ``waited``; when it waited, ``succeeded``, ``failed``, ``pending`` and ``first_failures`` (the first 10
    failed requests: ``input``, ``inference_id``, ``failure_location``, ``error``; never the failure
    message); ``invocations`` holds the one record only when there is no ledger (an inline body without
    ``ledger_uri``). Read the per-request records with
    :func:`~airflow_provider_smrt.async_inference.results.read_records` (as submitted) or
    :func:`~airflow_provider_smrt.async_inference.results.read_results` (with their statuses). Feed the
    summary to :class:`~airflow_provider_smrt.sensors.async_inference.SageMakerAsyncInferenceSensor`.

    :param endpoint_name: the SageMaker endpoint (with an async inference config). (templated)
    :param input_location: an ``s3://`` URI, or a list of them, one request each. (templated)
    :param body: one inline payload (bytes, or str sent as UTF-8) of at most 128,000 bytes. Not templated:
        a rendered payload would be stored with the task's rendered fields.
    :param content_type: the payload's MIME type (``X-Amzn-SageMaker-Content-Type``). (templated)
    :param accept: the wanted response MIME type. (templated)
    :param custom_attributes: opaque model information, at most 1024 visible ASCII characters; sensitive,
        never logged. (templated)
    :param inference_id: a prefix for the generated inference ids (default: the task id); with a single
        request and ``deterministic_ids=False``, the id itself. (templated)
    :param request_ttl_seconds: seconds a request may wait in the queue (60-21600; service default 21600).
    :param invocation_timeout_seconds: seconds the model may take (1-3600; service default 900).
    :param s3_output_path_extension: a path appended to the endpoint's S3OutputPath. (templated)
    :param filename: the output object's name (the service allows 1-32 characters, at most one dot);
        ``{output_id}`` is replaced by a 24-character digest of each request's inference id (default
        ``"{output_id}.out"``; ``None`` lets the service choose). ``{inference_id}`` is replaced by the id
        itself, which fits only with short ids (``deterministic_ids=False``). A name without a placeholder
        is only allowed for a single request. (templated)
    :param deterministic_ids: derive inference ids from the task instance and the input (default True).
    :param concurrency: requests in flight at most.
    :param invoke_retry_policy: attempts and backoff of each request (default: the hook's). Not named
        ``retry_policy``: that is Airflow's own task retry policy (``BaseOperator.retry_policy``).
    :param ledger_uri: the S3 object (or a prefix ending in ``/``) where submissions are recorded;
        default under the first S3 input's directory. (templated)
    :param ledger_flush_seconds: accepted for compatibility and unused: every submission is recorded as
        its response arrives.
    :param resubmit: ignore the ledger and existing outputs and submit every request again.
    :param wait_for_completion: wait until every output (or failure) object exists.
    :param deferrable: wait in the triggerer instead of the worker (implies ``wait_for_completion``).
    :param poke_interval: seconds between checks while waiting.
    :param max_failures: failed invocations tolerated while waiting.
    :param wait_timeout: seconds to wait at most (default: the requests' TTL + invocation timeout + 60).
    :param kwargs: the operator's base arguments; ``input_uri`` is deprecated: use
        :class:`~airflow_provider_smrt.operators.async_batch_score.SageMakerAsyncBatchScoreOperator`, which
        ``input_uri`` (with ``output_uri``, ``staging_uri``, ``feature_columns``, ``passthrough_columns``,
        ``prediction_columns``, ``max_payload_bytes``, ``max_rows_per_request``, ``max_error_ratio``,
        ``if_exists``) still runs, with the parameters of the same names. (templated)
    :param transport: how requests are sent: ``"auto"`` (the hook's lean signed transport where the
        connection allows it, botocore's client otherwise) or ``"botocore"`` (always botocore's client).
    :param str|None aws_conn_id: the Airflow AWS connection. (templated)
    :param str|None region_name: the AWS region. (templated)
    :param bool|str|None verify: SSL certificate verification. (templated)
    :param dict|None botocore_config: botocore client configuration (dict).
    """

    aws_hook_class = SageMakerRuntimeHook
    template_fields: Sequence[str] = aws_template_fields(
        "endpoint_name",
        "input_location",
        "content_type",
        "accept",
        "custom_attributes",
        "inference_id",
        "s3_output_path_extension",
        "filename",
        "ledger_uri",
        "input_uri",
        "output_uri",
        "staging_uri",
    )
    ui_color = "#c5e0b4"
    operator_extra_links = (SageMakerEndpointLink(), SageMakerModelLogsLink())

    def __init__(
        self,
        *,
        endpoint_name: str,
        input_location: str | list[str] | None = None,
        body: bytes | str | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        request_ttl_seconds: int | None = None,
        invocation_timeout_seconds: int | None = None,
        s3_output_path_extension: str | None = None,
        filename: str | None = "{output_id}.out",
        deterministic_ids: bool = True,
        concurrency: int = 8,
        invoke_retry_policy: RetryPolicy | None = None,
        ledger_uri: str | None = None,
        ledger_flush_seconds: float = 2.0,
        resubmit: bool = False,
        wait_for_completion: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float = 10.0,
        max_failures: int = 0,
        wait_timeout: float | None = None,
        transport: Transport = "auto",
        **kwargs: Any,
    ) -> None:
        parquet = {name: kwargs.pop(name) for name in PARQUET_PARAMETERS if name in kwargs}
        super().__init__(**kwargs)
        check_transport(transport)
        self.transport = transport
        if parquet.get("input_uri") is not None:
            warnings.warn(
                "SageMakerInvokeEndpointAsyncOperator(input_uri=...) is deprecated: score Parquet datasets "
                "through async inference with airflow_provider_smrt.operators.async_batch_score."
                "SageMakerAsyncBatchScoreOperator (same parameters)",
                DeprecationWarning,
                stacklevel=2,
            )
        if concurrency < 1:
            raise ParameterValidationError("concurrency must be at least 1")
        if max_failures < 0:
            raise ParameterValidationError("max_failures must be 0 or more")
        self.endpoint_name = endpoint_name
        self.input_location = input_location
        self.body = body
        self.content_type = content_type
        self.accept = accept
        self.custom_attributes = custom_attributes
        self.inference_id = inference_id
        self.request_ttl_seconds = request_ttl_seconds
        self.invocation_timeout_seconds = invocation_timeout_seconds
        self.s3_output_path_extension = s3_output_path_extension
        self.filename = filename
        self.deterministic_ids = deterministic_ids
        self.concurrency = concurrency
        self.invoke_retry_policy = invoke_retry_policy
        self.ledger_uri = ledger_uri
        self.ledger_flush_seconds = ledger_flush_seconds
        self.resubmit = resubmit
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion or deferrable
        self.poke_interval = poke_interval
        self.max_failures = max_failures
        self.wait_timeout = wait_timeout
        # Templated, so attributes; the other Parquet parameters are only handed on.
        self.input_uri = parquet.pop("input_uri", None)
        self.output_uri = parquet.pop("output_uri", None)
        self.staging_uri = parquet.pop("staging_uri", None)
        self._parquet_params = parquet
        self._parquet: SageMakerAsyncBatchScoreOperator | None = None
        self._lineage: RunLineage | None = None

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        params = {
            **super()._hook_parameters,
            "transport": self.transport,
            "max_pool_connections": max(10, self.concurrency),
        }
        if self.invoke_retry_policy is not None:
            params["retry_policy"] = self.invoke_retry_policy
        return params

    # -- inputs ----------------------------------------------------------------------------------

    def build_requests(self, context: Context) -> list[AsyncRequest]:
        """Turn the (rendered) inputs into requests (a subclass may make them some other way)."""
        return requests_from(self.input_location, self.body, log=self.log)

    # -- execute ---------------------------------------------------------------------------------

    @fails_fast
    def execute(self, context: Context) -> Any:
        persist_links(context, self, self.endpoint_name)
        if self.input_uri is not None:
            return self._score_parquet(context)
        requests = self.build_requests(context)
        validate_requests(
            requests,
            endpoint_name=self.endpoint_name,
            filename=self.filename,
            custom_attributes=self.custom_attributes,
            request_ttl_seconds=self.request_ttl_seconds,
            invocation_timeout_seconds=self.invocation_timeout_seconds,
            s3_output_path_extension=self.s3_output_path_extension or None,
        )
        key = task_key(context["ti"])
        ids = {request.identity: self._inference_id_for(key, request, len(requests)) for request in requests}
        ledger = SubmissionLedger.for_task(
            self.s3_client, key, requests, ledger_uri=self.ledger_uri, endpoint_name=self.endpoint_name
        )
        recorded: dict[str, Record] = {}
        if ledger is None:
            self.log.warning(
                "No ledger location (inline body and no ledger_uri): a retried task cannot see this try's "
                "submissions and will submit again (same inference id and output name). Set ledger_uri."
            )
        elif self.resubmit:
            self.log.info("resubmit=True: ignoring the ledger %s", ledger.location.uri)
        else:
            recorded = ledger.previous_submissions(
                requests, ids, filename=self.filename, record=self._record, log=self.log
            )
        todo = [request for request in requests if request.identity not in recorded]
        resumed = len(requests) - len(todo)
        records = dict(recorded)
        try:
            self.hook.conn  # noqa: B018 - create the client once, before the threads share it
            submit_all(
                todo,
                functools.partial(self._submit_one, ids=ids),
                records,
                ledger=ledger,
                concurrency=self.concurrency,
                log=self.log,
                endpoint_name=self.endpoint_name,
                order=[request.identity for request in requests],
            )
        except ModelError as err:
            if err.log_stream_arn:
                SageMakerModelLogsLink.persist_arn(context, self, err.log_stream_arn)
            raise

        result = [records[request.identity] for request in requests]
        summary = submission_summary(
            endpoint_name=self.endpoint_name,
            ledger_uri=ledger.location.uri if ledger is not None else None,
            records=result,
            submitted=len(todo),
            resumed=resumed,
        )
        self._lineage = async_run_lineage(result)
        if self.wait_for_completion:
            return self._wait(context, result, summary)  # a deferrable operator resumes in execute_complete
        return summary

    # -- Parquet datasets (deprecated here) ------------------------------------------------------

    def _score_parquet(self, context: Context) -> dict[str, Any]:
        """``input_uri=``: run :class:`SageMakerAsyncBatchScoreOperator` with this operator's parameters."""
        if self.input_location is not None or self.body is not None:
            raise ParameterValidationError("pass input_uri (Parquet mode) or input_location/body, not both")
        if not self.output_uri:
            raise ParameterValidationError("Parquet mode (input_uri) needs output_uri: where parts are written")
        if self.deferrable:
            self.log.info("Parquet mode waits for its invocations in the worker; deferrable does not apply")
        self._parquet = SageMakerAsyncBatchScoreOperator.from_invoke_operator(self, self._parquet_params)
        return self._parquet.score(context)

    def on_kill(self) -> None:
        """Parquet mode: stop new invocations; unfinished parts are never committed."""
        if self._parquet is not None:
            self._parquet.on_kill()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the S3 input objects and the output objects written; None without OpenLineage."""
        return to_operator_lineage(self._lineage)

    def _inference_id_for(self, key: dict[str, Any], request: AsyncRequest, count: int) -> str:
        if not self.deterministic_ids and self.inference_id and count == 1:
            return self.inference_id
        return deterministic_inference_id(**key, identity=request.identity, prefix=self.inference_id)

    def _filename_for(self, inference_id: str) -> str | None:
        return render_filename(self.filename, inference_id)

    # -- submission ------------------------------------------------------------------------------

    def _record(
        self,
        request: AsyncRequest,
        inference_id: str,
        *,
        output_location: str,
        failure_location: str | None,
        submitted_at: str | None,
    ) -> dict[str, Any]:
        return {
            "input": request.identity,
            "inference_id": inference_id,
            "output_location": output_location,
            "failure_location": failure_location,
            "submitted_at": submitted_at,
            "request_ttl_seconds": self.request_ttl_seconds,
            "invocation_timeout_seconds": self.invocation_timeout_seconds,
        }

    def _submit_one(self, request: AsyncRequest, *, ids: dict[str, str]) -> Record:
        """Send one request (the hook retries it); its record."""
        inference_id = ids[request.identity]
        result = self.hook.invoke_endpoint_async(
            self.endpoint_name,
            input_location=request.input_location,
            body=request.body,
            content_type=self.content_type,
            accept=self.accept,
            custom_attributes=self.custom_attributes,
            inference_id=inference_id,
            request_ttl_seconds=self.request_ttl_seconds,
            invocation_timeout_seconds=self.invocation_timeout_seconds,
            s3_output_path_extension=self.s3_output_path_extension,
            filename=self._filename_for(inference_id),
            on_retry=self._log_retry,
        )
        return self._record(
            request,
            result.inference_id,
            output_location=result.output_location,
            failure_location=result.failure_location,
            submitted_at=now_iso(),
        )

    def _log_retry(self, err: InvocationError, attempt: int, delay: float) -> None:
        self.log.warning("retrying an async request (attempt %d failed: %s) in %.2fs", attempt, err.code, delay)

    # -- waiting -------------------------------------------------------------------------------

    def _wait(self, context: Context, records: list[Record], summary: dict[str, Any]) -> dict[str, Any]:
        """Wait for the results: in the triggerer (deferrable), or in the worker with the same wait loop.

        The trigger reads the records from the ledger, so its arguments stay small.
        """
        invocations = [AsyncInvocation.from_value(record) for record in records]
        timeout = self.wait_timeout if self.wait_timeout is not None else default_timeout_seconds(invocations)
        if self.deferrable:
            ledger_uri = summary["ledger_uri"]
            defer_wait(
                self,
                ledger_uri=ledger_uri,
                invocations=None if ledger_uri else records,
                timeout=timeout,
                resume_state=summary,
            )
        tracker = AsyncInferenceTracker(invocations)
        watch = Watch.for_timeout(
            tracker, timeout=timeout, poke_interval=self.poke_interval, max_failures=self.max_failures, log=self.log
        )
        outcome = wait_sync(watch, self.s3_client, poll=poll_sync)
        event = outcome_event(
            outcome.event(tracker, per_invocation=False), log=self.log, timeout_error=AirflowSensorTimeout
        )
        self._lineage = async_run_lineage(tracker.to_dicts())
        return with_wait(summary, event)

    @fails_fast
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired: the summary with the wait's counts, or raise (as the sensor does)."""
        checked = resume_from_event(event, log=self.log)
        result = with_wait(checked.get("resume_state") or {}, checked)
        self._lineage = async_lineage_after_wait(self.s3_client, result)
        return result
