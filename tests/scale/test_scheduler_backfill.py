"""Backfills through a real Airflow deployment: API server, scheduler, DAG processor, LocalExecutor.

``dag.test()`` runs mapped tasks one after another and enforces no pool; here the scheduler runs
``airflow backfill create`` over 7 daily partitions of ``tests/scale/dags/scale_dags.py`` (3 runs at
once, each run's partition split into 2 shards scored by mapped tasks) on SQLite, against the local
stack. Every server is started by the ``deployment`` fixture on loopback ports and killed on teardown.

- every partition is scored exactly once (rows counted at the endpoint), and the endpoint's peak of
  requests in flight stays within the pool's slots while 3 tasks score at once;
- SIGKILL of the scheduler and every task process mid-backfill, then a restart: the backfill completes,
  each row once in the output, and only rows of parts not committed before the kill are sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.s3_support import list_keys, put_parquet, read_parts
from tests.scoring.fakes import numeric_table

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dags"))
import scale_dags  # noqa: E402 - the DAG's constants (its folder is the deployment's DAG folder)

PARTITIONS = 7
FILES_PER_PARTITION, ROWS_PER_FILE = 8, 250  # one work unit per file; 5 requests of 50 rows per unit
ROWS_PER_PARTITION = FILES_PER_PARTITION * ROWS_PER_FILE
TOTAL = PARTITIONS * ROWS_PER_PARTITION
#: the endpoint takes this many requests at once: the pool holds that many slots, 3 tasks' worth
POOL_SLOTS = 3 * scale_dags.CONCURRENCY
LATENCY_MS = 300
START_TIMEOUT = 120.0
RUN_TIMEOUT = 420.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server, its process group and every descendant (task processes included)."""
    pids = _descendants(process.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in [process.pid, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


class Deployment:
    """An Airflow deployment in its own AIRFLOW_HOME (SQLite, LocalExecutor with parallelism 4)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.port = _free_port()
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # A writer waits up to 60 s for the lock (the CLI, the scheduler and the API server share the file).
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}?timeout=60",
                "AIRFLOW__API_AUTH__JWT_SECRET": "smrt-scale-tests-jwt-secret-0123456789",
                "AIRFLOW__API__SECRET_KEY": "smrt-scale-tests-secret-key",
                # A task whose process died is noticed after this many seconds (default 300).
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                # Tasks of a dead scheduler are adopted or reset after these (defaults 300 s and 30 s).
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            }
        )
        self.env = env

    def cli(self, *args: str, timeout: float = 180.0) -> str:
        airflow = Path(sys.executable).parent / "airflow"
        result = subprocess.run(
            [str(airflow), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"airflow {' '.join(args)} failed: {result.stderr[-3000:]}"
        return result.stdout

    def start(self, name: str, *args: str) -> None:
        airflow = Path(sys.executable).parent / "airflow"
        log = (self.home / f"{name}.log").open("ab")
        self.servers[name] = subprocess.Popen(
            [str(airflow), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        process = self.servers.pop(name, None)
        if process is not None:
            _kill_tree(process)

    def wait_for_api(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the API server did not answer within {START_TIMEOUT:.0f} s"
            time.sleep(0.5)

    def check_alive(self) -> None:
        for name, process in self.servers.items():
            assert process.poll() is None, f"airflow {name} exited with {process.returncode}: {self.log_tail(name)}"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def run_states(self, backfill: int) -> dict[str, str]:
        rows = self.query("SELECT run_id, state FROM dag_run WHERE backfill_id = ?", backfill)
        return {run_id: state for run_id, state in rows}

    def running_scores(self) -> int:
        rows = self.query("SELECT count(*) FROM task_instance WHERE task_id = 'score' AND state = 'running'")
        return int(rows[0][0])

    def backfill(self, start: datetime, end: datetime, conf: dict[str, Any]) -> int:
        self.cli(
            "backfill",
            "create",
            "--dag-id",
            scale_dags.DAG_ID,
            "--from-date",
            start.strftime("%Y-%m-%d"),
            "--to-date",
            end.strftime("%Y-%m-%d"),
            "--max-active-runs",
            "3",
            "--dag-run-conf",
            json.dumps(conf),
        )
        return int(self.query("SELECT max(id) FROM backfill")[0][0])

    def wait_for_backfill(self, backfill: int, runs: int) -> dict[str, str]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            self.check_alive()
            states = self.run_states(backfill)
            if len(states) == runs and all(state in ("success", "failed") for state in states.values()):
                return states
            assert time.monotonic() < deadline, f"the backfill did not finish within {RUN_TIMEOUT:.0f} s: {states}"
            time.sleep(1.0)


@pytest.fixture(scope="module")
def deployment(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow-deployment")
    deployment = Deployment(home)
    try:
        deployment.cli("db", "migrate", timeout=300)
        deployment.cli("pools", "set", scale_dags.POOL, str(POOL_SLOTS), "the endpoint's capacity")
        deployment.cli("dags", "reserialize", timeout=300)  # the DAG is known before the first backfill
        deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(deployment.port))
        deployment.wait_for_api()
        deployment.start("dag-processor", "dag-processor")
        deployment.start("scheduler", "scheduler")
        yield deployment
    finally:
        for name in list(deployment.servers):
            deployment.kill(name)


def _seed(s3: Any, root: str, days: list[datetime], first_id: int) -> dict[str, list[int]]:
    """Write each day's partition; return the ids per ``ds``."""
    ids: dict[str, list[int]] = {}
    start = first_id
    for day in days:
        ds = day.strftime("%Y-%m-%d")
        for index in range(FILES_PER_PARTITION):
            put_parquet(
                s3, f"{root}features/ds={ds}/part-{index:03d}.parquet", numeric_table(ROWS_PER_FILE, start=start)
            )
            start += ROWS_PER_FILE
        ids[ds] = list(range(start - ROWS_PER_PARTITION, start))
    return ids


def _etag(s3: Any, uri: str) -> str:
    bucket, key = uri[len("s3://") :].split("/", 1)
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"])


def _manifests(s3: Any, root: str) -> list[str]:
    return [key for key in list_keys(s3, root + "predictions/") if "/_manifest" in key]


def _days(first: datetime) -> list[datetime]:
    return [first + timedelta(days=offset) for offset in range(PARTITIONS)]


def _conf(endpoint: str, root: str) -> dict[str, str]:
    return {
        "endpoint_name": endpoint,
        "features_root": root + "features",
        "predictions_root": root + "predictions",
    }


def _check_output(s3: Any, root: str, ids: dict[str, list[int]]) -> None:
    for ds, expected in ids.items():
        out = read_parts(s3, f"{root}predictions/ds={ds}/")
        assert sorted(out["id"].to_pylist()) == expected, f"ds={ds}: rows lost or duplicated"
        manifests = [key for key in list_keys(s3, f"{root}predictions/ds={ds}/") if key.startswith("_manifest")]
        assert manifests == [f"_manifest-{index:05d}.json" for index in range(scale_dags.SHARDS)]


def _max_overlap(deployment: Deployment, backfill: int) -> int:
    """The most ``score`` tasks of the backfill running at one time, from their recorded start and end."""
    rows = deployment.query(
        "SELECT ti.start_date, ti.end_date FROM task_instance ti JOIN dag_run dr ON ti.dag_id = dr.dag_id "
        "AND ti.run_id = dr.run_id WHERE dr.backfill_id = ? AND ti.task_id = 'score'",
        backfill,
    )
    events = []
    for start, end in rows:
        events += [(datetime.fromisoformat(start), 1), (datetime.fromisoformat(end), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_backfill_scores_each_partition_once_within_the_pool(
    deployment: Deployment,
    s3_client: Any,
    s3_prefix: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
) -> None:
    endpoint = make_endpoint("sum", faults={"latency_ms": LATENCY_MS})
    days = _days(datetime(2026, 1, 1))
    ids = _seed(s3_client, s3_prefix, days, first_id=0)
    backfill = deployment.backfill(days[0], days[-1], _conf(endpoint, s3_prefix))
    states = deployment.wait_for_backfill(backfill, PARTITIONS)
    assert set(states.values()) == {"success"}, (states, deployment.log_tail("scheduler"))
    _check_output(s3_client, s3_prefix, ids)
    stats = endpoint_stats(endpoint)
    assert stats["rows_ok"] == TOTAL  # every partition scored exactly once
    # The pool is the lever: at most POOL_SLOTS // CONCURRENCY tasks score at once, so the endpoint never
    # sees more requests in flight than the pool's slots, while 3 tasks score together.
    assert stats["max_concurrent"] <= POOL_SLOTS, stats
    assert _max_overlap(deployment, backfill) >= 3


def test_killed_scheduler_and_tasks_resume_without_loss_or_duplicates(
    deployment: Deployment,
    s3_client: Any,
    s3_prefix: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
) -> None:
    endpoint = make_endpoint("sum", faults={"latency_ms": LATENCY_MS})
    days = _days(datetime(2026, 2, 1))
    ids = _seed(s3_client, s3_prefix, days, first_id=1_000_000)
    backfill = deployment.backfill(days[0], days[-1], _conf(endpoint, s3_prefix))

    def committed() -> list[str]:
        return [key for key in list_keys(s3_client, s3_prefix + "predictions/") if "/part-" in key]

    deadline = time.monotonic() + RUN_TIMEOUT
    while not (len(committed()) >= FILES_PER_PARTITION and deployment.running_scores() > 0):
        deployment.check_alive()
        assert time.monotonic() < deadline, "the backfill made no progress"
        time.sleep(0.3)
    deployment.kill("scheduler")  # the scheduler, its executor's workers and every task process
    parts_at_kill = committed()
    manifests_at_kill = {
        key: _etag(s3_client, s3_prefix + "predictions/" + key) for key in _manifests(s3_client, s3_prefix)
    }
    assert len(parts_at_kill) < PARTITIONS * FILES_PER_PARTITION, "the backfill finished before the kill"
    deployment.start("scheduler", "scheduler")

    states = deployment.wait_for_backfill(backfill, PARTITIONS)
    assert set(states.values()) == {"success"}, (states, deployment.log_tail("scheduler"))
    _check_output(s3_client, s3_prefix, ids)
    resent = endpoint_stats(endpoint)["rows_ok"] - TOTAL
    unfinished = TOTAL - len(parts_at_kill) * ROWS_PER_FILE
    # Only rows of parts not committed at the kill were scored again; finished shards were not rerun.
    assert 0 <= resent <= unfinished, (resent, unfinished)
    for key, etag in manifests_at_kill.items():
        assert _etag(s3_client, s3_prefix + "predictions/" + key) == etag, f"{key} was written again"
