"""What the task log tells (through Airflow): isolated rows as they happen, one warning per error class,
a rate of this run's rows, no "ETA nan", and the count of null features sent as empty CSV fields.
Never a payload value."""

from __future__ import annotations

import re

import pyarrow as pa

from tests.support.dag_runs import DagTestResult
from tests.support.datasets import features, put_files
from tests.support.s3_objects import put_parquet
from tests.support.scoring_rig import ScoringRig

POISON = {3, 77, 10_018}


def _text(run: DagTestResult) -> str:
    """What the run logged (the operator's task log and the provider's loggers), one record a line."""
    return run.log_text


def test_isolated_rows_are_logged_as_they_happen(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999})
    put_files(rig.s3, rig.input_uri, files=2, rows=100, poison=POISON)
    run = rig.run(rig.conf(endpoint, op={"max_error_ratio": 0.05}))
    assert run.succeeded, run.error("score")
    text = _text(run)
    isolated = re.findall(r"row (\d+) of (\S+) isolated into _errors/ \(ModelInputError\)", text)
    assert len(isolated) == len(POISON)
    assert sorted(int(row) for row, _ in isolated) == [3, 18, 77]  # row numbers within their files
    assert text.count("rows failing with ModelInputError are isolated") == 1  # once per error class
    assert "3 row(s) failed with ModelInputError in this run" in text
    assert "splitting the request to isolate the failing rows" in text
    assert not re.search(r"(?<![0-9a-f-])-999(\.0)?\b", text)  # never a feature value (uuids may hold "-999")
    assert "ETA nan" not in text


def test_rate_of_a_resumed_run_counts_only_its_own_rows(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum")
    put_files(rig.s3, rig.input_uri, files=2, rows=100)
    first = rig.run(rig.conf(endpoint), "first")
    assert first.succeeded, first.error("score")
    rerun = rig.run(rig.conf(endpoint), "rerun")
    assert rerun.succeeded, rerun.error("score")
    text = _text(rerun)
    progress = [line for line in text.splitlines() if "scored 200/200 rows" in line]
    assert progress and all(", 0 rows/s," in line for line in progress), progress
    assert "ETA nan" not in text


def test_null_features_sent_as_empty_csv_fields_are_counted_once(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum")
    table = features(range(50))
    f1 = pa.array([None if i % 10 == 0 else float(i) for i in range(50)], pa.float64())
    table = table.set_column(table.schema.get_field_index("f1"), "f1", f1)
    put_parquet(rig.s3, f"{rig.input_uri}nulls.parquet", table)
    run = rig.run(rig.conf(endpoint, op={"max_error_ratio": 1.0}))
    assert run.state in ("success", "failed")
    lines = [line for line in _text(run).splitlines() if "were sent as empty CSV fields" in line]
    assert len(lines) == 1 and "5 null feature value(s)" in lines[0], lines
