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


_BROKEN_DAG = '''
from airflow.sdk import DAG
from airflow_provider_smrt.operators.{module} import {operator}

with DAG(dag_id="smrt_broken", schedule=None):
    {operator}(
        task_id="score",
        endpoint_name="ep",
        input_uri="s3://bucket/in/",
        output_uri="s3://bucket/out/{{{{ ds }}}}/",
        {argument},
    )
'''

_OPERATORS = {
    "batch_score": "SageMakerBatchScoreOperator",
    "async_batch_score": "SageMakerAsyncBatchScoreOperator",
}


@pytest.mark.parametrize("module", sorted(_OPERATORS))
@pytest.mark.parametrize(
    ("argument", "named"),
    [
        ("concurrency=0", "concurrency"),
        ("max_error_ratio=-1", "max_error_ratio"),
        ("if_exists='bogus'", "if_exists"),
        ("content_type='text/plain'", "content_type"),
        ("max_payload_bytes=0", "max_payload_bytes"),
        ("max_rows_per_request=0", "max_rows_per_request"),
    ],
)
def test_bad_parameter_is_an_import_error(module: str, argument: str, named: str, tmp_path: Path) -> None:
    """A non-templated bad parameter fails the DAG file's import, naming the parameter (nothing runs)."""
    dag_file = tmp_path / "broken.py"
    dag_file.write_text(_BROKEN_DAG.format(module=module, operator=_OPERATORS[module], argument=argument))
    bag = dagbag_class()(dag_folder=str(tmp_path), safe_mode=False)
    assert not bag.dags
    (error,) = bag.import_errors.values()
    assert named in error and "ParameterValidationError" in error, error


@pytest.mark.parametrize("module", sorted(_OPERATORS))
def test_templated_content_type_is_checked_when_the_task_runs(module: str, tmp_path: Path) -> None:
    dag_file = tmp_path / "templated.py"
    argument = "content_type='{{ params.content_type }}'"
    dag_file.write_text(_BROKEN_DAG.format(module=module, operator=_OPERATORS[module], argument=argument))
    bag = dagbag_class()(dag_folder=str(tmp_path), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    assert list(bag.dags) == ["smrt_broken"]
