"""DAGs run by tests/operators/test_batch_score.py through ``dag.test()`` on the local stack.

Each DAG takes the endpoint and the locations from ``run_conf`` (params), so one DAG file serves
many test cases without sharing state.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

PARAMS = {
    "endpoint_name": Param("smrt-sum", type="string"),
    "input_uri": Param("s3://smrt-local/none/", type=["string", "array"]),
    "output_uri": Param("s3://smrt-local/none-out/", type="string"),
    "content_type": Param("text/csv", type="string"),
    "accept": Param("", type="string"),
    "custom_attributes": Param("", type="string"),
    "target_variant": Param("", type="string"),
    "target_model": Param("", type="string"),
    "inputs": Param([], type="array"),
}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS)


FEATURES = ["f0", "f1", "f2"]

COMMON = {
    "endpoint_name": "{{ params.endpoint_name }}",
    "input_uri": "{{ params.input_uri }}",
    "output_uri": "{{ params.output_uri }}",
    "content_type": "{{ params.content_type }}",
}

with _dag("t_score_basic"):
    SageMakerBatchScoreOperator(
        task_id="score",
        passthrough_columns=["id", "name", "ts"],
        max_rows_per_request=50,
        concurrency=4,
        accept="{{ params.accept or params.content_type }}",
        custom_attributes="{{ params.custom_attributes or '' }}",
        target_variant="{{ params.target_variant or '' }}",
        target_model="{{ params.target_model or '' }}",
        variant_column="variant",
        max_attempts=10,
        **COMMON,
    )

with _dag("t_score_faults"):
    SageMakerBatchScoreOperator(
        task_id="score",
        passthrough_columns=["id"],
        feature_columns=FEATURES,
        max_rows_per_request=20,
        concurrency=8,
        max_attempts=20,
        progress_interval=1.0,
        **COMMON,
    )

with _dag("t_score_poison_strict"):
    SageMakerBatchScoreOperator(
        task_id="score", passthrough_columns=["id"],
        feature_columns=FEATURES, max_rows_per_request=40, concurrency=4, **COMMON
    )

with _dag("t_score_poison_tolerant"):
    SageMakerBatchScoreOperator(
        task_id="score",
        passthrough_columns=["id"],
        feature_columns=FEATURES,
        max_rows_per_request=40,
        concurrency=4,
        max_error_ratio=0.05,
        **COMMON,
    )

with _dag("t_score_slow"):
    # For the SIGKILL test: small requests against a slow endpoint, one at a time.
    SageMakerBatchScoreOperator(
        task_id="score", passthrough_columns=["id"],
        feature_columns=FEATURES, max_rows_per_request=100, concurrency=2, **COMMON
    )

with _dag("t_score_mapped"):
    SageMakerBatchScoreOperator.partial(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        feature_columns=FEATURES,
        max_rows_per_request=100,
        concurrency=4,
        pool="default_pool",
    ).expand(input_uri=["{{ params.inputs[0] }}", "{{ params.inputs[1] }}", "{{ params.inputs[2] }}"])
