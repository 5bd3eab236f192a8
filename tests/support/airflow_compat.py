"""Test-side imports whose home moved between Airflow 3.0 and the newest 3.x (``scripts/test-oldest`` runs 3.0)."""

from __future__ import annotations

from typing import Any


def dagbag_class() -> Any:
    """``DagBag``: ``airflow.dag_processing.dagbag`` since 3.1, ``airflow.models.dagbag`` before."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    return DagBag


def redact(value: Any, name: str | None = None) -> Any:
    """The secrets masker's ``redact``."""
    try:
        from airflow.sdk._shared.secrets_masker import redact as _redact
    except ImportError:
        from airflow.sdk.execution_time.secrets_masker import redact as _redact
    return _redact(value, name)


def import_string(path: str) -> Any:
    """Import a dotted ``module.attribute`` path."""
    try:
        from airflow.sdk._shared.module_loading import import_string as _import_string
    except ImportError:
        from airflow.utils.module_loading import import_string as _import_string
    return _import_string(path)


def serde() -> tuple[Any, Any]:
    """Airflow's ``(serialize, deserialize)``."""
    try:
        from airflow.sdk.serde import deserialize, serialize
    except ImportError:
        from airflow.serialization.serde import deserialize, serialize
    return serialize, deserialize


def testable(dag: Any) -> Any:
    """A DAG with ``.test()``: Airflow 3.0's Task SDK ``DAG`` lacks it (its CLI converts with ``from_sdk_dag``)."""
    if hasattr(dag, "test"):
        return dag
    from airflow.models.dag import DAG

    return DAG.from_sdk_dag(dag)
