"""DAGs for Parquet scoring through async inference (tests/operators/test_async_parquet_mode.py)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.async_batch_score import SageMakerAsyncBatchScoreOperator
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

PARAMS = {
    "endpoint_name": Param("smrt-sum", type="string"),
    "input_uri": Param("s3://smrt-local/none/", type="string"),
    "output_uri": Param("s3://smrt-local/none-out/", type="string"),
}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS)


with _dag("t_async_parquet"):
    SageMakerAsyncBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        content_type="text/csv",
        concurrency=4,
        poke_interval=0.2,
    )

with _dag("t_batch_wide"):
    SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        content_type="text/csv",
        concurrency=4,
    )
