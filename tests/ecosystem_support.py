"""Helpers of the ecosystem tests (example DAGs, assets, links, lineage): run DAGs and read what they recorded.

The example DAGs are exposed to ``dag.test()`` by ``tests/dags/example_dags.py`` (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.airflow_support import TEST_DAGS, dagbag, ensure_db, xcom
from tests.s3_support import list_keys, read_parts

__all__ = ["DagRunResult", "delete_prefix", "example_module", "get_dag", "list_keys", "read_parts", "run_dag"]


@dataclass
class DagRunResult:
    """The outcome of one ``dag.test()`` run."""

    dag_id: str
    run_id: str
    state: str
    states: dict[str, str]

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The XCom value ``key`` of a task instance of this run (None if absent)."""
        return xcom(self.dag_id, self.run_id, task_id, map_index, key=key)


def get_dag(dag_id: str) -> Any:
    ensure_db()  # DagBag.get_dag reads the metadata database
    dag = dagbag(str(TEST_DAGS)).get_dag(dag_id)
    assert dag is not None, f"no DAG {dag_id} (example DAGs come through tests/dags/example_dags.py)"
    return dag


def example_module(stem: str) -> Any:
    """The module of ``example_dags/<stem>.py`` as loaded by ``tests/dags/example_dags.py``."""
    import sys

    dagbag(str(TEST_DAGS))
    return sys.modules[f"smrt_example_dags.{stem}"]


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, *, logical_date: datetime | None = None) -> DagRunResult:
    """Run a DAG once with ``dag.test()`` (for one logical date if given)."""
    ensure_db()
    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    run = get_dag(dag_id).test(**kwargs)
    states = {}
    for ti in run.get_task_instances():
        states[ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"] = str(ti.state)
    return DagRunResult(dag_id=dag_id, run_id=run.run_id, state=str(run.state), states=states)


def delete_prefix(s3: Any, uri: str) -> None:
    """Delete every object under an ``s3://`` prefix."""
    bucket, prefix = uri[5:].split("/", 1)
    for key in list_keys(s3, uri):
        s3.delete_object(Bucket=bucket, Key=prefix + key)
