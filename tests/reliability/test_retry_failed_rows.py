"""``retry_failed_rows`` through Airflow (``dag.test()``) on the local stack: the model is fixed between runs.

The dataset is 4 files of 200 rows (one unit each, row groups of 50). Rows of ``POISON`` hold the poison
value -999; rows of ``STUBBORN`` also hold 7.5. The first run (poison -999) puts all of them under
``_errors/``; a retry with the poison moved to 7.5 moves the others into their parts, and a retry with no
poison moves the rest. Requests and rows are counted at the endpoint; a retry sends the failed rows only.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.support.child_runs import kill_when, requests_settled, start_child
from tests.support.datasets import expected_sum, features
from tests.support.s3_objects import data_parts, list_keys, put_parquet, read_output, read_table, split
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

FILES, ROWS, ROW_GROUP = 4, 200, 50
TOTAL = FILES * ROWS
#: fixed by the first retry (10_050 and 10_120, 10_121 share a part: rows move in around rows that stay)
POISON = {3, 10_050, 20_199, 20_000}
STUBBORN = {10_120, 10_121}
OP: dict[str, Any] = {"max_error_ratio": 0.5, "max_rows_per_request": 50, "concurrency": 2}


def _put_inputs(rig: ScoringRig) -> pa.Table:
    tables = []
    for k in range(FILES):
        table = features(range(k * 10_000, k * 10_000 + ROWS), poison=POISON | STUBBORN)
        f1 = [
            7.5 if i in STUBBORN else v for i, v in zip(table["id"].to_pylist(), table["f1"].to_pylist(), strict=True)
        ]
        table = table.set_column(2, "f1", pa.array(f1, pa.float64()))
        put_parquet(rig.s3, f"{rig.input_uri}f{k:03d}.parquet", table, row_group_size=ROW_GROUP)
        tables.append(table)
    return pa.concat_tables(tables)


def _first_run(rig: ScoringRig, **faults: Any) -> tuple[str, pa.Table]:
    data = _put_inputs(rig)
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999, **faults})
    run = rig.run(rig.conf(endpoint, op=OP), "first")
    assert run.succeeded, run.error("score")
    errors = read_output(rig.s3, rig.output_uri, folder="_errors/")
    assert sorted(errors["id"].to_pylist()) == sorted(POISON | STUBBORN)
    return endpoint, data


def _error_keys(rig: ScoringRig) -> list[str]:
    return [key for key in list_keys(rig.s3, rig.output_uri) if key.startswith("_errors/")]


def _check_output(rig: ScoringRig, data: pa.Table, failing: set[int]) -> None:
    """Every row exactly once, in a data part or (``failing``) under ``_errors/``; input order in each part."""
    want = expected_sum(data)
    ids: list[int] = []
    for name in data_parts(rig.s3, rig.output_uri):
        part = read_table(rig.s3, rig.output_uri + name)
        part_ids = part["id"].to_pylist()
        assert part_ids == sorted(part_ids), f"{name}: rows out of input order"
        for i, prediction in zip(part_ids, part["prediction"].to_pylist(), strict=True):
            assert prediction == pytest.approx(want[i])
        ids += part_ids
    assert len(ids) == len(set(ids)) == TOTAL - len(failing)
    assert set(ids) == set(want) - failing
    errors = read_output(rig.s3, rig.output_uri, folder="_errors/")
    assert sorted(errors["id"].to_pylist() if errors.num_rows else []) == sorted(failing)
    if failing:  # the input row of each error row is its row in its input file
        assert sorted(errors["input_row"].to_pylist()) == sorted(i % 10_000 for i in failing)


def _manifest(rig: ScoringRig) -> dict[str, Any]:
    bucket, key = split(rig.output_uri + "_manifest.json")
    manifest: dict[str, Any] = orjson.loads(rig.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return manifest


def _check_manifest(rig: ScoringRig, failing: set[int]) -> None:
    manifest = _manifest(rig)
    assert manifest["totals"]["rows_scored"] == TOTAL - len(failing)
    assert manifest["totals"]["rows_failed"] == len(failing)
    assert sum(part["rows_scored"] for part in manifest["parts"]) == TOTAL - len(failing)
    assert sum(part["rows_failed"] for part in manifest["parts"]) == len(failing)
    keys = set(list_keys(rig.s3, rig.output_uri))
    for part in manifest["parts"]:
        assert (part["errors"] in keys) if part["rows_failed"] else part["errors"] is None


def test_retry_moves_the_fixed_rows_into_their_parts_and_keeps_the_others(rig: ScoringRig) -> None:
    endpoint, data = _first_run(rig)
    first_run = rig.endpoint_stats(endpoint)["requests"]
    clean = [name for name in data_parts(rig.s3, rig.output_uri) if f"_errors/{name}" not in _error_keys(rig)]
    assert len(clean) == 1  # f003 has no failed row
    before = requests_settled(rig, endpoint)

    # Not fixed yet: the failed rows are sent again (one row a request), and stay where they are.
    op = {**OP, "retry_failed_rows": True, "max_rows_per_request": 1}
    rig.patch_faults(endpoint, {"poison_value": -999})
    run = rig.run(rig.conf(endpoint, op=op), "unfixed")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    assert after["requests"] - before["requests"] == len(POISON | STUBBORN)  # 4xx: not retried
    assert after["rows_ok"] == before["rows_ok"]
    _check_output(rig, data, POISON | STUBBORN)
    _check_manifest(rig, POISON | STUBBORN)

    # Fixed for most rows: those move into their parts, at their positions; the stubborn ones stay.
    rig.patch_faults(endpoint, {"poison_value": 7.5})
    before = after
    run = rig.run(rig.conf(endpoint, op=op), "partly fixed")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    assert after["requests"] - before["requests"] == len(POISON | STUBBORN)
    assert after["rows_ok"] - before["rows_ok"] == len(POISON)  # no other row of the output was sent
    _check_output(rig, data, STUBBORN)
    _check_manifest(rig, STUBBORN)
    summary = run.xcom("score")
    assert summary["rows_scored"] == TOTAL - len(STUBBORN) and summary["rows_failed"] == len(STUBBORN)
    assert len(_error_keys(rig)) == 1  # the error parts left empty are deleted

    # Fixed: the last rows move too; _errors/ is empty; a part with no error part was never rewritten.
    rig.patch_faults(endpoint, {"poison_value": None})
    before = after
    run = rig.run(rig.conf(endpoint, op={**OP, "retry_failed_rows": True}), "fixed")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    assert after["requests"] - before["requests"] == 1  # both rows of one part, in one request
    assert after["rows_ok"] - before["rows_ok"] == len(STUBBORN)
    _check_output(rig, data, set())
    _check_manifest(rig, set())
    assert not _error_keys(rig)
    # and once nothing failed, a retry sends nothing
    run = rig.run(rig.conf(endpoint, op={**OP, "retry_failed_rows": True}), "nothing to retry")
    assert run.succeeded, run.error("score")
    assert rig.endpoint_stats(endpoint)["requests"] == after["requests"]
    rig.figures.record(
        "retry_failed_rows",
        rows=TOTAL,
        failed_rows=len(POISON | STUBBORN),
        requests_first_run=first_run,
        requests_unfixed_retry=len(POISON | STUBBORN),
        rows_sent_by_the_fixed_retries=len(POISON | STUBBORN),
    )


def test_a_rerun_repairs_a_retry_killed_between_its_data_and_error_writes(rig: ScoringRig) -> None:
    """The state a kill between the data part's and the error part's rewrite leaves: rows in both places."""
    endpoint, data = _first_run(rig)
    bucket, prefix = split(rig.output_uri)
    saved = {key: rig.s3.get_object(Bucket=bucket, Key=prefix + key)["Body"].read() for key in _error_keys(rig)}
    rig.patch_faults(endpoint, {"poison_value": None})
    run = rig.run(rig.conf(endpoint, op={**OP, "retry_failed_rows": True}), "retry")
    assert run.succeeded, run.error("score")
    assert not _error_keys(rig)
    for key, body in saved.items():  # as if the error parts had not been rewritten yet
        rig.s3.put_object(Bucket=bucket, Key=prefix + key, Body=body)
    before = requests_settled(rig, endpoint)
    run = rig.run(rig.conf(endpoint, op=OP), "rerun")  # any rerun repairs, retry_failed_rows or not
    assert run.succeeded, run.error("score")
    assert rig.endpoint_stats(endpoint)["requests"] == before["requests"]
    assert not _error_keys(rig)
    _check_output(rig, data, set())
    _check_manifest(rig, set())


def _fourth_held(stats: dict[str, Any], before: dict[str, Any]) -> bool:
    return stats["requests"] >= before["requests"] + 4 and stats["concurrent"] >= 1


def test_sigkill_during_a_retry_then_rerun_moves_every_row_exactly_once(rig: ScoringRig) -> None:
    # one row a request, one in flight: the endpoint answers 3 of the failed rows, holds the 4th, and the
    # kill lands while it is held (released once the worker is dead), whatever the machine's speed
    endpoint, data = _first_run(rig)
    before = requests_settled(rig, endpoint)
    rig.patch_faults(endpoint, {"poison_value": None, "latency_ms": 300, "hold_after_requests": 3})
    op = {**OP, "retry_failed_rows": True, "max_rows_per_request": 1, "concurrency": 1}
    conf = rig.conf(endpoint, op=op)
    proc = start_child(conf, rig.tmp_path / "killed")
    try:
        # the 4th arrived, and is inside the model (the 3rd was answered before it was sent): held
        kill_when(proc, lambda: _fourth_held(rig.endpoint_stats(endpoint), before))
    finally:
        rig.patch_faults(endpoint, {"hold_after_requests": None})
    killed = requests_settled(rig, endpoint)
    sent = killed["requests"] - before["requests"]
    assert sent == 4 < len(POISON | STUBBORN)
    # wherever the kill hit, no row is in a data part and under _errors/ (after the repair a rerun makes)
    moved = read_output(rig.s3, rig.output_uri)["id"].to_pylist()
    assert len(moved) == len(set(moved))
    run = rig.run(conf, "rerun")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    # the rerun sends only the rows still under _errors/ after the repair
    assert after["requests"] - killed["requests"] <= len(POISON | STUBBORN)
    assert after["rows_ok"] - before["rows_ok"] >= len(POISON | STUBBORN)
    _check_output(rig, data, set())
    _check_manifest(rig, set())
    assert not _error_keys(rig)
    ids = pc.unique(read_output(rig.s3, rig.output_uri)["id"]).to_pylist()
    assert len(ids) == TOTAL
    rig.figures.record(
        "retry_failed_rows_sigkill",
        failed_rows=len(POISON | STUBBORN),
        requests_before_kill=sent,
        requests_resent=after["requests"] - killed["requests"],
    )
