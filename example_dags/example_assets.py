"""Data-aware scheduling: score when features land, notify when predictions land.

Three DAGs joined by two assets:

- ``smrt_example_assets_features`` stands in for your feature pipeline: it writes the features and
  declares ``FEATURES`` as its outlet, so its success records an asset event;
- ``smrt_example_assets_score`` is scheduled on ``FEATURES``: it scores the features and declares
  ``PREDICTIONS`` (its ``output_uri``) as outlet. Airflow records the asset event when the task
  succeeds; the operator adds the run's locations and row counts to the event's ``extra``;
- ``smrt_example_assets_notify`` is scheduled on ``PREDICTIONS`` and reads those counts.

The output location is fixed, so each new version of the features is scored incrementally: files
already scored with the same content and configuration are skipped (``if_exists="resume"``), changed
ones are re-scored and their old parts replaced.

On the local stack: ``smrt-local run -- sh -c 'airflow dags test smrt_example_assets_features &&
airflow dags test smrt_example_assets_score && airflow dags test smrt_example_assets_notify'``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

FEATURES = Asset(name="smrt_example_features", uri="s3://smrt-local/examples/assets/features/")
PREDICTIONS = Asset(name="smrt_example_predictions", uri="s3://smrt-local/examples/assets/predictions/")
FEATURE_COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_assets_features",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smrt", "example", "assets"],
):

    @task(outlets=[FEATURES])
    def land_features() -> int:
        """Write the demo diabetes features (needs ``airflow-provider-smrt[local]``); your ETL goes here."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_smrt.local.demo_data import write_demo_dataset

        written = write_demo_dataset(s3_client=S3Hook().get_conn(), uri=FEATURES.uri, rows=2_000, files=2)
        return len(written)

    land_features()

with DAG(
    dag_id="smrt_example_assets_score",
    schedule=[FEATURES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one scoring run at a time writes the predictions
    tags=["smrt", "example", "assets"],
):
    SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="smrt-demo",
        input_uri=FEATURES.uri,
        output_uri=PREDICTIONS.uri,
        feature_columns=FEATURE_COLUMNS,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        max_rows_per_request=500,
        outlets=[PREDICTIONS],
    )

with DAG(
    dag_id="smrt_example_assets_notify",
    schedule=[PREDICTIONS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smrt", "example", "assets"],
):

    @task
    def notify(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Report each predictions event: where they are and how many rows (never their values)."""
        reports = []
        for asset, events in (triggering_asset_events or {}).items():
            for event in events:
                extra = event.extra or {}
                reports.append(
                    {
                        "asset": asset.uri,
                        "output_uri": extra.get("output_uri"),
                        "rows_scored": extra.get("rows_scored"),
                        "rows_failed": extra.get("rows_failed"),
                    }
                )
                print(f"predictions landed in {extra.get('output_uri')}: {extra.get('rows_scored')} rows scored")
        return reports

    notify()
