"""Every example DAG file imports into a DagBag without errors (the DAG processor's view; nothing runs).

``tests/test_example_dags.py`` runs the examples; this test only parses them, so it stays fast and also
runs on the oldest supported Airflow (``scripts/test-oldest``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.support.airflow_compat import dagbag_class

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
EXAMPLE_FILES = sorted(EXAMPLE_DAGS.glob("*.py"))


@cache
def _bag(path: str) -> Any:
    return dagbag_class()(dag_folder=path, safe_mode=False)


def test_there_are_example_dags() -> None:
    assert EXAMPLE_FILES, f"no example DAGs in {EXAMPLE_DAGS}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_dag_file_imports_without_errors(path: Path) -> None:
    bag = _bag(str(path))
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, f"{path.name} defines no DAG"
    for dag_id, dag in bag.dags.items():
        assert dag.tasks, f"{dag_id} has no tasks"
        assert dag.fileloc == str(path), (dag_id, dag.fileloc)


def test_example_dag_ids_are_unique_and_folder_loads_cleanly() -> None:
    seen: dict[str, str] = {}
    for path in EXAMPLE_FILES:
        for dag_id in _bag(str(path)).dag_ids:
            assert dag_id not in seen, f"{dag_id} is defined in both {seen[dag_id]} and {path.name}"
            seen[dag_id] = path.name
    folder = _bag(str(EXAMPLE_DAGS))
    assert not folder.import_errors, folder.import_errors
    assert set(folder.dag_ids) == set(seen)
