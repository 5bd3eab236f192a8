"""Score prompts against an LLM endpoint: one JSON request per row, built from a request template.

Each row's ``prompt`` fills ``{"inputs": "{prompt}", "parameters": {...}}`` (a whole-string placeholder
keeps the value's JSON type; placeholders inside longer strings are formatted as text); the answer
``[{"generated_text": "..."}]`` is reduced to its ``generated_text`` by ``response_field``. Requests
carry one row each, so raise ``concurrency`` rather than the batch size.

On the local stack (``smrt-local run -- airflow dags test smrt_example_llm``) the endpoint ``smrt-llm``
answers deterministically (a word count and the prompt's words reversed), and ``seed_prompts`` writes
a small prompts file first. Against AWS (e.g. a Hugging Face TGI endpoint), set ``seed_prompts`` to
false and point ``input_uri`` at your Parquet prompts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

QUESTIONS = [
    "What is batch inference",
    "Why keep requests under six megabytes",
    "How does the operator resume after a failure",
    "When should I use asynchronous inference",
]

with DAG(
    dag_id="smrt_example_llm",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-llm", type="string"),
        "input_uri": Param("s3://smrt-local/examples/llm/prompts/", type="string"),
        "output_uri": Param("s3://smrt-local/examples/llm/answers/", type="string"),
        "max_new_tokens": Param(64, type="integer", minimum=1),
        "seed_prompts": Param(True, type="boolean", description="write demo prompts to input_uri first"),
    },
    tags=["smrt", "example", "llm"],
):

    @task
    def seed_prompts(params: dict[str, Any] | None = None) -> int:
        """Write a demo prompts file (``id``, ``prompt``, ``max_new_tokens``) unless ``seed_prompts`` is false."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        assert params is not None
        if not params["seed_prompts"]:
            return 0
        table = pa.table(
            {
                "id": pa.array(range(len(QUESTIONS)), pa.int64()),
                "prompt": QUESTIONS,
                "max_new_tokens": pa.array([int(params["max_new_tokens"])] * len(QUESTIONS), pa.int64()),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        bucket, prefix = S3Hook.parse_s3_url(params["input_uri"])
        key = f"{prefix.rstrip('/')}/prompts.parquet"
        S3Hook().load_bytes(buffer.getvalue(), key=key, bucket_name=bucket, replace=True)
        return table.num_rows

    score = SageMakerBatchScoreOperator(
        task_id="generate",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],  # the features default to the template's columns: prompt, max_new_tokens
        content_type="application/json",
        request_template={
            "inputs": "Answer briefly: {prompt}",
            "parameters": {"max_new_tokens": "{max_new_tokens}", "do_sample": False},
        },
        response_field="generated_text",
        prediction_columns=["answer"],
        concurrency=4,
    )

    seed_prompts() >> score
