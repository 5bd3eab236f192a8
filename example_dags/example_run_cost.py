"""Daily batch scoring that reports what the run cost and tags every request with a deterministic InferenceId.

The summary (XCom) and ``_manifest.json`` carry the HTTP calls made (retries included), the bytes sent
and received, the endpoint-seconds and the latency p50/p95 per invoked variant, and an estimate of the
endpoint's cost for the run (``instance_hourly_usd``, ``instance_count``: see docs/cost.md). Every
request carries the InferenceId ``smrt-cost-<date>-<unit>-<first row>-<rows>``, also written next to
each failed row in ``_errors/``, so a row can be found in the endpoint's data capture and logs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
#: The on-demand price of one instance of the endpoint (e.g. ml.m5.xlarge in your region), and how many serve it.
INSTANCE_HOURLY_USD = 0.23
INSTANCE_COUNT = 2

with DAG(
    dag_id="smrt_example_run_cost",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "input_root": Param("s3://smrt-local/demo/diabetes", type="string"),
        "output_root": Param("s3://smrt-local/predictions/diabetes-cost", type="string"),
    },
    tags=["smrt", "example"],
) as dag:
    score = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_root }}/ds={{ ds }}/",
        output_uri="{{ params.output_root }}/ds={{ ds }}/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        max_rows_per_request=100,
        concurrency=4,
        max_error_ratio=0.01,
        # The same input row gets the same InferenceId on every rerun of this date.
        inference_id_prefix="smrt-cost-{{ ds_nodash }}-",
        instance_hourly_usd=INSTANCE_HOURLY_USD,
        instance_count=INSTANCE_COUNT,
    )

    @task
    def report(summary: dict[str, Any]) -> dict[str, Any]:
        """Keep the run's cost figures (e.g. push them to a metrics store); here they are returned."""
        keys = ("http_calls", "requests", "retries", "bytes_sent", "bytes_received", "endpoint_seconds")
        figures = {key: summary[key] for key in keys}
        figures["estimated_cost_usd"] = summary["estimated_cost_usd"]
        figures["latency_p95_ms_by_variant"] = {
            name: calls["latency_p95_ms"] for name, calls in summary["calls_by_variant"].items()
        }
        return figures

    report(score.output)
