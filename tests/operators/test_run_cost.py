"""What a run cost and which request is which: HTTP calls, bytes, latencies, the cost estimate and
InferenceIds, through Airflow (``dag.test()``) against the local endpoint, which counts them too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smrt.scoring.stats import NO_VARIANT, LatencyHistogram
from tests.dags.cost_dags import INSTANCE_COUNT, INSTANCE_HOURLY_USD
from tests.support.dag_runs import run_dag
from tests.support.datasets import put_files
from tests.support.s3_objects import read_output, split

LATENCY_MS = 120.0
FILES, ROWS = 2, 300  # 12 requests of 50 rows


def _manifest(s3: Any, output_uri: str) -> dict[str, Any]:
    bucket, key = split(output_uri + "_manifest.json")
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _run(prefix: str, endpoint: str, tmp_path: Path, out: str = "out/", **conf: Any) -> Any:
    run = run_dag(
        "t_score_cost",
        {"endpoint_name": endpoint, "input_uri": prefix + "in/", "output_uri": prefix + out, **conf},
        report_dir=tmp_path,
    )
    assert run.state == "success", run.error("score")
    return run


def test_calls_bytes_latency_and_cost_match_the_endpoint(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str, tmp_path: Path
) -> None:
    put_files(s3_client, s3_prefix + "in/", files=FILES, rows=ROWS)
    endpoint = make_endpoint("sum", faults={"latency_ms": LATENCY_MS, "throttle_rate": 0.25, "seed": 5})
    summary = _run(s3_prefix, endpoint, tmp_path).xcom("score")
    stats = endpoint_stats(endpoint)

    assert summary["rows_scored"] == FILES * ROWS and summary["requests"] == 12
    assert stats["throttled"] > 0 and summary["retries"] >= stats["throttled"]
    # Every attempt is an HTTP call, and the endpoint saw each one.
    assert summary["http_calls"] == summary["requests"] + summary["retries"] == stats["requests"]
    assert summary["bytes_sent"] == stats["bytes_in"]
    assert summary["bytes_received"] == stats["bytes_out"]  # throttled answers carry no prediction bytes

    by_variant = summary["calls_by_variant"]
    assert set(by_variant) == {"AllTraffic", NO_VARIANT}
    assert by_variant[NO_VARIANT]["http_calls"] == stats["throttled"]
    assert by_variant["AllTraffic"]["http_calls"] == stats["invocations_ok"] == 12
    assert sum(v["http_calls"] for v in by_variant.values()) == summary["http_calls"]
    assert sum(v["bytes_sent"] for v in by_variant.values()) == summary["bytes_sent"]
    # Scored calls each took the injected latency at least: p50 lies in its bucket or above (how far above
    # depends on the machine's load), and within the busy window (a percentile is never above the largest
    # latency seen, which a unit mistake would break).
    ok = by_variant["AllTraffic"]
    assert LatencyHistogram.bucket(ok["latency_p50_ms"]) >= LatencyHistogram.bucket(LATENCY_MS)
    assert ok["latency_p50_ms"] <= ok["latency_p95_ms"] <= summary["busy_wall_seconds"] * 1000
    assert ok["endpoint_seconds"] >= 12 * LATENCY_MS / 1000
    assert summary["endpoint_seconds"] == pytest.approx(sum(v["endpoint_seconds"] for v in by_variant.values()))
    # The busy window holds the calls: at least the scored calls' seconds divided by the concurrency (4).
    assert summary["busy_wall_seconds"] >= ok["endpoint_seconds"] / 4
    assert summary["estimated_cost_usd"] == pytest.approx(
        summary["busy_wall_seconds"] / 3600 * INSTANCE_COUNT * INSTANCE_HOURLY_USD, abs=1e-6
    )
    assert summary["instance_hourly_usd"] == INSTANCE_HOURLY_USD and summary["instance_count"] == INSTANCE_COUNT

    manifest = _manifest(s3_client, s3_prefix + "out/")
    assert manifest["calls"]["http_calls"] == summary["http_calls"]
    assert manifest["calls"]["calls_by_variant"] == by_variant
    assert manifest["calls"]["estimated_cost_usd"] == summary["estimated_cost_usd"]
    assert "inference_ids" in stats and stats["inference_ids"] == []  # no prefix: no InferenceId sent


def test_inference_ids_are_deterministic_and_kept_in_errors(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str, tmp_path: Path
) -> None:
    poison = {7, 10_123}
    put_files(s3_client, s3_prefix + "in/", files=FILES, rows=ROWS, poison=poison)
    endpoint = make_endpoint("sum", faults={"poison_value": -999})
    conf = {"inference_id_prefix": "nightly-"}
    summary = _run(s3_prefix, endpoint, tmp_path, **conf).xcom("score")
    assert summary["rows_failed"] == len(poison)
    first = endpoint_stats(endpoint)["inference_ids"]
    assert len(first) == summary["http_calls"] == len(set(first))  # one id per call (no retries here)
    assert all(i.startswith("nightly-") and len(i) <= 64 for i in first)

    errors = read_output(s3_client, s3_prefix + "out/", "_errors/").to_pylist()
    assert {row["id"] for row in errors} == poison
    for row in errors:
        assert row["inference_id"] in first  # the endpoint saw the failed row's request under this id
        assert row["inference_id"].endswith(f"-{row['input_row']}-1")  # a single-row request after bisection
    unit_digests = {i.split("-")[-3] for i in first}
    assert len(unit_digests) == FILES  # one unit per file

    # The same input scored again (into a fresh output) sends the same ids.
    _run(s3_prefix, endpoint, tmp_path, out="out-again/", **conf)
    second = endpoint_stats(endpoint)["inference_ids"][len(first) :]
    assert sorted(second) == sorted(first)


def test_a_bad_prefix_fails_before_any_request(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str, tmp_path: Path
) -> None:
    put_files(s3_client, s3_prefix + "in/", files=1, rows=10)
    endpoint = make_endpoint("sum")
    run = run_dag(
        "t_score_cost",
        {
            "endpoint_name": endpoint,
            "input_uri": s3_prefix + "in/",
            "output_uri": s3_prefix + "out/",
            "inference_id_prefix": " starts-with-a-space",
        },
        report_dir=tmp_path,
    )
    assert run.state == "failed"
    assert "inference_id_prefix=' starts-with-a-space' is invalid" in run.error("score")
    assert endpoint_stats(endpoint)["requests"] == 0
