"""Tests of airflow_provider_smrt.scoring.codecs.offload: request bodies encoded in child processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.scoring.codecs import offload
from airflow_provider_smrt.scoring.codecs.encoders import CsvEncoder, JsonEncoder, UserEncoder
from airflow_provider_smrt.scoring.codecs.offload import EncoderProcesses, offloadable, resolve_encode_processes
from tests.scoring.codecs.tables import mixed_table


def _features(rows: int = 2_000) -> pa.Table:
    rng = np.random.default_rng(7)
    columns = {f"f{i}": rng.standard_normal(rows) for i in range(20)}
    columns["n"] = pa.array(rng.integers(-5, 5, rows))
    columns["text"] = pa.array([f'say "hi", {i}' if i % 3 else f"row {i}" for i in range(rows)])
    columns["flag"] = pa.array([i % 2 == 0 for i in range(rows)])
    return pa.table(columns)


@pytest.fixture
def csv_processes() -> Iterator[EncoderProcesses]:
    with EncoderProcesses(CsvEncoder(), 2) as processes:
        deadline = time.monotonic() + 60
        while processes._started < 2:  # both children in the free queue, so that calls take turns on them
            assert time.monotonic() < deadline, "the encoder processes did not start"
            time.sleep(0.01)
        yield processes


ENCODERS = [
    CsvEncoder(),
    CsvEncoder(header=True),
    JsonEncoder(lines=False),
    JsonEncoder(lines=True),
    JsonEncoder(lines=False, record_format="object"),
]


@pytest.mark.parametrize("encoder", ENCODERS, ids=lambda e: f"{type(e).__name__}-{vars(e)}")
def test_bodies_are_the_encoders_byte_for_byte(encoder: CsvEncoder | JsonEncoder) -> None:
    table = _features()
    numeric = table.select([f"f{i}" for i in range(20)])
    with EncoderProcesses(encoder, 1) as processes:
        assert processes.wait_started()
        for features in (table, numeric):
            for offset in range(0, table.num_rows, 500):
                piece = features.slice(offset, 500)
                assert processes(piece) == encoder(piece)
        assert (processes.offloaded, processes.inline) == (8, 0)


def test_types_an_ipc_batch_does_not_carry_alone_are_encoded_in_the_task(csv_processes: EncoderProcesses) -> None:
    table = mixed_table()  # dictionary, decimal, timestamp and date columns
    assert csv_processes(table) == CsvEncoder()(table)
    assert csv_processes(table.slice(0, 0)) == b""
    assert (csv_processes.offloaded, csv_processes.inline) == (0, 2)


def test_a_body_the_child_cannot_encode_raises_the_encoders_own_error() -> None:
    encoder = JsonEncoder(lines=False, record_format="object")
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["x", "x"])
    with pytest.raises(InputDataError) as inline_error:
        encoder(table)
    with EncoderProcesses(encoder, 1) as processes:
        assert processes.wait_started()
        with pytest.raises(InputDataError) as error:
            processes(table)
        assert str(error.value) == str(inline_error.value)
        good = table.rename_columns(["x", "y"])
        assert processes(good) == encoder(good)  # the child goes on after a failure
        assert (processes.offloaded, processes.inline) == (1, 1)


def test_a_child_that_exits_is_dropped_and_the_last_one_leaves_the_work_to_the_task(
    csv_processes: EncoderProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    table = _features(1_000)
    expected = CsvEncoder()(table)
    caplog.set_level(logging.WARNING, logger=offload.__name__)
    first, second = csv_processes._children
    first.process.kill()
    first.process.wait()
    bodies = [csv_processes(table) for _ in range(4)]  # the call that finds the dead child encodes here
    assert bodies == [expected] * 4
    assert (csv_processes.offloaded, csv_processes.inline) == (3, 1)
    second.process.kill()
    second.process.wait()
    assert [csv_processes(table) for _ in range(3)] == [expected] * 3
    assert (csv_processes.offloaded, csv_processes.inline) == (3, 4)  # the first finds the dead child
    assert not csv_processes.wait_started(timeout=0)
    assert [r.getMessage() for r in caplog.records] == [
        "an encoder process exited (code -9); the others go on",
        "an encoder process exited (code -9); request bodies are encoded in the task's process from now on; "
        "a child's error, if any, is in this log; encode_processes=0 encodes in the task's process from the start",
    ]
    csv_processes.inline = csv_processes.offloaded = 0
    assert csv_processes(table) == expected
    assert (csv_processes.offloaded, csv_processes.inline) == (0, 1)


def test_close_ends_every_child_and_later_bodies_are_encoded_in_the_task() -> None:
    processes = EncoderProcesses(CsvEncoder(), 2)
    assert processes.wait_started()
    table = _features(100)
    assert processes(table) == CsvEncoder()(table)
    processes.close()
    assert all(child.process.returncode == 0 for child in processes._children)
    assert processes(table) == CsvEncoder()(table)
    assert (processes.offloaded, processes.inline) == (1, 1)


def test_a_child_that_does_not_start_leaves_the_work_to_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "__name__", "airflow_provider_smrt.no_such_module")  # the child's -m fails
    with EncoderProcesses(CsvEncoder(), 1) as processes:
        assert not processes.wait_started()
        table = _features(10)
        assert processes(table) == CsvEncoder()(table)
        assert (processes.offloaded, processes.inline) == (0, 1)


def test_only_the_built_in_encoders_are_offloaded() -> None:
    assert offloadable(CsvEncoder()) and offloadable(JsonEncoder(lines=True))
    assert not offloadable(UserEncoder(lambda table: b"", name="mine"))


def test_encode_processes_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_encode_processes(0) == 0
    assert resolve_encode_processes(3) == 3
    monkeypatch.setattr(offload.os, "sched_getaffinity", lambda pid: {0, 1})
    assert resolve_encode_processes("auto") == 1
    monkeypatch.setattr(offload.os, "sched_getaffinity", lambda pid: {0})
    assert resolve_encode_processes("auto") == 0
    for bad in (-1, 65, True, "two", 1.5, None):
        with pytest.raises(ParameterValidationError, match=r"encode_processes=.* must be 'auto' or an integer"):
            resolve_encode_processes(bad)


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie of its new parent
    except FileNotFoundError:
        return True


def test_children_exit_when_the_task_process_is_killed() -> None:
    code = (
        "import sys; from airflow_provider_smrt.scoring.codecs.encoders import CsvEncoder; "
        "from airflow_provider_smrt.scoring.codecs.offload import EncoderProcesses; "
        "p = EncoderProcesses(CsvEncoder(), 2); assert p.wait_started(); "
        "print(*[c.process.pid for c in p._children], flush=True); sys.stdin.read()"
    )
    task = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    assert task.stdout is not None
    children = [int(pid) for pid in task.stdout.readline().split()]
    assert len(children) == 2 and not any(_exited(pid) for pid in children)
    os.kill(task.pid, signal.SIGKILL)  # the task only, as Airflow's supervisor kills it: not its group
    task.wait()
    deadline = time.monotonic() + 60
    while not all(_exited(pid) for pid in children):
        assert time.monotonic() < deadline, "an encoder process outlived its killed parent"
        time.sleep(0.05)


def test_the_child_runs_on_the_tasks_sys_path_without_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend("/opt/airflow/dags")
    command = offload._child_command()
    assert command[:2] == [sys.executable, "-c"] and command[-1] == offload.__name__
    assert json.loads(command[3]) == sys.path
    for name in (
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AIRFLOW_CONN_AWS_DEFAULT",
        "AIRFLOW_VAR_KEY",
        "MY_TOKEN",
    ):
        monkeypatch.setenv(name, "sensitive")
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    env = offload._child_environment()
    assert "sensitive" not in env.values()
    assert env["ARROW_DEFAULT_MEMORY_POOL"] == "system" and env["PATH"] == os.environ["PATH"]


def test_a_child_out_of_step_is_stopped_and_the_body_encoded_here(
    csv_processes: EncoderProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=offload.__name__)
    table = _features(100)
    first, second = csv_processes._children
    offload._send(first.stdin, b"?", b"")  # an unknown frame: the child stops reading and exits
    bodies = [csv_processes(table) for _ in range(3)]
    assert bodies == [CsvEncoder()(table)] * 3
    assert (csv_processes.offloaded, csv_processes.inline) == (2, 1)
    assert first.process.returncode is not None and second.process.poll() is None
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith("the others go on")
