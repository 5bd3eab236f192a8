"""Daily batch scoring of a Parquet partition against a SageMaker endpoint.

On the local stack (``smrt-local run -- airflow dags test smrt_example_batch_score 2026-01-01``) it
scores the demo diabetes dataset against the local ``smrt-demo`` endpoint. Against AWS, set the
DAG params (or edit the defaults) to your endpoint and buckets.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_batch_score",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "input_uri": Param("s3://smrt-local/demo/diabetes/", type="string"),
        "output_root": Param("s3://smrt-local/predictions/diabetes", type="string"),
    },
    tags=["smrt", "example"],
) as dag:
    SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        # One output location per logical date: reruns and backfills resume instead of re-scoring.
        output_uri="{{ params.output_root }}/ds={{ ds }}/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        content_type="text/csv",
        max_rows_per_request=500,
        concurrency=8,
    )
