"""The DAGs the scale tests run through a real deployment (tests/scale/), not collected by pytest.

- ``smrt_scale_backfill`` (backfills): one run per ``ds``; ``plan_shards`` splits the day's partition
  into ``SHARDS`` shards, each scored by a mapped task taking ``CONCURRENCY`` slots of the pool
  ``POOL`` (its requests in flight), into the day's output.
- ``smrt_scale_fanout`` (triggered): one input split into ``FANOUT_SHARDS`` shards scored by mapped
  tasks into one output.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.shards import plan_shards

DAG_ID = "smrt_scale_backfill"
POOL = "smrt_scale_endpoint"
CONCURRENCY = 2
SHARDS = 2
MAX_ROWS_PER_REQUEST = 50

with DAG(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    end_date=datetime(2026, 2, 28),  # no scheduled runs: only the tests' backfills
    catchup=False,
    max_active_runs=3,
    params={
        "endpoint_name": Param("", type="string"),
        "features_root": Param("", type="string"),
        "predictions_root": Param("", type="string"),
    },
    default_args={"retries": 3, "retry_delay": timedelta(seconds=2)},
    tags=["smrt", "tests"],
):
    shards = task(plan_shards, task_id="plan_shards")(
        input_uri="{{ params.features_root }}/ds={{ ds }}/", num_shards=SHARDS
    )
    SageMakerBatchScoreOperator.partial(
        task_id="score",
        pool=POOL,
        pool_slots=CONCURRENCY,
        concurrency=CONCURRENCY,
        endpoint_name="{{ params.endpoint_name }}",
        output_uri="{{ params.predictions_root }}/ds={{ ds }}/",
        passthrough_columns=["id"],
        max_rows_per_request=MAX_ROWS_PER_REQUEST,
        progress_interval=1.0,
    ).expand(input_uri=shards)

FANOUT_DAG_ID = "smrt_scale_fanout"
FANOUT_SHARDS = 4

with DAG(
    dag_id=FANOUT_DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={
        "endpoint_name": Param("", type="string"),
        "input_uri": Param("", type="string"),
        "output_uri": Param("", type="string"),
    },
    tags=["smrt", "tests"],
):
    fanout_shards = task(plan_shards, task_id="plan_shards")(
        input_uri="{{ params.input_uri }}", num_shards=FANOUT_SHARDS
    )
    SageMakerBatchScoreOperator.partial(
        task_id="score",
        concurrency=CONCURRENCY,
        endpoint_name="{{ params.endpoint_name }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        max_rows_per_request=50,
    ).expand(input_uri=fanout_shards)
