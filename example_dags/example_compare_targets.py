"""Daily shadow scoring: every request goes to the production variant and to a shadow variant in one pass.

``compare_targets`` names each target; the output holds the pass-through columns, then
``disease_progression__prod`` and ``disease_progression__shadow``. A row the shadow fails keeps the
production prediction (the shadow's column is null) and gets an ``_errors/`` row naming ``shadow`` in
its ``target`` column. The summary's ``compare_targets`` reports per target the rows scored and failed,
the latency p50/p95, and the agreement with the first target (mean and max absolute difference).

On AWS, point ``endpoint_name`` at an endpoint with two production variants (or inference components:
use ``inference_component_name`` in the dicts). The variant names here, ``prod`` and ``shadow``, are the
ones the test creates on the local stack.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_compare_targets",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "input_root": Param("s3://smrt-local/demo/diabetes", type="string"),
        "output_root": Param("s3://smrt-local/predictions/diabetes-shadow", type="string"),
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
        # A shadow that fails some rows must not fail the production scoring: allow 5 % of rows.
        max_error_ratio=0.05,
        compare_targets=[
            {"name": "prod", "target_variant": "prod"},
            {"name": "shadow", "target_variant": "shadow"},
        ],
    )

    @task
    def report(summary: dict[str, Any]) -> dict[str, Any]:
        """Keep how far the shadow is from production (e.g. push it to a metrics store); here it is returned."""
        shadow = summary["compare_targets"]["shadow"]
        return {
            "rows_failed_by_shadow": shadow["rows_failed"],
            "latency_p95_ms": {name: target["latency_p95_ms"] for name, target in summary["compare_targets"].items()},
            "agreement": shadow["agreement"]["disease_progression"],
        }

    report(score.output)
