"""Score documents against a real-time endpoint, sending the few over the payload limit to its async twin.

Rows whose one-row request exceeds ``max_payload_bytes`` go through InvokeEndpointAsync to
``oversize_endpoint_name`` (an async endpoint hosting the same model), staged under
``<output_uri>/_staging/``, and are written at their position in the same output; the summary counts
them in ``rows_async``.

On the local stack (``smrt-local run -- airflow dags test smrt_example_oversize``) create the two
endpoints first, ``{"model": "constant", "mode": "realtime"}`` and ``{"model": "constant", "mode": "async"}``
(``PUT /_local/endpoints/NAME``); ``seed_rows`` writes 50 documents, one of them 7 MB. Against AWS set
``seed_rows`` to false and point ``input_uri`` at your Parquet data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

ROWS = 50
BIG_ROW = 20

with DAG(
    dag_id="smrt_example_oversize",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-docs", type="string"),
        "oversize_endpoint_name": Param("smrt-docs-async", type="string"),
        "input_uri": Param("s3://smrt-local/examples/oversize/in/", type="string"),
        "output_uri": Param("s3://smrt-local/examples/oversize/out/", type="string"),
        "seed_rows": Param(True, type="boolean", description="write demo documents to input_uri first"),
    },
    tags=["smrt", "example"],
):

    @task
    def seed_rows(params: dict[str, Any] | None = None) -> int:
        """Write ``ROWS`` documents (``id, text``), one of 7 MB, unless ``seed_rows`` is false."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        assert params is not None
        if not params["seed_rows"]:
            return 0
        texts = [f"document {i}" for i in range(ROWS)]
        texts[BIG_ROW] = "x" * 7_000_000
        table = pa.table({"id": range(ROWS), "text": texts})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        bucket, prefix = S3Hook.parse_s3_url(params["input_uri"])
        key = f"{prefix.rstrip('/')}/documents.parquet"
        S3Hook().load_bytes(buffer.getvalue(), key=key, bucket_name=bucket, replace=True)
        return table.num_rows

    score = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        oversize_endpoint_name="{{ params.oversize_endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        feature_columns=["text"],
        content_type="application/json",
        max_rows_per_request=10,
    )

    seed_rows() >> score
