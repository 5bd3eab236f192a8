"""Shared test set-up: an isolated Airflow home, fake AWS credentials, and the local stack.

Environment is set at import time, before anything imports Airflow. Fixtures:

- ``local_stack`` (session): the local stack, started with ``python -m airflow_provider_smrt.local up`` in a
  subprocess (or reused when ``SMRT_RUNTIME_ENDPOINT_URL`` and ``SMRT_S3_ENDPOINT_URL`` are already set, as under
  ``smrt-local run``); has ``.s3_endpoint_url``, ``.runtime_endpoint_url``, ``.airflow_conn``.
- ``s3_client``, ``runtime_client`` (session): boto3 clients on the stack (the runtime client makes one attempt).
- ``make_endpoint`` (function): ``make_endpoint(model="sum", **spec) -> str`` creates a uniquely named endpoint
  (``spec``: the keyword arguments of ``tests.support.local_control.put_endpoint``: faults, outputs, variants, ...).
- ``endpoint_stats`` (function): ``endpoint_stats(name) -> dict``; ``patch_faults``: ``patch_faults(name, faults)``.
- ``s3_prefix`` (function): a unique ``s3://smrt-local/t-<uuid8>/``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="smrt-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)

os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "tests" / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

from tests.support import local_control  # noqa: E402 - after the environment above

LOCAL_BUCKET = "smrt-local"
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class StackInfo:
    """Where the local stack listens."""

    s3_endpoint_url: str
    runtime_endpoint_url: str
    airflow_conn: str


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[StackInfo]:
    """The local stack (S3 + SageMaker Runtime), in a subprocess of its own or reused from the environment."""
    s3_url = os.environ.get("SMRT_S3_ENDPOINT_URL")
    runtime_url = os.environ.get("SMRT_RUNTIME_ENDPOINT_URL")
    if s3_url and runtime_url:
        conn = os.environ.get("AIRFLOW_CONN_AWS_DEFAULT") or json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "region_name": "us-east-1",
                    "service_config": {
                        "s3": {"endpoint_url": s3_url},
                        "sagemaker-runtime": {"endpoint_url": runtime_url},
                    },
                },
            }
        )
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = conn
        yield StackInfo(s3_endpoint_url=s3_url, runtime_endpoint_url=runtime_url, airflow_conn=conn)
        return
    state_file = _SESSION_DIR / "stack.json"
    log_file = (_SESSION_DIR / "stack.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_smrt.local", "up", "--state-file", str(state_file)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not state_file.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"the local stack exited with {process.returncode}; see {_SESSION_DIR / 'stack.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local stack did not start within {_START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        info = StackInfo(
            s3_endpoint_url=state["s3_endpoint_url"],
            runtime_endpoint_url=state["runtime_endpoint_url"],
            airflow_conn=state["airflow_conn"],
        )
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = info.airflow_conn
        os.environ["SMRT_S3_ENDPOINT_URL"] = info.s3_endpoint_url
        os.environ["SMRT_RUNTIME_ENDPOINT_URL"] = info.runtime_endpoint_url
        yield info
    finally:
        _stop(process)
        log_file.close()
        for name in ("AIRFLOW_CONN_AWS_DEFAULT", "SMRT_S3_ENDPOINT_URL", "SMRT_RUNTIME_ENDPOINT_URL"):
            os.environ.pop(name, None)


def _client(service: str, endpoint_url: str, **config: Any) -> Any:
    """A boto3 client of ``service`` at ``endpoint_url`` with the tests' fake credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config),
    )


@pytest.fixture(scope="session")
def s3_client(local_stack: StackInfo) -> Any:
    """A boto3 S3 client on the local stack."""
    return _client("s3", local_stack.s3_endpoint_url, s3={"addressing_style": "path"})


@pytest.fixture(scope="session")
def runtime_client(local_stack: StackInfo) -> Any:
    """A boto3 sagemaker-runtime client on the local stack; one attempt per call (no retries)."""
    return _client(
        "sagemaker-runtime",
        local_stack.runtime_endpoint_url,
        retries={"total_max_attempts": 1},
        max_pool_connections=64,
    )


@pytest.fixture
def make_endpoint(local_stack: StackInfo) -> Iterator[Callable[..., str]]:
    """A factory creating uniquely named endpoints; they are deleted after the test."""
    created: list[str] = []

    def make(model: str = "sum", **spec: Any) -> str:
        """``spec``: the keyword arguments of ``local_control.put_endpoint`` (faults, outputs, variants, ...)."""
        name = local_control.put_endpoint(local_stack.runtime_endpoint_url, model=model, **spec)
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            local_control.delete_endpoint(local_stack.runtime_endpoint_url, name)
        except (local_control.ControlError, OSError):
            pass


@pytest.fixture
def endpoint_stats(local_stack: StackInfo) -> Callable[[str], dict[str, Any]]:
    """``endpoint_stats(name) -> dict`` of the endpoint's counters."""

    def stats(name: str) -> dict[str, Any]:
        return local_control.endpoint_stats(local_stack.runtime_endpoint_url, name)

    return stats


@pytest.fixture
def patch_faults(local_stack: StackInfo) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """``patch_faults(name, faults) -> dict``: merge fault settings into an endpoint."""

    def patch(name: str, faults: dict[str, Any]) -> dict[str, Any]:
        return local_control.patch_faults(local_stack.runtime_endpoint_url, name, faults)

    return patch


@pytest.fixture
def s3_prefix(local_stack: StackInfo) -> str:
    """A unique ``s3://smrt-local/t-<uuid8>/`` prefix."""
    return f"s3://{LOCAL_BUCKET}/t-{uuid.uuid4().hex[:8]}/"
