"""Failures by row through Airflow (``dag.test()``) on the local stack, counting requests at the endpoint.

A row that makes the container fail, whatever its status, lands in ``_errors/`` with its story; an
endpoint-wide outage fails the task; a spent error budget stops the run after few requests; what can be
checked before the first request is; custom encoders and decoders work end to end.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from tests.support.datasets import expected_sum, features, put_files
from tests.support.s3_objects import list_keys, put_parquet, read_output
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

FILES, ROWS = 4, 500
TOTAL = FILES * ROWS


def test_a_row_that_crashes_the_container_lands_in_errors_with_its_story(rig: ScoringRig) -> None:
    poison = {3, 10_017, 20_499}
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999, "poison_status": 500})
    data = put_files(rig.s3, rig.input_uri, files=FILES, rows=ROWS, poison=poison)
    run = rig.run(rig.conf(endpoint, op={"max_error_ratio": 0.01, "max_attempts": 3}))
    assert run.succeeded, run.error("score")
    out = read_output(rig.s3, rig.output_uri)
    want = {k: v for k, v in expected_sum(data).items() if k not in poison}
    assert sorted(out["id"].to_pylist()) == sorted(want)
    errors = read_output(rig.s3, rig.output_uri, folder="_errors/")
    assert sorted(errors["id"].to_pylist()) == sorted(poison)
    assert errors.column_names == [
        "id",
        "input_row",
        "error_class",
        "error_message",
        "error_code",
        "http_status",
        "original_status_code",
        "original_message",
        "log_stream_arn",
        "request_id",
        "attempts",
        "invoked_variant",
        "inference_id",
        "target",
    ]
    rows = {row["id"]: row for row in errors.to_pylist()}
    assert rows[10_017]["input_row"] == 17 and rows[3]["input_row"] == 3
    for row in rows.values():
        assert row["error_class"] == "ModelServerError" and row["error_code"] == "ModelError"
        assert row["target"] is None  # no compare_targets
        assert row["http_status"] == 424 and row["original_status_code"] == 500
        assert "container status 500" in row["error_message"]
        assert "poison value" not in row["error_message"]  # the container's message has its own column
        assert row["original_message"] == "1 of 1 rows contain the poison value -999"
        assert row["log_stream_arn"].startswith("arn:aws:logs:") and row["request_id"]
        assert row["attempts"] == 2  # a sub-request of a bisection: one retry
        assert row["invoked_variant"] is None  # a ModelError response names no variant
    # the container's message is in _errors/ only: never in the logs or the XCom
    assert "poison value" not in run.log_text and "poison value" not in str(run.xcom("score"))
    # each poison request: 3 attempts, then per bisection level (50, 25, 12 or 13, 6 or 7, 3 or 4, 1 or 2,
    # 1) 2 attempts for the failing half and 1 for the other
    stats = rig.endpoint_stats(endpoint)
    per_poison_row = 3 + 7 * (2 + 1)
    assert stats["requests"] <= TOTAL // 50 + len(poison) * per_poison_row
    assert stats["rows_ok"] == TOTAL - len(poison)  # no row scored twice
    rig.figures.record(
        "poison_row_5xx",
        rows=TOTAL,
        poison_rows=len(poison),
        requests=stats["requests"],
        requests_without_poison=TOTAL // 50,
    )


def test_an_endpoint_wide_5xx_fails_the_task_not_the_rows(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum", faults={"error_5xx_rate": 1.0, "error_5xx_code": "InternalFailure"})
    put_files(rig.s3, rig.input_uri, files=1, rows=200, poison=None)
    run = rig.run(rig.conf(endpoint, op={"max_error_ratio": 1.0, "max_attempts": 2}))
    assert not run.succeeded
    assert "InternalFailure" in run.error("score")
    assert not [k for k in list_keys(rig.s3, rig.output_uri) if k.startswith(("part-", "_errors/"))]


@pytest.mark.parametrize("status", [400, 500])
def test_a_spent_error_budget_stops_sending_at_once(rig: ScoringRig, status: int) -> None:
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999, "poison_status": status})
    every = set(range(0, 10_000 * FILES))
    put_files(rig.s3, rig.input_uri, files=FILES, rows=ROWS, poison=every)
    run = rig.run(rig.conf(endpoint, op={"max_error_ratio": 0.01, "max_attempts": 3}))
    assert not run.succeeded
    message = run.error("score")
    assert "ErrorRatioExceededError" in message and "max_error_ratio=0.01" in message
    assert "stopped sending after" in message and "poison value" not in message
    requests = rig.endpoint_stats(endpoint)["requests"]
    # 2,000 rows that all fail, 50 a request: 21 failed rows spend a budget of 20. A container 5xx costs
    # more: 3 attempts of each first request, 2 of each failing sub-request (measured: 62 for 400, 124 for 500)
    assert requests <= (150 if status == 400 else 200), requests
    rig.figures.record(f"error_budget_all_rows_fail_{status}", rows=TOTAL, rows_per_request=50, requests=requests)


def test_text_features_as_csv_fail_before_the_first_request(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum")
    table = features(range(100))
    table = table.set_column(3, "f2", pa.array([str(i % 3) for i in range(100)]))
    put_parquet(rig.s3, rig.input_uri + "a.parquet", table)
    run = rig.run(rig.conf(endpoint))
    assert not run.succeeded
    message = run.error("score")
    assert "'f2' (string)" in message and "application/json" in message and "encoder=" in message
    assert rig.endpoint_stats(endpoint)["requests"] == 0


def test_a_custom_encoder_and_decoder_score_end_to_end(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum")
    table = features(range(300))
    table = table.set_column(3, "f2", pa.array([str(i % 3) for i in range(300)]))  # text: the encoder parses it
    put_parquet(rig.s3, rig.input_uri + "a.parquet", table)
    op: dict[str, Any] = {
        "encoder": "tests.support.custom_codecs.numbers_csv",
        "decoder": "tests.support.custom_codecs.score_table",
    }
    run = rig.run(rig.conf(endpoint, op=op))
    assert run.succeeded, run.error("score")
    out = read_output(rig.s3, rig.output_uri)
    assert out.column_names == ["id", "score"]
    want = {i: float(i % 13) + float(i % 5) / 4 + i % 3 for i in range(300)}
    assert dict(zip(out["id"].to_pylist(), out["score"].to_pylist(), strict=True)) == pytest.approx(want)
    assert run.xcom("score")["rows_scored"] == 300
