"""DAGs run by tests/operators/test_batch_score_features.py: a CSV header, response streams, oversize rows.

Each DAG takes the endpoint and the locations from ``run_conf`` (params), so one DAG file serves
many test cases without sharing state.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_shells import dag_args, from_params, params

PARAMS = params(
    "endpoint_name",
    "input_uri",
    "output_uri",
    "content_type",
    "report_dir",
    oversize_endpoint_name=Param("", type="string"),
)
FEATURES = ["f0", "f1", "f2"]


def _dag(dag_id: str, **operator_args: Any) -> DAG:
    """One task ``score`` of the ``id, f0, f1, f2`` tables: ``id`` passed through, the features sent."""
    with DAG(**dag_args(dag_id, PARAMS, report_failures=True)) as dag:
        SageMakerBatchScoreOperator(
            task_id="score",
            **from_params("endpoint_name", "input_uri", "output_uri", "content_type"),
            passthrough_columns=["id"],
            max_attempts=4,
            **operator_args,
        )
    return dag


f_csv_header = _dag("f_csv_header", feature_columns=FEATURES, csv_header=True, max_rows_per_request=25)
f_csv_plain = _dag("f_csv_plain", feature_columns=FEATURES, max_rows_per_request=25)
f_stream = _dag("f_stream", feature_columns=FEATURES, invoke_mode="stream", max_rows_per_request=25)
f_invoke = _dag("f_invoke", feature_columns=FEATURES, max_rows_per_request=25)
f_oversize = _dag(
    "f_oversize",
    feature_columns=["text", "f0"],
    oversize_endpoint_name="{{ params.oversize_endpoint_name }}",
    oversize_wait_timeout=120.0,
    max_rows_per_request=10,
    max_error_ratio=0.5,
)
f_no_oversize = _dag("f_no_oversize", feature_columns=["text", "f0"], max_rows_per_request=10)
f_header_ids_cost = _dag(
    "f_header_ids_cost",
    feature_columns=FEATURES,
    csv_header=True,
    inference_id_prefix="smrt-t-",
    instance_hourly_usd=1.0,
    max_rows_per_request=100,
    concurrency=2,
)
f_stream_slow = _dag(
    "f_stream_slow", feature_columns=FEATURES, invoke_mode="stream", max_rows_per_request=100, concurrency=2
)
