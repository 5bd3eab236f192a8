"""Score a Parquet dataset end to end: plan, resume, run the pipeline, write the manifest, summarise.

This is the Airflow-free entry point of the scoring core; the operator is a thin adapter over
:class:`ScoringJob`. The job receives an ``invoke(body)`` callable and an S3 client, so it can run
(and be tested and benchmarked) with any invoker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt import __version__
from airflow_provider_smrt.exceptions import (
    ErrorRatioExceededError,
    InputDataError,
    OutputError,
    ParameterValidationError,
)
from airflow_provider_smrt.invocation import MAX_PAYLOAD_BYTES, validate_max_payload_bytes, validate_range
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.codecs import check_features_encodable, get_codec
from airflow_provider_smrt.scoring.dataset import (
    InputFile,
    WorkUnit,
    check_schemas,
    iter_units,
    plan_units,
    read_input_files,
    resolve_inputs,
)
from airflow_provider_smrt.scoring.pipeline import Coordinator, Invoker, Pipeline, RunStats
from airflow_provider_smrt.scoring.sink import (
    ERRORS_DIR,
    MANIFEST_NAME,
    ExistingPart,
    OutputState,
    PartWriter,
    config_hash,
    delete_parts,
    fingerprint,
    parse_part_name,
    part_name,
    read_part_counts,
    write_manifest,
)
from airflow_provider_smrt.scoring.storage import Storage, basename, join_uri
from airflow_provider_smrt.scoring.templating import RequestTemplateEncoder, template_columns

log = logging.getLogger(__name__)

IfExists = Literal["resume", "overwrite", "fail"]
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_CONCURRENCY = 8


def manifest_name_for(map_index: int | None) -> str:
    """``_manifest.json``, or ``_manifest-<map index>.json`` for a mapped task (mapped tasks share an output)."""
    return MANIFEST_NAME if map_index is None or map_index < 0 else f"_manifest-{map_index:05d}.json"


@dataclass(frozen=True)
class ScoringConfig:
    """What to score and how. Everything that changes predictions goes into the configuration hash."""

    endpoint_name: str
    input_uri: str | Sequence[str]
    output_uri: str
    feature_columns: Sequence[str] | None = None
    passthrough_columns: Sequence[str] | None = None
    prediction_columns: Sequence[str] | None = None
    content_type: str = "text/csv"
    accept: str | None = None
    encoder: str | None = None
    decoder: str | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_rows_per_request: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    max_error_ratio: float = 0.0
    if_exists: IfExists = "resume"
    allow_empty_input: bool = False
    variant_column: str | None = None
    manifest_name: str = MANIFEST_NAME
    #: The largest request the invoker takes: InvokeEndpoint's 6 MiB, or more for InvokeEndpointAsync.
    payload_limit: int = MAX_PAYLOAD_BYTES
    #: One JSON request per row from this template (see :mod:`~airflow_provider_smrt.scoring.templating`).
    request_template: dict[str, Any] | None = None
    #: Dotted path of the prediction in a JSON response (see :mod:`~airflow_provider_smrt.scoring.templating`).
    response_field: str | None = None
    #: InvokeEndpoint parameters (custom_attributes, target_model, ...): hashed, never logged.
    invoke_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.payload_limit == MAX_PAYLOAD_BYTES:
            validate_max_payload_bytes(self.max_payload_bytes)
        else:
            validate_range("max_payload_bytes", self.max_payload_bytes, (1, self.payload_limit))
        if self.max_rows_per_request is not None and self.max_rows_per_request < 1:
            raise ParameterValidationError("max_rows_per_request must be at least 1 (or None for no row limit)")
        if not 1 <= self.concurrency <= 512:
            raise ParameterValidationError(f"concurrency={self.concurrency} must be from 1 to 512")
        if not 0.0 <= self.max_error_ratio <= 1.0:
            raise ParameterValidationError(f"max_error_ratio={self.max_error_ratio} must be between 0 and 1")
        if self.if_exists not in ("resume", "overwrite", "fail"):
            raise ParameterValidationError(f"if_exists={self.if_exists!r} must be 'resume', 'overwrite' or 'fail'")
        if not self.output_uri:
            raise ParameterValidationError("output_uri is required: an s3:// prefix or a local directory")
        if self.manifest_name and not self.manifest_name.startswith("_"):
            raise ParameterValidationError("manifest_name must start with '_' (names starting with '_' are not data)")
        if self.request_template is not None:
            template_columns(self.request_template)  # validates the template
            if self.max_rows_per_request not in (None, 1):
                raise ParameterValidationError(
                    f"request_template makes one request per row: max_rows_per_request={self.max_rows_per_request} "
                    "must be 1 (or None)"
                )

    @property
    def rows_per_request(self) -> int | None:
        """The row limit the planner applies: 1 with a request template, else ``max_rows_per_request``."""
        return 1 if self.request_template is not None else self.max_rows_per_request

    def hash_input(self, features: Sequence[str], passthrough: Sequence[str]) -> dict[str, Any]:
        """The configuration that affects the content of output parts."""
        return {
            "endpoint_name": self.endpoint_name,
            "features": list(features),
            "passthrough": list(passthrough),
            "prediction_columns": list(self.prediction_columns) if self.prediction_columns else None,
            "content_type": self.content_type,
            "accept": self.accept,
            "encoder": self.encoder,
            "decoder": self.decoder,
            "variant_column": self.variant_column,
            "invoke_params": {key: value for key, value in sorted(self.invoke_params.items()) if value is not None},
            # Only when set, so the hash (and the resume state) of every other configuration is unchanged.
            **({"request_template": self.request_template} if self.request_template is not None else {}),
            **({"response_field": self.response_field} if self.response_field is not None else {}),
        }


@dataclass
class _Plan:
    files: list[InputFile]
    features: list[str]
    passthrough: list[str]
    passthrough_schema: pa.Schema
    config_hash: str
    units: list[WorkUnit]
    names: dict[WorkUnit, str]
    done: dict[WorkUnit, ExistingPart]
    stale: list[ExistingPart]
    replaced: int
    error_rewrites: set[str]
    stale_errors: list[str]


class ScoringJob:
    """One scoring run over a dataset.

    :param config: what to score.
    :param invoke: ``invoke(body) -> result`` that makes exactly one InvokeEndpoint request.
    :param storage: S3/local storage (see :class:`~airflow_provider_smrt.scoring.storage.Storage`).
    :param retry_policy: applied to every request.
    :param progress_interval: seconds between progress lines in the log.
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
    ) -> None:
        config.validate()
        self.config = config
        self.invoke = invoke
        self.storage = storage
        self.retry_policy = retry_policy or RetryPolicy()
        self.progress_interval = progress_interval
        self.log = logger or log
        self.coordinator = Coordinator()
        self.stats = RunStats()
        self._started = 0.0
        #: The plan of the last :meth:`run` (inputs, schema, part names), for lineage; None before it.
        self.last_plan: _Plan | None = None

    def cancel(self, reason: str = "the task was killed") -> None:
        """Stop sending new requests; in-flight ones finish; unfinished parts are not committed."""
        self.coordinator.cancel(reason)

    # -- planning --------------------------------------------------------------------------------

    def _check_locations(self, inputs: Sequence[str]) -> None:
        out = self.config.output_uri.rstrip("/") + "/"
        for uri in inputs:
            base = uri.rstrip("/") + "/"
            if out.startswith(base) or base.startswith(out):
                raise OutputError(
                    f"output_uri {self.config.output_uri!r} and input_uri {uri!r} overlap: write predictions to a "
                    "location outside the input (and the input outside the output)"
                )

    def plan(self) -> _Plan:
        config = self.config
        uris = [config.input_uri] if isinstance(config.input_uri, str) else list(config.input_uri)
        self._check_locations(uris)
        try:
            infos = resolve_inputs(self.storage, uris)
        except InputDataError:
            if not config.allow_empty_input:
                raise
            infos = []
        files = read_input_files(self.storage, infos)
        feature_columns = config.feature_columns
        if feature_columns is None and config.request_template is not None:
            feature_columns = template_columns(config.request_template)  # send only what the template uses
        features, passthrough, schema = check_schemas(
            files, feature_columns=feature_columns, passthrough_columns=config.passthrough_columns
        )
        if files:
            check_features_encodable(schema, config.content_type if config.encoder is None else "custom")
        if config.request_template is not None:
            RequestTemplateEncoder(config.request_template).check_columns(features)
        chash = config_hash(config.hash_input(features, passthrough))
        units = [unit for file in files for unit in plan_units(file)]
        names = {unit: part_name(unit, fingerprint(unit.file, chash)) for unit in units}

        try:
            state = OutputState.load(self.storage, config.output_uri)
        except Exception as err:
            if not type(err).__module__.startswith("botocore"):
                raise
            code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
            raise OutputError(
                f"cannot list output_uri {config.output_uri!r} ({code}): check that the bucket exists and that the "
                "connection's identity may s3:ListBucket on it"
            ) from err
        if config.if_exists == "fail" and not state.is_empty:
            raise OutputError(
                f"output_uri {config.output_uri!r} is not empty and if_exists='fail': choose an empty location, "
                "or set if_exists='resume' (skip finished work) or 'overwrite'"
            )
        slugs = {file.slug for file in files}
        # A file's row-group selection (a shard) owns only the parts starting in its rows: the parts of
        # the file's other shards, which may be written at the same time, are neither stale nor orphans.
        by_slug = {file.slug: file for file in files}
        mine = [part for part in state.parts_of(slugs) if by_slug[part.slug].owns(part.start)]
        done: dict[WorkUnit, ExistingPart] = {}
        if config.if_exists == "resume":
            by_name = {part.name: part for part in mine}
            done = {unit: by_name[names[unit]] for unit in units if names[unit] in by_name}
        # Parts of these inputs that this plan does not write again (another input version, configuration
        # or unit plan) are stale: deleted once the run has committed its own. A part of the same name is
        # replaced in place by the new commit (S3 and rename are atomic), so a failed run keeps the old one.
        current = set(names.values())
        stale = [part for part in mine if part.name not in current]
        replaced = [part for part in mine if part.name in current and config.if_exists == "overwrite"]
        orphans = [  # error parts whose data part was never committed
            uri for uri in state.orphan_errors_of(slugs) if _owned_part(by_slug, basename(uri))
        ]
        orphan_names = {basename(uri) for uri in orphans}
        # Units about to be written whose name already has an error part: removed if they now have no errors.
        error_rewrites = {name for name in current if name in orphan_names}
        error_rewrites |= {part.name for part in replaced if part.error_uri}
        passthrough_schema = pa.schema([schema.field(name) for name in passthrough]) if files else pa.schema([])
        return _Plan(
            files=files,
            features=features,
            passthrough=passthrough,
            passthrough_schema=passthrough_schema,
            config_hash=chash,
            units=units,
            names=names,
            done=done,
            stale=stale,
            replaced=len(replaced),
            error_rewrites=error_rewrites,
            stale_errors=[uri for uri in orphans if basename(uri) not in current],
        )

    # -- running ---------------------------------------------------------------------------------

    def _batches(self, plan: _Plan, todo: list[WorkUnit]) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
        columns = plan.features + [name for name in plan.passthrough if name not in plan.features]
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
                yield from iter_units(parquet, units, columns=columns)

    def _progress(self, stats: RunStats) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = stats.rows_scored + stats.rows_failed
        total = max(stats.rows_total, 1)
        rate = done / elapsed
        eta = (stats.rows_total - done) / rate if rate > 0 else float("nan")
        self.log.info(
            "scored %d/%d rows (%.1f%%), %.0f rows/s, ETA %.0fs; failed %d, requests %d, retries %d, throttles %d",
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
        todo = [unit for unit in plan.units if unit not in plan.done]
        rows_total = sum(unit.num_rows for unit in plan.units)
        resumed_rows = resumed_failed = 0
        for part in plan.done.values():
            scored, failed = read_part_counts(self.storage, part)
            self.stats.part_rows[part.name] = (scored, failed)
            resumed_rows += scored
            resumed_failed += failed
        self.stats.rows_total = rows_total
        self.stats.rows_scored = resumed_rows
        self.stats.rows_failed = resumed_failed
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
        if plan.stale:
            self.log.warning(
                "%d part(s) under the output were written from a different version of the input or a different "
                "configuration; they are replaced once the new parts are committed",
                len(plan.stale),
            )
        if todo:
            codec = get_codec(
                content_type=config.content_type,
                accept=config.accept,
                prediction_columns=config.prediction_columns,
                encoder=config.encoder,
                decoder=config.decoder,
                request_template=config.request_template,
                response_field=config.response_field,
            )
            planner = RequestPlanner(
                codec=codec,
                max_payload_bytes=config.max_payload_bytes,
                service_limit=config.payload_limit,
                max_rows_per_request=config.rows_per_request,
            )

            def open_part(unit: WorkUnit) -> PartWriter:
                return PartWriter(
                    storage=self.storage,
                    output_uri=config.output_uri,
                    name=plan.names[unit],
                    error_passthrough_schema=plan.passthrough_schema,
                    stale_error_part=plan.names[unit] in plan.error_rewrites,
                )

            pipeline = Pipeline(
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
                stats=self.stats,
                coordinator=self.coordinator,
                on_progress=self._progress,
                progress_interval=self.progress_interval,
            )
            pipeline.run(self._batches(plan, todo))
        if plan.stale or plan.stale_errors:
            delete_parts(self.storage, plan.stale)
            if plan.stale_errors:
                self.storage.delete(plan.stale_errors)
        summary = self._summary(plan)
        manifest = self._manifest(plan, summary)
        write_manifest(self.storage, summary["manifest_uri"], manifest)
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

    def _summary(self, plan: _Plan) -> dict[str, Any]:
        stats = self.stats
        elapsed = time.monotonic() - self._started
        config = self.config
        return {
            "endpoint_name": config.endpoint_name,
            "output_uri": config.output_uri,
            "manifest_uri": join_uri(config.output_uri, config.manifest_name),
            "errors_uri": join_uri(config.output_uri, ERRORS_DIR) + "/",
            "input_files": len(plan.files),
            "rows_in": stats.rows_total,
            "rows_scored": stats.rows_scored,
            "rows_failed": stats.rows_failed,
            "units_total": len(plan.units),
            "units_skipped": len(plan.done),
            "parts_written": stats.parts_written,
            "requests": stats.requests,
            "retries": stats.retries,
            "throttles": stats.throttles,
            "bisections": stats.bisections,
            "elapsed_seconds": round(elapsed, 3),
            "rows_per_second": round((stats.rows_scored + stats.rows_failed - self._resumed(plan)) / elapsed, 1)
            if elapsed > 0
            else 0.0,
            "invoked_variants": dict(stats.variants),
            "config_hash": plan.config_hash,
        }

    def _resumed(self, plan: _Plan) -> int:
        return sum(unit.num_rows for unit in plan.done)

    def _manifest(self, plan: _Plan, summary: dict[str, Any]) -> dict[str, Any]:
        parts = []
        for unit in plan.units:
            name = plan.names[unit]
            scored, failed = self.stats.part_rows.get(name, (0, 0))
            parts.append(
                {
                    "name": name,
                    "input": unit.file.uri,
                    "input_rows": [unit.start, unit.end],
                    "rows_scored": scored,
                    "rows_failed": failed,
                    "errors": join_uri(ERRORS_DIR, name) if failed else None,
                }
            )
        return {
            "format": "airflow-provider-smrt/manifest/1",
            "producer": f"airflow-provider-smrt {__version__}",
            "written_at": datetime.now(timezone.utc).isoformat(),
            "endpoint_name": self.config.endpoint_name,
            "content_type": self.config.content_type,
            "accept": self.config.accept or self.config.content_type,
            "feature_columns": plan.features,
            "passthrough_columns": plan.passthrough,
            "inputs": [
                {
                    "uri": file.uri,
                    "etag": file.info.etag,
                    "version_id": file.info.version_id,
                    "size": file.info.size,
                    "rows": file.num_rows,
                    **({"row_groups": list(file.row_groups)} if file.row_groups is not None else {}),
                }
                for file in plan.files
            ],
            "parts": parts,
            "totals": {key: summary[key] for key in ("rows_in", "rows_scored", "rows_failed", "requests")},
            "invoked_variants": summary["invoked_variants"],
            "config_hash": plan.config_hash,
        }


def _owned_part(files_by_slug: dict[str, InputFile], name: str) -> bool:
    """Whether the part (or error part) called ``name`` belongs to one of these inputs' selections."""
    parsed = parse_part_name(name)
    return parsed is not None and parsed[0] in files_by_slug and files_by_slug[parsed[0]].owns(parsed[1])


def score_dataset(
    *,
    config: ScoringConfig,
    invoke: Invoker,
    s3_client: Any = None,
    retry_policy: RetryPolicy | None = None,
    progress_interval: float = 10.0,
    logger: logging.Logger | None = None,
    on_job: Callable[[ScoringJob], None] | None = None,
) -> dict[str, Any]:
    """Convenience wrapper: build a :class:`ScoringJob` and run it."""
    job = ScoringJob(
        config=config,
        invoke=invoke,
        storage=Storage(s3_client=s3_client),
        retry_policy=retry_policy,
        progress_interval=progress_interval,
        logger=logger,
    )
    if on_job is not None:
        on_job(job)
    return job.run()
