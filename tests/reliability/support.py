"""Helpers of the reliability suites: datasets, a ``dag.test()`` runner that captures logs, S3 checks, figures."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.airflow_support import dagbag, ensure_db
from tests.s3_support import list_keys, put_parquet, split

DAG_ID = "r_score"
#: Every param a test may change, at its default: dag.test(run_conf=...) updates the DAG's params in place, so
#: a value one run sets would otherwise stick for the next run in the same process.
PARAM_DEFAULTS: dict[str, Any] = {
    "content_type": "text/csv",
    "custom_attributes": "",
    "aws_conn_id": "aws_default",
    "op": {},
}
PART = re.compile(r"^part-.+-\d{10}-\d{10}-[0-9a-f]{12}\.parquet$")


# -- datasets --------------------------------------------------------------------------------------


def features(ids: range, *, poison: set[int] | None = None, secret: str | None = None) -> pa.Table:
    """Rows ``id, f0, f1, f2`` (and a pass-through ``note`` when ``secret`` is given); the sum model adds f0..f2."""
    f0 = [-999.0 if poison and i in poison else float(i % 13) for i in ids]
    columns: dict[str, pa.Array] = {
        "id": pa.array(list(ids), pa.int64()),
        "f0": pa.array(f0, pa.float64()),
        "f1": pa.array([float(i % 5) / 4 for i in ids], pa.float64()),
        "f2": pa.array([i % 3 for i in ids], pa.int32()),
    }
    if secret is not None:
        columns["note"] = pa.array([f"{secret}-{i}" for i in ids], pa.string())
    return pa.table(columns)


def expected_sum(table: pa.Table) -> dict[int, float]:
    rows = table.select(["id", "f0", "f1", "f2"]).to_pylist()
    return {r["id"]: float(r["f0"]) + float(r["f1"]) + float(r["f2"]) for r in rows}


def put_files(s3: Any, prefix: str, *, files: int, rows: int, poison: set[int] | None = None) -> pa.Table:
    """``files`` Parquet files of ``rows`` rows each (one work unit each) under ``prefix``."""
    tables = []
    for k in range(files):
        table = features(range(k * 10_000, k * 10_000 + rows), poison=poison)
        put_parquet(s3, f"{prefix}f{k:03d}.parquet", table)
        tables.append(table)
    return pa.concat_tables(tables)


# -- S3 --------------------------------------------------------------------------------------------


def data_parts(s3: Any, uri: str) -> list[str]:
    return [key for key in list_keys(s3, uri) if PART.match(key)]


def read_table(s3: Any, uri: str) -> pa.Table:
    bucket, key = split(uri)
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def read_output(s3: Any, uri: str, folder: str = "") -> pa.Table:
    """Every data part (or every ``_errors/`` part) under ``uri``; each must be a complete Parquet file."""
    names = [k for k in list_keys(s3, uri) if k.startswith(folder) and PART.match(k[len(folder) :])]
    tables = [read_table(s3, uri + name) for name in names]
    return pa.concat_tables(tables) if tables else pa.table({})


def incomplete_uploads(s3: Any, uri: str) -> list[str]:
    bucket, prefix = split(uri)
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


def check_parts_complete(s3: Any, uri: str, rows_per_unit: int) -> list[str]:
    """Every data part is readable Parquet with all rows of its unit: nothing partial is visible."""
    parts = data_parts(s3, uri)
    for name in parts:
        table = read_table(s3, uri + name)
        start, end = (int(x) for x in name.rsplit("-", 3)[1:3])
        assert table.num_rows == end - start == rows_per_unit, name
    return parts


# -- running DAGs ----------------------------------------------------------------------------------


@dataclass
class Run:
    """The outcome of one ``dag.test()`` run with everything it logged."""

    dag_id: str
    run_id: str
    state: str
    task_state: str
    error: str
    logs: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    def xcom(self) -> Any:
        from tests.airflow_support import xcom

        return xcom(self.dag_id, self.run_id, "score")

    def task_log_text(self) -> str:
        """The task's log files written under AIRFLOW_HOME/logs for this run (empty if none)."""
        root = Path(os.environ["AIRFLOW_HOME"]) / "logs"
        texts = []
        for path in root.rglob("*"):
            if path.is_file() and f"run_id={self.run_id}" in str(path):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not evidence
            self.lines.append(repr(record.msg))


def run_score(conf: dict[str, Any], report_dir: Path, *, dag_id: str = DAG_ID) -> Run:
    """Run a reliability DAG once with ``dag.test()``; capture every log record and the task's exception text."""
    ensure_db()
    dag = dagbag().get_dag(dag_id)
    assert dag is not None, dag_id
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("*.txt"):
        old.unlink()
    handler = _Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    # The task log's level (INFO), and DEBUG for the provider's own modules (they must be clean too).
    root.setLevel(logging.INFO)
    own = logging.getLogger("airflow_provider_smrt")
    own_level = own.level
    own.setLevel(logging.DEBUG)
    try:
        run = dag.test(run_conf={**PARAM_DEFAULTS, **conf, "report_dir": str(report_dir)})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        own.setLevel(own_level)
    tis = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    report = report_dir / "score.txt"
    error = report.read_text() if report.exists() else ""
    return Run(
        dag_id=dag_id,
        run_id=run.run_id,
        state=str(run.state),
        task_state=tis.get("score", ""),
        error=error,
        logs=handler.lines,
    )


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# -- figures ---------------------------------------------------------------------------------------


class Figures:
    """Measured numbers of the suites, written to a JSON file (and printed) for docs/reliability.md."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.write_text("{}")

    def record(self, name: str, **values: Any) -> None:
        data = json.loads(self.path.read_text())
        data[name] = values
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True))
        print(f"FIGURE {name}: {json.dumps(values, sort_keys=True)}")


@contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables (e.g. ``AIRFLOW_CONN_*``) for the block and leave them set afterwards:
    unsetting a connection variable mid-session makes Airflow lose the other env connections."""
    os.environ.update(values)
    yield


# -- AWS calls -------------------------------------------------------------------------------------

#: The IAM action each client operation needs (what the policies under docs/iam/ must allow).
IAM_ACTIONS = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "GetObject"): "s3:GetObject",
    ("s3", "PutObject"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "AbortMultipartUpload"): "s3:AbortMultipartUpload",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "DeleteObject"): "s3:DeleteObject",
    ("sagemaker-runtime", "InvokeEndpoint"): "sagemaker:InvokeEndpoint",
    ("sagemaker-runtime", "InvokeEndpointAsync"): "sagemaker:InvokeEndpointAsync",
    ("sagemaker-runtime", "InvokeEndpointWithResponseStream"): "sagemaker:InvokeEndpointWithResponseStream",
    ("sts", "AssumeRole"): "sts:AssumeRole",
}


@dataclass
class CallRecorder:
    """Every AWS operation made by botocore clients created while installed (botocore ``before-call`` hook),
    and the S3 parameters of each call (``before-parameter-build.s3``)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    s3_params: list[tuple[str, dict[str, Any], set[str]]] = field(default_factory=list)

    def on_call(self, model: Any, **_: Any) -> None:
        self.calls.append((model.service_model.service_name, model.name))

    def on_s3_params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        members = set(model.input_shape.members) if model.input_shape is not None else set()
        self.s3_params.append((model.name, dict(params), members))

    def actions(self, services: tuple[str, ...] = ("s3", "sagemaker-runtime")) -> set[str]:
        unknown = {call for call in self.calls if call[0] in services and call not in IAM_ACTIONS}
        assert not unknown, f"operations without an IAM mapping: {unknown}"
        return {IAM_ACTIONS[call] for call in self.calls if call[0] in services}


@contextmanager
def record_aws_calls() -> Iterator[CallRecorder]:
    """Register the recorder's hooks on every botocore (and aiobotocore) client created inside the block."""
    from botocore.client import BaseClient

    recorder = CallRecorder()
    original = BaseClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.meta.events.register("before-call", recorder.on_call)
        self.meta.events.register("before-parameter-build.s3", recorder.on_s3_params)

    BaseClient.__init__ = init  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        BaseClient.__init__ = original  # type: ignore[method-assign]


def aws_conn(conn_id: str, **extra: Any) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` for an AWS connection (login/password testing unless given in ``extra``)."""
    login = extra.pop("login", "testing")
    password = extra.pop("password", "testing")
    doc = {"conn_type": "aws", "login": login, "password": password, "extra": {"region_name": "us-east-1", **extra}}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(doc)}
