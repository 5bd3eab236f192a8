"""Score a Parquet dataset end to end: plan, resume, run the pipeline, write the manifest, summarise.

This is the Airflow-free entry point of the scoring core; the operator is a thin adapter over
:class:`ScoringJob`. The job receives an ``invoke(body)`` callable and a
:class:`~airflow_provider_smrt.scoring.storage.Storage`, so it can run (and be tested and
benchmarked) with any invoker. The configuration lives in :mod:`~airflow_provider_smrt.scoring.config`
(re-exported here), the plan in :mod:`~airflow_provider_smrt.scoring.plan`, the summary and manifest
in :mod:`~airflow_provider_smrt.scoring.manifest`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import ErrorRatioExceededError, InvocationError
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.checkpoints import (
    DEFAULT_CHECKPOINT_EVERY_REQUESTS,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    UnitCheckpoints,
    checkpoint_folder,
    delete_checkpoint_objects,
    skip_checkpointed,
)
from airflow_provider_smrt.scoring.codecs import PayloadCodec, get_codec
from airflow_provider_smrt.scoring.codecs.base import CSV, media_type
from airflow_provider_smrt.scoring.codecs.offload import EncoderProcesses, offloadable, resolve_encode_processes
from airflow_provider_smrt.scoring.compare import CompareStats, fold_stored
from airflow_provider_smrt.scoring.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_PAYLOAD_BYTES,
    IfExists,
    ScoringConfig,
    manifest_name_for,
)
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit, iter_units
from airflow_provider_smrt.scoring.manifest import build_manifest, build_summary, write_manifest
from airflow_provider_smrt.scoring.memory import arrow_pool_advice, fix_mmap_threshold
from airflow_provider_smrt.scoring.pipeline import Invoker, Pipeline
from airflow_provider_smrt.scoring.plan import ScoringPlan, plan_scoring
from airflow_provider_smrt.scoring.rescore import (
    RetryPart,
    RetryUnit,
    iter_retry_rows,
    plan_retries,
    repair_error_part,
)
from airflow_provider_smrt.scoring.sink import PartWriter, delete_parts, read_part_counts, read_part_schema
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.storage import Storage

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY_REQUESTS",
    "DEFAULT_CHECKPOINT_INTERVAL_SECONDS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "IfExists",
    "ScoringConfig",
    "ScoringJob",
    "ScoringPlan",
    "manifest_name_for",
]

log = logging.getLogger(__name__)


class ScoringJob:
    """One scoring run over a dataset.

    :param config: what to score (validated here).
    :param invoke: ``invoke(body) -> result`` that makes exactly one InvokeEndpoint request.
    :param storage: S3/local storage (see :class:`~airflow_provider_smrt.scoring.storage.Storage`).
    :param retry_policy: applied to every request.
    :param progress_interval: seconds between progress lines in the log.
    :param oversize_invoke: ``invoke(body) -> result`` for a row whose one-row request exceeds
        ``max_payload_bytes`` (e.g. an :class:`~airflow_provider_smrt.scoring.async_invoker.AsyncInvoker`
        of ``config.oversize_endpoint_name``); without one such a row raises ``RowTooLargeError``.
    :param target_invokers: with ``config.compare_targets``: ``{name: invoke}`` of every target (``invoke``
        is then unused).
    """

    def __init__(
        self,
        *,
        config: ScoringConfig,
        invoke: Invoker,
        storage: Storage,
        retry_policy: RetryPolicy | None = None,
        progress_interval: float = 10.0,
        logger: logging.Logger | None = None,
        oversize_invoke: Invoker | None = None,
        target_invokers: Mapping[str, Invoker] | None = None,
    ) -> None:
        config.validate()
        self.oversize_invoke = oversize_invoke
        targets = config.targets
        if targets is not None and set(target_invokers or {}) != {t.name for t in targets}:
            raise ValueError("target_invokers must hold one invoker per target of compare_targets")
        self.target_invokers = target_invokers
        #: Per-target failures and agreement with the first target (with ``compare_targets``), else None.
        self.compare_stats = (
            CompareStats(names=tuple(t.name for t in targets), variant_column=config.variant_column)
            if targets is not None
            else None
        )
        self.config = config
        self.invoke = invoke
        self.storage = storage
        self.retry_policy = retry_policy or RetryPolicy()
        self.progress_interval = progress_interval
        self.log = logger or log
        self.coordinator = Coordinator()
        self.stats = RunStats()
        self._started = 0.0
        self._null_features = 0  # null feature values sent as empty CSV fields (said once, at the end)
        self._resumed_rows = 0  # rows of parts an earlier run finished: not part of this run's rate
        #: The plan of the last :meth:`run` (inputs, columns, units, part names), e.g. for lineage;
        #: None before the first run.
        self.last_plan: ScoringPlan | None = None

    def cancel(self, reason: str = "the task was killed") -> None:
        """Stop sending new requests; in-flight ones finish; unfinished parts are not committed."""
        self.coordinator.cancel(reason)

    def plan(self) -> ScoringPlan:
        """Plan a run: read the inputs' footers and list the output (see :func:`~.plan.plan_scoring`)."""
        return plan_scoring(self.config, self.storage)

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Score the dataset; return the JSON-serialisable summary (also written into the manifest)."""
        self._started = time.monotonic()
        config = self.config
        plan = self.plan()
        self.last_plan = plan
        if config.if_exists == "overwrite" and (plan.stale or plan.replaced):
            self.log.info(
                "if_exists='overwrite': re-scoring every unit; %d previous part(s) of these inputs are replaced "
                "as new ones are committed, %d removed after the run",
                plan.replaced,
                len(plan.stale),
            )
        todo = plan.todo
        rows_total = plan.rows_total
        resumed_rows = resumed_failed = 0
        compare = self.compare_stats
        for unit, part in plan.done.items():
            scored, failed = read_part_counts(self.storage, part)
            if compare is not None:  # error rows are per target; a row a target failed may be in the part too
                self.stats.part_rows[part.name] = (scored, failed)
                failed = fold_stored(
                    compare, self.storage, data_uri=part.uri, error_uri=part.error_uri, passthrough=plan.passthrough
                )
                resumed_rows += unit.num_rows - failed
                resumed_failed += failed
                continue
            if part.error_uri is not None and scored + failed > unit.num_rows:
                # a retry of the failed rows was killed between its two writes (see rescore.py)
                failed = repair_error_part(self.storage, part)
            self.stats.part_rows[part.name] = (scored, failed)
            resumed_rows += scored
            resumed_failed += failed
        retries = plan_retries(self.storage, plan.done) if config.retry_failed_rows else []
        retried = sum(retry.num_rows for retry in retries)
        resumed_failed -= retried  # scored again in this run
        checkpointed = plan.checkpointed_rows
        if compare is None:
            checkpointed_failed = sum(checkpoint.failed for checkpoint in plan.checkpoints.values())
        else:
            checkpointed_failed = sum(
                fold_stored(
                    compare,
                    self.storage,
                    data_uri=segment.uri,
                    error_uri=segment.error_uri,
                    passthrough=plan.passthrough,
                )
                for checkpoint in plan.checkpoints.values()
                for segment in checkpoint.segments
            )
        self.stats.rows_total = rows_total
        self.stats.rows_scored = resumed_rows + checkpointed - checkpointed_failed
        self.stats.rows_failed = resumed_failed + checkpointed_failed
        self.stats.rows_resumed_from_checkpoints = checkpointed
        self._resumed_rows = resumed_rows + resumed_failed + checkpointed
        self.log.info(
            "scoring %d input file(s), %d rows in %d unit(s) against endpoint %r; %d unit(s) already done "
            "(%d rows), %d to score; output %s",
            len(plan.files),
            rows_total,
            len(plan.units),
            config.endpoint_name,
            len(plan.done),
            resumed_rows + resumed_failed,
            len(todo),
            config.output_uri,
        )
        if plan.checkpoints:
            self.log.info(
                "%d unit(s) resume from checkpoints of an earlier run: %d rows not scored again",
                len(plan.checkpoints),
                checkpointed,
            )
        if config.retry_failed_rows:
            self.log.info("retry_failed_rows: rescoring %d failed row(s) of %d finished unit(s)", retried, len(retries))
        if plan.stale_checkpoints:  # before the run: it may write checkpoints of the same names
            delete_checkpoint_objects(self.storage, plan.stale_checkpoints)
        if plan.stale:
            self.log.warning(
                "%d part(s) under the output were written from a different version of the input or a different "
                "configuration; they are replaced once the new parts are committed",
                len(plan.stale),
            )
        if todo or retries:
            fix_mmap_threshold()
            advice = arrow_pool_advice()
            if advice:
                self.log.info("%s", advice)
            codec, encoding = self._codec()
            pipeline: Pipeline | None = None
            try:
                pipeline = self._pipeline(plan, codec)
                pipeline.run(itertools.chain(self._batches(plan, todo), self._retry_batches(plan, retries)))
            finally:
                if encoding is not None:
                    encoding.close()
                    self.stats.bodies_offloaded = encoding.offloaded
                for name, rows in sorted(pipeline.isolated.items() if pipeline is not None else ()):
                    self.log.warning("%d row(s) failed with %s in this run (isolated into _errors/)", rows, name)
        if plan.stale or plan.stale_errors:
            delete_parts(self.storage, plan.stale)
            if plan.stale_errors:
                self.storage.delete(plan.stale_errors)
        if plan.gone:
            self.log.info("removing %d part(s) this task wrote for inputs that are gone", len(plan.gone))
            delete_parts(self.storage, plan.gone)
        summary = build_summary(
            config, plan, self.stats, elapsed=time.monotonic() - self._started, compare=self.compare_stats
        )
        write_manifest(self.storage, summary["manifest_uri"], build_manifest(config, plan, self.stats, summary))
        self._progress(self.stats)
        self.log.info(
            "done: %d rows scored, %d failed, %d requests, %d retries, %d throttles in %.1fs (%.0f rows/s)",
            summary["rows_scored"],
            summary["rows_failed"],
            summary["requests"],
            summary["retries"],
            summary["throttles"],
            summary["elapsed_seconds"],
            summary["rows_per_second"],
        )
        self._check_error_ratio(summary)
        return summary

    def _codec(self) -> tuple[PayloadCodec, EncoderProcesses | None]:
        """The run's codec, its built-in encoder in ``encode_processes`` children when there are any (to close)."""
        config = self.config
        codec = get_codec(
            content_type=config.content_type,
            accept=config.accept,
            prediction_columns=config.prediction_columns,
            encoder=config.encoder,
            decoder=config.decoder,
            request_template=config.request_template,
            response_field=config.response_field,
            csv_header=config.csv_header,
        )
        processes = resolve_encode_processes(config.encode_processes)
        if not processes or not offloadable(codec.encoder):
            self.log.info("request bodies are encoded in the task's process")
            return codec, None
        encoding = EncoderProcesses(codec.encoder, processes)
        self.log.info("request bodies are encoded in %d child process(es)", processes)
        codec.encoder = encoding
        return codec, encoding

    def _pipeline(self, plan: ScoringPlan, codec: PayloadCodec) -> Pipeline:
        config = self.config
        planner = RequestPlanner(
            codec=codec,
            max_payload_bytes=config.max_payload_bytes,
            service_limit=config.payload_limit,
            max_rows_per_request=config.rows_per_request,
            oversize=self.oversize_invoke is not None,
        )

        policy = config.checkpoint_policy

        def open_part(unit: WorkUnit) -> PartWriter:
            if isinstance(unit, RetryUnit):
                assert unit.part is not None
                return RetryPart(
                    unit=unit,
                    storage=self.storage,
                    output_uri=config.output_uri,
                    name=unit.part.name,
                    error_passthrough_schema=plan.passthrough_schema,
                )
            name = plan.names[unit]
            resumed = plan.checkpoints.get(unit)
            checkpoints = (
                UnitCheckpoints(
                    storage=self.storage,
                    folder=checkpoint_folder(config.output_uri, name),
                    unit=unit,
                    resumed=resumed,
                )
                if policy.enabled or resumed is not None
                else None
            )
            return PartWriter(
                storage=self.storage,
                output_uri=config.output_uri,
                name=name,
                error_passthrough_schema=plan.passthrough_schema,
                stale_error_part=name in plan.error_rewrites,
                checkpoints=checkpoints,
            )

        return Pipeline(
            invoke=self.invoke,
            codec=codec,
            planner=planner,
            open_part=open_part,
            feature_columns=plan.features,
            passthrough_columns=plan.passthrough,
            passthrough_schema=plan.passthrough_schema,
            concurrency=config.concurrency,
            retry_policy=self.retry_policy,
            endpoint_name=config.endpoint_name,
            variant_column=config.variant_column,
            inference_id_prefix=config.inference_id_prefix,
            stats=self.stats,
            coordinator=self.coordinator,
            max_failed_rows=config.max_error_ratio * plan.rows_total,
            budget_error=self._budget_error,
            fallback_schema=lambda: self._existing_schema(plan),
            on_progress=self._progress,
            progress_interval=self.progress_interval,
            checkpoint_policy=policy,
            unit_offsets={unit: checkpoint.rows for unit, checkpoint in plan.checkpoints.items()},
            oversize_invoke=self.oversize_invoke,
            targets=(
                None
                if self.target_invokers is None or config.targets is None
                else [(t.name, self.target_invokers[t.name]) for t in config.targets]
            ),
            compare_stats=self.compare_stats,
        )

    def _existing_schema(self, plan: ScoringPlan) -> pa.Schema | None:
        """The schema of the first existing part of the output with prediction columns (None if none)."""
        passthrough = set(plan.passthrough)
        for part in plan.existing:
            if part in plan.stale or part in plan.gone:
                continue
            schema = read_part_schema(self.storage, part)
            if any(name not in passthrough for name in schema.names):
                return schema
        return None

    def _batches(self, plan: ScoringPlan, todo: list[WorkUnit]) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
        columns = plan.features + [name for name in plan.passthrough if name not in plan.features]
        csv = media_type(self.config.content_type) == CSV and self.config.encoder is None
        self._null_features = 0
        by_file: dict[str, list[WorkUnit]] = {}
        for unit in todo:
            by_file.setdefault(unit.file.uri, []).append(unit)
        for file in plan.files:
            units = by_file.get(file.uri)
            if not units:
                continue
            with self.storage.open_read(file.info) as handle:
                # The planning footer is reused; pre_buffer coalesces each window's column chunks into
                # one read (one ranged GET on S3).
                parquet = pq.ParquetFile(handle, metadata=file.metadata, pre_buffer=True)
                for unit, batch in skip_checkpointed(iter_units(parquet, units, columns=columns), plan.checkpoints):
                    if csv:
                        self._null_features += sum(batch.column(name).null_count for name in plan.features)
                    yield unit, batch
        if csv and self._null_features:
            self.log.warning(
                "%d null feature value(s) were sent as empty CSV fields (the model sees a missing value)",
                self._null_features,
            )

    def _retry_batches(self, plan: ScoringPlan, retries: list[RetryUnit]) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
        columns = plan.features + [name for name in plan.passthrough if name not in plan.features]
        for file in plan.files:
            units = [retry for retry in retries if retry.file.uri == file.uri]
            if units:
                yield from iter_retry_rows(self.storage, file, units, columns=columns)

    def _progress(self, stats: RunStats) -> None:
        """One progress line; the rate and ETA count only the rows scored in this run (not resumed ones)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = stats.rows_scored + stats.rows_failed
        total = max(stats.rows_total, 1)
        rate = max(done - self._resumed_rows, 0) / elapsed
        remaining = max(stats.rows_total - done, 0)
        if remaining == 0:
            eta = "0s"
        elif rate > 0:
            eta = f"{remaining / rate:.0f}s"
        else:
            eta = "unknown"
        self.log.info(
            "scored %d/%d rows (%.1f%%), %.0f rows/s, ETA %s; failed %d, requests %d, retries %d, throttles %d",
            done,
            stats.rows_total,
            100.0 * done / total,
            rate,
            eta,
            stats.rows_failed,
            stats.requests,
            stats.retries,
            stats.throttles,
        )

    def _check_error_ratio(self, summary: dict[str, Any]) -> None:
        failed, total = summary["rows_failed"], summary["rows_in"]
        if failed and failed > self.config.max_error_ratio * total:
            raise ErrorRatioExceededError(
                f"{failed} of {total} rows ({failed / max(total, 1):.4%}) could not be scored, more than "
                f"max_error_ratio={self.config.max_error_ratio}; the failed rows (with their pass-through "
                f"columns, error class and message) are under {summary['errors_uri']}; every other row is "
                f"scored and committed under {summary['output_uri']}. Fix the rows or raise max_error_ratio, "
                "then rerun: finished parts are not scored again"
            )

    def _budget_error(self, failed: int, last: InvocationError) -> ErrorRatioExceededError:
        """The error that stops a run as soon as more rows failed than ``max_error_ratio`` allows in all.

        It names the last failure's class and the classified message (status codes, log stream,
        request id), never the container's own message.
        """
        config, total = self.config, self.stats.rows_total
        output = config.output_uri.rstrip("/") + "/"
        return ErrorRatioExceededError(
            f"{failed} of {total} rows ({failed / max(total, 1):.4%}) failed, more than max_error_ratio="
            f"{config.max_error_ratio} allows for the whole input ({int(config.max_error_ratio * total)} rows): "
            f"stopped sending after {self.stats.requests} requests. Last failure: {type(last).__name__}: {last}. "
            f"Parts committed before the stop (and their failed rows, under {output}_errors/) are kept; the "
            "rows of unfinished parts are not written. Fix the rows or the model (see its log stream), or raise "
            "max_error_ratio, then rerun: finished parts are not scored again"
        )
