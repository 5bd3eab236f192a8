"""``compare_targets`` through Airflow (``dag.test()``) on the local stack: two variants or two inference
components running different models, scored in one read of the input."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.support.dag_runs import run_dag, xcom
from tests.support.s3_objects import put_parquet, read_parts

POISON = -999.0


def _table(ids: range, poison: set[int] = frozenset()) -> pa.Table:  # type: ignore[assignment]
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "f0": pa.array([POISON if i in poison else float(i % 13) for i in ids], pa.float64()),
            "f1": pa.array([float(i % 5) / 4 for i in ids], pa.float64()),
            "f2": pa.array([int(i % 3) for i in ids], pa.int32()),
        }
    )


def _sum_and_max(data: pa.Table) -> tuple[dict[int, float], dict[int, float]]:
    rows = data.to_pylist()
    sums = {r["id"]: r["f0"] + r["f1"] + r["f2"] for r in rows}
    maxes = {r["id"]: max(r["f0"], r["f1"], r["f2"]) for r in rows}
    return sums, maxes


def _read(s3_client: Any, uri: str) -> pa.Table:
    bucket, key = uri[5:].split("/", 1)
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(pa.BufferReader(body))


def _errors(s3_client: Any, prefix: str) -> pa.Table:
    bucket, key = prefix[5:].split("/", 1)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=key + "_errors/").get("Contents", [])
    tables = [_read(s3_client, f"s3://{bucket}/{item['Key']}") for item in listed]
    return pa.concat_tables(tables) if tables else pa.table({})


def _manifest(s3_client: Any, prefix: str) -> dict[str, Any]:
    bucket, key = (prefix + "_manifest.json")[5:].split("/", 1)
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_two_variants_scored_in_one_pass(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _table(range(600))
    put_parquet(s3_client, s3_prefix + "in/x.parquet", data, 200)
    endpoint = make_endpoint(
        "sum", variants={"prod": {"weight": 1.0}, "shadow": {"weight": 1.0, "model": "sum", "outputs": ["max"]}}
    )
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("c_variants", conf)
    assert run.state == "success", run.states

    out = read_parts(s3_client, s3_prefix + "out/")
    assert out.column_names == ["id", "prediction__prod", "variant__prod", "prediction__shadow", "variant__shadow"]
    sums, maxes = _sum_and_max(data)
    ids = out["id"].to_pylist()
    assert sorted(ids) == list(range(600))
    assert dict(zip(ids, out["prediction__prod"].to_pylist(), strict=True)) == pytest.approx(sums)
    assert dict(zip(ids, out["prediction__shadow"].to_pylist(), strict=True)) == pytest.approx(maxes)
    assert set(out["variant__prod"].to_pylist()) == {"prod"}
    assert set(out["variant__shadow"].to_pylist()) == {"shadow"}
    assert endpoint_stats(endpoint)["rows_ok"] == 1_200  # every row once at each target

    summary = xcom("c_variants", run.run_id, "score")
    assert summary["rows_scored"] == 600 and summary["rows_failed"] == 0
    per_target = summary["compare_targets"]
    assert list(per_target) == ["prod", "shadow"]
    assert per_target["prod"]["rows_scored"] == per_target["shadow"]["rows_scored"] == 600
    assert per_target["prod"]["http_calls"] == per_target["shadow"]["http_calls"] == 24
    assert per_target["shadow"]["latency_p95_ms"] is not None
    diffs = [abs(sums[i] - maxes[i]) for i in range(600)]
    agreement = per_target["shadow"]["agreement"]["prediction"]
    assert agreement["rows"] == 600
    assert agreement["mean_abs_diff"] == pytest.approx(sum(diffs) / 600)
    assert agreement["max_abs_diff"] == pytest.approx(max(diffs))
    assert set(agreement) == {"rows", "mean_abs_diff", "max_abs_diff"}  # numeric: no equal share
    assert _manifest(s3_client, s3_prefix + "out/")["compare_targets"] == per_target


def test_one_target_failing_rows_nulls_and_errors_naming_it(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    poison = {7, 123, 124, 400}
    data = _table(range(500), poison)
    put_parquet(s3_client, s3_prefix + "in/x.parquet", data, 250)
    endpoint = make_endpoint(
        "sum",
        variants={
            "prod": {"weight": 1.0},
            "shadow": {"weight": 1.0, "model": "sum", "outputs": ["max"], "poison_value": POISON},
        },
    )
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("c_variants", conf)
    assert run.state == "success", run.states

    out = read_parts(s3_client, s3_prefix + "out/")
    assert sorted(out["id"].to_pylist()) == list(range(500))  # prod answered every row
    sums, maxes = _sum_and_max(data)
    by_id = {row["id"]: row for row in out.to_pylist()}
    for i in range(500):
        assert by_id[i]["prediction__prod"] == pytest.approx(sums[i])
        if i in poison:
            assert by_id[i]["prediction__shadow"] is None and by_id[i]["variant__shadow"] is None
        else:
            assert by_id[i]["prediction__shadow"] == pytest.approx(maxes[i])

    errors = _errors(s3_client, s3_prefix + "out/")
    assert sorted(errors["id"].to_pylist()) == sorted(poison)
    assert set(errors["target"].to_pylist()) == {"shadow"}
    assert set(errors["error_class"].to_pylist()) == {"ModelInputError"}

    summary = xcom("c_variants", run.run_id, "score")
    assert summary["rows_failed"] == len(poison)  # a row counts once, whichever targets failed it
    assert summary["rows_scored"] == 500 - len(poison)
    per_target = summary["compare_targets"]
    assert per_target["prod"]["rows_failed"] == 0 and per_target["prod"]["rows_scored"] == 500
    assert per_target["shadow"]["rows_failed"] == len(poison)
    agreement = per_target["shadow"]["agreement"]["prediction"]
    kept = [i for i in range(500) if i not in poison]
    assert agreement["rows"] == len(kept)
    assert agreement["max_abs_diff"] == pytest.approx(max(abs(sums[i] - maxes[i]) for i in kept))


def test_rows_failing_at_every_target_are_in_errors_once_per_target(
    s3_client: Any, make_endpoint: Any, s3_prefix: str
) -> None:
    poison = {3, 77}
    data = _table(range(100), poison)
    put_parquet(s3_client, s3_prefix + "in/x.parquet", data, 100)
    endpoint = make_endpoint(
        "sum",
        inference_components={
            "ic-prod": {"model": "sum"},
            "ic-shadow": {"model": "sum", "outputs": ["max"]},
        },
        faults={"poison_value": POISON},
    )
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("c_components", conf)
    assert run.state == "success", run.states
    errors = _errors(s3_client, s3_prefix + "out/")
    pairs = sorted(zip(errors["id"].to_pylist(), errors["target"].to_pylist(), strict=True))
    assert pairs == [(3, "prod"), (3, "shadow"), (77, "prod"), (77, "shadow")]
    out = read_parts(s3_client, s3_prefix + "out/")
    assert sorted(out["id"].to_pylist()) == [i for i in range(100) if i not in poison]
    assert out.column_names == ["id", "prediction__prod", "prediction__shadow"]
    summary = xcom("c_components", run.run_id, "score")
    assert summary["rows_failed"] == 2 and summary["rows_scored"] == 98
    assert {name: t["rows_failed"] for name, t in summary["compare_targets"].items()} == {"prod": 2, "shadow": 2}


BASE: dict[str, Any] = {"task_id": "t", "endpoint_name": "e", "input_uri": "s3://b/in/", "output_uri": "s3://b/out/"}
TWO = [{"name": "prod", "target_variant": "a"}, {"name": "shadow", "target_variant": "b"}]


@pytest.mark.parametrize(
    ("targets", "extra", "message"),
    [
        ("prod", {}, "must be a list of dicts"),
        ([{"name": "prod", "target_variant": "a"}], {}, "at least two targets"),
        ([{"target_variant": "a"}, TWO[1]], {}, r"compare_targets\[0\]: 'name' is required"),
        ([TWO[0], {"name": "sha-dow", "target_variant": "b"}], {}, r"compare_targets\[1\]: 'name'"),
        ([TWO[0], {"name": "prod", "target_variant": "b"}], {}, "'prod' is used twice"),
        ([TWO[0], {"name": "shadow", "variant": "b"}], {}, r"compare_targets\[1\] \('shadow'\): unknown key"),
        ([TWO[0], {"name": "shadow"}], {}, r"\('shadow'\): set at least one of target_variant"),
        ([TWO[0], {"name": "shadow", "target_model": ""}], {}, r"\('shadow'\): target_model must be a non-empty"),
        (TWO, {"target_variant": "a"}, "drop target_variant"),
        (TWO, {"oversize_endpoint_name": "async"}, "oversize_endpoint_name"),
        (TWO, {"retry_failed_rows": True}, "retry_failed_rows is not supported"),
    ],
)
def test_bad_compare_targets_fail_at_parse_time(targets: Any, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterValidationError, match=message):
        SageMakerBatchScoreOperator(**BASE, compare_targets=targets, **extra)
