"""``SageMakerInvokeEndpointAsyncOperator``: submit InvokeEndpointAsync requests, idempotently.

Idempotency (task retries, cleared tasks, a worker killed mid-submission)
------------------------------------------------------------------------
SageMaker does not deduplicate async requests: the same request sent twice is scored twice. The
operator therefore makes every submission *deterministic* and *recorded*:

1. **Deterministic inference id.** Each request's ``InferenceId`` is
   ``<task_id slug>-<sha256(dag_id, task_id, run_id, map_index, input)[:40]>`` (at most 64
   characters), where *input* is the InputLocation URI or ``inline:sha256:<hex>`` of the body. The
   same task instance always sends the same id for the same input.
2. **Deterministic output key.** ``Filename`` defaults to ``"{inference_id}.out"``, so a request
   that *is* sent twice writes the same output key with the same content: a duplicate costs model
   time but never produces a second, divergent result.
3. **A ledger in S3.** The records of submitted requests (input, inference id, OutputLocation,
   FailureLocation, submitted_at) are written to one JSON object per task instance (map index
   included), at ``ledger_uri`` or by default under the first input's directory:
   ``<input dir>/_smrt_async_ledger/<dag_id>/<task_id>/<sha256(run_id, map_index)[:32]>.json``.
   The ledger is written every ``ledger_flush_seconds`` while submitting and always at the end (also
   when a submission fails). A later try of the same task instance reads it first and does not
   resubmit what it lists; its records (with their original ``submitted_at``) are returned again.
   For inputs the ledger lacks (the worker died between a submission and the next flush), the
   operator predicts the output (and failure) key from a recorded sibling and the deterministic
   ``Filename`` and skips the request when that object already exists.

Why not XCom: Airflow clears a task instance's XCom when a new try starts. Why not a ledger "next
to the output": the OutputLocation is only known from the first response, so a retry could not
find it. Inline bodies without any S3 input need ``ledger_uri`` for the ledger; without it the
operator still relies on (1) and (2) and logs a warning. ``resubmit=True`` ignores the ledger.

Extension point: Parquet mode
-----------------------------
:meth:`SageMakerInvokeEndpointAsyncOperator.build_requests` turns the operator's inputs into a list
of :class:`AsyncRequest`. A future Parquet mode (``input_uri``: a dataset cut into payload objects
uploaded to S3) overrides or extends only that method, returning one :class:`AsyncRequest` per
uploaded object; ids, the ledger, bounded submission, waiting and XCom stay as they are.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_provider_smrt._compat import conf
from airflow_provider_smrt.async_inference import (
    AsyncInferenceTracker,
    AsyncInvocation,
    S3Location,
    default_timeout_seconds,
    poll_sync,
    service_deadline_seconds,
)
from airflow_provider_smrt.exceptions import (
    AsyncInferenceFailedError,
    InvocationError,
    ModelError,
    ParameterValidationError,
    SmrtError,
)
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
from airflow_provider_smrt.invocation import MAX_ASYNC_INLINE_BODY_BYTES
from airflow_provider_smrt.lineage import RunLineage, async_run_lineage, to_operator_lineage
from airflow_provider_smrt.links import SageMakerEndpointLink, SageMakerModelLogsLink, persist_links
from airflow_provider_smrt.operators._masking import MaskSensitiveFieldsMixin
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.async_invoker import AsyncInvoker
from airflow_provider_smrt.scoring.job import IfExists, ScoringConfig, ScoringJob, manifest_name_for
from airflow_provider_smrt.scoring.storage import Storage
from airflow_provider_smrt.triggers.async_inference import SageMakerAsyncInferenceTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Parquet mode: default payload size (one S3 object per request) and the async input limit (1 GB).
DEFAULT_ASYNC_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_ASYNC_PAYLOAD_BYTES = 1_000_000_000
#: Default ``filename``: the output key ends with the (deterministic) inference id.
DEFAULT_FILENAME = "{inference_id}.out"
LEDGER_DIRNAME = "_smrt_async_ledger"
_LEDGER_VERSION = 1
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


class _BoundedSubmitter:
    """Run calls on a thread pool with at most ``limit`` in flight: a slot is taken *before* submitting.

    As s3transfer's BoundedExecutor: the producer blocks instead of queueing without bound. The first
    error is kept; once it is set nothing new is submitted.
    """

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="smrt-async")
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any], *, on_wait: Callable[[], None]) -> Future[Any] | None:
        """Submit ``fn`` once a slot is free; call ``on_wait`` while waiting. None once an error is set."""
        while not self._slots.acquire(timeout=0.5):
            on_wait()
        if self.first_error is not None:
            self._slots.release()
            return None
        future = self._pool.submit(fn)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        err = future.exception()
        if err is not None:
            with self._lock:
                if self.first_error is None:
                    self.first_error = err
        self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class SageMakerInvokeEndpointAsyncOperator(MaskSensitiveFieldsMixin, AwsBaseOperator[SageMakerRuntimeHook]):
    """Submit InvokeEndpointAsync requests (S3 inputs or inline bodies) and optionally wait for their results.

    Requests are sent with at most ``concurrency`` in flight and the hook's retry policy. They are
    idempotent under task retries (see the module documentation: deterministic inference ids and
    output names, and an S3 ledger of submissions). Returns (XCom) one dict per request: ``input``,
    ``inference_id``, ``output_location``, ``failure_location``, ``submitted_at`` (ISO 8601 UTC),
    plus ``request_ttl_seconds`` and ``invocation_timeout_seconds``; when it waited, also ``status``,
    ``output_size``, ``completed_at`` and ``time_to_completion_seconds``. Feed the list to
    :class:`~airflow_provider_smrt.sensors.async_inference.SageMakerAsyncInferenceSensor`.

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
    :param filename: the output object's name; ``{inference_id}`` is replaced by each request's id
        (default ``"{inference_id}.out"``; ``None`` lets the service choose). A name without
        ``{inference_id}`` is only allowed for a single request. (templated)
    :param deterministic_ids: derive inference ids from the task instance and the input (default True).
    :param concurrency: requests in flight at most.
    :param invoke_retry_policy: attempts and backoff of each request (default: the hook's). Not named
        ``retry_policy``: that is Airflow's own task retry policy (``BaseOperator.retry_policy``).
    :param ledger_uri: the S3 object (or a prefix ending in ``/``) where submissions are recorded;
        default under the first S3 input's directory. (templated)
    :param ledger_flush_seconds: how often the ledger is rewritten while submitting.
    :param resubmit: ignore the ledger and existing outputs and submit every request again.
    :param wait_for_completion: wait until every output (or failure) object exists.
    :param deferrable: wait in the triggerer instead of the worker (implies ``wait_for_completion``).
    :param poke_interval: seconds between checks while waiting.
    :param max_failures: failed invocations tolerated while waiting.
    :param wait_timeout: seconds to wait at most (default: the requests' TTL + invocation timeout + 60).
    :param input_uri: Parquet mode: a Parquet dataset (as for the batch scoring operator) cut into payloads
        of up to ``max_payload_bytes``, staged in S3 and scored through InvokeEndpointAsync; the result is
        written as parts, ``_errors/`` and ``_manifest.json`` under ``output_uri`` exactly as batch scoring
        does, and the task returns the scoring summary. Waits in the worker. (templated)
    :param output_uri: Parquet mode: where parts go. (templated)
    :param staging_uri: Parquet mode: an ``s3://`` prefix for payloads (deleted once scored) and submission
        markers (default ``<output_uri>/_staging/``). (templated)
    :param feature_columns: Parquet mode: columns sent to the model.
    :param passthrough_columns: Parquet mode: columns copied next to the predictions.
    :param prediction_columns: Parquet mode: names of the model's outputs.
    :param max_payload_bytes: Parquet mode: payload size (default 64 MiB; at most 1 GB).
    :param max_rows_per_request: Parquet mode: rows per payload at most.
    :param max_error_ratio: Parquet mode: fraction of rows allowed to fail.
    :param if_exists: Parquet mode: ``resume``, ``overwrite`` or ``fail``.
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
        filename: str | None = DEFAULT_FILENAME,
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
        input_uri: str | list[str] | None = None,
        output_uri: str | None = None,
        staging_uri: str | None = None,
        feature_columns: Sequence[str] | None = None,
        passthrough_columns: Sequence[str] | None = None,
        prediction_columns: Sequence[str] | None = None,
        max_payload_bytes: int = DEFAULT_ASYNC_PAYLOAD_BYTES,
        max_rows_per_request: int | None = None,
        max_error_ratio: float = 0.0,
        if_exists: IfExists = "resume",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        self.input_uri = input_uri
        self.output_uri = output_uri
        self.staging_uri = staging_uri
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.passthrough_columns = list(passthrough_columns) if passthrough_columns is not None else None
        self.prediction_columns = list(prediction_columns) if prediction_columns is not None else None
        self.max_payload_bytes = max_payload_bytes
        self.max_rows_per_request = max_rows_per_request
        self.max_error_ratio = max_error_ratio
        self.if_exists = if_exists
        self._job: ScoringJob | None = None
        self._lineage: RunLineage | None = None

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        params = {**super()._hook_parameters, "max_pool_connections": max(10, self.concurrency)}
        if self.invoke_retry_policy is not None:
            params["retry_policy"] = self.invoke_retry_policy
        return params

    @cached_property
    def s3_client(self) -> Any:
        """A boto3 S3 client from the same connection (ledger, existence checks, waiting)."""
        return AwsBaseHook(
            aws_conn_id=self.aws_conn_id,
            client_type="s3",
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        ).conn

    # -- inputs: the extension point -------------------------------------------------------------

    def build_requests(self, context: Context) -> list[AsyncRequest]:
        """Turn the (rendered) inputs into requests. **Extension point for Parquet mode.**

        A future ``input_uri`` (Parquet) mode overrides or extends this method: it cuts the dataset into
        payload objects, uploads them to S3 (deterministic keys, so a retry finds them) and returns one
        ``AsyncRequest(input_location=...)`` per object. Everything after this call is shared.
        """
        if (self.input_location is None) == (self.body is None):
            raise ParameterValidationError(
                "pass exactly one of input_location (an s3:// URI or a list of them) or body (inline, "
                f"<= {MAX_ASYNC_INLINE_BODY_BYTES:,} bytes)"
            )
        if self.body is not None:
            body = self.body.encode("utf-8") if isinstance(self.body, str) else bytes(self.body)
            return [AsyncRequest(body=body)]
        locations = [self.input_location] if isinstance(self.input_location, str) else list(self.input_location or [])
        if not locations:
            raise ParameterValidationError("input_location is an empty list: nothing to submit")
        requests: list[AsyncRequest] = []
        seen: set[str] = set()
        for location in locations:
            if not isinstance(location, str):
                raise ParameterValidationError(f"input_location entries must be strings, got {type(location).__name__}")
            if location in seen:
                self.log.warning("input %s is listed more than once; it is submitted once", location)
                continue
            seen.add(location)
            requests.append(AsyncRequest(input_location=location))
        return requests

    # -- execute ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        persist_links(context, self, self.endpoint_name)
        if self.input_uri is not None:
            return self._execute_parquet(context)
        requests = self.build_requests(context)
        self._validate(requests)
        ti = context["ti"]
        key = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "map_index": getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1,
        }
        ids = {request.identity: self._inference_id_for(key, request, len(requests)) for request in requests}

        ledger = self._ledger_location(key, requests)
        recorded: dict[str, dict[str, Any]] = {}
        if ledger is None:
            self.log.warning(
                "No ledger location (inline body and no ledger_uri): a retried task cannot see this try's "
                "submissions and will submit again (same inference id and output name). Set ledger_uri."
            )
        elif self.resubmit:
            self.log.info("resubmit=True: ignoring the ledger %s", ledger.uri)
        else:
            recorded = self._read_ledger(ledger)
            recovered = self._recover_unrecorded(requests, ids, recorded)
            recorded.update(recovered)
            if recorded:
                self.log.info(
                    "%d of %d request(s) were already submitted by an earlier try (ledger %s); not resubmitting them",
                    sum(1 for r in requests if r.identity in recorded),
                    len(requests),
                    ledger.uri,
                )
                if recovered:
                    self._write_ledger(ledger, key, recorded)

        todo = [request for request in requests if request.identity not in recorded]
        records = dict(recorded)
        try:
            self._submit_all(todo, ids, records, ledger, key)
        except ModelError as err:
            if err.log_stream_arn:
                SageMakerModelLogsLink.persist_arn(context, self, err.log_stream_arn)
            raise

        result = [records[request.identity] for request in requests]
        if self.wait_for_completion:
            result = self._wait(context, result)  # a deferrable operator resumes in execute_complete instead
        self._lineage = async_run_lineage(result)
        return result

    # -- Parquet mode ----------------------------------------------------------------------------

    def _execute_parquet(self, context: Context) -> dict[str, Any]:
        """Score a Parquet dataset through InvokeEndpointAsync with the batch scoring pipeline.

        Units, codecs, parts, ``_errors/``, the manifest and resume are exactly those of
        :class:`~airflow_provider_smrt.operators.batch_score.SageMakerBatchScoreOperator`; each request
        is staged in S3 and scored by :class:`~airflow_provider_smrt.scoring.async_invoker.AsyncInvoker`,
        which waits in the worker (``deferrable`` does not apply to this mode). Returns the scoring summary.
        """
        if self.input_location is not None or self.body is not None:
            raise ParameterValidationError("pass input_uri (Parquet mode) or input_location/body, not both")
        if not self.output_uri:
            raise ParameterValidationError("Parquet mode (input_uri) needs output_uri: where parts are written")
        if self.deferrable:
            self.log.info("Parquet mode waits for its invocations in the worker; deferrable does not apply")
        staging = self.staging_uri or self.output_uri.rstrip("/") + "/_staging/"
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        content_type = self.content_type or "text/csv"
        config = ScoringConfig(
            endpoint_name=self.endpoint_name,
            input_uri=self.input_uri,  # type: ignore[arg-type]
            output_uri=self.output_uri,
            feature_columns=self.feature_columns,
            passthrough_columns=self.passthrough_columns,
            prediction_columns=self.prediction_columns,
            content_type=content_type,
            accept=self.accept,
            max_payload_bytes=self.max_payload_bytes,
            max_rows_per_request=self.max_rows_per_request,
            concurrency=self.concurrency,
            max_error_ratio=self.max_error_ratio,
            if_exists=self.if_exists,
            manifest_name=manifest_name_for(map_index),
            payload_limit=MAX_ASYNC_PAYLOAD_BYTES,
            invoke_params={"custom_attributes": self.custom_attributes or None},
        )
        storage = Storage(s3_client=self.s3_client)
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
        invoker = AsyncInvoker(
            submit=submit,
            storage=storage,
            staging_uri=staging,
            scope=f"{self.output_uri}|{self.endpoint_name}|{content_type}|{self.accept}",
            poll_interval=min(self.poke_interval, 2.0),
            timeout=self.wait_timeout
            or service_deadline_seconds(self.request_ttl_seconds, self.invocation_timeout_seconds) + 60.0,
        )
        self._job = ScoringJob(config=config, invoke=invoker, storage=storage, logger=self.log)  # type: ignore[arg-type]
        invoker.cancel = self._job.coordinator.stop
        summary = self._job.run()
        summary["async_submitted"] = invoker.submitted
        summary["async_reused"] = invoker.reused
        return summary

    def on_kill(self) -> None:
        """Parquet mode: stop new invocations; unfinished parts are never committed."""
        if self._job is not None:
            self._job.cancel("the task was killed or timed out")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the S3 input objects and the output objects written; None without OpenLineage."""
        return to_operator_lineage(self._lineage)

    def _validate(self, requests: list[AsyncRequest]) -> None:
        for request in requests:
            SageMakerRuntimeHook.validate_invoke_endpoint_async(
                self.endpoint_name,
                input_location=request.input_location,
                body=request.body,
                custom_attributes=self.custom_attributes,
                inference_id=None,
                request_ttl_seconds=self.request_ttl_seconds,
                invocation_timeout_seconds=self.invocation_timeout_seconds,
            )
        if self.filename is not None and "{inference_id}" not in self.filename and len(requests) > 1:
            raise ParameterValidationError(
                f"filename {self.filename!r} would give all {len(requests)} outputs the same name: include "
                "'{inference_id}' in it, or pass filename=None"
            )

    def _inference_id_for(self, key: dict[str, Any], request: AsyncRequest, count: int) -> str:
        if not self.deterministic_ids and self.inference_id and count == 1:
            return self.inference_id
        return deterministic_inference_id(**key, identity=request.identity, prefix=self.inference_id)

    def _filename_for(self, inference_id: str) -> str | None:
        if self.filename is None:
            return None
        return self.filename.replace("{inference_id}", inference_id)

    # -- the ledger ------------------------------------------------------------------------------

    def _ledger_location(self, key: dict[str, Any], requests: list[AsyncRequest]) -> S3Location | None:
        name = hashlib.sha256(json.dumps([key["run_id"], key["map_index"]]).encode()).hexdigest()[:32] + ".json"
        suffix = f"{_SLUG.sub('_', key['dag_id'])}/{_SLUG.sub('_', key['task_id'])}/{name}"
        if self.ledger_uri:
            if self.ledger_uri.endswith("/"):
                return S3Location.parse(self.ledger_uri + suffix)
            return S3Location.parse(self.ledger_uri)
        first = next((r.input_location for r in requests if (r.input_location or "").startswith("s3://")), None)
        if first is None:
            return None
        loc = S3Location.parse(first)
        return S3Location(bucket=loc.bucket, key=f"{loc.directory}{LEDGER_DIRNAME}/{suffix}")

    def _read_ledger(self, ledger: S3Location) -> dict[str, dict[str, Any]]:
        try:
            response = self.s3_client.get_object(Bucket=ledger.bucket, Key=ledger.key)
        except Exception as err:
            code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return {}
            raise SmrtError(f"cannot read the submission ledger {ledger.uri}: {type(err).__name__} {code}") from err
        with response["Body"] as stream:
            document = json.loads(stream.read())
        return {entry["input"]: entry for entry in document.get("invocations", [])}

    def _write_ledger(self, ledger: S3Location, key: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
        document = {
            "version": _LEDGER_VERSION,
            **key,
            "endpoint_name": self.endpoint_name,
            "written_at": _now_iso(),
            "invocations": list(records.values()),
        }
        self.s3_client.put_object(
            Bucket=ledger.bucket,
            Key=ledger.key,
            Body=json.dumps(document, indent=1).encode(),
            ContentType="application/json",
        )

    def _recover_unrecorded(
        self, requests: list[AsyncRequest], ids: dict[str, str], recorded: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Requests the ledger lacks whose output or failure object already exists (predicted from a sibling)."""
        if not recorded or self.filename is None or "{inference_id}" not in self.filename:
            return {}
        sibling = next(iter(recorded.values()))
        sibling_name = self._filename_for(sibling["inference_id"]) or ""
        out_dir = S3Location.parse(sibling["output_location"]).directory
        out_bucket = S3Location.parse(sibling["output_location"]).bucket
        if not sibling["output_location"].endswith("/" + sibling_name):
            return {}  # the service did not use Filename as the key name: nothing can be predicted
        fail_template: tuple[str, str, str] | None = None
        if sibling.get("failure_location"):
            fail = S3Location.parse(sibling["failure_location"])
            stem = sibling["inference_id"]
            base = fail.key[len(fail.directory) :]
            if stem in base:
                fail_template = (fail.bucket, fail.directory, base.replace(stem, "{inference_id}"))
        candidates = []
        for request in requests:
            if request.identity in recorded:
                continue
            inference_id = ids[request.identity]
            failure = None
            if fail_template is not None:
                bucket, directory, base = fail_template
                failure = f"s3://{bucket}/{directory}{base.replace('{inference_id}', inference_id)}"
            candidates.append(
                self._record(
                    request,
                    inference_id,
                    output_location=f"s3://{out_bucket}/{out_dir}{self._filename_for(inference_id)}",
                    failure_location=failure,
                    submitted_at=None,
                )
            )
        if not candidates:
            return {}
        tracker = AsyncInferenceTracker(candidates)
        poll_sync(tracker, self.s3_client)
        recovered = {}
        for status, record in zip(tracker.statuses, candidates, strict=True):
            if status.state.value != "pending":
                recovered[record["input"]] = record
        if recovered:
            self.log.info(
                "%d request(s) missing from the ledger already have a result; not resubmitting", len(recovered)
            )
        return recovered

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

    def _submit_all(
        self,
        todo: list[AsyncRequest],
        ids: dict[str, str],
        records: dict[str, dict[str, Any]],
        ledger: S3Location | None,
        key: dict[str, Any],
    ) -> None:
        if not todo:
            return
        hook = self.hook
        hook.conn  # noqa: B018 - create the client once, before the threads share it
        lock = threading.Lock()
        dirty = False
        last_flush = time.monotonic()
        started = time.monotonic()

        def on_retry(err: InvocationError, attempt: int, delay: float) -> None:
            self.log.warning("retrying an async request (attempt %d failed: %s) in %.2fs", attempt, err.code, delay)

        def submit_one(request: AsyncRequest) -> None:
            nonlocal dirty
            inference_id = ids[request.identity]
            result = hook.invoke_endpoint_async(
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
                on_retry=on_retry,
            )
            record = self._record(
                request,
                result.inference_id,
                output_location=result.output_location,
                failure_location=result.failure_location,
                submitted_at=_now_iso(),
            )
            with lock:
                records[request.identity] = record
                dirty = True

        def flush(force: bool = False) -> None:
            nonlocal dirty, last_flush
            if ledger is None:
                return
            with lock:
                if not dirty or (not force and time.monotonic() - last_flush < self.ledger_flush_seconds):
                    return
                snapshot = dict(records)
                dirty = False
                last_flush = time.monotonic()
            self._write_ledger(ledger, key, snapshot)

        submitter = _BoundedSubmitter(self.concurrency)
        try:
            for request in todo:
                if submitter.submit(functools.partial(submit_one, request), on_wait=flush) is None:
                    break
                flush()
        finally:
            submitter.shutdown()
            flush(force=True)
        elapsed = time.monotonic() - started
        submitted = sum(1 for request in todo if request.identity in records)
        self.log.info(
            "submitted %d of %d async request(s) to endpoint %s in %.2fs (%.1f/s)",
            submitted,
            len(todo),
            self.endpoint_name,
            elapsed,
            submitted / elapsed if elapsed > 0 else 0.0,
        )
        if submitter.first_error is not None:
            err = submitter.first_error
            if isinstance(err, InvocationError):
                raise err  # already classified by the hook, with its cause attached
            raise SmrtError(
                f"submission stopped after {submitted} of {len(todo)} request(s): {type(err).__name__}: {err}"
            ) from err

    # -- waiting ---------------------------------------------------------------------------------

    def _wait(self, context: Context, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        invocations = [AsyncInvocation.from_value(record) for record in records]
        timeout = self.wait_timeout if self.wait_timeout is not None else default_timeout_seconds(invocations)
        if self.deferrable:
            self.defer(
                trigger=SageMakerAsyncInferenceTrigger(
                    invocations=records,
                    aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name,
                    verify=self.verify,
                    botocore_config=self.botocore_config,
                    poke_interval=self.poke_interval,
                    timeout=timeout,
                    max_failures=self.max_failures,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=timeout + 300),
            )
        tracker = AsyncInferenceTracker(invocations)
        deadline = time.monotonic() + timeout
        while True:
            poll_sync(tracker, self.s3_client)
            if len(tracker.failed) > self.max_failures:
                raise tracker.failure_error()
            if tracker.done:
                break
            if time.monotonic() >= deadline:
                raise SmrtError(
                    f"timed out after {timeout:.0f}s waiting for async results: {tracker.summary()}"
                )
            self.log.info("waiting for async results: %s", tracker.summary())
            time.sleep(min(self.poke_interval, max(0.0, deadline - time.monotonic())))
        self._log_tolerated(tracker.failed)
        return _merge(records, tracker.to_dicts())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Resume after the trigger fired: return the records with their statuses, or raise."""
        if not event:
            raise SmrtError("the async inference trigger returned no event")
        status = event.get("status")
        if status == "success":
            failed = [s for s in event["invocations"] if s.get("status") == "failed"]
            for entry in failed:
                self.log.warning(
                    "tolerated failure: inference_id=%s input=%s", entry.get("inference_id"), entry.get("input")
                )
            self._lineage = async_run_lineage(event["invocations"])
            return event["invocations"]
        if status == "failure":
            raise AsyncInferenceFailedError(str(event.get("message")), failures=event.get("failures") or [])
        raise SmrtError(f"async inference {status}: {event.get('message')}")

    def _log_tolerated(self, failed: list[Any]) -> None:
        for status in failed:
            self.log.warning("tolerated failure: %s", status.describe_failure())


def _merge(records: list[dict[str, Any]], statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**record, **status} for record, status in zip(records, statuses, strict=True)]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
