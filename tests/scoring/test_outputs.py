"""Output consistency of the scoring core: one schema for every part, parts of deleted inputs removed.

Local files and an in-process endpoint (no Airflow, no HTTP); the Airflow path is covered by
tests/operators/test_failure_isolation.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage
from tests.scoring.fakes import FakeEndpoint, Result, numeric_table

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01, throttle_base_delay=0.001)


@pytest.fixture(autouse=True)
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "UNIT_ROWS", 200)


def poisoned(rows: int, *, start: int, bad: range) -> pa.Table:
    table = numeric_table(rows, start=start)
    f0 = [-1.0 if i in bad else v for i, v in zip(table["id"].to_pylist(), table["f0"].to_pylist(), strict=True)]
    return table.set_column(1, "f0", pa.array(f0))


def run(inputs: str | list[str], out: Path, endpoint: Callable[[bytes], Result], **overrides: object) -> dict:
    config = ScoringConfig(
        endpoint_name="fake",
        input_uri=inputs,
        output_uri=str(out),
        passthrough_columns=["id"],
        max_rows_per_request=50,
        concurrency=overrides.pop("concurrency", 2),  # type: ignore[arg-type]
        **overrides,  # type: ignore[arg-type]
    )
    return ScoringJob(config=config, invoke=endpoint, storage=Storage(), retry_policy=FAST_RETRY).run()


def parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_a_unit_whose_rows_all_failed_has_the_prediction_columns(tmp_path: Path) -> None:
    # the first unit (rows 0-199) fails entirely, before any prediction of the run is known
    pq.write_table(poisoned(600, start=0, bad=range(200)), tmp_path / "a.parquet", row_group_size=100)
    endpoint = FakeEndpoint(poison=-1.0)

    def invoke(body: bytes) -> Result:
        if b"-1" not in body:
            time.sleep(0.2)  # scored rows answer late: the failed unit is complete before any prediction
        return endpoint(body)

    summary = run(str(tmp_path / "a.parquet"), tmp_path / "out", invoke, max_error_ratio=0.5)
    assert summary["rows_failed"] == 200 and summary["rows_scored"] == 400
    schemas = {name: pq.read_schema(tmp_path / "out" / name).names for name in parts(tmp_path / "out")}
    assert len(schemas) == 3 and all(names == ["id", "prediction"] for names in schemas.values()), schemas
    data = pads.dataset(str(tmp_path / "out"), format="parquet", exclude_invalid_files=True)
    assert data.schema.names == ["id", "prediction"]
    table = data.to_table()
    assert table.num_rows == 400 and table["prediction"].null_count == 0


def test_a_run_that_scores_no_row_takes_the_schema_of_an_existing_part(tmp_path: Path) -> None:
    pq.write_table(numeric_table(200, start=0), tmp_path / "a.parquet")
    run([str(tmp_path / "a.parquet")], tmp_path / "out", FakeEndpoint())
    # a second input whose every row fails: this run knows no prediction of its own
    pq.write_table(poisoned(200, start=1_000, bad=range(1_000, 1_200)), tmp_path / "b.parquet")
    endpoint = FakeEndpoint(poison=-1.0)
    both = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    summary = run(both, tmp_path / "out", endpoint, max_error_ratio=1.0)
    assert summary["rows_failed"] == 200 and summary["units_skipped"] == 1
    names = parts(tmp_path / "out")
    assert len(names) == 2
    for name in names:
        assert pq.read_schema(tmp_path / "out" / name).names == ["id", "prediction"], name
    data = pads.dataset(str(tmp_path / "out"), format="parquet", exclude_invalid_files=True)
    assert data.to_table()["prediction"].null_count == 0 and data.schema.names == ["id", "prediction"]


def test_the_part_of_a_deleted_input_is_removed_and_the_other_is_untouched(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(numeric_table(150, start=0), inputs / "a.parquet")
    pq.write_table(poisoned(150, start=1_000, bad=range(1_000, 1_003)), inputs / "b.parquet")
    out = tmp_path / "out"
    run(str(inputs), out, FakeEndpoint(poison=-1.0), max_error_ratio=0.1)
    before = parts(out)
    assert len(before) == 2 and len(list((out / "_errors").glob("part-*"))) == 1
    (inputs / "b.parquet").unlink()
    endpoint = FakeEndpoint()
    summary = run(str(inputs), out, endpoint, max_error_ratio=0.1)
    assert endpoint.requests == 0 and summary["rows_in"] == 150
    after = parts(out)
    (kept,) = after
    assert kept.startswith("part-a-") and kept in before
    assert after[kept] == before[kept]  # the other input's part is untouched
    assert not list((out / "_errors").glob("part-*"))  # the deleted input's error rows went with its part


def test_mapped_tasks_sharing_an_output_never_delete_each_others_parts(tmp_path: Path) -> None:
    files = {}
    for name, start in (("a", 0), ("b", 1_000), ("shared", 2_000)):
        files[name] = tmp_path / f"{name}.parquet"
        pq.write_table(numeric_table(120, start=start), files[name])
    out = tmp_path / "out"
    # task 0 scores a and shared, task 1 scores b and shared, into one output
    run([str(files["a"]), str(files["shared"])], out, FakeEndpoint(), manifest_name="_manifest-00000.json")
    run([str(files["b"]), str(files["shared"])], out, FakeEndpoint(), manifest_name="_manifest-00001.json")
    before = parts(out)
    assert len(before) == 3
    # task 0 is rerun without its inputs: its part of a goes, b (task 1's) and shared (task 1 lists it) stay
    files["a"].unlink()
    c = tmp_path / "c.parquet"
    pq.write_table(numeric_table(50, start=3_000), c)
    run([str(c)], out, FakeEndpoint(), manifest_name="_manifest-00000.json")
    after = parts(out)
    assert [name for name in before if name not in after] == [n for n in before if n.startswith("part-a-")]
    assert all(after[name] == data for name, data in before.items() if name in after)
    assert len(after) == 3  # b, shared and the new c
