"""Helpers of the async-inference tests: run DAGs of ``tests/dags/async_dags.py`` with ``dag.test()``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.airflow_support import dagbag as _dagbag
from tests.airflow_support import ensure_db, xcom
from tests.compat import testable

DAG_FILE = Path(__file__).resolve().parent / "dags" / "async_dags.py"


def dagbag() -> Any:
    return _dagbag(str(DAG_FILE))


@dataclass
class DagTestRun:
    """The outcome of one ``dag.test()`` run."""

    dag_id: str
    run_id: str
    state: str
    states: dict[str, str]
    logs: list[tuple[str, str]] = field(default_factory=list)

    def xcom(self, task_id: str) -> Any:
        return xcom(self.dag_id, self.run_id, task_id)

    def deferred(self, task_id: str) -> bool:
        """True when the task deferred and its trigger ran (dag.test runs it inline, then resumes the task).

        Airflow clears ``next_method`` once the task finishes, so this reads the run's log records: the
        "running trigger in line" record right after this task started.
        """
        current = None
        ran_inline = False
        for _name, message in self.logs:
            if message.startswith("[DAG TEST] running task <TaskInstance: "):
                current = message.split("<TaskInstance: ", 1)[1].split(" ", 1)[0]
            elif message.startswith("[DAG TEST] running trigger in line") and current == f"{self.dag_id}.{task_id}":
                ran_inline = True
        return ran_inline

    def reschedules(self, task_id: str) -> int:
        """How many times the task instance was rescheduled (reschedule-mode sensors)."""
        from airflow.models.taskreschedule import TaskReschedule
        from airflow.utils.session import create_session

        ti = task_instance(self, task_id)
        with create_session() as session:
            return session.query(TaskReschedule).filter(TaskReschedule.ti_id == ti.id).count()


def task_instance(run: DagTestRun, task_id: str) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, map_index=-1)
            .one()
        )
        session.expunge(ti)
        return ti


def run_dag_test(dag_id: str, conf: dict[str, Any] | None = None) -> DagTestRun:
    """Run a DAG of ``tests/dags`` once with ``dag.test()``."""
    ensure_db()
    dag = dagbag().get_dag(dag_id)
    assert dag is not None, f"no DAG {dag_id} in {DAG_FILE}"
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        run = testable(dag).test(run_conf=conf or {})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return DagTestRun(dag_id=dag_id, run_id=run.run_id, state=str(run.state), states=states, logs=handler.records)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.name, record.getMessage()))
        except Exception:  # noqa: BLE001 - a log line that cannot be formatted is not evidence
            pass
