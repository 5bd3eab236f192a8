"""Airflow connections of the tests, set as ``AIRFLOW_CONN_*`` environment variables."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def aws_conn(conn_id: str, **extra: Any) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` for an AWS connection (login/password testing unless given in ``extra``)."""
    login = extra.pop("login", "testing")
    password = extra.pop("password", "testing")
    doc = {"conn_type": "aws", "login": login, "password": password, "extra": {"region_name": "us-east-1", **extra}}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(doc)}


def service_config(*, s3: str, runtime: str) -> dict[str, Any]:
    """The connection extra ``service_config`` pointing S3 and SageMaker Runtime at the given endpoint URLs."""
    return {"s3": {"endpoint_url": s3}, "sagemaker-runtime": {"endpoint_url": runtime}}


@contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables (e.g. ``AIRFLOW_CONN_*``) for the block and leave them set afterwards:
    unsetting a connection variable mid-session makes Airflow lose the other env connections."""
    os.environ.update(values)
    yield
