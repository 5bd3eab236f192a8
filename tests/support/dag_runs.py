"""Run the DAGs of ``tests/dags`` through Airflow (``dag.test()``) and read what a run recorded.

One runner, :func:`run_dag`, and one result, :class:`DagTestResult`: the run's state, every task instance's
state, the log records of the run, and readers of XComs, failure reports and task instances. ``dag.test()``
only runs a DAG defined in a file of the configured DAG folder (``tests/dags``, set by ``tests/conftest.py``);
the example DAGs come in through ``tests/dags/example_dags.py``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import structlog

from tests.support.airflow_compat import dagbag_class, testable

ROOT = Path(__file__).resolve().parents[2]
TEST_DAGS = ROOT / "tests" / "dags"
EXAMPLE_DAGS = ROOT / "example_dags"

#: The reliability DAGs' (``tests/dags/reliability_dags.py``) params a test may change, at their defaults:
#: ``dag.test(run_conf=...)`` updates the DAG's params in place, so a value one run sets would otherwise stick
#: for the next run in the same process. :func:`run_score` starts every run from them.
RELIABILITY_DEFAULTS: dict[str, Any] = {
    "content_type": "text/csv",
    "custom_attributes": "",
    "aws_conn_id": "aws_default",
    "op": {},
}


@cache
def ensure_db() -> None:
    """Create the Airflow metadata database of this test session (AIRFLOW_HOME is set by conftest)."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, env=dict(os.environ), capture_output=True)


@cache
def dagbag(folder: str = str(TEST_DAGS)) -> Any:
    bag = dagbag_class()(dag_folder=folder)
    assert not bag.import_errors, bag.import_errors
    return bag


def get_dag(dag_id: str) -> Any:
    """A DAG of ``tests/dags`` (example DAGs come through ``tests/dags/example_dags.py``)."""
    ensure_db()  # DagBag.get_dag reads the metadata database
    dag = dagbag().get_dag(dag_id)
    assert dag is not None, f"no DAG {dag_id} in {TEST_DAGS}"
    return dag


def example_module(stem: str) -> Any:
    """The module of ``example_dags/<stem>.py`` as loaded by ``tests/dags/example_dags.py``."""
    dagbag()
    return sys.modules[f"smrt_example_dags.{stem}"]


def xcom(dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, key: str = "return_value") -> Any:
    """An XCom value of a task instance (None if absent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, key=key)
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


@dataclass(frozen=True)
class LogLine:
    """One log record emitted during a run (``message`` ends with the record's traceback, if it has one)."""

    logger: str
    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.logger} {self.level} {self.message}"


@dataclass
class DagTestResult:
    """The outcome of one ``dag.test()`` run.

    ``states`` maps ``task_id`` (``task_id[map_index]`` for a mapped instance) to its state; ``logs`` holds the
    records logged during the run (INFO and up, DEBUG of the loggers the run was asked for).
    """

    dag_id: str
    run_id: str
    state: str
    states: dict[str, str]
    logs: list[LogLine] = field(default_factory=list)
    report_dir: Path | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def log_text(self) -> str:
        """Every captured log record, one ``logger LEVEL message`` line each."""
        return "\n".join(str(line) for line in self.logs)

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The XCom value ``key`` of a task instance of this run (None if absent)."""
        return xcom(self.dag_id, self.run_id, task_id, map_index, key=key)

    def error(self, task_id: str) -> str:
        """The exception text the failed task wrote to ``<report_dir>/<task_id>.txt`` (empty if none).

        The DAGs' ``on_failure_callback`` writes it when the run was given a ``report_dir``.
        """
        if self.report_dir is None:
            return ""
        report = self.report_dir / f"{task_id}.txt"
        return report.read_text() if report.exists() else ""

    def deferred(self, task_id: str) -> bool:
        """True when the task deferred and its trigger ran (dag.test runs it inline, then resumes the task).

        Airflow clears ``next_method`` once the task finishes, so this reads the run's log records: the
        "running trigger in line" record right after this task started.
        """
        current = None
        ran_inline = False
        for line in self.logs:
            if line.message.startswith("[DAG TEST] running task <TaskInstance: "):
                current = line.message.split("<TaskInstance: ", 1)[1].split(" ", 1)[0]
            elif line.message.startswith("[DAG TEST] running trigger in line"):
                ran_inline = ran_inline or current == f"{self.dag_id}.{task_id}"
        return ran_inline

    def task_instance(self, task_id: str, map_index: int = -1) -> Any:
        """The task instance of this run, detached from its database session."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=self.dag_id, run_id=self.run_id, task_id=task_id, map_index=map_index)
                .one()
            )
            session.expunge(ti)
            return ti

    def reschedules(self, task_id: str) -> int:
        """How many times the task instance was rescheduled (reschedule-mode sensors)."""
        from airflow.models.taskreschedule import TaskReschedule
        from airflow.utils.session import create_session

        ti = self.task_instance(task_id)
        with create_session() as session:
            return session.query(TaskReschedule).filter(TaskReschedule.ti_id == ti.id).count()

    def task_log_text(self) -> str:
        """The task log files written under AIRFLOW_HOME/logs for this run (empty if none)."""
        root = Path(os.environ["AIRFLOW_HOME"]) / "logs"
        texts = []
        for path in root.rglob("*"):
            if path.is_file() and f"run_id={self.run_id}" in str(path):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


def run_dag(
    dag_id: str,
    conf: dict[str, Any] | None = None,
    *,
    logical_date: datetime | None = None,
    report_dir: Path | None = None,
    debug_loggers: tuple[str, ...] = (),
) -> DagTestResult:
    """Run a DAG of ``tests/dags`` once with ``dag.test()``, capturing every log record of the run.

    ``report_dir`` (emptied of old reports, passed as the ``report_dir`` param) is where the DAGs' failure
    callback writes each failed task's exception text, read back with :meth:`DagTestResult.error`.
    ``debug_loggers`` are logged at DEBUG during the run (the root logger at INFO, the task log's level).
    """
    run_conf = dict(conf or {})
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        for old in report_dir.glob("*.txt"):
            old.unlink()
        run_conf["report_dir"] = str(report_dir)
    kwargs: dict[str, Any] = {"run_conf": run_conf}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    dag = testable(get_dag(dag_id))
    with _capture_logs(debug_loggers) as lines:
        run = dag.test(**kwargs)
    states: dict[str, str] = {}
    for ti in run.get_task_instances():
        states[ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"] = str(ti.state)
    return DagTestResult(
        dag_id=dag_id, run_id=run.run_id, state=str(run.state), states=states, logs=lines, report_dir=report_dir
    )


def run_score(conf: dict[str, Any], report_dir: Path, *, dag_id: str = "r_score") -> DagTestResult:
    """Run a reliability DAG (``tests/dags/reliability_dags.py``) from its default params, with the provider's
    own loggers at DEBUG (they must be clean too); its ``score`` task's exception text is ``run.error("score")``."""
    return run_dag(
        dag_id,
        {**RELIABILITY_DEFAULTS, **conf},
        report_dir=report_dir,
        debug_loggers=("airflow_provider_smrt",),
    )


@contextmanager
def _capture_logs(debug_loggers: tuple[str, ...]) -> Iterator[list[LogLine]]:
    """Collect the run's log records from both logging systems a task writes through.

    The provider's core logs through the standard library (``airflow_provider_smrt.*``), caught by a handler on
    the root logger. An operator's ``self.log`` is Airflow's structlog logger, which never reaches the standard
    library: its events are caught by a processor put first in structlog's chain (Airflow does not cache loggers
    under pytest, so every call reads the current chain). Airflow binds structlog's output stream when it
    configures logging, so pytest's ``capfd`` of a later test does not see those lines; this does.
    """
    handler = _Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    debug = [logging.getLogger(name) for name in debug_loggers]
    debug_levels = [logger.level for logger in debug]
    for logger in debug:
        logger.setLevel(logging.DEBUG)
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[_structlog_recorder(handler.lines), *processors])
    try:
        yield handler.lines
    finally:
        structlog.configure(processors=processors)
        root.removeHandler(handler)
        root.setLevel(level)
        for logger, old in zip(debug, debug_levels, strict=True):
            logger.setLevel(old)


def _structlog_recorder(lines: list[LogLine]) -> Any:
    def record(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        message = str(event_dict.get("event", ""))
        args = event_dict.get("positional_args")
        if args:
            try:
                message = message % args
            except (TypeError, ValueError):
                message = f"{message} {args!r}"
        name = event_dict.get("logger_name") or getattr(logger, "name", None) or "structlog"
        lines.append(LogLine(logger=str(name), level=method_name.upper(), message=message))
        return event_dict

    return record


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[LogLine] = []
        self.setFormatter(logging.Formatter("%(message)s"))  # with the traceback of a record that has one

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not evidence
            message = repr(record.msg)
        self.lines.append(LogLine(logger=record.name, level=record.levelname, message=message))
