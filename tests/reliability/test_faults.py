"""Endpoint faults through Airflow (``dag.test()``): every non-poison row is scored exactly once.

Each test scores 2,000 rows (4 files, 40 requests of 50 rows) on the local stack, checks the output holds
every row once with the right prediction, and records the figures for docs/reliability.md.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.support.dag_runs import DagTestResult
from tests.support.datasets import expected_sum, put_files
from tests.support.figures import Figures
from tests.support.s3_objects import read_output
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

FILES, ROWS = 4, 500
TOTAL = FILES * ROWS


def _score(rig: ScoringRig, endpoint: str, **op: Any) -> tuple[DagTestResult, Any]:
    data = put_files(rig.s3, rig.input_uri, files=FILES, rows=ROWS, poison=op.pop("poison", None))
    return rig.run(rig.conf(endpoint, op=op)), data


def _check_exactly_once(rig: ScoringRig, data: Any, missing: set[int] | None = None) -> int:
    out = read_output(rig.s3, rig.output_uri)
    ids = out["id"].to_pylist()
    want = {k: v for k, v in expected_sum(data).items() if k not in (missing or set())}
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert set(ids) == set(want), "a row is missing"
    assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(want)
    return len(ids)


def _record(
    figures: Figures,
    name: str,
    *,
    rows_written: int,
    stats: dict[str, Any],
    result: str = "success",
    scorable: int = TOTAL,
    **extra: Any,
) -> None:
    """Record a fault run's figures: the rows written against the ``scorable`` ones, and the requests."""
    figures.record(
        name,
        result=result,
        rows=TOTAL,
        rows_written=rows_written,
        rows_lost=scorable - rows_written,
        rows_duplicated=0,
        requests=stats["requests"],
        **extra,
    )


@pytest.mark.parametrize("rate", [0.10, 0.30])
def test_throttling(rate: float, rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum", faults={"throttle_rate": rate, "latency_ms": 5, "seed": 7})
    run, data = _score(rig, endpoint)
    assert run.succeeded, run.error("score")
    rows = _check_exactly_once(rig, data)
    stats = rig.endpoint_stats(endpoint)
    summary = run.xcom("score")
    assert stats["throttled"] > 0
    assert stats["rows_ok"] == TOTAL  # a throttled request is not scored: no row predicted twice
    assert summary["throttles"] == stats["throttled"]
    _record(
        rig.figures,
        f"fault_throttle_{int(rate * 100)}pct",
        rows_written=rows,
        stats=stats,
        throttled=stats["throttled"],
        retries=summary["retries"],
    )


def test_5xx_burst(rig: ScoringRig) -> None:
    """A burst: the first 12 requests fail with 503, then 20 % fail with InternalDependencyException (530)
    for a second, then the endpoint recovers."""
    endpoint = rig.make_endpoint("sum", faults={"error_5xx_rate": 1.0, "latency_ms": 5, "seed": 3})
    stop = threading.Event()

    def drive() -> None:
        while not stop.is_set() and rig.endpoint_stats(endpoint)["errors_5xx"] < 12:
            time.sleep(0.01)
        rig.patch_faults(endpoint, {"error_5xx_rate": 0.2, "error_5xx_code": "InternalDependencyException"})
        stop.wait(1.0)
        rig.patch_faults(endpoint, {"error_5xx_rate": 0.0})

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        run, data = _score(rig, endpoint)
    finally:
        stop.set()
        driver.join(timeout=10)
    assert run.succeeded, run.error("score")
    rows = _check_exactly_once(rig, data)
    stats = rig.endpoint_stats(endpoint)
    assert stats["errors_5xx"] >= 12
    assert stats["rows_ok"] == TOTAL
    _record(
        rig.figures,
        "fault_5xx_burst",
        rows_written=rows,
        stats=stats,
        errors_5xx=stats["errors_5xx"],
        retries=run.xcom("score")["retries"],
    )


def test_model_not_ready_while_warming_up(rig: ScoringRig) -> None:
    """A serverless endpoint warming up: ModelNotReadyException (429) for its first 6 requests.

    Counted in requests, not seconds, so a loaded machine's slower first request still meets the warm-up.
    """
    endpoint = rig.make_endpoint("sum", faults={"model_not_ready_requests": 6})
    run, data = _score(rig, endpoint)
    assert run.succeeded, run.error("score")
    rows = _check_exactly_once(rig, data)
    stats = rig.endpoint_stats(endpoint)
    assert stats["not_ready"] == 6
    assert stats["rows_ok"] == TOTAL
    _record(
        rig.figures,
        "fault_model_not_ready_6_requests",
        rows_written=rows,
        stats=stats,
        not_ready=stats["not_ready"],
        retries=run.xcom("score")["retries"],
    )


def test_connection_resets_and_read_timeouts(rig: ScoringRig) -> None:
    """The server closes the socket (RST) on 10 % of requests and stalls 2 s on 5 % (read timeout is 0.7 s)."""
    endpoint = rig.make_endpoint(
        "sum", faults={"reset_rate": 0.10, "stall_rate": 0.05, "stall_seconds": 2.0, "latency_ms": 5, "seed": 5}
    )
    run, data = _score(rig, endpoint, botocore_config={"read_timeout": 0.7, "connect_timeout": 2})
    assert run.succeeded, run.error("score")
    rows = _check_exactly_once(rig, data)
    stats = rig.endpoint_stats(endpoint)
    assert stats["resets"] > 0 and stats["stalls"] > 0
    # A stalled request is still scored by the server after the client gave up: the output has each row once,
    # the endpoint saw the rows of the timed-out requests twice (at-least-once delivery, exactly-once output).
    assert stats["rows_ok"] >= TOTAL
    _record(
        rig.figures,
        "fault_resets_and_read_timeouts",
        rows_written=rows,
        stats=stats,
        resets=stats["resets"],
        stalls=stats["stalls"],
        rows_scored_by_endpoint_twice=stats["rows_ok"] - TOTAL,
        retries=run.xcom("score")["retries"],
    )


def test_model_error_on_marked_rows(rig: ScoringRig) -> None:
    """Rows with f0 = -999 make the model fail (ModelError 424): they go to _errors/, every other row is scored."""
    poison = {3, 10_017, 10_018, 20_499, 30_250}
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999})
    run, data = _score(rig, endpoint, poison=poison, max_error_ratio=0.01)
    assert run.succeeded, run.error("score")
    rows = _check_exactly_once(rig, data, missing=poison)
    errors = read_output(rig.s3, rig.output_uri, folder="_errors/")
    assert sorted(errors["id"].to_pylist()) == sorted(poison)
    assert set(errors["error_class"].to_pylist()) == {"ModelInputError"}
    stats = rig.endpoint_stats(endpoint)
    assert stats["rows_ok"] == TOTAL - len(poison)
    summary = run.xcom("score")
    assert summary["rows_failed"] == len(poison) and summary["rows_scored"] == TOTAL - len(poison)
    _record(
        rig.figures,
        "fault_model_error_marked_rows",
        rows_written=rows,
        stats=stats,
        result="success (poison rows in _errors/)",
        scorable=TOTAL - len(poison),
        poison_rows=len(poison),
        model_errors=stats["model_errors"],
        bisections=summary["bisections"],
    )
