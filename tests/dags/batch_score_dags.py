"""DAGs run by tests/operators/test_batch_score.py through ``dag.test()`` on the local stack.

Each DAG takes the endpoint and the locations from ``run_conf`` (params), so one DAG file serves
many test cases without sharing state.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_shells import dag_args, from_params, params

PARAMS = params(
    "endpoint_name",
    "input_uri",
    "output_uri",
    "content_type",
    "accept",
    "custom_attributes",
    "target_variant",
    "target_model",
    "inputs",
)

FEATURES = ["f0", "f1", "f2"]


def _scoring_dag(dag_id: str, **operator_args: Any) -> DAG:
    """One batch-scoring task ``score``: ``params.input_uri`` into ``params.output_uri`` at ``params.endpoint_name``."""
    with DAG(**dag_args(dag_id, PARAMS)) as dag:
        SageMakerBatchScoreOperator(
            task_id="score", **from_params("endpoint_name", "input_uri", "output_uri", "content_type"), **operator_args
        )
    return dag


def _features_dag(dag_id: str, **operator_args: Any) -> DAG:
    """A scoring DAG of the ``id, f0, f1, f2`` tables: ``id`` passed through, the features sent."""
    return _scoring_dag(dag_id, passthrough_columns=["id"], feature_columns=FEATURES, **operator_args)


t_score_basic = _scoring_dag(
    "t_score_basic",
    passthrough_columns=["id", "name", "ts"],
    max_rows_per_request=50,
    concurrency=4,
    accept="{{ params.accept or params.content_type }}",
    custom_attributes="{{ params.custom_attributes or '' }}",
    target_variant="{{ params.target_variant or '' }}",
    target_model="{{ params.target_model or '' }}",
    variant_column="variant",
    max_attempts=10,
)

t_score_faults = _features_dag(
    "t_score_faults", max_rows_per_request=20, concurrency=8, max_attempts=20, progress_interval=1.0
)

t_score_poison_strict = _features_dag("t_score_poison_strict", max_rows_per_request=40, concurrency=4)

t_score_poison_tolerant = _features_dag(
    "t_score_poison_tolerant", max_rows_per_request=40, concurrency=4, max_error_ratio=0.05
)

# For the SIGKILL test: small requests against a slow endpoint, one at a time.
t_score_slow = _features_dag("t_score_slow", max_rows_per_request=100, concurrency=2)

with DAG(**dag_args("t_score_mapped", PARAMS)) as t_score_mapped:
    SageMakerBatchScoreOperator.partial(
        task_id="score",
        **from_params("endpoint_name", "output_uri"),
        passthrough_columns=["id"],
        feature_columns=FEATURES,
        max_rows_per_request=100,
        concurrency=4,
        pool="default_pool",
    ).expand(input_uri=["{{ params.inputs[0] }}", "{{ params.inputs[1] }}", "{{ params.inputs[2] }}"])

t_score_botocore = _features_dag("t_score_botocore", max_rows_per_request=100, concurrency=2, transport="botocore")
t_score_lean = _features_dag("t_score_lean", max_rows_per_request=100, concurrency=2)
t_score_encode_in_task = _features_dag("t_score_encode_in_task", max_rows_per_request=50, encode_processes=0)
t_score_encode_in_children = _features_dag("t_score_encode_in_children", max_rows_per_request=50, encode_processes=2)
