"""DAGs for Parquet scoring through async inference (tests/operators/test_async_parquet_mode.py)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.async_batch_score import SageMakerAsyncBatchScoreOperator
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_shells import dag_args, from_params, params

PARAMS = params("endpoint_name", "output_uri", input_uri=Param("s3://smrt-local/none/", type="string"))


def _parquet_args() -> dict[str, Any]:
    """The arguments both operators score the same wide Parquet dataset with."""
    return {
        "task_id": "score",
        **from_params("endpoint_name", "input_uri", "output_uri"),
        "passthrough_columns": ["id"],
        "content_type": "text/csv",
        "concurrency": 4,
    }


with DAG(**dag_args("t_async_parquet", PARAMS)) as t_async_parquet:
    SageMakerAsyncBatchScoreOperator(**_parquet_args(), poke_interval=0.2)

with DAG(**dag_args("t_batch_wide", PARAMS)) as t_batch_wide:
    SageMakerBatchScoreOperator(**_parquet_args())

with DAG(**dag_args("t_async_parquet_in_task", PARAMS)) as t_async_parquet_in_task:
    SageMakerAsyncBatchScoreOperator(**_parquet_args(), poke_interval=0.2, encode_processes=0)

with DAG(**dag_args("t_async_parquet_in_child", PARAMS)) as t_async_parquet_in_child:
    SageMakerAsyncBatchScoreOperator(**_parquet_args(), poke_interval=0.2, encode_processes=1)
