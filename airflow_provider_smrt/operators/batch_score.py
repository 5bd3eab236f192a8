"""``SageMakerBatchScoreOperator``: score a Parquet dataset against a SageMaker real-time endpoint."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_provider_smrt.exceptions import ErrorRatioExceededError, ModelError, ParameterValidationError
from airflow_provider_smrt.hooks.s3 import S3ClientMixin
from airflow_provider_smrt.hooks.sagemaker_runtime import (
    EndpointInvoker,
    SageMakerRuntimeHook,
    Transport,
    check_transport,
)
from airflow_provider_smrt.lineage import RunLineage, scoring_run_lineage, to_operator_lineage
from airflow_provider_smrt.links import SageMakerEndpointLink, SageMakerModelLogsLink, persist_links
from airflow_provider_smrt.operators._failures import fails_fast
from airflow_provider_smrt.operators._masking import MaskSensitiveFieldsMixin
from airflow_provider_smrt.operators._scoring import check_at_parse_time, scoring_config
from airflow_provider_smrt.retry import NO_RETRY, RetryPolicy
from airflow_provider_smrt.scoring.async_invoker import AsyncInvoker
from airflow_provider_smrt.scoring.codecs.offload import EncodeProcesses
from airflow_provider_smrt.scoring.job import (
    DEFAULT_CHECKPOINT_EVERY_REQUESTS,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    IfExists,
    ScoringJob,
)
from airflow_provider_smrt.scoring.storage import Storage

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smrt.scoring.pipeline import IdentifyingInvoker, InvokeResult


#: How each request is sent: InvokeEndpoint, or InvokeEndpointWithResponseStream with the parts joined.
InvokeMode = Literal["invoke", "stream"]


class SageMakerBatchScoreOperator(MaskSensitiveFieldsMixin, S3ClientMixin, AwsBaseOperator[SageMakerRuntimeHook]):
    """Score a Parquet dataset against a SageMaker real-time endpoint through InvokeEndpoint.

    Streams Parquet from S3 (or local paths), cuts it into requests under the payload limit, keeps
    ``concurrency`` requests in flight (fewer while the endpoint throttles), joins predictions to
    the pass-through columns and writes Parquet parts, ``_errors/`` and ``_manifest.json`` under
    ``output_uri``. A rerun resumes: parts already written for the same input and configuration are
    not scored again. Returns a JSON summary (XCom).

    :param endpoint_name: the SageMaker endpoint (templated).
    :param input_uri: an ``s3://bucket/prefix/``, an object, a local path, or a list of these (templated).
    :param output_uri: where parts, ``_errors/`` and the manifest go (templated); must not overlap the input.
    :param feature_columns: columns sent to the model, in this order (default: every column not passed through).
    :param passthrough_columns: columns copied to the output next to the predictions (e.g. ids).
    :param prediction_columns: names of the model's outputs (default ``prediction``, or the JSON keys).
    :param content_type: ``text/csv``, ``application/jsonlines`` or ``application/json`` (templated).
    :param accept: the response type (default: ``content_type``) (templated).
    :param encoder: dotted path of a custom encoder ``(pa.Table) -> bytes``.
    :param decoder: dotted path of a custom decoder ``(bytes, num_rows) -> pa.Table | list``.
    :param request_template: one JSON request per row (e.g. ``{"inputs": "{prompt}", "parameters": {...}}``):
        ``"{column}"`` strings take the row's value with its JSON type, placeholders inside longer strings
        are formatted as text. Sends one row per request; needs ``content_type="application/json"``.
    :param response_field: dotted path of the prediction in a JSON response, e.g. ``"generated_text"`` (a
        name applied to a list applies to its items, so ``[{"generated_text": ...}]`` works).
    :param csv_header: start every ``text/csv`` request with a line of the feature names, for containers
        that read the first line as a header (MLflow's scoring server); one prediction per row is still expected.
    :param max_payload_bytes: request size limit (at most 6,291,456; 4,000,000 for serverless endpoints).
    :param max_rows_per_request: request row limit (default: only the size limit applies).
    :param concurrency: requests in flight at most (size an Airflow pool for endpoint-wide limits).
    :param max_error_ratio: fraction of rows allowed to fail (isolated into ``_errors/``) before the task fails.
    :param if_exists: ``resume`` (default: skip finished parts), ``overwrite`` (remove this input's
        previous parts first) or ``fail`` (refuse a non-empty output).
    :param retry_failed_rows: rescore only the rows under ``_errors/`` of the finished parts (e.g. after
        fixing the model; needs ``if_exists="resume"``): each row that now succeeds moves into its data
        part at its input position, the others stay in ``_errors/``, the manifest is updated. Units not
        finished, or whose input or configuration changed, are scored in full as usual.
    :param allow_empty_input: succeed with zero rows when the input matches no object.
    :param variant_column: if set, add a column with each row's invoked production variant.
    :param custom_attributes: InvokeEndpoint CustomAttributes (templated; sensitive: registered with
        Airflow's secrets masker once rendered, never logged).
    :param target_model: multi-model endpoint target (templated).
    :param target_variant: production variant to invoke (templated).
    :param target_container_hostname: container of a multi-container endpoint (templated).
    :param inference_component_name: inference component to invoke (templated).
    :param enable_explanations: SageMaker Clarify explanation expression (templated).
    :param s3_write_args: extra arguments for every S3 write of outputs, e.g.
        ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:..."}``.
    :param expected_bucket_owner: account id sent as ``ExpectedBucketOwner`` on every S3 call.
    :param checkpoint_interval_seconds: a unit (up to 131,072 rows, one output part) being scored leaves
        durable progress under ``_checkpoints/`` this often (seconds; default 10; None: no time trigger)...
    :param checkpoint_every_requests: ... or after this many requests, whichever comes first (default 64;
        None: no request trigger). A rerun sends only the rows no checkpoint or part holds, so a kill
        loses at most the requests in flight and one interval. Both None: no checkpoints.
    :param max_attempts: attempts per request, the first included (retryable errors only).
    :param progress_interval: seconds between progress lines in the task log.
    :param inference_id_prefix: if set, every request carries a deterministic InferenceId: this prefix
        (1-33 printable ASCII characters, templated), a digest of the work unit and the request's rows
        (see :func:`~airflow_provider_smrt.scoring.inference_ids.inference_id`); failed rows keep it in
        ``_errors/`` (``inference_id``), to be matched with the endpoint's data capture and logs.
    :param instance_hourly_usd: on-demand price of one endpoint instance per hour (USD): the summary then
        carries ``estimated_cost_usd`` = ``busy_wall_seconds / 3600 * instance_count * instance_hourly_usd``
        (an estimate, see docs/cost.md).
    :param instance_count: instances behind the endpoint, for the cost estimate (default 1).
    :param oversize_endpoint_name: an asynchronous endpoint hosting the same model (templated): a row whose
        one-row request exceeds ``max_payload_bytes`` is staged under ``<output_uri>/_staging/``, sent
        through InvokeEndpointAsync, waited for and written at its position in the same part (counted in
        ``rows_async``; its failure goes to ``_errors/``). Unset: such a row fails the task (RowTooLargeError).
    :param oversize_wait_timeout: seconds to wait for one oversize row's async output.
    :param compare_targets: shadow / A-B scoring in one read of the input (not templated): a list of at
        least two dicts, each a ``name`` (``[A-Za-z0-9_]+``, unique) and any of ``target_variant``,
        ``target_model``, ``inference_component_name``, ``target_container_hostname``. Each request goes
        to every target; the output has each target's prediction columns suffixed ``__<name>``
        (``prediction__prod``, ``prediction__shadow``), nulls where that target failed the row (its
        ``_errors/`` row names it in ``target``); the summary's ``compare_targets`` reports per target
        rows scored and failed, latency p50/p95 and agreement with the first target. Excludes the four
        single-target parameters, ``oversize_endpoint_name`` and ``retry_failed_rows``
        (docs/features/compare-targets.md).
    :param invoke_mode: ``"invoke"`` (InvokeEndpoint) or ``"stream"`` (InvokeEndpointWithResponseStream,
        for containers that only stream: each response's payload parts are joined, then decoded; a
        stream that breaks off is classified and retried whole, never half-used).
    :param encode_processes: child processes that encode request bodies, so the task's process keeps its
        CPU for the calls: ``"auto"`` (default: 1 when the task may run on two CPUs or more, else 0), or a
        number (0: encode in the task's process). Applies to the built-in CSV and JSON encoders; bodies
        are byte for byte the same (docs/performance.md).
    :param transport: how requests are sent: ``"auto"`` (the hook's lean signed transport where the
        connection allows it, botocore's client otherwise) or ``"botocore"`` (always botocore's client).
    :param str|None aws_conn_id: the Airflow AWS connection (credentials, region, endpoint URLs).
    :param str|None region_name: AWS region (default: the connection's).
    :param bool|str|None verify: TLS verification for boto3.
    :param dict|None botocore_config: botocore ``Config`` keyword arguments (its retries are replaced by ours).
    """

    aws_hook_class = SageMakerRuntimeHook
    template_fields: Sequence[str] = aws_template_fields(
        "endpoint_name",
        "input_uri",
        "output_uri",
        "content_type",
        "accept",
        "custom_attributes",
        "target_model",
        "target_variant",
        "target_container_hostname",
        "inference_component_name",
        "enable_explanations",
        "inference_id_prefix",
        "oversize_endpoint_name",
    )
    ui_color = "#ffb27d"
    operator_extra_links = (SageMakerEndpointLink(), SageMakerModelLogsLink())

    def __init__(
        self,
        *,
        endpoint_name: str,
        input_uri: str | list[str],
        output_uri: str,
        feature_columns: Sequence[str] | None = None,
        passthrough_columns: Sequence[str] | None = None,
        prediction_columns: Sequence[str] | None = None,
        content_type: str = "text/csv",
        accept: str | None = None,
        encoder: str | None = None,
        decoder: str | None = None,
        request_template: dict[str, Any] | None = None,
        response_field: str | None = None,
        csv_header: bool = False,
        max_payload_bytes: int = 5_242_880,
        max_rows_per_request: int | None = None,
        concurrency: int = 8,
        max_error_ratio: float = 0.0,
        if_exists: IfExists = "resume",
        retry_failed_rows: bool = False,
        allow_empty_input: bool = False,
        variant_column: str | None = None,
        custom_attributes: str | None = None,
        target_model: str | None = None,
        target_variant: str | None = None,
        target_container_hostname: str | None = None,
        inference_component_name: str | None = None,
        enable_explanations: str | None = None,
        s3_write_args: dict[str, Any] | None = None,
        expected_bucket_owner: str | None = None,
        checkpoint_interval_seconds: float | None = DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
        checkpoint_every_requests: int | None = DEFAULT_CHECKPOINT_EVERY_REQUESTS,
        max_attempts: int = 8,
        progress_interval: float = 5.0,
        inference_id_prefix: str | None = None,
        instance_hourly_usd: float | None = None,
        instance_count: int = 1,
        transport: Transport = "auto",
        invoke_mode: InvokeMode = "invoke",
        oversize_endpoint_name: str | None = None,
        oversize_wait_timeout: float = 3_600.0,
        compare_targets: list[dict[str, str]] | None = None,
        encode_processes: EncodeProcesses = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.compare_targets = compare_targets
        self.encode_processes = encode_processes
        if compare_targets is not None:
            single = [
                name
                for name, value in (
                    ("target_variant", target_variant),
                    ("target_model", target_model),
                    ("inference_component_name", inference_component_name),
                    ("target_container_hostname", target_container_hostname),
                )
                if value
            ]
            if single:
                raise ParameterValidationError(
                    f"compare_targets sets each target's parameters: drop {', '.join(single)} (put it into the "
                    "targets' dicts), or drop compare_targets to score one target"
                )
        check_transport(transport)
        if invoke_mode not in ("invoke", "stream"):
            raise ParameterValidationError(f"invoke_mode={invoke_mode!r} must be 'invoke' or 'stream'")
        self.invoke_mode = invoke_mode
        self.oversize_endpoint_name = oversize_endpoint_name
        self.oversize_wait_timeout = oversize_wait_timeout
        self.transport = transport
        self.endpoint_name = endpoint_name
        self.input_uri = input_uri
        self.output_uri = output_uri
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.passthrough_columns = list(passthrough_columns) if passthrough_columns is not None else None
        self.prediction_columns = list(prediction_columns) if prediction_columns is not None else None
        self.content_type = content_type
        self.accept = accept
        self.encoder = encoder
        self.decoder = decoder
        self.request_template = request_template
        self.response_field = response_field
        self.csv_header = csv_header
        self.max_payload_bytes = max_payload_bytes
        self.max_rows_per_request = max_rows_per_request
        self.concurrency = concurrency
        self.max_error_ratio = max_error_ratio
        self.if_exists = if_exists
        self.retry_failed_rows = retry_failed_rows
        self.allow_empty_input = allow_empty_input
        self.variant_column = variant_column
        self.custom_attributes = custom_attributes
        self.target_model = target_model
        self.target_variant = target_variant
        self.target_container_hostname = target_container_hostname
        self.inference_component_name = inference_component_name
        self.enable_explanations = enable_explanations
        self.s3_write_args = dict(s3_write_args or {})
        self.expected_bucket_owner = expected_bucket_owner
        self.checkpoint_interval_seconds = checkpoint_interval_seconds
        self.checkpoint_every_requests = checkpoint_every_requests
        self.max_attempts = max_attempts
        self.progress_interval = progress_interval
        self.inference_id_prefix = inference_id_prefix
        self.instance_hourly_usd = instance_hourly_usd
        self.instance_count = instance_count
        check_at_parse_time(self)
        self._job: ScoringJob | None = None
        self._lineage: RunLineage | None = None
        self._model_log_stream_arn: str | None = None

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {**super()._hook_parameters, "transport": self.transport, "max_pool_connections": self.concurrency + 2}

    def _invoke_params(self) -> dict[str, Any]:
        """InvokeEndpoint parameters; empty strings (e.g. from an unset templated param) mean "not set"."""
        params = {
            "content_type": self.content_type,
            "accept": self.accept or self.content_type,
            "custom_attributes": self.custom_attributes,
            "target_model": self.target_model,
            "target_variant": self.target_variant,
            "target_container_hostname": self.target_container_hostname,
            "inference_component_name": self.inference_component_name,
            "enable_explanations": self.enable_explanations,
        }
        return {key: value if value != "" else None for key, value in params.items()}

    def build_job(self, map_index: int | None = None) -> ScoringJob:
        """The scoring job this operator runs (after templating)."""
        params = self._invoke_params()
        self.oversize_endpoint_name = self.oversize_endpoint_name or None
        config = scoring_config(
            self,
            map_index=map_index,
            invoke_params={key: value for key, value in params.items() if key not in ("content_type", "accept")},
            inference_id_prefix=self.inference_id_prefix or None,
        )
        storage = Storage(
            s3_client=self.s3_client,
            write_extra_args=self.s3_write_args,
            expected_bucket_owner=self.expected_bucket_owner,
        )
        oversize = self._oversize_invoker(params, storage) if self.oversize_endpoint_name else None
        targets = config.targets
        target_invokers = (
            {
                target.name: self._recording_model_errors(self._make_invoker({**params, **target.params}))
                for target in targets
            }
            if targets is not None
            else None
        )
        job = ScoringJob(
            config=config,
            invoke=self._recording_model_errors(self._make_invoker(params)),
            storage=storage,
            retry_policy=RetryPolicy(max_attempts=self.max_attempts),
            progress_interval=self.progress_interval,
            logger=self.log,  # type: ignore[arg-type]
            oversize_invoke=oversize,
            target_invokers=target_invokers,
        )
        if oversize is not None:
            oversize.cancel = job.coordinator.stop
        return job

    def _oversize_invoker(self, params: dict[str, Any], storage: Storage) -> AsyncInvoker:
        """The async invoker of ``oversize_endpoint_name``: payloads staged under ``<output_uri>/_staging/``."""
        endpoint = str(self.oversize_endpoint_name)
        submit = functools.partial(
            self.hook.invoke_endpoint_async,
            endpoint,
            content_type=params["content_type"],
            accept=params["accept"],
            custom_attributes=params["custom_attributes"],
            retry_policy=NO_RETRY,  # the core's policy retries the whole invocation
        )
        return AsyncInvoker(
            submit=submit,
            storage=storage,
            staging_uri=str(self.output_uri).rstrip("/") + "/_staging/",
            scope=f"{self.output_uri}|{endpoint}|{params['content_type']}|{params['accept']}",
            poll_interval=1.0,
            timeout=self.oversize_wait_timeout,
        )

    def _make_invoker(self, params: dict[str, Any]) -> EndpointInvoker:
        if self.invoke_mode == "stream":
            return self.hook.make_stream_invoker(self.endpoint_name, **params)
        return self.hook.make_invoker(self.endpoint_name, **params)

    def _recording_model_errors(self, invoke: EndpointInvoker) -> IdentifyingInvoker:
        """Wrap the invoker to remember the ``LogStreamArn`` of the last ModelError (for the logs link)."""

        def recording(body: bytes, inference_id: str | None = None) -> InvokeResult:
            try:
                return invoke(body, inference_id)
            except ModelError as err:
                if err.log_stream_arn:
                    self._model_log_stream_arn = err.log_stream_arn
                raise

        return recording

    @fails_fast
    def execute(self, context: Context) -> dict[str, Any]:
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", None)
        persist_links(context, self, self.endpoint_name)
        self._job = self.build_job(map_index)
        try:
            summary = self._job.run()
            summary["transport"] = self.hook.transport_in_use
        except ErrorRatioExceededError:
            if not self._model_log_stream_arn:  # e.g. a rerun failing on rows an earlier try isolated
                SageMakerModelLogsLink.persist_endpoint_log_group(context, self, self.endpoint_name)
            raise
        finally:
            if self._model_log_stream_arn:
                SageMakerModelLogsLink.persist_arn(context, self, self._model_log_stream_arn)
        self._record_lineage(summary)
        self._annotate_outlet_events(context, summary)
        return summary

    def _record_lineage(self, summary: dict[str, Any]) -> None:
        if self._job is None:
            return
        try:
            self._lineage = scoring_run_lineage(self._job, summary)
        except Exception as err:  # noqa: BLE001 - lineage is never worth failing a finished run
            self.log.warning("could not describe the run's lineage: %s", type(err).__name__)

    def _annotate_outlet_events(self, context: Context, summary: dict[str, Any]) -> None:
        """Add the run's counts and locations to the asset events of outlets naming ``output_uri``."""
        from airflow.sdk import Asset

        events = context.get("outlet_events")
        if events is None:
            return
        extra = {
            key: summary[key]
            for key in ("endpoint_name", "output_uri", "manifest_uri", "rows_in", "rows_scored", "rows_failed")
        }
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset) and outlet.uri.rstrip("/") == str(self.output_uri).rstrip("/"):
                events[outlet].extra.update(extra)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the inputs (with the scored and pass-through columns) and the output (pass-through
        and prediction columns), learnt during ``execute``; None when OpenLineage is not installed."""
        return to_operator_lineage(self._lineage)

    def on_kill(self) -> None:
        """Stop new requests; in-flight requests finish; unfinished parts are never committed."""
        if self._job is not None:
            self._job.cancel("the task was killed or timed out")
