"""Run DAG files through Airflow (``dag.test()``) in tests: database set-up and a small runner."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from tests.compat import dagbag_class, testable

ROOT = Path(__file__).resolve().parent.parent
TEST_DAGS = ROOT / "tests" / "dags"
EXAMPLE_DAGS = ROOT / "example_dags"


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


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, *, folder: Path = TEST_DAGS) -> tuple[str, dict[str, str]]:
    """Run a DAG once with ``dag.test()``; return (dag run state, {task_id[map_index]: state})."""
    ensure_db()
    dag = dagbag(str(folder)).get_dag(dag_id)
    assert dag is not None, f"no DAG {dag_id} in {folder}"
    run = testable(dag).test(run_conf=conf or {})
    states: dict[str, str] = {}
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state)
    return str(run.state), states


def xcom(dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, key=key)
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)
