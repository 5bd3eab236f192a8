"""DAGs run by ``tests/reliability`` through ``dag.test()`` on the local stack.

Everything that differs between test cases comes from ``run_conf``: templated fields from params, and the
remaining constructor arguments from ``params.op`` (applied by :class:`ReliabilityBatchScoreOperator` before
``execute``). A failing task writes its exception text to ``<params.report_dir>/<task_id>.txt``.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.scoring.job import ScoringJob
from tests.support.dag_shells import dag_args, from_params, params
from tests.support.local_control import patch_faults

PARAMS = params(
    "endpoint_name", "input_uri", "output_uri", "content_type", "custom_attributes", "aws_conn_id", "report_dir", "op"
)

#: Constructor arguments a test may set through ``params.op`` (no templating needed for them).
OVERRIDABLE = frozenset(
    {
        "feature_columns",
        "passthrough_columns",
        "prediction_columns",
        "decoder",
        "encoder",
        "max_payload_bytes",
        "max_rows_per_request",
        "concurrency",
        "max_error_ratio",
        "if_exists",
        "retry_failed_rows",
        "allow_empty_input",
        "max_attempts",
        "progress_interval",
        "s3_write_args",
        "expected_bucket_owner",
        "botocore_config",
        "request_template",
        "response_field",
        "checkpoint_interval_seconds",
        "checkpoint_every_requests",
        "compare_targets",
        "variant_column",
    }
)


class ReliabilityBatchScoreOperator(SageMakerBatchScoreOperator):
    """The batch-scoring operator with per-run constructor arguments from ``params.op``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._defaults = {key: getattr(self, key) for key in OVERRIDABLE}

    def execute(self, context: Any) -> dict[str, Any]:
        # dag.test() reuses this task object across runs in one process: start from the DAG's arguments and a
        # fresh hook (AwsBaseOperator caches it), so one run's connection or overrides never leak into the next.
        self.__dict__.pop("hook", None)
        for key, value in self._defaults.items():
            setattr(self, key, value)
        for key, value in (context["params"].get("op") or {}).items():
            if key not in OVERRIDABLE:
                raise ValueError(f"params.op may not set {key!r}")
            setattr(self, key, value)
        return super().execute(context)


class ReleaseOnStopOperator(ReliabilityBatchScoreOperator):
    """Clears the endpoint's ``hold_after_requests`` fault once the job stops (the task timed out or was
    killed), so the requests it held finish as in-flight requests do and the task can end.

    With the hold, the run cannot finish before its ``execution_timeout``, however fast the machine, and has
    finished the held-back requests' predecessors by then, however slow.
    """

    def build_job(self, map_index: int | None = None) -> ScoringJob:
        job = super().build_job(map_index)
        threading.Thread(target=self._release_on_stop, args=(job,), daemon=True).start()
        return job

    def _release_on_stop(self, job: ScoringJob) -> None:
        if job.coordinator.stop.wait(timeout=600):
            patch_faults(os.environ["SMRT_RUNTIME_ENDPOINT_URL"], self.endpoint_name, {"hold_after_requests": None})


def _dag(
    dag_id: str, operator: type[ReliabilityBatchScoreOperator] = ReliabilityBatchScoreOperator, **task_args: Any
) -> DAG:
    with DAG(**dag_args(dag_id, PARAMS, report_failures=True)) as dag:
        operator(
            task_id="score",
            **from_params(
                "endpoint_name", "input_uri", "output_uri", "content_type", "custom_attributes", "aws_conn_id"
            ),
            passthrough_columns=["id"],
            feature_columns=["f0", "f1", "f2"],
            max_rows_per_request=50,
            concurrency=4,
            max_attempts=12,
            progress_interval=0.5,
            **task_args,
        )
    return dag


r_score = _dag("r_score")
# For the task-timeout test: Airflow's execution_timeout fires (SIGALRM), then calls on_kill. The endpoint holds
# the requests after the first few (hold_after_requests) until the job stopped: the timeout only has to outlast
# the task's start and those few requests, on a loaded machine too.
r_score_timeout = _dag("r_score_timeout", ReleaseOnStopOperator, execution_timeout=timedelta(seconds=10))
# For the retry tests: a retry must only happen where it can help.
r_score_retries = _dag("r_score_retries", retries=2, retry_delay=timedelta(seconds=0))
