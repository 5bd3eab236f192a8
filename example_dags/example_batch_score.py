"""Daily batch scoring of a Parquet partition against a SageMaker endpoint.

Each run reads the partition of its logical date (``<input_root>/ds=YYYY-MM-DD/``) and writes the
predictions of that date (``<output_root>/ds=YYYY-MM-DD/``), so daily runs score new data and a rerun
of a date resumes instead of scoring again. On the local stack, ``scripts/demo`` seeds
``s3://smrt-local/demo/diabetes/ds=2026-01-01/`` and runs this DAG for 2026-01-01 (twice, to show the
resume). Against AWS, set the DAG params (or edit the defaults) to your endpoint and buckets.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_batch_score",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    # A retry resumes: parts already committed are not scored again.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=6)},
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "input_root": Param("s3://smrt-local/demo/diabetes", type="string"),
        "output_root": Param("s3://smrt-local/predictions/diabetes", type="string"),
    },
    tags=["smrt", "example"],
) as dag:
    SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        # One input partition and one output location per logical date: reruns and backfills resume
        # instead of re-scoring, and every daily run scores its own data.
        input_uri="{{ params.input_root }}/ds={{ ds }}/",
        output_uri="{{ params.output_root }}/ds={{ ds }}/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        content_type="text/csv",
        max_rows_per_request=500,
        concurrency=8,
    )
