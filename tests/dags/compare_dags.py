"""DAGs run by tests/operators/test_compare_targets.py: one read of the input scored at two targets.

Each DAG takes the endpoint and the locations from ``run_conf`` (params); the endpoint has variants
(or inference components) named ``prod`` and ``shadow``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_shells import dag_args, from_params, params

PARAMS = params("endpoint_name", "input_uri", "output_uri", "content_type", "report_dir")
FEATURES = ["f0", "f1", "f2"]


def _dag(dag_id: str, **operator_args: Any) -> DAG:
    """One task ``score`` of the ``id, f0, f1, f2`` tables at two targets."""
    with DAG(**dag_args(dag_id, PARAMS, report_failures=True)) as dag:
        SageMakerBatchScoreOperator(
            task_id="score",
            **from_params("endpoint_name", "input_uri", "output_uri", "content_type"),
            passthrough_columns=["id"],
            feature_columns=FEATURES,
            max_attempts=4,
            max_rows_per_request=25,
            concurrency=4,
            **operator_args,
        )
    return dag


c_variants = _dag(
    "c_variants",
    compare_targets=[{"name": "prod", "target_variant": "prod"}, {"name": "shadow", "target_variant": "shadow"}],
    variant_column="variant",
    max_error_ratio=0.5,
)
c_components = _dag(
    "c_components",
    compare_targets=[
        {"name": "prod", "inference_component_name": "ic-prod"},
        {"name": "shadow", "inference_component_name": "ic-shadow"},
    ],
    max_error_ratio=0.5,
)
