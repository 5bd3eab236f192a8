"""Backfill a date range: one scoring run per logical date over a ``ds=YYYY-MM-DD`` partitioned dataset.

Input and output are partitioned by ``{{ ds }}``, so every run reads its own partition and writes its
own predictions; runs are independent and a rerun of a date resumes (finished parts are not scored
again). Backfill a range with Airflow 3's backfill command (the scheduler runs it)::

    airflow backfill create --dag-id smrt_example_backfill --from-date 2026-01-01 --to-date 2026-01-07

or run single dates with ``airflow dags test smrt_example_backfill 2026-01-02``. On the local stack,
seed one partition per date first (``smrt-local seed-demo --uri s3://smrt-local/examples/backfill/
features/ds=2026-01-02/``); against AWS, point the params at your endpoint and buckets.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_backfill",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,  # backfills are explicit (``airflow backfill create``), not implied by the start date
    max_active_runs=3,  # dates scored at once; each run keeps ``concurrency`` requests in flight
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=6)},
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "features_root": Param("s3://smrt-local/examples/backfill/features", type="string"),
        "predictions_root": Param("s3://smrt-local/examples/backfill/predictions", type="string"),
    },
    tags=["smrt", "example"],
):
    SageMakerBatchScoreOperator(
        task_id="score_partition",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.features_root }}/ds={{ ds }}/",
        output_uri="{{ params.predictions_root }}/ds={{ ds }}/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        max_rows_per_request=500,
        concurrency=4,
    )
