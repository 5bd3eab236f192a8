"""What a reliability test scores with: the local stack, its endpoints, a fresh S3 prefix, a report folder.

``tests/reliability/conftest.py`` builds one per test (fixture ``rig``) from the session's fixtures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.connections import aws_conn, service_config
from tests.support.dag_runs import DagTestResult, run_score
from tests.support.figures import Figures


@dataclass(frozen=True)
class ScoringRig:
    """The fixtures every reliability test takes, with the run configuration they share.

    ``stack`` is the local stack (``.s3_endpoint_url``, ``.runtime_endpoint_url``), ``s3`` a boto3 client on it,
    ``make_endpoint``/``endpoint_stats``/``patch_faults`` the endpoint fixtures of ``tests/conftest.py``,
    ``prefix`` a unique ``s3://`` prefix with inputs under ``in/`` and the output under ``out/``.
    """

    stack: Any
    s3: Any
    make_endpoint: Callable[..., str]
    endpoint_stats: Callable[[str], dict[str, Any]]
    patch_faults: Callable[[str, dict[str, Any]], dict[str, Any]]
    prefix: str
    tmp_path: Path
    figures: Figures

    @property
    def input_uri(self) -> str:
        return self.prefix + "in/"

    @property
    def output_uri(self) -> str:
        return self.prefix + "out/"

    def conf(self, endpoint: str, **params: Any) -> dict[str, Any]:
        """The run configuration of the reliability DAGs: ``endpoint`` scoring ``in/`` into ``out/``, and ``params``."""
        return {"endpoint_name": endpoint, "input_uri": self.input_uri, "output_uri": self.output_uri, **params}

    def run(self, conf: dict[str, Any], name: str = "report", *, dag_id: str = "r_score") -> DagTestResult:
        """Run a reliability DAG with ``conf``; failure reports go to ``<tmp_path>/<name>/``."""
        return run_score(conf, self.tmp_path / name, dag_id=dag_id)

    def connection(
        self, conn_id: str, *, s3: str | None = None, runtime: str | None = None, **extra: Any
    ) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` of an AWS connection to the local stack, or to ``s3``/``runtime`` (e.g. a proxy)."""
        endpoints = service_config(
            s3=s3 or self.stack.s3_endpoint_url, runtime=runtime or self.stack.runtime_endpoint_url
        )
        return aws_conn(conn_id, service_config=endpoints, **extra)
