"""The DAG that ``bench/bench_memory.py`` runs with ``airflow dags test`` (DAG folder: ``bench/dags``).

One ``SageMakerBatchScoreOperator`` task, 1,000 rows a request, concurrency 16; the endpoint, the locations
and the report file come from the run's conf. When the task succeeds, its callback writes the task process's
``VmHWM`` and Arrow's memory pool figures to ``params.report`` (a JSON file the benchmark reads).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

ROWS_PER_REQUEST = 1000
CONCURRENCY = 16


def _report(context: Any) -> None:
    import pyarrow as pa

    path = context["params"].get("report")
    if not path:
        return
    with open("/proc/self/status") as fh:
        status = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.startswith(("VmHWM", "VmRSS"))}
    pool = pa.default_memory_pool()
    summary = context["ti"].xcom_pull(task_ids="score") or {}
    doc = {
        "vm_hwm": status.get("VmHWM"),
        "vm_rss_end": status.get("VmRSS"),
        "arrow_pool": pool.backend_name,
        "arrow_max": pool.max_memory(),
        "arrow_allocated_end": pa.total_allocated_bytes(),
        "rows": summary.get("rows_scored"),
        "elapsed": summary.get("elapsed_seconds"),
    }
    with open(path, "w") as fh:
        json.dump(doc, fh)


with DAG(
    dag_id="smrt_bench_memory",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "endpoint_name": Param("smrt-sum", type="string"),
        "input_uri": Param("", type="string"),
        "output_uri": Param("", type="string"),
        "report": Param("", type="string"),
    },
) as smrt_bench_memory:
    SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="{{ params.endpoint_name }}",
        input_uri="{{ params.input_uri }}",
        output_uri="{{ params.output_uri }}",
        passthrough_columns=["id"],
        max_rows_per_request=ROWS_PER_REQUEST,
        concurrency=CONCURRENCY,
        progress_interval=3600,
        on_success_callback=_report,
    )
