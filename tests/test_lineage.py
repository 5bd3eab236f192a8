"""OpenLineage: the operators report their input and output datasets with schemas after a real run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from airflow_provider_smrt.async_inference import read_results
from airflow_provider_smrt.lineage import LineageDataset, RunLineage, dataset_identity, to_operator_lineage
from airflow_provider_smrt.local.demo_data import write_demo_dataset
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


class FakeTaskInstance(SimpleNamespace):
    """Enough of a task instance for ``execute`` outside a DAG run: records XCom pushes."""

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _context(task_id: str) -> dict[str, Any]:
    ti = FakeTaskInstance(dag_id="d", task_id=task_id, run_id="manual__1", map_index=-1, try_number=1, pushed={})
    return {"ti": ti}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/data/part-0.parquet", ("s3://bucket", "data/part-0.parquet")),
        ("s3://bucket/data/", ("s3://bucket", "data/")),
        ("s3://bucket", ("s3://bucket", "/")),
        ("/tmp/data/in.parquet", ("file", "/tmp/data/in.parquet")),
        ("file:///tmp/data/", ("file", "/tmp/data/")),
    ],
)
def test_dataset_identity(uri: str, expected: tuple[str, str]) -> None:
    assert dataset_identity(uri) == expected


def test_degrades_to_none_without_openlineage(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)  # "not installed"
    assert to_operator_lineage(RunLineage(inputs=(LineageDataset(uri="s3://b/k"),))) is None


def test_batch_score_lineage_after_a_run(s3_client: Any, s3_prefix: str) -> None:
    pytest.importorskip("airflow.providers.openlineage", reason="needs apache-airflow-providers-openlineage")
    write_demo_dataset(s3_client=s3_client, uri=s3_prefix + "in/", rows=120, files=2)
    operator = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name="smrt-demo",
        input_uri=s3_prefix + "in/",
        output_uri=s3_prefix + "out/",
        feature_columns=FEATURES,
        passthrough_columns=["patient_id", "visit_date"],
        prediction_columns=["disease_progression"],
        variant_column="variant",
    )
    summary = operator.execute(_context("score"))
    assert summary["rows_scored"] == 120

    lineage = operator.get_openlineage_facets_on_complete(None)
    bucket, prefix = "s3://smrt-local", s3_prefix[len("s3://smrt-local/") :]
    [source] = lineage.inputs
    assert (source.namespace, source.name) == (bucket, prefix + "in/")
    input_fields = {f.name: f.type for f in source.facets["schema"].fields}
    assert list(input_fields) == [*FEATURES, "patient_id", "visit_date"]
    assert input_fields["age"] == "double" and input_fields["patient_id"] == "int64"
    assert input_fields["visit_date"].startswith("date32")

    [output] = lineage.outputs
    assert (output.namespace, output.name) == (bucket, prefix + "out/")
    assert [(f.name, f.type) for f in output.facets["schema"].fields] == [
        ("patient_id", "int64"),
        ("visit_date", "date32[day]"),
        ("disease_progression", "double"),
        ("variant", "string"),
    ]
    assert output.outputFacets["outputStatistics"].rowCount == 120


def test_async_lineage_after_a_run(s3_client: Any, s3_prefix: str) -> None:
    pytest.importorskip("airflow.providers.openlineage", reason="needs apache-airflow-providers-openlineage")
    inputs = []
    for i in range(2):
        key = f"{s3_prefix[len('s3://smrt-local/') :]}async/in-{i}.csv"
        rows = np.arange(6, dtype=float).reshape(3, 2) + i
        s3_client.put_object(Bucket="smrt-local", Key=key, Body="\n".join(",".join(map(str, r)) for r in rows).encode())
        inputs.append(f"s3://smrt-local/{key}")
    operator = SageMakerInvokeEndpointAsyncOperator(
        task_id="invoke",
        endpoint_name="smrt-sum",
        input_location=inputs,
        content_type="text/csv",
        wait_for_completion=True,
        poke_interval=0.2,
    )
    summary = operator.execute(_context("invoke"))
    assert summary["succeeded"] == 2 and summary["failed"] == 0
    records = read_results(s3_client, summary)
    assert [r["status"] for r in records] == ["succeeded", "succeeded"]

    lineage = operator.get_openlineage_facets_on_complete(None)
    assert [f"{d.namespace}/{d.name}" for d in lineage.inputs] == inputs
    outputs = {f"{d.namespace}/{d.name}" for d in lineage.outputs}
    assert outputs == {r["output_location"] for r in records} and len(outputs) == 2
