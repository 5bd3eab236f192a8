"""Expose the DAGs of ``example_dags/`` in the tests' DAG folder, so tests can run them with ``dag.test()``.

``dag.test()`` only runs a DAG that Airflow can serialise from its configured DAG bundle (here
``tests/dags``); a DAG parsed from another folder fails with "the dag is not serialized". This file
executes every ``example_dags/example_*.py`` module, so its DAGs belong to this bundle too. The example
files stay as users see them; run them directly with ``AIRFLOW__CORE__DAGS_FOLDER=example_dags``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from airflow.sdk import DAG

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"

for _path in sorted(EXAMPLES.glob("example_*.py")):
    _name = f"smrt_example_dags.{_path.stem}"
    _spec = importlib.util.spec_from_file_location(_name, _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _module
    _spec.loader.exec_module(_module)  # DAGs built with ``with DAG(...)`` register themselves with this file
    for _value in list(vars(_module).values()):
        if isinstance(_value, DAG):
            globals()[f"dag_{_value.dag_id}"] = _value
