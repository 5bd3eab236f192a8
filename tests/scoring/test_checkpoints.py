"""Checkpoints of the units being scored (``_checkpoints/``): written, resumed, merged, invalidated, cleaned up.

Airflow-free, on local files with the in-process endpoint; ``tests/reliability/test_checkpoint_kills.py``
kills real runs through Airflow on S3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import ConfigurationError, ParameterValidationError
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.checkpoints import CHECKPOINTS_DIR, CheckpointPolicy
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage
from tests.scoring.fakes import FakeEndpoint, Result, numeric_table

ROWS, PER_REQUEST, EVERY = 2_000, 20, 5
POISON_IDS = (33, 150, 1_500)
CONCURRENCY = 2
#: the tasks the workers may hold or the writer may not have written yet (the pipeline's buffer slots)
IN_FLIGHT = 2 * CONCURRENCY + 2


class Endpoint(FakeEndpoint):
    """The fake endpoint, failing every request with a non-retryable error once ``fail_after`` were sent."""

    def __init__(self, *, fail_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_after = fail_after

    def __call__(self, body: bytes) -> Result:
        with self._lock:
            dead = self.fail_after is not None and self.requests >= self.fail_after
            if dead:
                self.requests += 1
        if dead:
            raise ConfigurationError("endpoint went away", code="ValidationError", http_status=400)
        return super().__call__(body)


def make_input(root: Path) -> Path:
    table = numeric_table(ROWS)
    f0 = table["f0"].to_pylist()
    for i in POISON_IDS:
        f0[i] = -1.0
    path = root / "in" / "data.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table.set_column(1, "f0", pa.array(f0)), path, row_group_size=500)
    return path


def run(source: Path, output: Path, endpoint: FakeEndpoint, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "passthrough_columns": ["id"],
        "max_rows_per_request": PER_REQUEST,
        "concurrency": CONCURRENCY,
        "max_error_ratio": 0.01,
        "checkpoint_every_requests": EVERY,
        "checkpoint_interval_seconds": None,
        **overrides,
    }
    config = ScoringConfig(endpoint_name="fake", input_uri=str(source), output_uri=str(output), **settings)
    retry = RetryPolicy(max_attempts=1)
    return ScoringJob(config=config, invoke=endpoint, storage=Storage(), retry_policy=retry).run()


def segments(output: Path) -> list[tuple[int, int]]:
    """The ``(first row, end row)`` of every checkpoint segment under ``output``, sorted."""
    found = sorted((output / CHECKPOINTS_DIR).glob("*/seg-*.parquet"))
    return [(int(p.stem.split("-")[1]), int(p.stem.split("-")[2])) for p in found]


def crash(source: Path, output: Path, after: int, **overrides: Any) -> int:
    """Score until the endpoint dies after ``after`` requests; return the rows the checkpoints hold.

    A failed run checkpoints the rows it wrote before it stops: only the results not yet written
    (at most the pipeline's buffer slots) are lost.
    """
    endpoint = Endpoint(poison=-1.0, fail_after=after)
    with pytest.raises(ConfigurationError):
        run(source, output, endpoint, **overrides)
    assert not list(output.glob("part-*")), "the unit was not finished: no part may be committed"
    found = segments(output)
    assert found, "the run left no checkpoint"
    assert [start for start, _ in found] == [0] + [end for _, end in found[:-1]], "segments are contiguous"
    covered = found[-1][1]
    rows = overrides.get("max_rows_per_request", PER_REQUEST)
    lost = endpoint.rows_ok - (covered - sum(1 for i in POISON_IDS if i < covered))
    assert 0 <= lost <= IN_FLIGHT * rows
    return covered


def test_a_rerun_resumes_from_the_checkpoints_and_the_part_equals_one_scored_in_one_go(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    reference = tmp_path / "reference"
    run(source, reference, FakeEndpoint(poison=-1.0))
    assert not (reference / CHECKPOINTS_DIR).exists(), "checkpoints are deleted once the part is committed"

    output = tmp_path / "out"
    covered = crash(source, output, after=50)
    # nothing staged is data: a dataset reader of the output sees no file at all
    assert pads.dataset(str(output), format="parquet").files == []

    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(source, output, endpoint)
    poisoned_after = sum(1 for i in POISON_IDS if i >= covered)
    assert endpoint.rows_ok == ROWS - covered - poisoned_after, "rows a checkpoint holds were sent again"
    assert summary["rows_resumed_from_checkpoints"] == covered
    assert (summary["rows_scored"], summary["rows_failed"]) == (ROWS - len(POISON_IDS), len(POISON_IDS))
    assert not (output / CHECKPOINTS_DIR).exists()

    (part,) = (p.name for p in reference.glob("part-*"))
    assert pq.read_table(output / part).equals(pq.read_table(reference / part))
    assert pq.read_table(output / "_errors" / part).equals(pq.read_table(reference / "_errors" / part))


def test_one_row_per_request_loses_only_what_was_in_flight(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "out"
    covered = crash(source, output, after=300, max_rows_per_request=1, checkpoint_every_requests=64)
    endpoint = FakeEndpoint(poison=-1.0)
    run(source, output, endpoint, max_rows_per_request=1, checkpoint_every_requests=64)
    assert endpoint.requests == ROWS - covered
    ids = pq.read_table(next(output.glob("part-*")))["id"].to_pylist()
    assert ids == [i for i in range(ROWS) if i not in POISON_IDS]


def test_checkpoints_of_another_configuration_are_not_used_and_are_deleted(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "out"
    crash(source, output, after=40)
    old = {p.parent.name for p in (output / CHECKPOINTS_DIR).glob("*/seg-*")}
    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(source, output, endpoint, prediction_columns=["score"])  # another configuration hash
    assert endpoint.requests >= ROWS // PER_REQUEST and summary["rows_resumed_from_checkpoints"] == 0
    assert not (output / CHECKPOINTS_DIR).exists()
    assert {p.stem for p in output.glob("part-*")}.isdisjoint(old)


def test_a_changed_input_invalidates_its_checkpoints(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "out"
    crash(source, output, after=40)
    table = pq.read_table(source)
    pq.write_table(table.slice(0, ROWS - 1), source, row_group_size=500)  # another size and ETag
    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(source, output, endpoint)
    assert summary["rows_resumed_from_checkpoints"] == 0 and summary["rows_in"] == ROWS - 1
    assert endpoint.rows_ok == ROWS - 1 - len(POISON_IDS)
    assert not (output / CHECKPOINTS_DIR).exists()


def test_overwrite_ignores_and_deletes_checkpoints(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "out"
    crash(source, output, after=40)
    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(source, output, endpoint, if_exists="overwrite")
    assert summary["rows_resumed_from_checkpoints"] == 0
    assert endpoint.rows_ok == ROWS - len(POISON_IDS)
    assert not (output / CHECKPOINTS_DIR).exists()


def test_checkpoints_left_behind_a_committed_part_are_deleted_without_rescoring(tmp_path: Path) -> None:
    """A kill between the part's commit and the deletion of its checkpoints: the rerun only cleans up."""
    source = make_input(tmp_path)
    output = tmp_path / "out"
    run(source, output, FakeEndpoint(poison=-1.0))
    (part,) = (p.stem for p in output.glob("part-*"))
    leftover = output / CHECKPOINTS_DIR / part / "seg-0000000000-0000000100.parquet"
    leftover.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), leftover)
    endpoint = FakeEndpoint(poison=-1.0)
    summary = run(source, output, endpoint)
    assert endpoint.requests == 0 and summary["units_skipped"] == 1
    assert not (output / CHECKPOINTS_DIR).exists()


def test_without_checkpoints_a_crash_leaves_none(tmp_path: Path) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(ConfigurationError):
        run(
            source,
            output,
            Endpoint(poison=-1.0, fail_after=50),
            checkpoint_every_requests=None,
            checkpoint_interval_seconds=None,
        )
    assert not (output / CHECKPOINTS_DIR).exists()


def test_the_policy_and_its_validation() -> None:
    policy = CheckpointPolicy(every_seconds=10.0, every_requests=64)
    assert not policy.due(requests=0, since=0.0, now=100.0)  # nothing new to checkpoint
    assert policy.due(requests=64, since=0.0, now=1.0)
    assert not policy.due(requests=63, since=0.0, now=9.9)
    assert policy.due(requests=1, since=0.0, now=10.0)
    assert not CheckpointPolicy(every_seconds=None, every_requests=None).enabled
    base = {"endpoint_name": "e", "input_uri": "/in/", "output_uri": "/out/"}
    for bad in ({"checkpoint_every_requests": 0}, {"checkpoint_interval_seconds": 0}):
        with pytest.raises(ParameterValidationError, match="checkpoint_"):
            ScoringConfig(**base, **bad).validate()  # type: ignore[arg-type]
