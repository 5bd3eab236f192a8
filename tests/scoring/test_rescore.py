"""``retry_failed_rows`` in the scoring core, on local paths: only the failed rows' row groups are read, the
fixed rows move into their parts at their positions, and the option is refused without ``if_exists="resume"``.

The same through Airflow on S3, with kills, is ``tests/reliability/test_retry_failed_rows.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.rescore import MISSING_ROWS_KEY
from airflow_provider_smrt.scoring.storage import Storage
from tests.scoring.fakes import FakeEndpoint, numeric_table

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
#: rows 0-2,499 of one file in units of 1,000 and row groups of 250; the failed rows sit in row groups 0, 2, 5
POISON = [3, 600, 601, 1_400]


@pytest.fixture(autouse=True)
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "UNIT_ROWS", 1_000)


def _run(root: Path, endpoint: FakeEndpoint, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"passthrough_columns": ["id"], "max_rows_per_request": 100, "max_error_ratio": 0.01}
    values.update(overrides)
    config = ScoringConfig(endpoint_name="fake", input_uri=str(root / "in"), output_uri=str(root / "out"), **values)
    return ScoringJob(config=config, invoke=endpoint, storage=Storage(), retry_policy=FAST_RETRY).run()


def _inputs(root: Path) -> None:
    table = numeric_table(2_500)
    f0 = table["f0"].to_pylist()
    for i in POISON:
        f0[i] = -1.0
    (root / "in").mkdir(parents=True)
    pq.write_table(table.set_column(1, "f0", pa.array(f0)), root / "in" / "a.parquet", row_group_size=250)


def _parts(root: Path, folder: str = "") -> dict[str, pa.Table]:
    return {path.name: pq.read_table(path) for path in sorted((root / "out" / folder).glob("part-*"))}


def test_retry_reads_only_the_failed_rows_row_groups_and_moves_them_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inputs(tmp_path)
    first = _run(tmp_path, FakeEndpoint(poison=-1.0))
    assert first["rows_failed"] == len(POISON)
    before = _parts(tmp_path)
    assert len(before) == 3 and len(_parts(tmp_path, "_errors")) == 2  # the third unit has no failed row

    groups: list[int] = []
    read_row_group = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, index: int, *args: Any, **kwargs: Any) -> pa.Table:
        groups.append(index)
        return read_row_group(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    fixed = FakeEndpoint()
    summary = _run(tmp_path, fixed, retry_failed_rows=True, max_rows_per_request=1)
    assert sorted(groups) == [0, 2, 5]
    assert fixed.requests == fixed.rows_ok == len(POISON)
    assert summary["rows_scored"] == 2_500 and summary["rows_failed"] == 0
    after = _parts(tmp_path)
    assert not (tmp_path / "out" / "_errors").exists() or not _parts(tmp_path, "_errors")
    for name, table in after.items():
        ids = table["id"].to_pylist()
        start, end = (int(x) for x in name.split("-")[-3:-1])
        assert ids == list(range(start, end))  # every row of the unit, in input order
        assert table.schema.remove_metadata() == before[name].schema.remove_metadata()
    untouched = [name for name, table in after.items() if MISSING_ROWS_KEY not in (table.schema.metadata or {})]
    assert len(untouched) == 1 and after[untouched[0]].equals(before[untouched[0]])


def test_retry_needs_if_exists_resume() -> None:
    config = ScoringConfig(
        endpoint_name="e", input_uri="/in/", output_uri="/out/", retry_failed_rows=True, if_exists="overwrite"
    )
    with pytest.raises(ParameterValidationError, match=r"retry_failed_rows=True .* needs if_exists='resume'"):
        config.validate()
