"""The async operator's Parquet mode: payloads over the real-time limit, same parts as batch scoring."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from airflow_provider_smrt.operators._scoring import scoring_config
from airflow_provider_smrt.operators.async_batch_score import SageMakerAsyncBatchScoreOperator
from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from tests.support.dag_runs import run_dag
from tests.support.s3_objects import list_keys, put_parquet, read_parts


def wide_table(ids: range, width: int = 200) -> pa.Table:
    rng = np.random.default_rng(ids.start)
    data: dict[str, Any] = {"id": pa.array(list(ids), pa.int64())}
    for c in range(width):
        data[f"x{c:03d}"] = pa.array(rng.random(len(ids)).round(6))
    return pa.table(data)


def test_parquet_mode_matches_batch_scoring(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    tables = [wide_table(range(0, 4_500)), wide_table(range(10_000, 13_000))]
    for k, table in enumerate(tables):
        put_parquet(s3_client, f"{s3_prefix}in/w{k}.parquet", table, 5_000)
    endpoint = make_endpoint("sum")
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "async/"}
    run = run_dag("t_async_parquet", conf)
    assert run.state == "success", run.states
    stats = endpoint_stats(endpoint)
    assert stats["async_submitted"] == 2 and stats["rows_ok"] == 7_500  # one payload per file

    out = read_parts(s3_client, s3_prefix + "async/").sort_by("id")
    data = pa.concat_tables(tables)
    features = np.column_stack([data[name].to_numpy() for name in data.column_names[1:]])
    want = dict(zip(data["id"].to_pylist(), features.sum(axis=1).tolist(), strict=True))
    got = dict(zip(out["id"].to_pylist(), out["prediction"].to_pylist(), strict=True))
    assert len(got) == 7_500 and got == pytest.approx(want, rel=1e-9)
    staged = [k for k in list_keys(s3_client, s3_prefix + "async/") if k.startswith("_staging/")]
    assert staged and all(k.endswith(".submitted.json") for k in staged)  # payloads deleted, markers kept

    # a rerun resumes: nothing is submitted again
    run = run_dag("t_async_parquet", conf)
    assert run.state == "success" and endpoint_stats(endpoint)["async_submitted"] == 2

    # the same data through real-time batch scoring gives the same parts, byte for byte in content
    conf_batch = {**conf, "output_uri": s3_prefix + "batch/"}
    run = run_dag("t_batch_wide", conf_batch)
    assert run.state == "success", run.states
    assert endpoint_stats(endpoint)["requests"] > 2  # the 6 MiB limit cut real-time requests smaller

    def parts(prefix: str) -> set[str]:
        return {k for k in list_keys(s3_client, prefix) if k.startswith("part-")}

    assert parts(s3_prefix + "async/") == parts(s3_prefix + "batch/")
    assert read_parts(s3_client, s3_prefix + "batch/").sort_by("id").equals(out)


def test_input_uri_on_the_invoke_operator_is_deprecated_and_still_runs_the_new_operator() -> None:
    with pytest.warns(DeprecationWarning, match="SageMakerAsyncBatchScoreOperator"):
        old = SageMakerInvokeEndpointAsyncOperator(
            task_id="score",
            endpoint_name="e",
            input_uri="s3://b/in/",
            output_uri="s3://b/out/",
            staging_uri="s3://b/stage/",
            passthrough_columns=["id"],
            max_payload_bytes=8 * 1024 * 1024,
            content_type="text/csv",
            concurrency=3,
            aws_conn_id="my_aws",
        )
    new = SageMakerAsyncBatchScoreOperator.from_invoke_operator(old, old._parquet_params)
    assert (new.input_uri, new.output_uri, new.staging_uri) == ("s3://b/in/", "s3://b/out/", "s3://b/stage/")
    assert new.passthrough_columns == ["id"] and new.max_payload_bytes == 8 * 1024 * 1024
    assert (new.concurrency, new.content_type, new.aws_conn_id) == (3, "text/csv", "my_aws")
    built = scoring_config(new, map_index=None, invoke_params={})
    assert built.passthrough_columns == ["id"] and built.input_uri == "s3://b/in/" and built.concurrency == 3


def test_async_payloads_encoded_in_the_task_process_match_those_of_the_child(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    put_parquet(s3_client, f"{s3_prefix}in/w.parquet", wide_table(range(0, 1_200), width=20), 5_000)
    endpoint = make_endpoint("sum")
    outputs = {}
    for dag_id in ("t_async_parquet_in_child", "t_async_parquet_in_task"):  # encode_processes 1, then 0
        conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": f"{s3_prefix}{dag_id}/"}
        run = run_dag(dag_id, conf)
        assert run.state == "success", run.states
        outputs[dag_id] = (run.xcom("score")["bodies_encoded_by_children"], read_parts(s3_client, conf["output_uri"]))
    assert endpoint_stats(endpoint)["async_submitted"] == 2
    (by_child, with_child), (in_task, without_child) = outputs.values()
    assert by_child >= 1 and in_task == 0
    assert with_child.sort_by("id").equals(without_child.sort_by("id")) and with_child.num_rows == 1_200
