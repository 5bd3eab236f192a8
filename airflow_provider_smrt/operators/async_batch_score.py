"""``SageMakerAsyncBatchScoreOperator``: score a Parquet dataset through SageMaker asynchronous inference."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_provider_smrt.async_inference import service_deadline_seconds
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.hooks.s3 import S3ClientMixin
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook, Transport, check_transport
from airflow_provider_smrt.links import SageMakerEndpointLink, SageMakerModelLogsLink, persist_links
from airflow_provider_smrt.operators._failures import fails_fast
from airflow_provider_smrt.operators._masking import MaskSensitiveFieldsMixin
from airflow_provider_smrt.operators._scoring import check_at_parse_time, scoring_config
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.async_invoker import AsyncInvoker
from airflow_provider_smrt.scoring.codecs.offload import EncodeProcesses
from airflow_provider_smrt.scoring.job import IfExists, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Default payload size (one S3 object per request) and the async input limit (1 GB).
DEFAULT_ASYNC_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_ASYNC_PAYLOAD_BYTES = 1_000_000_000
#: The deprecated ``SageMakerInvokeEndpointAsyncOperator(input_uri=...)`` parameters that are only ours.
PARQUET_PARAMETERS = (
    *("input_uri", "output_uri", "staging_uri", "feature_columns", "passthrough_columns", "prediction_columns"),
    *("max_payload_bytes", "max_rows_per_request", "max_error_ratio", "if_exists"),
)
#: The parameters we share with it.
_SHARED_WITH_INVOKE_OPERATOR = (
    *("endpoint_name", "content_type", "accept", "custom_attributes", "request_ttl_seconds"),
    *("invocation_timeout_seconds", "s3_output_path_extension", "concurrency", "invoke_retry_policy"),
    *("poke_interval", "wait_timeout", "aws_conn_id", "region_name", "verify", "botocore_config"),
)


class SageMakerAsyncBatchScoreOperator(MaskSensitiveFieldsMixin, S3ClientMixin, AwsBaseOperator[SageMakerRuntimeHook]):
    """Score a Parquet dataset through InvokeEndpointAsync, with payloads beyond the real-time 6 MiB limit.

    The dataset is cut into payloads of up to ``max_payload_bytes``, each staged in S3 and scored by
    :class:`~airflow_provider_smrt.scoring.async_invoker.AsyncInvoker` (which waits in the worker). Units,
    codecs, parts, ``_errors/``, ``_manifest.json`` and resume are exactly those of
    :class:`~airflow_provider_smrt.operators.batch_score.SageMakerBatchScoreOperator`, whose configuration
    builder it shares. Returns the scoring summary (XCom), with ``async_submitted`` and ``async_reused``.

    :param endpoint_name: the SageMaker endpoint (with an async inference config). (templated)
    :param input_uri: a Parquet dataset, as for the batch scoring operator. (templated)
    :param output_uri: where parts go. (templated)
    :param staging_uri: an ``s3://`` prefix for payloads (deleted once scored) and submission markers
        (default ``<output_uri>/_staging/``). (templated)
    :param feature_columns: columns sent to the model.
    :param passthrough_columns: columns copied next to the predictions.
    :param prediction_columns: names of the model's outputs.
    :param content_type: ``text/csv`` (default), ``application/jsonlines`` or ``application/json``. (templated)
    :param accept: the wanted response MIME type (default: ``content_type``). (templated)
    :param custom_attributes: opaque model information; sensitive, never logged. (templated)
    :param request_ttl_seconds: seconds a request may wait in the queue (60-21600; service default 21600).
    :param invocation_timeout_seconds: seconds the model may take (1-3600; service default 900).
    :param s3_output_path_extension: a path appended to the endpoint's S3OutputPath. (templated)
    :param max_payload_bytes: payload size (default 64 MiB; at most 1 GB).
    :param max_rows_per_request: rows per payload at most.
    :param concurrency: payloads in flight at most.
    :param encode_processes: child processes that encode the payloads: ``"auto"`` (default: 1 with two
        CPUs or more to run on, else 0) or a number (0: in the task's process); see
        :class:`~airflow_provider_smrt.operators.batch_score.SageMakerBatchScoreOperator`.
    :param max_error_ratio: fraction of rows allowed to fail.
    :param if_exists: ``resume``, ``overwrite`` or ``fail``.
    :param invoke_retry_policy: attempts and backoff of each request (default: the hook's).
    :param poke_interval: seconds between checks of a pending invocation (at most 2 s are used).
    :param wait_timeout: seconds to wait for one invocation (default: its TTL + invocation timeout + 60).
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
        "input_uri",
        "output_uri",
        "staging_uri",
        "content_type",
        "accept",
        "custom_attributes",
        "s3_output_path_extension",
    )
    ui_color = "#c5e0b4"
    operator_extra_links = (SageMakerEndpointLink(), SageMakerModelLogsLink())

    def __init__(
        self,
        *,
        endpoint_name: str,
        input_uri: str | list[str],
        output_uri: str,
        staging_uri: str | None = None,
        feature_columns: Sequence[str] | None = None,
        passthrough_columns: Sequence[str] | None = None,
        prediction_columns: Sequence[str] | None = None,
        content_type: str | None = "text/csv",
        accept: str | None = None,
        custom_attributes: str | None = None,
        request_ttl_seconds: int | None = None,
        invocation_timeout_seconds: int | None = None,
        s3_output_path_extension: str | None = None,
        max_payload_bytes: int = 67_108_864,
        max_rows_per_request: int | None = None,
        concurrency: int = 8,
        max_error_ratio: float = 0.0,
        if_exists: IfExists = "resume",
        invoke_retry_policy: RetryPolicy | None = None,
        poke_interval: float = 10.0,
        wait_timeout: float | None = None,
        transport: Transport = "auto",
        encode_processes: EncodeProcesses = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_transport(transport)
        self.transport = transport
        self.encode_processes = encode_processes
        if concurrency < 1:
            raise ParameterValidationError("concurrency must be at least 1")
        self.endpoint_name = endpoint_name
        self.input_uri = input_uri
        self.output_uri = output_uri
        self.staging_uri = staging_uri
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.passthrough_columns = list(passthrough_columns) if passthrough_columns is not None else None
        self.prediction_columns = list(prediction_columns) if prediction_columns is not None else None
        self.content_type = content_type
        self.accept = accept
        self.custom_attributes = custom_attributes
        self.request_ttl_seconds = request_ttl_seconds
        self.invocation_timeout_seconds = invocation_timeout_seconds
        self.s3_output_path_extension = s3_output_path_extension
        self.max_payload_bytes = max_payload_bytes
        self.max_rows_per_request = max_rows_per_request
        self.concurrency = concurrency
        self.max_error_ratio = max_error_ratio
        self.if_exists = if_exists
        self.invoke_retry_policy = invoke_retry_policy
        self.poke_interval = poke_interval
        self.wait_timeout = wait_timeout
        check_at_parse_time(self, content_type=content_type or "text/csv", payload_limit=MAX_ASYNC_PAYLOAD_BYTES)
        self._job: ScoringJob | None = None

    @classmethod
    def from_invoke_operator(cls, invoke: Any, parquet_params: dict[str, Any]) -> SageMakerAsyncBatchScoreOperator:
        """The operator running a (deprecated) ``SageMakerInvokeEndpointAsyncOperator(input_uri=...)``.

        :param invoke: the rendered invoke operator (its ``input_uri``, ``output_uri``, ``staging_uri`` and
            shared parameters are read).
        :param parquet_params: its other Parquet parameters (``feature_columns``...), as given.
        """
        return cls(
            task_id=invoke.task_id,
            input_uri=invoke.input_uri,
            output_uri=invoke.output_uri,
            staging_uri=invoke.staging_uri,
            **{name: getattr(invoke, name) for name in _SHARED_WITH_INVOKE_OPERATOR},
            **parquet_params,
        )

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

    def build_job(self, map_index: int | None = None) -> tuple[ScoringJob, AsyncInvoker]:
        """The scoring job this operator runs (after templating), and its async invoker."""
        if not self.output_uri:
            raise ParameterValidationError("output_uri is required: where parts are written")
        content_type = self.content_type or "text/csv"
        config = scoring_config(
            self,
            map_index=map_index,
            invoke_params={"custom_attributes": self.custom_attributes or None},
            content_type=content_type,
            payload_limit=MAX_ASYNC_PAYLOAD_BYTES,
        )
        submit = functools.partial(
            self.hook.invoke_endpoint_async,
            self.endpoint_name,
            content_type=content_type,
            accept=self.accept or content_type,
            custom_attributes=self.custom_attributes or None,
            request_ttl_seconds=self.request_ttl_seconds,
            invocation_timeout_seconds=self.invocation_timeout_seconds,
            s3_output_path_extension=self.s3_output_path_extension,
        )
        storage = Storage(s3_client=self.s3_client)
        invoker = AsyncInvoker(
            submit=submit,
            storage=storage,
            staging_uri=self.staging_uri or self.output_uri.rstrip("/") + "/_staging/",
            scope=f"{self.output_uri}|{self.endpoint_name}|{content_type}|{self.accept}",
            poll_interval=min(self.poke_interval, 2.0),
            timeout=self.wait_timeout
            or service_deadline_seconds(self.request_ttl_seconds, self.invocation_timeout_seconds) + 60.0,
        )
        job = ScoringJob(config=config, invoke=invoker, storage=storage, logger=self.log)  # type: ignore[arg-type]
        invoker.cancel = job.coordinator.stop
        return job, invoker

    @fails_fast
    def execute(self, context: Context) -> dict[str, Any]:
        persist_links(context, self, self.endpoint_name)
        return self.score(context)

    def score(self, context: Context) -> dict[str, Any]:
        """Run the scoring job; the summary with the count of submitted and reused invocations."""
        ti = context["ti"]
        self._job, invoker = self.build_job(getattr(ti, "map_index", None))
        summary = self._job.run()
        summary["async_submitted"] = invoker.submitted
        summary["async_reused"] = invoker.reused
        return summary

    def on_kill(self) -> None:
        """Stop new invocations; unfinished parts are never committed."""
        if self._job is not None:
            self._job.cancel("the task was killed or timed out")
