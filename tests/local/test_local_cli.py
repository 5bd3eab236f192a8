"""The ``smrt-local`` CLI and :class:`LocalStack`: environment, exit codes, clean stops, demo data."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.local.__main__ import main
from airflow_provider_smrt.local.stack import LocalStack

CLI = [sys.executable, "-m", "airflow_provider_smrt.local"]
ENV_NAMES = (
    "AIRFLOW_CONN_AWS_DEFAULT",
    "SMRT_S3_ENDPOINT_URL",
    "SMRT_RUNTIME_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_run_passes_environment_and_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys, urllib.request\n"
        f"env = {{k: os.environ.get(k) for k in {ENV_NAMES!r}}}\n"
        "env['health'] = json.load(urllib.request.urlopen(env['SMRT_RUNTIME_ENDPOINT_URL'] + '/_local/health'))\n"
        f"open({str(out)!r}, 'w').write(json.dumps(env))\n"
        "sys.exit(7)\n"
    )
    result = subprocess.run([*CLI, "run", "--", sys.executable, "-c", script], timeout=90, capture_output=True)
    assert result.returncode == 7, result.stderr.decode()[-2000:]
    env = json.loads(out.read_text())
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["extra"]["service_config"] == {
        "s3": {"endpoint_url": env["SMRT_S3_ENDPOINT_URL"]},
        "sagemaker-runtime": {"endpoint_url": env["SMRT_RUNTIME_ENDPOINT_URL"]},
    }
    assert (conn["conn_type"], conn["login"], conn["password"]) == ("aws", "testing", "testing")
    assert {"smrt-demo", "smrt-sum"} <= set(env["health"]["endpoints"])
    assert not _listening(env["SMRT_S3_ENDPOINT_URL"])
    assert not _listening(env["SMRT_RUNTIME_ENDPOINT_URL"])


def test_run_zero_exit_code() -> None:
    result = subprocess.run([*CLI, "run", "--", sys.executable, "-c", "pass"], timeout=90, capture_output=True)
    assert result.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_up_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    state_file = tmp_path / "state.json"
    process = subprocess.Popen([*CLI, "up", "--state-file", str(state_file)], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        assert state["pid"] == process.pid
        moto_pids = _children(process.pid)
        assert len(moto_pids) == 1 and _alive(moto_pids[0])
        assert _listening(state["s3_endpoint_url"]) and _listening(state["runtime_endpoint_url"])
        process.send_signal(sig)
        code = process.wait(timeout=30)
        assert _wait_gone(moto_pids[0]), "moto's S3 server outlived the stack"
        assert not _listening(state["runtime_endpoint_url"])
        if sig == signal.SIGTERM:
            assert code == 0
            assert not state_file.exists()
            assert b"export AIRFLOW_CONN_AWS_DEFAULT=" in (process.stdout.read() if process.stdout else b"")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stack_stops_on_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), LocalStack() as stack:
        moto_pid = stack._s3.pid
        runtime_url = stack.runtime_endpoint_url
        assert moto_pid is not None and _alive(moto_pid)
        raise RuntimeError("boom")
    assert _wait_gone(moto_pid)
    assert not _listening(runtime_url)


def test_seed_demo(local_stack: Any, s3_client: Any, s3_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"{s3_prefix}diabetes/"
    code = main(
        ["seed-demo", "--s3-endpoint-url", local_stack.s3_endpoint_url, "--uri", uri, "--rows", "1000", "--files", "3"]
    )
    assert code == 0
    assert "1000 rows" in capsys.readouterr().out
    bucket, _, prefix = uri[5:].partition("/")
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert len(keys) == 3
    tables = []
    for key in keys:
        data = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        parquet = pq.ParquetFile(io.BytesIO(data))
        assert parquet.metadata.num_row_groups > 1
        tables.append(parquet.read())
    table = pa.concat_tables(tables)
    assert table.num_rows == 1000
    assert table.schema.field("patient_id").type == pa.int64()
    assert table.schema.field("visit_date").type == pa.date32()
    assert table.column_names[2:] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert table.column("patient_id").to_pylist() == list(range(1000))
    assert os.environ["SMRT_S3_ENDPOINT_URL"] == local_stack.s3_endpoint_url
