"""DAGs run by ``tests/operators/test_run_cost.py`` through ``dag.test()`` on the local stack."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_shells import dag_args, from_params, params

#: The price and instance count of the cost DAG (the test checks the estimate against them).
INSTANCE_HOURLY_USD = 3.6
INSTANCE_COUNT = 2

PARAMS = params(
    "endpoint_name",
    "input_uri",
    "output_uri",
    "report_dir",
    inference_id_prefix=Param("", type="string"),
)

with DAG(**dag_args("t_score_cost", PARAMS, report_failures=True)) as t_score_cost:
    SageMakerBatchScoreOperator(
        task_id="score",
        **from_params("endpoint_name", "input_uri", "output_uri", "inference_id_prefix"),
        passthrough_columns=["id"],
        feature_columns=["f0", "f1", "f2"],
        max_rows_per_request=50,
        concurrency=4,
        max_attempts=12,
        max_error_ratio=0.1,
        instance_hourly_usd=INSTANCE_HOURLY_USD,
        instance_count=INSTANCE_COUNT,
    )
