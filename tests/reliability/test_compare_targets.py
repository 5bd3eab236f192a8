"""``compare_targets`` killed with SIGKILL mid-run (``dag.test()`` in a child process), then rerun to completion.

Two variants of one endpoint run different models: ``prod`` the sum of the features, ``shadow`` their
maximum. Each request of 50 rows goes to both; a checkpoint every 4 requests. The child is killed once
the endpoint has served 40 % of the run's calls (counted at the endpoint, never timed): the small first
file is then committed, the large one in checkpoints. The rerun sends, at each variant, exactly the rows
no committed part and no checkpoint holds; the output holds every input row once with both targets'
predictions; the summary's per-target counts and agreement cover the whole output (the rows the rerun
reads back from the part and the checkpoints included); no checkpoint is left.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from tests.support.child_runs import kill_when, requests_settled, start_child
from tests.support.datasets import expected_sum, features
from tests.support.s3_objects import (
    SEGMENT,
    checkpointed_rows,
    data_parts,
    list_keys,
    put_parquet,
    read_output,
    read_table,
)
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

#: Rows of each input file (one work unit each): the small one is committed before the kill, the large one
#: is checkpointed.
FILE_ROWS = (400, 3_600)
TOTAL = sum(FILE_ROWS)
ROWS_PER_REQUEST = 50
REQUESTS = TOTAL // ROWS_PER_REQUEST  # logical requests; each is one call at each variant
TARGETS = [{"name": "prod", "target_variant": "prod"}, {"name": "shadow", "target_variant": "shadow"}]
POISON_VALUE = -999.0  # features(poison=...) puts it into f0; only the shadow variant rejects such rows


def _setup(rig: ScoringRig, *, poison: set[int] | None = None) -> tuple[str, dict[str, Any], pa.Table]:
    tables = []
    for k, rows in enumerate(FILE_ROWS):
        table = features(range(k * 100_000, k * 100_000 + rows), poison=poison)
        put_parquet(rig.s3, f"{rig.input_uri}f{k:03d}.parquet", table)
        tables.append(table)
    shadow: dict[str, Any] = {"weight": 1.0, "model": "sum", "outputs": ["max"]}
    if poison:
        shadow["poison_value"] = POISON_VALUE
    endpoint = rig.make_endpoint("sum", variants={"prod": {"weight": 1.0}, "shadow": shadow}, faults={"latency_ms": 20})
    op = {
        "compare_targets": TARGETS,
        "variant_column": "variant",
        "max_rows_per_request": ROWS_PER_REQUEST,
        "concurrency": 4,
        "checkpoint_every_requests": 4,
        "max_error_ratio": 0.1,
    }
    return endpoint, rig.conf(endpoint, op=op), pa.concat_tables(tables)


def _expected_max(table: pa.Table) -> dict[int, float]:
    rows = table.select(["id", "f0", "f1", "f2"]).to_pylist()
    return {r["id"]: max(float(r["f0"]), float(r["f1"]), float(r["f2"])) for r in rows}


def _kill_at_40_percent(rig: ScoringRig, endpoint: str, conf: dict[str, Any]) -> tuple[dict[str, Any], int, set[int]]:
    """Start the run, SIGKILL it at 40 % of its calls; the endpoint's settled counters, the rows the committed
    parts then hold, and the ids of the rows the parts and the checkpoints hold."""
    proc = start_child(conf, rig.tmp_path / "killed")
    calls = 2 * REQUESTS * 40 // 100
    kill_when(proc, lambda: rig.endpoint_stats(endpoint)["requests"] >= calls)
    first = requests_settled(rig, endpoint)
    keys = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" not in keys
    in_parts = [
        set(read_table(rig.s3, rig.output_uri + name)["id"].to_pylist()) for name in data_parts(rig.s3, rig.output_uri)
    ]
    segments = [key for key in keys if SEGMENT.match(key)]
    in_checkpoints = [set(read_table(rig.s3, rig.output_uri + key)["id"].to_pylist()) for key in segments]
    held = set().union(*in_parts, *in_checkpoints)
    assert sum(map(len, in_checkpoints)) == checkpointed_rows(rig.s3, rig.output_uri)  # prod answered every row
    assert 0 < len(held) < TOTAL, "the kill came before any checkpoint or after the end"
    return first, sum(map(len, in_parts)), held


def _by_variant(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """What each variant served between two snapshots of the endpoint's counters."""
    return {
        variant: {
            key: counters[key] - before["by_variant"].get(variant, {}).get(key, 0) for key in ("requests", "rows_ok")
        }
        for variant, counters in after["by_variant"].items()
    }


def test_sigkill_mid_run_then_rerun_scores_every_row_once_at_both_targets(rig: ScoringRig) -> None:
    endpoint, conf, data = _setup(rig)
    first, in_parts, held = _kill_at_40_percent(rig, endpoint, conf)
    in_checkpoints = len(held) - in_parts
    # the rerun reads both back (fold_stored): the committed part of the small file, the large file's checkpoints
    assert in_parts == FILE_ROWS[0] and in_checkpoints > 0

    run = rig.run(conf, "rerun")
    assert run.succeeded, run.error("score")
    unfinished = TOTAL - in_parts - in_checkpoints
    resent = _by_variant(first, rig.endpoint_stats(endpoint))
    expected = {"requests": unfinished // ROWS_PER_REQUEST, "rows_ok": unfinished}
    assert resent == {"prod": expected, "shadow": expected}, "rows a part or a checkpoint holds were sent again"

    out = read_output(rig.s3, rig.output_uri)
    assert out.column_names == ["id", "prediction__prod", "variant__prod", "prediction__shadow", "variant__shadow"]
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == TOTAL
    sums, maxes = expected_sum(data), _expected_max(data)
    assert dict(zip(ids, out["prediction__prod"].to_pylist(), strict=True)) == pytest.approx(sums)
    assert dict(zip(ids, out["prediction__shadow"].to_pylist(), strict=True)) == pytest.approx(maxes)
    assert set(out["variant__prod"].to_pylist()) == {"prod"} and set(out["variant__shadow"].to_pylist()) == {"shadow"}
    assert not read_output(rig.s3, rig.output_uri, "_errors/").num_rows

    summary = run.xcom("score")
    assert summary["rows_scored"] == TOTAL and summary["rows_failed"] == 0
    assert summary["rows_resumed_from_checkpoints"] == in_checkpoints
    per_target = summary["compare_targets"]
    for name in ("prod", "shadow"):
        assert (per_target[name]["rows_scored"], per_target[name]["rows_failed"]) == (TOTAL, 0)
        # this run's calls only: the requests the rerun sent
        assert per_target[name]["http_calls"] == unfinished // ROWS_PER_REQUEST
    diffs = [abs(sums[i] - maxes[i]) for i in ids]
    assert per_target["shadow"]["agreement"] == {
        "prediction": {
            "rows": TOTAL,  # the rows read back from parts and checkpoints too
            "mean_abs_diff": pytest.approx(sum(diffs) / len(diffs)),
            "max_abs_diff": pytest.approx(max(diffs)),
        }
    }
    assert not [key for key in list_keys(rig.s3, rig.output_uri) if key.startswith("_checkpoints/")]
    rig.figures.record(
        "compare_targets_sigkill_40pct",
        requests_per_target=REQUESTS,
        calls_first_run=first["requests"],
        rows_in_parts_at_kill=in_parts,
        rows_in_checkpoints_at_kill=in_checkpoints,
        requests_resent_per_target=unfinished // ROWS_PER_REQUEST,
    )


def test_one_target_failing_rows_across_a_sigkill_has_its_errors_once(rig: ScoringRig) -> None:
    """Shadow rejects some rows before and after the kill: ``_errors/`` holds each once, naming shadow."""
    poison = {k * 100_000 + i for k, rows in enumerate(FILE_ROWS) for i in range(37, rows, 211)}
    endpoint, conf, data = _setup(rig, poison=poison)
    first, _, held = _kill_at_40_percent(rig, endpoint, conf)
    assert poison & held and poison - held, "the shadow must fail rows before the kill and after it"

    run = rig.run(conf, "rerun")
    assert run.succeeded, run.error("score")
    unfinished = TOTAL - len(held)
    unsent_poison = len(poison - held)
    resent = _by_variant(first, rig.endpoint_stats(endpoint))
    assert resent["prod"] == {"requests": unfinished // ROWS_PER_REQUEST, "rows_ok": unfinished}
    # shadow answered the same rows less the poisoned ones among them (bisection sends more calls there)
    assert resent["shadow"]["rows_ok"] == unfinished - unsent_poison

    errors = read_output(rig.s3, rig.output_uri, "_errors/")
    pairs = sorted(zip(errors["id"].to_pylist(), errors["target"].to_pylist(), strict=True))
    assert pairs == [(i, "shadow") for i in sorted(poison)]  # complete, and no row twice
    assert errors["input_row"].to_pylist() == [i % 100_000 for i in errors["id"].to_pylist()]
    assert set(errors["error_class"].to_pylist()) == {"ModelInputError"}

    out = read_output(rig.s3, rig.output_uri)
    by_id = {row["id"]: row for row in out.to_pylist()}
    assert len(by_id) == out.num_rows == TOTAL
    sums, maxes = expected_sum(data), _expected_max(data)
    for i, row in by_id.items():
        assert row["prediction__prod"] == pytest.approx(sums[i])
        if i in poison:
            assert row["prediction__shadow"] is None and row["variant__shadow"] is None
        else:
            assert row["prediction__shadow"] == pytest.approx(maxes[i])

    summary = run.xcom("score")
    assert summary["rows_failed"] == len(poison) and summary["rows_scored"] == TOTAL - len(poison)
    per_target = summary["compare_targets"]
    assert (per_target["prod"]["rows_scored"], per_target["prod"]["rows_failed"]) == (TOTAL, 0)
    assert (per_target["shadow"]["rows_scored"], per_target["shadow"]["rows_failed"]) == (
        TOTAL - len(poison),
        len(poison),
    )
    kept = [i for i in by_id if i not in poison]
    agreement = per_target["shadow"]["agreement"]["prediction"]
    assert agreement["rows"] == len(kept)
    assert agreement["max_abs_diff"] == pytest.approx(max(abs(sums[i] - maxes[i]) for i in kept))
    assert not [key for key in list_keys(rig.s3, rig.output_uri) if key.startswith("_checkpoints/")]
