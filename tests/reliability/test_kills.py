"""Worker deaths through Airflow (``dag.test()``): SIGKILL at 25/50/90 %, SIGTERM and the task timeout.

The dataset is 20 files of 200 rows (20 work units, 4 requests each) against an endpoint answering in
150 ms with 2 requests in flight (about 6 s of scoring). After each death, the rerun must complete the
output with no duplicate and send again only the requests of rows that no committed part and no checkpoint
holds (counted at the endpoint; a SIGTERM or a timeout checkpoints the rows already written). Checkpoints
within a unit under SIGKILL are tested in ``test_checkpoint_kills.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.support.child_runs import requests_settled, start_child
from tests.support.datasets import expected_sum, put_files
from tests.support.s3_objects import (
    check_parts_complete,
    checkpointed_rows,
    data_parts,
    incomplete_uploads,
    list_keys,
    read_output,
)
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

FILES, ROWS, ROWS_PER_REQUEST = 20, 200, 50
REQUESTS_PER_UNIT = ROWS // ROWS_PER_REQUEST
TOTAL = FILES * ROWS
OP = {"max_rows_per_request": ROWS_PER_REQUEST, "concurrency": 2}
#: The timeout test's endpoint answers this many requests, then holds the next ones until the job stopped.
HELD_AFTER = 2 * REQUESTS_PER_UNIT


def _setup(rig: ScoringRig) -> tuple[str, dict[str, Any], Any]:
    data = put_files(rig.s3, rig.input_uri, files=FILES, rows=ROWS)
    endpoint = rig.make_endpoint("sum", faults={"latency_ms": 150})
    return endpoint, rig.conf(endpoint, op=OP), data


def _wait_for_parts(rig: ScoringRig, proc: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 120
    while len(data_parts(rig.s3, rig.output_uri)) < count:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def _rerun_and_check(rig: ScoringRig, endpoint: str, conf: dict[str, Any], data: Any) -> dict[str, int]:
    done = check_parts_complete(rig.s3, rig.output_uri, ROWS)
    before = requests_settled(rig, endpoint)
    checkpointed = checkpointed_rows(rig.s3, rig.output_uri)  # a cancelled run checkpoints what it wrote
    run = rig.run(conf, "rerun")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    resent_requests = after["requests"] - before["requests"]
    resent_rows = after["rows_ok"] - before["rows_ok"]
    unfinished = (FILES - len(done)) * ROWS - checkpointed
    assert resent_rows == unfinished, "rows of finished units or of checkpoints were sent again"
    assert resent_requests == unfinished // ROWS_PER_REQUEST, "requests of finished work were sent again"
    assert not [key for key in list_keys(rig.s3, rig.output_uri) if key.startswith("_checkpoints/")]
    out = read_output(rig.s3, rig.output_uri)
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == TOTAL
    assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(expected_sum(data))
    summary = run.xcom("score")
    assert summary["units_skipped"] == len(done) and summary["rows_scored"] == TOTAL
    assert "_manifest.json" in list_keys(rig.s3, rig.output_uri)
    return {
        "units_done_before_rerun": len(done),
        "requests_first_run": before["requests"],
        "rows_in_checkpoints_before_rerun": checkpointed,
        "requests_lost_in_first_run": before["requests"] - (len(done) * ROWS + checkpointed) // ROWS_PER_REQUEST,
        "requests_resent": resent_requests,
        "requests_resent_expected": unfinished // ROWS_PER_REQUEST,
        "rows_resent": resent_rows,
        "rows_lost": TOTAL - len(set(ids)),
        "rows_duplicated": len(ids) - len(set(ids)),
    }


@pytest.mark.parametrize("percent", [25, 50, 90])
def test_sigkill_then_rerun(percent: int, rig: ScoringRig) -> None:
    endpoint, conf, data = _setup(rig)
    proc = start_child(conf, rig.tmp_path / "first")
    try:
        _wait_for_parts(rig, proc, FILES * percent // 100)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    keys = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" not in keys
    killed_at = len(data_parts(rig.s3, rig.output_uri))
    assert killed_at < FILES
    dangling = incomplete_uploads(rig.s3, rig.output_uri)
    numbers = _rerun_and_check(rig, endpoint, conf, data)
    rig.figures.record(
        f"kill_sigkill_{percent}pct",
        result="killed; rerun success",
        units=FILES,
        killed_at_units_done=killed_at,
        incomplete_multipart_uploads_left=len(dangling),
        **numbers,
    )


def test_sigterm_on_kill_stops_cleanly(rig: ScoringRig) -> None:
    """SIGTERM makes Airflow's task runner call ``on_kill``: no new request, no partial object, the task fails."""
    endpoint, conf, data = _setup(rig)
    proc = start_child(conf, rig.tmp_path / "first")
    try:
        _wait_for_parts(rig, proc, FILES // 2)
        os.kill(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    output = (rig.tmp_path / "first" / "child.log").read_text()
    result = json.loads(output.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert result["tasks"]["score"] == "failed", result
    stopped_after = time.monotonic() - signalled
    error = (rig.tmp_path / "first" / "score.txt").read_text()
    assert "ScoringCancelledError" in error and "killed" in error, error
    settled = requests_settled(rig, endpoint)
    keys = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" not in keys
    assert not incomplete_uploads(rig.s3, rig.output_uri), "an aborted part left a multipart upload"
    assert not [k for k in keys if k.startswith("_errors/")]
    numbers = _rerun_and_check(rig, endpoint, conf, data)
    assert settled["requests"] < FILES * REQUESTS_PER_UNIT
    rig.figures.record(
        "kill_sigterm_50pct",
        result="task failed (on_kill); rerun success",
        units=FILES,
        seconds_from_sigterm_to_exit=round(stopped_after, 2),
        incomplete_multipart_uploads_left=0,
        **numbers,
    )


def test_execution_timeout_on_kill_stops_cleanly(rig: ScoringRig) -> None:
    """``execution_timeout`` (10 s) interrupts the run: Airflow calls ``on_kill``; nothing partial is visible.

    The endpoint answers the first 8 requests (units 1 and 2), then holds the next ones until the job stopped
    (``ReleaseOnStopOperator``): the timeout fires with work done and work left, whatever the machine's speed.
    """
    endpoint, conf, data = _setup(rig)
    rig.patch_faults(endpoint, {"hold_after_requests": HELD_AFTER})
    run = rig.run(conf, "first", dag_id="r_score_timeout")
    assert run.states["score"] == "failed"
    assert "Timeout" in run.error("score"), run.error("score")
    ended = rig.endpoint_stats(endpoint)["requests"]
    settled = requests_settled(rig, endpoint)
    assert settled["requests"] - ended <= 2  # at most the requests in flight when on_kill ran
    # The 8 answered, and the held ones in flight when the job stopped: at most one per in-flight slot (a
    # loaded machine may not have sent them all when the timeout fires), and at least one.
    assert HELD_AFTER < settled["requests"] <= HELD_AFTER + OP["concurrency"]
    keys = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" not in keys
    assert not incomplete_uploads(rig.s3, rig.output_uri), "an aborted part left a multipart upload"
    numbers = _rerun_and_check(rig, endpoint, conf, data)
    # Units 1 and 2, or only unit 1 when a request of unit 3 overtook unit 2's last one to the endpoint.
    assert 0 < numbers["units_done_before_rerun"] <= HELD_AFTER // REQUESTS_PER_UNIT
    rig.figures.record(
        "kill_execution_timeout",
        result="task failed (timeout, on_kill); rerun success",
        units=FILES,
        requests_after_task_ended=settled["requests"] - ended,
        incomplete_multipart_uploads_left=0,
        **numbers,
    )
