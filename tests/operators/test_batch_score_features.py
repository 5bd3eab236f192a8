"""SageMakerBatchScoreOperator's csv_header, invoke_mode="stream" and oversize_endpoint_name through Airflow
(``dag.test()``) on the local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.support.child_runs import kill_when
from tests.support.dag_runs import ROOT, run_dag
from tests.support.datasets import expected_sum, features
from tests.support.local_control import wait_until_idle
from tests.support.s3_objects import list_keys, put_parquet, read_parts


def _seed(s3: Any, prefix: str, rows: int = 120) -> pa.Table:
    table = features(range(rows))
    put_parquet(s3, prefix + "in/a.parquet", table, 50)
    return table


def _predictions(s3: Any, uri: str) -> dict[int, float]:
    out = read_parts(s3, uri)
    return dict(zip(out.column("id").to_pylist(), out.column("prediction").to_pylist(), strict=True))


# -- csv_header --------------------------------------------------------------------------------------


def test_csv_header_scores_against_a_model_that_reads_a_header(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed(s3_client, s3_prefix)
    endpoint = make_endpoint("sum", csv_header=True)
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("f_csv_header", conf)
    assert run.state == "success", run.states
    assert _predictions(s3_client, s3_prefix + "out/") == expected_sum(data)
    stats = endpoint_stats(endpoint)
    assert stats["rows_ok"] == data.num_rows  # the header line is not a row
    assert stats["invocations_ok"] == 5  # 120 rows, 25 per request


def test_without_csv_header_a_model_reading_a_header_fails_with_a_prediction_count_error(
    s3_client: Any, make_endpoint: Any, s3_prefix: str, tmp_path: Path
) -> None:
    _seed(s3_client, s3_prefix)
    endpoint = make_endpoint("sum", csv_header=True)
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag("f_csv_plain", conf, report_dir=tmp_path)
    assert run.state == "failed"
    error = run.error("score")
    assert "PredictionCountMismatchError" in error or "returned 24 predictions for 25 rows" in error, error


# -- invoke_mode="stream" ----------------------------------------------------------------------------


def _conf(endpoint: str, prefix: str, out: str = "out/") -> dict[str, Any]:
    return {"endpoint_name": endpoint, "input_uri": prefix + "in/", "output_uri": prefix + out}


def test_stream_mode_predicts_what_invoke_mode_predicts(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed(s3_client, s3_prefix)
    endpoint = make_endpoint("sum", stream_parts=3)
    streamed = run_dag("f_stream", _conf(endpoint, s3_prefix, "stream/"))
    assert streamed.state == "success", streamed.states
    assert endpoint_stats(endpoint)["invocations_ok"] == 5
    invoked = run_dag("f_invoke", _conf(endpoint, s3_prefix, "invoke/"))
    assert invoked.state == "success", invoked.states
    assert _predictions(s3_client, s3_prefix + "stream/") == _predictions(s3_client, s3_prefix + "invoke/")
    assert _predictions(s3_client, s3_prefix + "stream/") == expected_sum(data)

    rerun = run_dag("f_stream", _conf(endpoint, s3_prefix, "stream/"))  # resume: the same mechanism
    assert rerun.state == "success", rerun.states
    assert rerun.xcom("score")["requests"] == 0
    assert endpoint_stats(endpoint)["requests"] == 10


def test_a_stream_failing_internally_is_sent_again_whole(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed(s3_client, s3_prefix)
    faults = {"stream_error_after_parts": 1, "stream_error_type": "InternalStreamFailure", "stream_error_requests": 2}
    endpoint = make_endpoint("sum", stream_parts=3, faults=faults)
    run = run_dag("f_stream", _conf(endpoint, s3_prefix))
    assert run.state == "success", run.states
    assert _predictions(s3_client, s3_prefix + "out/") == expected_sum(data)  # no partial payload decoded
    assert run.xcom("score")["retries"] == 2
    stats = endpoint_stats(endpoint)
    assert (stats["stream_errors"], stats["invocations_ok"], stats["requests"]) == (2, 5, 7)


def test_a_model_stream_error_is_not_retried_and_fails_the_task(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str, tmp_path: Path
) -> None:
    _seed(s3_client, s3_prefix)
    endpoint = make_endpoint("sum", stream_parts=3, faults={"stream_error_after_parts": 1, "stream_error_requests": 1})
    run = run_dag("f_stream", _conf(endpoint, s3_prefix), report_dir=tmp_path)
    assert run.state == "failed"
    assert "StreamError" in run.error("score")
    assert endpoint_stats(endpoint)["stream_errors"] == 1


# -- oversize_endpoint_name --------------------------------------------------------------------------

BIG_ROW = 17
BIG_BYTES = 7_000_000


def _seed_with_a_big_row(s3: Any, prefix: str, rows: int = 40, marker: str = "") -> pa.Table:
    texts = [f"row {i}" for i in range(rows)]
    texts[BIG_ROW] = marker + "x" * BIG_BYTES
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": texts, "f0": [float(i) for i in range(rows)]})
    put_parquet(s3, prefix + "in/a.parquet", table)
    return table


def _oversize_conf(prefix: str, realtime: str, asynchronous: str) -> dict[str, Any]:
    return {**_conf(realtime, prefix), "content_type": "application/json", "oversize_endpoint_name": asynchronous}


def test_a_row_over_the_payload_limit_goes_through_the_async_endpoint_in_place(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed_with_a_big_row(s3_client, s3_prefix)
    realtime = make_endpoint("constant", mode="realtime")
    asynchronous = make_endpoint("constant", mode="async")
    run = run_dag("f_oversize", _oversize_conf(s3_prefix, realtime, asynchronous))
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/")
    assert out["id"].to_pylist() == data["id"].to_pylist()  # the big row at its position
    assert out["prediction"].to_pylist() == [0.0] * data.num_rows
    summary = run.xcom("score")
    assert (summary["rows_scored"], summary["rows_failed"], summary["rows_async"]) == (data.num_rows, 0, 1)
    assert endpoint_stats(realtime)["rows_ok"] == data.num_rows - 1
    assert (endpoint_stats(asynchronous)["async_submitted"], endpoint_stats(asynchronous)["async_succeeded"]) == (1, 1)

    rerun = run_dag("f_oversize", _oversize_conf(s3_prefix, realtime, asynchronous))
    assert rerun.state == "success", rerun.states
    assert (rerun.xcom("score")["requests"], rerun.xcom("score")["rows_async"]) == (0, 0)
    assert endpoint_stats(asynchronous)["async_submitted"] == 1


def test_a_failing_oversize_row_lands_in_errors(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed_with_a_big_row(s3_client, s3_prefix, marker="POISON")
    realtime = make_endpoint("constant", mode="realtime")
    asynchronous = make_endpoint("constant", mode="async", faults={"fail_async_marker": "POISON"})
    run = run_dag("f_oversize", _oversize_conf(s3_prefix, realtime, asynchronous))
    assert run.state == "success", run.states  # max_error_ratio=0.5
    assert read_parts(s3_client, s3_prefix + "out/")["id"].to_pylist() == [
        i for i in range(data.num_rows) if i != BIG_ROW
    ]
    errors = read_parts(s3_client, s3_prefix + "out/", folder="_errors/")
    assert errors["id"].to_pylist() == [BIG_ROW]
    assert errors["error_class"].to_pylist() == ["ModelInputError"]
    summary = run.xcom("score")
    assert (summary["rows_failed"], summary["rows_async"]) == (1, 1)
    assert endpoint_stats(asynchronous)["async_failed"] == 1


def test_without_an_oversize_endpoint_the_big_row_fails_the_task_naming_the_option(
    s3_client: Any, make_endpoint: Any, s3_prefix: str, tmp_path: Path
) -> None:
    _seed_with_a_big_row(s3_client, s3_prefix)
    realtime = make_endpoint("constant", mode="realtime")
    conf = {**_conf(realtime, s3_prefix), "content_type": "application/json"}
    run = run_dag("f_no_oversize", conf, report_dir=tmp_path)
    assert run.state == "failed"
    assert "oversize_endpoint_name" in run.error("score")


# -- SIGKILL, then a rerun ---------------------------------------------------------------------------


def _kill_when(dag_id: str, conf: dict[str, Any], ready: Callable[[], bool]) -> None:
    """Run ``dag_id`` in a process of its own and SIGKILL it (and its children) once ``ready()``."""
    code = "import json, sys; from tests.support.dag_runs import run_dag; run_dag(sys.argv[1], json.loads(sys.argv[2]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, dag_id, json.dumps(conf)], cwd=ROOT, env=dict(os.environ), start_new_session=True
    )
    kill_when(proc, ready)


def test_stream_mode_sigkill_then_rerun_sends_only_unfinished_units(
    local_stack: Any, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    tables = [features(range(k * 1_000, k * 1_000 + 600)) for k in range(6)]
    for k, table in enumerate(tables):
        put_parquet(s3_client, f"{s3_prefix}in/f{k}.parquet", table, 600)
    endpoint = make_endpoint("sum", faults={"latency_ms": 150})
    conf = _conf(endpoint, s3_prefix)

    def two_parts() -> bool:
        return len([k for k in list_keys(s3_client, s3_prefix + "out/") if k.startswith("part-")]) >= 2

    _kill_when("f_stream_slow", conf, two_parts)
    keys = list_keys(s3_client, s3_prefix + "out/")
    done = [k for k in keys if k.startswith("part-")]
    assert 2 <= len(done) < 6 and "_manifest.json" not in keys
    # the requests the killed worker left in flight still finish on the server (150 ms each)
    rows_before = wait_until_idle(local_stack.runtime_endpoint_url, endpoint)["rows_ok"]

    run = run_dag("f_stream_slow", conf)
    assert run.state == "success", run.states
    assert endpoint_stats(endpoint)["rows_ok"] - rows_before == (6 - len(done)) * 600
    out = read_parts(s3_client, s3_prefix + "out/")
    assert len(out["id"].to_pylist()) == len(set(out["id"].to_pylist())) == 3_600
    assert _predictions(s3_client, s3_prefix + "out/") == expected_sum(pa.concat_tables(tables))


def test_csv_header_inference_ids_and_cost_across_a_sigkill_and_rerun(
    local_stack: Any, s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    """csv_header, inference_id_prefix and instance_hourly_usd through a SIGKILL and a rerun: the rerun sends
    only the unfinished units, every request keeps its InferenceId across the runs, and the rerun's cost
    counts only its own calls."""
    tables = [features(range(k * 1_000, k * 1_000 + 600)) for k in range(6)]
    for k, table in enumerate(tables):
        put_parquet(s3_client, f"{s3_prefix}in/f{k}.parquet", table, 600)
    endpoint = make_endpoint("sum", csv_header=True, faults={"latency_ms": 150})
    conf = _conf(endpoint, s3_prefix)

    def two_parts() -> bool:
        return len([k for k in list_keys(s3_client, s3_prefix + "out/") if k.startswith("part-")]) >= 2

    _kill_when("f_header_ids_cost", conf, two_parts)
    done = [k for k in list_keys(s3_client, s3_prefix + "out/") if k.startswith("part-")]
    assert 2 <= len(done) < 6
    before = wait_until_idle(local_stack.runtime_endpoint_url, endpoint)

    run = run_dag("f_header_ids_cost", conf)
    assert run.state == "success", run.states
    after = endpoint_stats(endpoint)
    assert after["rows_ok"] - before["rows_ok"] == (6 - len(done)) * 600  # the header line is not a row
    assert _predictions(s3_client, s3_prefix + "out/") == expected_sum(pa.concat_tables(tables))
    # 36 requests (6 files, 100 rows each): some were sent by both runs, always under the same InferenceId.
    ids = after["inference_ids"]
    assert len(ids) == after["requests"] and all(i.startswith("smrt-t-") for i in ids)
    assert len(set(ids)) == 36
    summary = run.xcom("score")
    assert summary["http_calls"] == after["requests"] - before["requests"]
    assert summary["estimated_cost_usd"] > 0


def test_oversize_sigkill_while_waiting_then_rerun_does_not_submit_again(
    s3_client: Any, make_endpoint: Any, endpoint_stats: Any, s3_prefix: str
) -> None:
    data = _seed_with_a_big_row(s3_client, s3_prefix)
    realtime = make_endpoint("constant", mode="realtime")
    asynchronous = make_endpoint("constant", mode="async", faults={"async_delay_seconds": 8})
    conf = _oversize_conf(s3_prefix, realtime, asynchronous)

    def submitted() -> bool:  # the submission marker is written: the task is waiting for the output
        return any(key.endswith(".submitted.json") for key in list_keys(s3_client, s3_prefix + "out/_staging/"))

    _kill_when("f_oversize", conf, submitted)
    assert endpoint_stats(asynchronous)["async_submitted"] == 1
    assert not read_parts(s3_client, s3_prefix + "out/").num_rows  # the part with the big row is not committed

    run = run_dag("f_oversize", conf)
    assert run.state == "success", run.states
    assert read_parts(s3_client, s3_prefix + "out/")["id"].to_pylist() == data["id"].to_pylist()
    assert run.xcom("score")["rows_async"] == 1
    assert endpoint_stats(asynchronous)["async_submitted"] == 1  # the rerun found the marker and waited
