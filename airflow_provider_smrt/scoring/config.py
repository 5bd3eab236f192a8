"""What a scoring run scores and how: :class:`ScoringConfig`, its defaults and its validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import validate_max_payload_bytes
from airflow_provider_smrt.scoring.checkpoints import (
    DEFAULT_CHECKPOINT_EVERY_REQUESTS,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    CheckpointPolicy,
)
from airflow_provider_smrt.scoring.codecs.offload import EncodeProcesses, resolve_encode_processes
from airflow_provider_smrt.scoring.codecs.templates import template_columns
from airflow_provider_smrt.scoring.compare import TARGET_KEYS, CompareTarget, parse_compare_targets
from airflow_provider_smrt.scoring.inference_ids import validate_inference_id_prefix
from airflow_provider_smrt.scoring.sink import MANIFEST_NAME

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "IfExists",
    "ScoringConfig",
    "manifest_name_for",
]

IfExists = Literal["resume", "overwrite", "fail"]
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_CONCURRENCY = 8


def manifest_name_for(map_index: int | None) -> str:
    """``_manifest.json``, or ``_manifest-<map index>.json`` for a mapped task (mapped tasks share an output)."""
    return MANIFEST_NAME if map_index is None or map_index < 0 else f"_manifest-{map_index:05d}.json"


@dataclass(frozen=True)
class ScoringConfig:
    """What to score and how. Everything that changes predictions goes into the configuration hash.

    :meth:`validate` checks it; :class:`~airflow_provider_smrt.scoring.job.ScoringJob` calls it once.
    """

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
    max_payload_bytes: int = 5_242_880
    max_rows_per_request: int | None = None
    concurrency: int = 8
    max_error_ratio: float = 0.0
    if_exists: IfExists = "resume"
    allow_empty_input: bool = False
    variant_column: str | None = None
    manifest_name: str = MANIFEST_NAME
    #: The largest request the invoker takes: InvokeEndpoint's 6 MiB, or more for InvokeEndpointAsync.
    payload_limit: int = 6_291_456
    #: One JSON request per row from this template (see :mod:`~airflow_provider_smrt.scoring.codecs.templates`).
    request_template: dict[str, Any] | None = None
    #: Dotted path of the prediction in a JSON response (see :mod:`~airflow_provider_smrt.scoring.codecs.templates`).
    response_field: str | None = None
    #: Start every ``text/csv`` body with a line of the feature names (containers that read a header).
    csv_header: bool = False
    #: An async endpoint hosting the same model, for rows whose one-row request exceeds ``max_payload_bytes``.
    oversize_endpoint_name: str | None = None
    #: InvokeEndpoint parameters (custom_attributes, target_model, ...): hashed, never logged.
    invoke_params: dict[str, Any] = field(default_factory=dict)
    #: A unit being scored leaves a checkpoint this often (seconds; None: no time trigger) ...
    checkpoint_interval_seconds: float | None = DEFAULT_CHECKPOINT_INTERVAL_SECONDS
    #: ... or after this many requests written, whichever comes first (None: no request trigger; both
    #: None: no checkpoints, a kill loses the units not committed). See :mod:`~.checkpoints`.
    checkpoint_every_requests: int | None = DEFAULT_CHECKPOINT_EVERY_REQUESTS
    #: If set, every request carries a deterministic InferenceId starting with it (see
    #: :mod:`~airflow_provider_smrt.scoring.inference_ids`); not hashed (it does not change predictions).
    inference_id_prefix: str | None = None
    #: On-demand price of one endpoint instance per hour (USD), for the summary's cost estimate; not hashed.
    instance_hourly_usd: float | None = None
    #: Instances behind the endpoint (all variants invoked), for the cost estimate; not hashed.
    instance_count: int = 1
    #: Rescore the rows under ``_errors/`` of the finished units (see :mod:`~.rescore`); not hashed.
    retry_failed_rows: bool = False
    #: Score every request at each of these targets (see :mod:`~airflow_provider_smrt.scoring.compare`):
    #: dicts of ``name`` and target keys (``target_variant``...); hashed.
    compare_targets: Sequence[dict[str, Any]] | None = None
    #: Child processes that encode request bodies (see :mod:`~airflow_provider_smrt.scoring.codecs.offload`):
    #: ``"auto"`` (1 with two CPUs or more to run on, else 0) or a number (0: in the task's process); not hashed.
    encode_processes: EncodeProcesses = "auto"

    def validate(self) -> None:
        """Raise :class:`~airflow_provider_smrt.exceptions.ParameterValidationError` naming a bad parameter."""
        validate_max_payload_bytes(self.max_payload_bytes, limit=self.payload_limit)
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
        if self.checkpoint_interval_seconds is not None and not self.checkpoint_interval_seconds > 0:
            raise ParameterValidationError(
                f"checkpoint_interval_seconds={self.checkpoint_interval_seconds} must be more than 0 "
                "(or None for no time trigger)"
            )
        if self.checkpoint_every_requests is not None and self.checkpoint_every_requests < 1:
            raise ParameterValidationError(
                f"checkpoint_every_requests={self.checkpoint_every_requests} must be at least 1 "
                "(or None for no request trigger)"
            )
        validate_inference_id_prefix(self.inference_id_prefix)
        resolve_encode_processes(self.encode_processes)
        if self.instance_hourly_usd is not None and (
            isinstance(self.instance_hourly_usd, bool)
            or not isinstance(self.instance_hourly_usd, (int, float))
            or self.instance_hourly_usd < 0
        ):
            raise ParameterValidationError(
                f"instance_hourly_usd={self.instance_hourly_usd!r} must be a number >= 0: the on-demand price of one "
                "endpoint instance per hour in USD (or None for no cost estimate)"
            )
        if isinstance(self.instance_count, bool) or not isinstance(self.instance_count, int) or self.instance_count < 1:
            raise ParameterValidationError(
                f"instance_count={self.instance_count!r} must be an integer >= 1: the instances behind the endpoint"
            )
        if self.retry_failed_rows and self.if_exists != "resume":
            raise ParameterValidationError(
                f"retry_failed_rows=True rescores the failed rows of finished parts, which needs if_exists='resume' "
                f"(got {self.if_exists!r}): set if_exists='resume', or drop retry_failed_rows ('overwrite' "
                "rescores every row anyway)"
            )
        if self.compare_targets is not None:
            self._validate_compare_targets()
        if self.request_template is not None:
            template_columns(self.request_template)  # validates the template
            if self.max_rows_per_request not in (None, 1):
                raise ParameterValidationError(
                    f"request_template makes one request per row: max_rows_per_request={self.max_rows_per_request} "
                    "must be 1 (or None)"
                )

    def _validate_compare_targets(self) -> None:
        parse_compare_targets(self.compare_targets)
        single = sorted(key for key in TARGET_KEYS if self.invoke_params.get(key))
        if single:
            raise ParameterValidationError(
                f"compare_targets sets each target's parameters: drop {', '.join(single)} (or compare_targets "
                "to score one target)"
            )
        if self.oversize_endpoint_name:
            raise ParameterValidationError(
                "compare_targets cannot be combined with oversize_endpoint_name: an async endpoint is one target; "
                "drop one of them"
            )
        if self.retry_failed_rows:
            raise ParameterValidationError(
                "retry_failed_rows is not supported with compare_targets (a row one target failed is in both the "
                "data part and _errors/): rerun with if_exists='overwrite' to score every row at every target again"
            )

    @property
    def targets(self) -> tuple[CompareTarget, ...] | None:
        """``compare_targets`` as validated targets (None without it)."""
        return None if self.compare_targets is None else parse_compare_targets(self.compare_targets)

    @property
    def input_uris(self) -> list[str]:
        """``input_uri`` as a list."""
        return [self.input_uri] if isinstance(self.input_uri, str) else list(self.input_uri)

    @property
    def checkpoint_policy(self) -> CheckpointPolicy:
        """When a unit being scored leaves a checkpoint."""
        return CheckpointPolicy(
            every_seconds=self.checkpoint_interval_seconds, every_requests=self.checkpoint_every_requests
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
            **({"csv_header": True} if self.csv_header else {}),
            **({"oversize_endpoint_name": self.oversize_endpoint_name} if self.oversize_endpoint_name else {}),
            **(
                {"compare_targets": [{"name": t.name, **dict(sorted(t.params.items()))} for t in self.targets]}
                if self.targets
                else {}
            ),
        }
