"""Fan out over partitions with dynamic task mapping, with an Airflow pool guarding the endpoint.

``list_partitions`` lists the sub-prefixes of ``features_root`` (``region=eu/``, ``region=us/``, ...);
``score`` is mapped over them: one task per partition, all writing under one output prefix (each
mapped task writes its own manifest, ``_manifest-00000.json``...). Every mapped task takes a slot of the
pool ``smrt_endpoint``, so at most ``slots`` partitions are scored at once, each with ``concurrency``
requests in flight: size the pool to what the endpoint can take. Create it first::

    airflow pools set smrt_endpoint 2 "SageMaker endpoint capacity"

On the local stack, seed partitions with ``smrt-local seed-demo --uri
s3://smrt-local/examples/fanout/features/region=eu/`` (and ``region=us/``...).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

POOL = "smrt_endpoint"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

with DAG(
    dag_id="smrt_example_mapped_fanout",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=6)},
    params={
        "endpoint_name": Param("smrt-demo", type="string"),
        "features_root": Param("s3://smrt-local/examples/fanout/features/", type="string"),
        "output_uri": Param("s3://smrt-local/examples/fanout/predictions/", type="string"),
    },
    tags=["smrt", "example"],
):

    @task
    def list_partitions(params: dict[str, Any] | None = None) -> list[str]:
        """The partitions (sub-prefixes) under ``features_root``, as ``s3://`` URIs."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        assert params is not None
        bucket, prefix = S3Hook.parse_s3_url(params["features_root"])
        prefix = prefix.rstrip("/") + "/"
        partitions = S3Hook().list_prefixes(bucket_name=bucket, prefix=prefix, delimiter="/") or []
        return [f"s3://{bucket}/{partition}" for partition in sorted(partitions)]

    SageMakerBatchScoreOperator.partial(
        task_id="score",
        pool=POOL,
        # The UI names each mapped task by its partition instead of 0, 1, 2.
        map_index_template="{{ task.input_uri }}",
        endpoint_name="{{ params.endpoint_name }}",
        output_uri="{{ params.output_uri }}",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        max_rows_per_request=500,
        concurrency=4,
    ).expand(input_uri=list_partitions())
