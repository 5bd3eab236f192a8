"""SageMakerBatchScoreOperator through Airflow (``dag.test()``) on the local stack (moto S3 + local endpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.scoring.fakes import numeric_table
from tests.support.dag_runs import ROOT, run_dag
from tests.support.local_control import wait_until_idle
from tests.support.s3_objects import list_keys, put_parquet, read_parts

BUCKET = "smrt-local"


def features_table(ids: range, *, with_nulls: bool = False, poison: set[int] | None = None) -> pa.Table:
    f0 = [float(i % 13) for i in ids]
    f1 = [None if with_nulls and i % 7 == 0 else float(i % 5) / 4 for i in ids]
    f2 = [int(i % 3) for i in ids]
    if poison:
        f0 = [-999.0 if i in poison else v for i, v in zip(ids, f0, strict=True)]
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "name": pa.array([f'ünïcødé, "q" {i}' for i in ids], pa.string()),
            "ts": pa.array(
                [datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6 + i for i in ids], pa.int64()
            ).cast(pa.timestamp("us", tz="UTC")),
            "f0": pa.array(f0, pa.float64()),
            "f1": pa.array(f1, pa.float64()),
            "f2": pa.array(f2, pa.int32()),
        }
    )


def expected(table: pa.Table) -> dict[int, float]:
    rows = table.select(["id", "f0", "f1", "f2"]).to_pylist()
    return {r["id"]: float(r["f0"] or 0) + float(r["f1"] or 0) + float(r["f2"] or 0) for r in rows}


def seed_dataset(s3: Any, prefix: str) -> pa.Table:
    """Three files with different row-group sizes, one empty file, and an ignored _SUCCESS marker."""
    a = features_table(range(0, 730), with_nulls=True)
    b = features_table(range(1_000, 1_420), with_nulls=True)
    c = features_table(range(2_000, 2_000))  # zero rows
    put_parquet(s3, prefix + "in/a.parquet", a, 100)
    put_parquet(s3, prefix + "in/b.parquet", b, 1_000)
    put_parquet(s3, prefix + "in/c.parquet", c, 10)
    bucket, key = prefix[5:].split("/", 1)
    s3.put_object(Bucket=bucket, Key=key + "in/_SUCCESS", Body=b"")
    return pa.concat_tables([a, b])


@pytest.mark.parametrize("content_type", ["text/csv", "application/jsonlines", "application/json"])
def test_every_codec_scores_every_row(
    content_type: str, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = seed_dataset(s3_client, s3_prefix)
    endpoint = make_endpoint("sum", variants={"blue": 0.5, "green": 0.5})
    conf = {
        "endpoint_name": endpoint,
        "input_uri": s3_prefix + "in/",
        "output_uri": s3_prefix + "out/",
        "content_type": content_type,
        "target_variant": "green",
        "target_model": "model-a.tar.gz",
    }
    run = run_dag("t_score_basic", conf)
    assert run.state == "success", run.states

    out = read_parts(s3_client, s3_prefix + "out/")
    assert out.column_names == ["id", "name", "ts", "prediction", "variant"]
    want = expected(data)
    got = dict(zip(out["id"].to_pylist(), out["prediction"].to_pylist(), strict=True))
    assert len(got) == out.num_rows == len(want) == 1_150
    assert got == pytest.approx(want)
    by_id = {row["id"]: row for row in data.select(["id", "name", "ts"]).to_pylist()}
    for row in out.select(["id", "name", "ts"]).to_pylist():
        assert row == by_id[row["id"]]
    assert set(out["variant"].to_pylist()) == {"green"}

    stats = endpoint_stats(endpoint)
    headers = {k.lower(): v for k, v in stats["last_request_headers"].items()}
    assert headers["content-type"] == content_type
    assert headers["x-amzn-sagemaker-target-variant"] == "green"
    assert headers["x-amzn-sagemaker-target-model"] == "model-a.tar.gz"
    assert stats["rows_ok"] == 1_150

    keys = list_keys(s3_client, s3_prefix + "out/")
    assert "_manifest.json" in keys
    assert not [k for k in keys if k.startswith("_errors/")]
    bucket, key = (s3_prefix + "out/_manifest.json")[5:].split("/", 1)
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["totals"]["rows_scored"] == 1_150
    assert manifest["invoked_variants"] == {"green": manifest["totals"]["requests"]}
    assert {i["uri"].rsplit("/", 1)[-1] for i in manifest["inputs"]} == {"a.parquet", "b.parquet", "c.parquet"}
    assert all(i["etag"] for i in manifest["inputs"])


def test_throttling_and_5xx_every_row_scored_once(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = features_table(range(3_000))
    put_parquet(s3_client, s3_prefix + "in/x.parquet", data, 500)
    endpoint = make_endpoint("sum", faults={"throttle_rate": 0.10, "error_5xx_rate": 0.05, "seed": 11})
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("t_score_faults", conf)
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/")
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 3_000
    assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(expected(data))
    stats = endpoint_stats(endpoint)
    assert stats["rows_ok"] == 3_000  # no row predicted twice
    assert stats["throttled"] > 0 and stats["errors_5xx"] > 0


@pytest.mark.parametrize(("dag_id", "succeeds"), [("t_score_poison_strict", False), ("t_score_poison_tolerant", True)])
def test_poison_rows_go_to_errors_and_ratio_decides(
    dag_id: str, succeeds: bool, s3_client: Any, make_endpoint: Any, s3_prefix: str
) -> None:
    poison = {5, 77, 78, 640}
    data = features_table(range(1_000), poison=poison)
    put_parquet(s3_client, s3_prefix + "in/p.parquet", data, 250)
    endpoint = make_endpoint("sum", faults={"poison_value": -999})
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag(dag_id, conf)
    assert (run.state == "success") is succeeds, run.states
    if not succeeds:  # max_error_ratio=0: the first failed row stops the run, before its (only) unit is committed
        keys = [k for k in list_keys(s3_client, s3_prefix + "out/") if k.startswith(("part-", "_errors/"))]
        assert keys == [], keys
        run = run_dag("t_score_poison_tolerant", conf)  # the same input with a budget: every row decided
        assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/")
    assert sorted(out["id"].to_pylist()) == sorted(set(range(1_000)) - poison)
    errors = read_parts(s3_client, s3_prefix + "out/", folder="_errors/")
    assert sorted(errors["id"].to_pylist()) == sorted(poison)
    assert set(errors["error_class"].to_pylist()) == {"ModelInputError"}
    assert all("ModelError" in message for message in errors["error_message"].to_pylist())


def test_sigkill_then_rerun_completes_without_duplicates(
    local_stack: Any, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    tables = [features_table(range(k * 1_000, k * 1_000 + 600)) for k in range(8)]
    for k, table in enumerate(tables):
        put_parquet(s3_client, f"{s3_prefix}in/f{k}.parquet", table, 600)
    endpoint = make_endpoint("sum", faults={"latency_ms": 150})
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    code = (
        "import json, sys; from tests.support.dag_runs import run_dag; "
        "print(run_dag('t_score_slow', json.loads(sys.argv[1])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(conf)], cwd=ROOT, env=dict(os.environ), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            parts = [k for k in list_keys(s3_client, s3_prefix + "out/") if k.startswith("part-")]
            if len(parts) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    keys = list_keys(s3_client, s3_prefix + "out/")
    done = [k for k in keys if k.startswith("part-")]
    assert 2 <= len(done) < 8 and "_manifest.json" not in keys
    # the requests the killed worker left in flight still finish on the server (150 ms each)
    rows_before = wait_until_idle(local_stack.runtime_endpoint_url, endpoint)["rows_ok"]

    run = run_dag("t_score_slow", conf)
    assert run.state == "success", run.states
    resent = endpoint_stats(endpoint)["rows_ok"] - rows_before
    assert resent == (8 - len(done)) * 600  # only the unfinished units were sent again
    out = read_parts(s3_client, s3_prefix + "out/")
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4_800


def test_mapped_fan_out_equals_single_run(s3_client: Any, make_endpoint: Any, s3_prefix: str) -> None:
    inputs = []
    for k in range(3):
        uri = f"{s3_prefix}in/m{k}.parquet"
        put_parquet(s3_client, uri, features_table(range(k * 500, k * 500 + 300 + 50 * k)), 120)
        inputs.append(uri)
    endpoint = make_endpoint("sum")
    mapped = {"endpoint_name": endpoint, "inputs": inputs, "output_uri": s3_prefix + "mapped/"}
    run = run_dag("t_score_mapped", mapped)
    assert run.state == "success" and len(run.states) == 3, run.states
    single = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "single/"}
    run = run_dag("t_score_slow", single)
    assert run.state == "success", run.states

    def parts(prefix: str) -> set[str]:
        return {k for k in list_keys(s3_client, prefix) if k.startswith("part-")}

    assert parts(s3_prefix + "mapped/") == parts(s3_prefix + "single/")
    a = read_parts(s3_client, s3_prefix + "mapped/").sort_by("id")
    b = read_parts(s3_client, s3_prefix + "single/").sort_by("id")
    assert a.equals(b) and a.num_rows == 1_050
    manifests = [k for k in list_keys(s3_client, s3_prefix + "mapped/") if k.startswith("_manifest")]
    assert manifests == ["_manifest-00000.json", "_manifest-00001.json", "_manifest-00002.json"]


@pytest.mark.parametrize(("dag_id", "path"), [("t_score_lean", "lean"), ("t_score_botocore", "botocore")])
def test_transport_parameter_picks_the_path_and_both_score_every_row(
    dag_id: str, path: str, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    table = numeric_table(300)
    put_parquet(s3_client, s3_prefix + "in/a.parquet", table, 100)
    endpoint = make_endpoint("sum")
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag(dag_id, conf)
    assert run.state == "success", run.states
    assert run.xcom("score")["transport"] == path
    out = read_parts(s3_client, s3_prefix + "out/")
    assert out.num_rows == 300 == endpoint_stats(endpoint)["rows_ok"]


def test_an_unknown_transport_fails_when_the_dag_is_parsed() -> None:
    from airflow_provider_smrt.exceptions import ParameterValidationError

    with pytest.raises(ParameterValidationError, match="transport='fast'"):
        SageMakerBatchScoreOperator(
            task_id="t", endpoint_name="e", input_uri="s3://b/i/", output_uri="s3://b/o/", transport="fast"
        )


def test_bodies_encoded_in_child_processes_score_what_the_task_process_scores(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    table = numeric_table(600)
    put_parquet(s3_client, s3_prefix + "in/a.parquet", table, 200)
    endpoint = make_endpoint("sum")
    outputs = {}
    for dag_id in ("t_score_encode_in_task", "t_score_encode_in_children"):
        out = f"{s3_prefix}{dag_id}/"
        run = run_dag(dag_id, {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": out})
        assert run.state == "success", run.states
        summary = run.xcom("score")
        assert summary["requests"] == 12
        outputs[dag_id] = (summary["bodies_encoded_by_children"], read_parts(s3_client, out).sort_by("id"))
    assert endpoint_stats(endpoint)["rows_ok"] == 1_200
    (in_task, by_task), (in_children, by_children) = outputs.values()
    assert in_task == 0
    assert in_children >= 12  # every request's body (and the planner's probe)
    assert by_children.equals(by_task)
    assert by_task.num_rows == 600


def test_a_bad_encode_processes_fails_when_the_dag_is_parsed() -> None:
    from airflow_provider_smrt.exceptions import ParameterValidationError

    with pytest.raises(ParameterValidationError, match="encode_processes=-1 must be 'auto' or an integer"):
        SageMakerBatchScoreOperator(
            task_id="t", endpoint_name="e", input_uri="s3://b/i/", output_uri="s3://b/o/", encode_processes=-1
        )
