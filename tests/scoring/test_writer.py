"""The in-order writer: results posted in any order are written in input order, then committed."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import ModelInputError
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.sink import PartWriter
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.storage import Storage
from airflow_provider_smrt.scoring.tasks import Piece, Task
from airflow_provider_smrt.scoring.writer import InOrderWriter, TaskWriter
from tests.scoring.fakes import numeric_table


def test_results_posted_out_of_order_are_written_in_input_order(tmp_path: Path) -> None:
    table = numeric_table(30)
    pq.write_table(table, tmp_path / "in.parquet")
    storage = Storage()
    file = dataset.read_input_file(storage, storage.stat(str(tmp_path / "in.parquet")))  # type: ignore[arg-type]
    (unit,) = dataset.plan_units(file)
    passthrough = table.select(["id"])
    stats, coordinator = RunStats(), Coordinator()
    buffer = threading.Semaphore(3)
    for _ in range(3):  # one slot per task, as the workers take them
        assert buffer.acquire(blocking=False)
    writer = InOrderWriter(
        open_part=lambda u: PartWriter(
            storage=storage,
            output_uri=str(tmp_path / "out"),
            name="part-x.parquet",
            error_passthrough_schema=passthrough.schema,
        ),
        task_writer=TaskWriter(passthrough_schema=passthrough.schema, stats=stats),
        buffer=buffer,
        coordinator=coordinator,
        stats=stats,
    )

    def task(seq: int) -> Task:
        return Task(
            unit=unit,
            seq=seq,
            offset=10 * seq,
            features=table.slice(10 * seq, 10),
            passthrough=passthrough.slice(10 * seq, 10),
        )

    def predictions(seq: int, rows: int) -> pa.Table:
        return pa.table({"prediction": pa.array([float(10 * seq + i) for i in range(rows)])})

    rejected = ModelInputError("bad", code="ModelError", http_status=424, original_message="row 19 is bad")
    writer.post("begin", unit)
    writer.post("result", (task(2), [Piece(0, predictions(2, 10), "v")], []))
    writer.post("result", (task(0), [Piece(0, predictions(0, 10), "v")], []))
    assert buffer.acquire(blocking=False)  # task 0 is written: its slot is free again
    assert not buffer.acquire(blocking=False)  # task 2 waits for task 1: its slot is still held
    buffer.release()
    writer.post("result", (task(1), [Piece(0, predictions(1, 9), "v")], [(9, 1, rejected)]))
    writer.post("end", (unit, 3))
    writer.close()

    coordinator.raise_if_failed()
    assert all(buffer.acquire(blocking=False) for _ in range(3))  # every slot released once written
    out = pq.read_table(tmp_path / "out" / "part-x.parquet")
    assert out["id"].to_pylist() == [i for i in range(30) if i != 19]
    assert out["prediction"].to_pylist() == [float(i) for i in range(29) if i < 19] + [float(i) for i in range(20, 30)]
    errors = pq.read_table(tmp_path / "out" / "_errors" / "part-x.parquet")
    assert errors["id"].to_pylist() == [19] and errors["error_message"][0].as_py() == "bad"
    assert errors["original_message"][0].as_py() == "row 19 is bad"  # the container's message: here only
    assert (stats.rows_scored, stats.rows_failed, stats.parts_written, stats.variants["v"]) == (29, 1, 1, 3)
    assert stats.part_rows == {"part-x.parquet": (29, 1)}
