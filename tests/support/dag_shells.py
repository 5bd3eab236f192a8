"""What the test DAGs of ``tests/dags`` share: their DAG arguments, their params, operator arguments templated
from those params, and the failure callback that writes each failed task's exception text for the tests.

A DAG file still constructs its DAGs itself, ``DAG(**dag_args(...))``, at module level or in a function of its
own: Airflow records the file that constructs a DAG as its ``fileloc``, and ``dag.test()`` only runs a DAG whose
file is in the DAG folder.
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import Param

START_DATE = datetime(2026, 1, 1)

#: Every param of the test DAGs: its default and JSON-schema type. A test sets them through ``run_conf``.
_PARAMS: dict[str, tuple[Any, str | list[str]]] = {
    "endpoint_name": ("smrt-sum", "string"),
    "input_uri": ("s3://smrt-local/none/", ["string", "array"]),
    "output_uri": ("s3://smrt-local/none-out/", "string"),
    "inputs": ([], "array"),
    "content_type": ("text/csv", "string"),
    "accept": ("", "string"),
    "custom_attributes": ("", "string"),
    "target_variant": ("", "string"),
    "target_model": ("", "string"),
    "aws_conn_id": ("aws_default", "string"),
    "report_dir": ("", "string"),
    "op": ({}, "object"),
}


def params(*names: str, **others: Param) -> dict[str, Param]:
    """Fresh ``Param`` objects of the named params (defaults above), then ``others`` as given."""
    chosen = {name: Param(copy.deepcopy(_PARAMS[name][0]), type=_PARAMS[name][1]) for name in names}
    chosen.update(others)
    return chosen


def from_params(*names: str, **renamed: str) -> dict[str, str]:
    """Operator arguments templated from the params of the same name (``endpoint_name="{{ params.endpoint_name }}"``),
    and from ``argument=param`` pairs for arguments named otherwise (``input_location="inputs"``)."""
    pairs = {**{name: name for name in names}, **renamed}
    return {argument: f"{{{{ params.{param} }}}}" for argument, param in pairs.items()}


def report_failure(context: Any) -> None:
    """``on_failure_callback``: write the task's exception text to ``<params.report_dir>/<task_id>.txt``."""
    report_dir = context["params"].get("report_dir")
    if report_dir:
        exc = context.get("exception")
        Path(report_dir, f"{context['ti'].task_id}.txt").write_text(f"{type(exc).__name__}: {exc}")


def dag_args(
    dag_id: str, dag_params: dict[str, Param], *, report_failures: bool = False, **extra: Any
) -> dict[str, Any]:
    """The arguments of a test DAG: run only when triggered, with ``dag_params``; with ``report_failures``, every
    failed task reports its exception through :func:`report_failure`; ``extra`` are further DAG arguments."""
    args: dict[str, Any] = {
        "dag_id": dag_id,
        "schedule": None,
        "start_date": START_DATE,
        "catchup": False,
        "params": dag_params,
    }
    if report_failures:
        args["default_args"] = {"on_failure_callback": report_failure}
    args.update(extra)
    return args
