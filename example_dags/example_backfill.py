"""Backfill a date range: one run per logical date over a ``ds=YYYY-MM-DD`` partitioned dataset.

The backfill-ready pattern:

- input and output partitioned by ``{{ ds }}``: every run reads its own partition and writes its own
  predictions, so runs are independent and a rerun of a date resumes (finished parts are not scored
  again);
- ``plan_shards`` splits the day's partition into up to ``SHARDS`` balanced shards (whole files, and
  row-group ranges of large files), each scored by a mapped task into the day's output: the union is
  what one task would have written, and a failed shard is retried alone;
- every scoring task takes ``pool_slots=CONCURRENCY`` slots of the pool ``POOL``, its requests in
  flight, so the endpoint never sees more requests at once than the pool's slots, however many runs
  and shards are active;
- retries with exponential backoff, for a lost worker or an endpoint outage longer than the
  operator's own request retries. An empty or unreadable partition fails ``plan_shards`` at once,
  without retries.

Create the pool with the requests the endpoint takes at once, then backfill a range with Airflow 3's
backfill command (the scheduler runs it)::

    airflow pools set smrt_demo_requests 12 "requests in flight on the smrt-demo endpoint"
    airflow backfill create --dag-id smrt_example_backfill --from-date 2026-01-01 --to-date 2026-01-07

or run single dates with ``airflow dags test smrt_example_backfill 2026-01-02``. On the local stack,
seed one partition per date first (``smrt-local seed-demo --uri s3://smrt-local/examples/backfill/
features/ds=2026-01-02/``); against AWS, point the params at your endpoint and buckets.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.shards import plan_shards

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
POOL = "smrt_demo_requests"
CONCURRENCY = 4  # requests in flight per task, and the pool slots it takes
SHARDS = 4  # tasks per date at most

with DAG(
    dag_id="smrt_example_backfill",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,  # backfills are explicit (``airflow backfill create``), not implied by the start date
    max_active_runs=3,  # dates scored at once; the pool bounds the requests of all their tasks
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "features_root": Param("s3://smrt-local/examples/backfill/features", type="string"),
        "predictions_root": Param("s3://smrt-local/examples/backfill/predictions", type="string"),
    },
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),
    },
    tags=["smrt", "example"],
):
    shards = task(plan_shards, task_id="plan_shards")(
        input_uri="{{ params.features_root }}/ds={{ ds }}/", num_shards=SHARDS
    )
    SageMakerBatchScoreOperator.partial(
        task_id="score_partition",
        pool=POOL,
        pool_slots=CONCURRENCY,
        concurrency=CONCURRENCY,
        endpoint_name="{{ params.endpoint_name }}",
        output_uri="{{ params.predictions_root }}/ds={{ ds }}/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        max_rows_per_request=500,
    ).expand(input_uri=shards)
