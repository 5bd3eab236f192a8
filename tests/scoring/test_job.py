"""The scoring core end to end on local files with an in-process endpoint (no Airflow, no HTTP)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import (
    ConfigurationError,
    ErrorRatioExceededError,
    InputDataError,
    OutputError,
    PredictionCountMismatchError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage
from tests.scoring.fakes import FakeEndpoint, Result, numeric_table

FAST_RETRY = RetryPolicy(max_attempts=12, base_delay=0.001, max_delay=0.01, throttle_base_delay=0.001)


@pytest.fixture(autouse=True)
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "UNIT_ROWS", 1_000)


def write(path: Path, table: pa.Table, row_group_size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def make_inputs(root: Path) -> Path:
    inputs = root / "in"
    write(inputs / "a.parquet", numeric_table(2_500, start=0), 700)
    write(inputs / "b.parquet", numeric_table(1_800, start=10_000), 5_000)  # one row group > unit size
    write(inputs / "c.parquet", numeric_table(0), 100)  # zero rows
    (inputs / "_SUCCESS").write_bytes(b"")
    (inputs / ".hidden.parquet").write_bytes(b"junk")
    return inputs


def run(root: Path, endpoint: Callable[[bytes], Result], **overrides: object) -> dict:
    config = ScoringConfig(
        endpoint_name="fake",
        input_uri=overrides.pop("input_uri", str(root / "in")),  # type: ignore[arg-type]
        output_uri=overrides.pop("output_uri", str(root / "out")),  # type: ignore[arg-type]
        passthrough_columns=overrides.pop("passthrough_columns", ["id"]),  # type: ignore[arg-type]
        max_rows_per_request=overrides.pop("max_rows_per_request", 100),  # type: ignore[arg-type]
        concurrency=overrides.pop("concurrency", 4),  # type: ignore[arg-type]
        **overrides,  # type: ignore[arg-type]
    )
    job = ScoringJob(config=config, invoke=endpoint, storage=Storage(), retry_policy=FAST_RETRY)
    return job.run()


def read_output(out: Path) -> pa.Table:
    parts = sorted(p for p in out.iterdir() if p.name.startswith("part-"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def expected_sum(ids: list[int]) -> list[float]:
    return [float(i % 97) * 3 + 3 for i in ids]  # f0 + f1 + f2 = 3*(i%97) + 0 + 1 + 2


def test_scores_every_row_once_in_order(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    endpoint = FakeEndpoint()
    summary = run(tmp_path, endpoint)
    out = read_output(tmp_path / "out")
    assert out.column_names == ["id", "prediction"]
    ids = out["id"].to_pylist()
    assert sorted(ids) == list(range(2_500)) + list(range(10_000, 11_800))
    assert len(set(ids)) == len(ids)
    assert out["prediction"].to_pylist() == expected_sum(ids)
    # within a part, input order is kept
    for part in (tmp_path / "out").glob("part-*"):
        part_ids = pq.read_table(part)["id"].to_pylist()
        assert part_ids == sorted(part_ids)
        assert pq.ParquetFile(part).num_row_groups == 1  # requests of 100 rows are buffered into one row group
    assert summary["rows_in"] == summary["rows_scored"] == 4_300
    assert summary["rows_failed"] == 0
    assert summary["requests"] == endpoint.requests == 43
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert {Path(i["uri"]).name for i in manifest["inputs"]} == {"a.parquet", "b.parquet", "c.parquet"}
    assert sum(p["rows_scored"] for p in manifest["parts"]) == 4_300
    assert {p["name"] for p in manifest["parts"]} == {p.name for p in (tmp_path / "out").glob("part-*")}


def test_rerun_skips_finished_work(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    run(tmp_path, FakeEndpoint())
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    again = FakeEndpoint()
    summary = run(tmp_path, again)
    assert again.requests == 0
    assert summary["units_skipped"] == summary["units_total"] == len(before)
    assert summary["rows_scored"] == 4_300
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")} == before


class FailAfter(FakeEndpoint):
    """Succeeds for ``n`` requests, then fails every request with a non-retryable error."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __call__(self, body: bytes):  # type: ignore[no-untyped-def]
        with self._lock:
            count = self.requests
        if count >= self.n:
            with self._lock:
                self.requests += 1
            raise ConfigurationError("endpoint went away", code="ValidationError", http_status=400)
        return super().__call__(body)


def test_crash_then_resume_sends_only_unfinished_rows(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    with pytest.raises(ConfigurationError):
        run(tmp_path, FailAfter(25), concurrency=1)
    committed = list((tmp_path / "out").glob("part-*"))
    assert 0 < len(committed) < 5
    assert not list((tmp_path / "out").glob(".*tmp"))  # nothing staged left behind
    assert not (tmp_path / "out" / "_manifest.json").exists()
    done_rows = sum(pq.read_metadata(p).num_rows for p in committed)
    # the failed run checkpointed the rows it had written into its open unit
    checkpointed = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out").glob("_checkpoints/*/seg-*"))
    endpoint = FakeEndpoint()
    summary = run(tmp_path, endpoint)
    assert endpoint.rows_ok == 4_300 - done_rows - checkpointed  # only unfinished work re-sent
    out = read_output(tmp_path / "out")
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4_300
    assert summary["rows_scored"] == 4_300


def test_poison_rows_are_isolated(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    table = numeric_table(1_000)
    f0 = table["f0"].to_pylist()
    poison_ids = [17, 500, 501, 999]
    for i in poison_ids:
        f0[i] = -1.0
    table = table.set_column(1, "f0", pa.array(f0))
    write(inputs / "p.parquet", table, 300)
    endpoint = FakeEndpoint(poison=-1.0)
    with pytest.raises(ErrorRatioExceededError) as info:  # the first failed row spends a budget of 0
        run(tmp_path, endpoint, concurrency=1)
    message = str(info.value)
    assert "max_error_ratio=0.0" in message and "1 of 1000 rows" in message and "stopped sending" in message
    assert "bad row" not in message  # the container's message stays in _errors/
    # 12 requests bisect rows 0-99 down to row 17, then nothing more is sent (the whole run sends ~58)
    assert 12 <= endpoint.requests < 30
    assert not list(tmp_path.glob("out/part-*"))  # the unit holding row 17 is not committed
    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(tmp_path, endpoint, max_error_ratio=0.01)
    assert summary["rows_failed"] == 4
    out = read_output(tmp_path / "out")
    assert sorted(out["id"].to_pylist()) == sorted(set(range(1_000)) - set(poison_ids))
    errors = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out" / "_errors").glob("part-*")])
    assert sorted(errors["id"].to_pylist()) == poison_ids
    assert sorted(errors["input_row"].to_pylist()) == poison_ids
    assert set(errors["error_class"].to_pylist()) == {"ModelInputError"}
    # the same run with a tolerant ratio succeeds, without re-sending anything
    again = FakeEndpoint(poison=-1.0)
    summary = run(tmp_path, again, max_error_ratio=0.01)
    assert again.requests == 0
    assert summary["rows_failed"] == 4 and summary["rows_scored"] == 996


def test_throttling_and_5xx_every_row_once(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    endpoint = FakeEndpoint(throttle_rate=0.3, error_5xx_rate=0.1)
    summary = run(tmp_path, endpoint, concurrency=8)
    out = read_output(tmp_path / "out")
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4_300
    assert out["prediction"].to_pylist() == expected_sum(ids)
    assert summary["throttles"] > 0 and summary["retries"] > summary["throttles"]
    assert endpoint.rows_ok == 4_300


def test_prediction_count_mismatch_names_file_and_rows(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.parquet", numeric_table(300), 300)
    with pytest.raises(PredictionCountMismatchError) as info:
        run(tmp_path, FakeEndpoint(drop_last_prediction=True), concurrency=1)
    # Every request comes back one short; the first to be decoded is named (bodies are encoded by
    # several workers, so with concurrency=1 requests go one at a time, not necessarily in row order).
    named = re.search(r"a\.parquet rows (\d+)-(\d+): expected 100 predictions, got 99", str(info.value))
    assert named is not None, str(info.value)
    first, last = int(named.group(1)), int(named.group(2))
    assert first % 100 == 0 and last == first + 99 and last < 300
    assert not list((tmp_path / "out").glob("part-*"))


def test_if_exists_fail_and_overwrite(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    run(tmp_path, FakeEndpoint())
    with pytest.raises(OutputError, match="if_exists='fail'"):
        run(tmp_path, FakeEndpoint(), if_exists="fail")
    (tmp_path / "out" / "someone-elses.txt").write_text("keep me")
    endpoint = FakeEndpoint()
    summary = run(tmp_path, endpoint, if_exists="overwrite")
    assert endpoint.rows_ok == 4_300 and summary["units_skipped"] == 0
    assert (tmp_path / "out" / "someone-elses.txt").read_text() == "keep me"
    assert len(read_output(tmp_path / "out")) == 4_300


def test_changed_input_is_rescored_and_old_parts_replaced(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    run(tmp_path, FakeEndpoint())
    old = {p.name for p in (tmp_path / "out").glob("part-*")}
    write(tmp_path / "in" / "a.parquet", numeric_table(2_000, start=50_000), 700)
    endpoint = FakeEndpoint()
    run(tmp_path, endpoint)
    assert endpoint.rows_ok == 2_000  # b.parquet was not touched
    ids = read_output(tmp_path / "out")["id"].to_pylist()
    assert sorted(ids) == list(range(10_000, 11_800)) + list(range(50_000, 52_000))
    assert old - {p.name for p in (tmp_path / "out").glob("part-*")}  # stale parts are gone


def test_changed_configuration_is_rescored(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    run(tmp_path, FakeEndpoint())
    endpoint = FakeEndpoint()
    run(tmp_path, endpoint, prediction_columns=["score"])
    assert endpoint.rows_ok == 4_300
    out = read_output(tmp_path / "out")
    assert out.column_names == ["id", "score"] and len(out) == 4_300


@pytest.mark.parametrize(
    ("output", "message"),
    [("in/sub", "overlap"), ("in", "overlap")],
)
def test_output_inside_input_is_refused(tmp_path: Path, output: str, message: str) -> None:
    make_inputs(tmp_path)
    endpoint = FakeEndpoint()
    with pytest.raises(OutputError, match=message):
        run(tmp_path, endpoint, output_uri=str(tmp_path / output))
    assert endpoint.requests == 0


def test_schema_mismatch_names_file_and_column(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.parquet", numeric_table(10), 10)
    bad = numeric_table(10).set_column(2, "f1", pa.array(["x"] * 10))
    write(tmp_path / "in" / "b.parquet", bad, 10)
    with pytest.raises(InputDataError, match=r"column 'f1' is string in .*b\.parquet but double"):
        run(tmp_path, FakeEndpoint())
    assert not (tmp_path / "out").exists()


def test_missing_input_and_empty_prefix(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(InputDataError, match="matched no objects"):
        run(tmp_path, FakeEndpoint())
    summary = run(tmp_path, FakeEndpoint(), allow_empty_input=True)
    assert summary["rows_in"] == 0 and (tmp_path / "out" / "_manifest.json").exists()


def test_non_parquet_object_is_named(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.parquet", numeric_table(10), 10)
    (tmp_path / "in" / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputDataError, match=r"notes\.csv is not a Parquet file"):
        run(tmp_path, FakeEndpoint())


def test_a_column_can_be_both_feature_and_passthrough(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.parquet", numeric_table(250), 100)
    summary = run(tmp_path, FakeEndpoint(), feature_columns=["f0", "f1", "f2"], passthrough_columns=["id", "f0"])
    out = read_output(tmp_path / "out")
    assert out.column_names == ["id", "f0", "prediction"]
    assert out["f0"].to_pylist() == [float(i % 97) for i in range(250)]
    assert out["prediction"].to_pylist() == expected_sum(list(range(250)))
    assert summary["rows_scored"] == 250


def test_a_row_over_the_payload_limit_is_named(tmp_path: Path) -> None:
    table = numeric_table(300)
    text = ["short"] * 300
    text[157] = "x" * 5_000
    write(tmp_path / "in" / "a.parquet", table.append_column("text", pa.array(text)), 100)

    def answer(body: bytes) -> Result:  # the requests before row 157 succeed, whenever they are sent
        return Result(orjson.dumps({"predictions": [0.0] * len(orjson.loads(body)["instances"])}))

    with pytest.raises(InputDataError, match=r"a\.parquet row 157: .*SageMakerInvokeEndpointAsyncOperator"):
        run(
            tmp_path,
            answer,
            feature_columns=["text"],
            content_type="application/json",  # text/csv takes numeric features only
            max_payload_bytes=3_000,
            concurrency=1,
        )
    assert not list((tmp_path / "out").glob("part-*0300-*"))  # the unit holding the row is not committed


def test_failed_overwrite_keeps_the_previous_parts(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    run(tmp_path, FakeEndpoint())
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    with pytest.raises(ConfigurationError):
        run(tmp_path, FailAfter(12), if_exists="overwrite", concurrency=1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    assert set(after) == set(before)  # nothing lost; replaced parts hold the same rows
    assert len(read_output(tmp_path / "out")) == 4_300


def test_error_part_of_a_crashed_unit_goes_when_the_rows_now_score(tmp_path: Path) -> None:
    table = numeric_table(300)
    f0 = table["f0"].to_pylist()
    f0[7] = -1.0
    write(tmp_path / "in" / "p.parquet", table.set_column(1, "f0", pa.array(f0)), 300)
    run(tmp_path, FakeEndpoint(poison=-1.0), max_error_ratio=0.5)
    (data_part,) = (tmp_path / "out").glob("part-*")
    assert (tmp_path / "out" / "_errors" / data_part.name).exists()
    data_part.unlink()  # as if the worker died between the error part and the data part
    run(tmp_path, FakeEndpoint())  # the model now accepts the row
    assert not list((tmp_path / "out" / "_errors").glob("part-*"))
    assert sorted(read_output(tmp_path / "out")["id"].to_pylist()) == list(range(300))


def test_error_part_of_a_crashed_unit_is_rewritten_when_rows_fail_again(tmp_path: Path) -> None:
    table = numeric_table(300)
    f0 = table["f0"].to_pylist()
    f0[7] = -1.0
    write(tmp_path / "in" / "p.parquet", table.set_column(1, "f0", pa.array(f0)), 300)
    run(tmp_path, FakeEndpoint(poison=-1.0), max_error_ratio=0.5)
    (data_part,) = (tmp_path / "out").glob("part-*")
    data_part.unlink()  # as if the worker died between the error part and the data part
    summary = run(tmp_path, FakeEndpoint(poison=-1.0), max_error_ratio=0.5)
    errors = pq.read_table(tmp_path / "out" / "_errors" / data_part.name)
    assert errors["id"].to_pylist() == [7] and summary["rows_failed"] == 1


def test_a_slow_commit_does_not_hold_up_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Complete parts are committed off the writing path: while the first part's commit (its upload)
    is stalled, the other units keep being scored, well past the buffer of 2 x concurrency + 2 requests."""
    from airflow_provider_smrt.scoring import sink

    write(tmp_path / "in" / "a.parquet", numeric_table(3_000), 1_000)  # 3 units of 10 requests
    endpoint = FakeEndpoint()
    original = sink.PartWriter.commit
    seen_while_stalled: list[int] = []

    first = threading.Lock()

    def slow_commit(self: sink.PartWriter, empty_schema: pa.Schema) -> None:
        if first.acquire(blocking=False):  # the first part: wait until the rest is scored (or, if broken, 120 s)
            deadline = time.monotonic() + 120
            while endpoint.requests < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_while_stalled.append(endpoint.requests)
        original(self, empty_schema)

    monkeypatch.setattr(sink.PartWriter, "commit", slow_commit)
    summary = run(tmp_path, endpoint, concurrency=1)
    assert seen_while_stalled == [30]  # all 30 requests went out while the first commit waited
    assert summary["rows_scored"] == 3_000
    assert read_output(tmp_path / "out").column("id").to_pylist() == list(range(3_000))
