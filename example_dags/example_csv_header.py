"""Score a Parquet dataset against a container that reads the first CSV line as a header (MLflow's scoring server).

``csv_header=True`` starts every ``text/csv`` request with a line of the feature names; the answer still
holds one prediction per row. Without it, such a container reads the first row as the header and answers
one prediction fewer than the rows sent, and the task fails with a prediction-count error.

On the local stack (``smrt-local run -- airflow dags test smrt_example_csv_header``) create the endpoint
first with ``{"model": "sum", "csv_header": true}`` (``PUT /_local/endpoints/NAME``); ``seed_rows`` writes
a small input first. Against AWS set ``seed_rows`` to false and point ``input_uri`` at your Parquet data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

ROWS = 200

with DAG(
    dag_id="smrt_example_csv_header",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-mlflow", type="string"),
        "input_uri": Param("s3://smrt-local/examples/csv_header/in/", type="string"),
        "output_uri": Param("s3://smrt-local/examples/csv_header/out/", type="string"),
        "seed_rows": Param(True, type="boolean", description="write demo rows to input_uri first"),
    },
    tags=["smrt", "example"],
):

    @task
    def seed_rows(params: dict[str, Any] | None = None) -> int:
        """Write a demo file (``id, f0, f1``) unless ``seed_rows`` is false."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        assert params is not None
        if not params["seed_rows"]:
            return 0
        table = pa.table({"id": range(ROWS), "f0": [i / 10 for i in range(ROWS)], "f1": [i % 7 for i in range(ROWS)]})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        bucket, prefix = S3Hook.parse_s3_url(params["input_uri"])
        S3Hook().load_bytes(
            buffer.getvalue(), key=f"{prefix.rstrip('/')}/rows.parquet", bucket_name=bucket, replace=True
        )
        return table.num_rows

    score = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        feature_columns=["f0", "f1"],
        content_type="text/csv",
        csv_header=True,
        max_rows_per_request=50,
    )

    seed_rows() >> score
