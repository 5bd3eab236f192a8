"""Score payloads too large for real-time inference (> 6 MiB) through SageMaker asynchronous inference.

Runs on the local stack as is (``smrt-local run -- airflow dags test smrt_example_async_large_payload``):
the endpoint ``smrt-sum`` returns each CSV line's sum. Against AWS, set the params to an endpoint with
an async inference config and a bucket the role may write.

1. ``make_payloads`` writes a few CSV objects of ~8 MiB each (10 numeric columns) to S3;
2. ``invoke`` submits one InvokeEndpointAsync request per object (idempotent under retries);
3. ``wait`` waits for every output in the triggerer (deferrable); ``invoke`` and ``wait`` return a
   summary (counts and the S3 URI of the ledger holding one record per request), the same size for
   2 requests or 20,000;
4. ``check`` reads the records back from the ledger and compares every returned value with the sum
   computed here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from airflow_provider_smrt.sensors.async_inference import SageMakerAsyncInferenceSensor

ROWS_PER_PAYLOAD = 100_000
COLUMNS = 10


def _payload(seed: int) -> Any:
    import numpy as np

    return np.round(np.random.default_rng(seed).uniform(-1000, 1000, size=(ROWS_PER_PAYLOAD, COLUMNS)), 4)


with DAG(
    dag_id="smrt_example_async_large_payload",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "sagemaker", "async"],
    params={
        "endpoint_name": Param("smrt-sum", type="string"),
        "bucket": Param("smrt-local", type="string"),
        "prefix": Param("examples/async-large-payload/", type="string"),
        "payloads": Param(2, type="integer", minimum=1),
    },
):

    @task
    def make_payloads(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[str]:
        import io

        import numpy as np
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        assert params is not None
        s3 = S3Hook()
        uris = []
        for i in range(int(params["payloads"])):
            buffer = io.BytesIO()
            np.savetxt(buffer, _payload(i), fmt="%.4f", delimiter=",")
            key = f"{params['prefix']}{run_id}/input/part-{i:03d}.csv"
            s3.load_bytes(buffer.getvalue(), key=key, bucket_name=params["bucket"], replace=True)
            uris.append(f"s3://{params['bucket']}/{key}")
        return uris

    payloads = make_payloads()

    invoke = SageMakerInvokeEndpointAsyncOperator(
        task_id="invoke",
        endpoint_name="{{ params.endpoint_name }}",
        input_location=payloads,
        content_type="text/csv",
        accept="text/csv",
        request_ttl_seconds=3600,
        invocation_timeout_seconds=900,
        concurrency=4,
    )

    wait = SageMakerAsyncInferenceSensor(
        task_id="wait", invocations=invoke.output, deferrable=True, poke_interval=2
    )

    @task
    def check(summary: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_smrt.async_inference import read_results

        s3 = S3Hook()
        statuses = read_results(s3.get_conn(), summary)
        rows = 0
        for i, status in enumerate(statuses):
            if status["status"] != "succeeded":
                raise ValueError(f"request {status['inference_id']} {status['status']}")
            bucket, key = S3Hook.parse_s3_url(status["output_location"])
            got = np.array(s3.read_key(key, bucket).split(), dtype=float)
            expected = _payload(i).sum(axis=1)
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-9, atol=1e-6):
                raise ValueError(f"output {i} does not match the expected sums")
            rows += len(got)
        return {"payloads": len(statuses), "rows": rows}

    check(wait.output)
