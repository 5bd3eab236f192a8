"""An Airflow deployment for the scale tests: its own AIRFLOW_HOME, SQLite, servers on loopback.

``Deployment(home, dags_folder=...)`` runs CLI commands and starts servers (API server, scheduler, DAG
processor, Celery workers...) as subprocesses in their own sessions; ``kill(name)`` SIGKILLs a server
and every process below it (task processes included). Everything it starts is killed by ``stop()``.
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
from datetime import datetime
from pathlib import Path
from typing import Any

START_TIMEOUT = 300.0  # a loaded CI machine starts the API server slowly
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

    def __init__(
        self,
        home: Path,
        *,
        dags_folder: Path,
        executor: str = "LocalExecutor",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.port = _free_port()
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": executor,
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
        env.update(extra_env or {})
        self.env = env

    def cli(self, *args: str, timeout: float = 180.0, retry_locked: bool = False) -> str:
        """Run ``airflow <args>``; with ``retry_locked``, again (5 attempts) while SQLite reports a lock conflict.

        SQLite refuses at once (whatever the busy timeout) a transaction that read before another
        connection wrote and then tries to write; the command rolled back, so running it again is safe.
        """
        airflow = Path(sys.executable).parent / "airflow"
        for attempt in range(5 if retry_locked else 1):
            result = subprocess.run(
                [str(airflow), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
            if result.returncode == 0 or "database is locked" not in result.stderr:
                break
            time.sleep(1.0 + attempt)
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

    def backfill(self, dag_id: str, start: datetime, end: datetime, conf: dict[str, Any]) -> int:
        """Create a backfill with no scheduler running; return its id.

        A scheduler running beside ``backfill create`` died once in CI on SQLAlchemy's ``ObjectDeletedError``
        for a backfill run (these DAGs have no scheduled runs). The one thing here that deletes runs is that
        command's clean-up after a lock conflict part way (``_cleanup_partial_backfill`` in Airflow's
        ``models/backfill.py``), which ``retry_locked`` then retries. With the scheduler stopped, no
        scheduler can hold a run the clean-up deletes; it starts again once the backfill exists.
        """
        scheduler = "scheduler" in self.servers
        if scheduler:
            self.kill("scheduler")
        try:
            self.cli(
                "backfill",
                "create",
                "--dag-id",
                dag_id,
                "--from-date",
                start.strftime("%Y-%m-%d"),
                "--to-date",
                end.strftime("%Y-%m-%d"),
                "--max-active-runs",
                "3",
                "--dag-run-conf",
                json.dumps(conf),
                retry_locked=True,
            )
        finally:
            if scheduler:
                self.start("scheduler", "scheduler")
        (backfill,) = self.query("SELECT id FROM backfill WHERE dag_id = ? AND completed_at IS NULL", dag_id)
        return int(backfill[0])

    def wait_for_backfill(self, backfill: int, runs: int) -> dict[str, str]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            self.check_alive()
            states = self.run_states(backfill)
            finished = len(states) == runs and all(state in ("success", "failed") for state in states.values())
            # the scheduler marks the backfill completed after its runs (another may start only then)
            if finished and self.query("SELECT completed_at FROM backfill WHERE id = ?", backfill)[0][0]:
                return states
            assert time.monotonic() < deadline, f"the backfill did not finish within {RUN_TIMEOUT:.0f} s: {states}"
            time.sleep(1.0)

    def boot(self, pools: dict[str, int]) -> None:
        """Create the database and the pools, parse the DAGs, then start the API server, DAG processor and
        scheduler."""
        self.cli("db", "migrate", timeout=300)
        for pool, slots in pools.items():
            self.cli("pools", "set", pool, str(slots), "the endpoint's capacity")
        self.cli("dags", "reserialize", timeout=300)  # the DAGs are known before the first run
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
        self.wait_for_api()
        self.start("dag-processor", "dag-processor")
        self.start("scheduler", "scheduler")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run_id = f"manual__{time.time_ns()}"
        self.cli("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf), retry_locked=True)
        return run_id

    def wait_for_run(self, run_id: str) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            self.check_alive()
            rows = self.query("SELECT state FROM dag_run WHERE run_id = ?", run_id)
            if rows and rows[0][0] in ("success", "failed"):
                return str(rows[0][0])
            assert time.monotonic() < deadline, f"the run {run_id} did not finish within {RUN_TIMEOUT:.0f} s"
            time.sleep(1.0)

    def stop(self) -> None:
        for name in list(self.servers):
            self.kill(name)
