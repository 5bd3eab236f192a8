"""Shared helpers of the benchmarks: start/stop the local stack in a subprocess, pin CPUs, note the load.

Not a benchmark itself. ``bench_hook.py`` and ``bench_scoring.py`` import it::

    with LocalStackProcess(cpus={1}) as stack:   # the stack (and moto, its child) on CPU 1
        pin_self({0})                            # the client on CPU 0
        name = local_control.put_endpoint(stack.runtime_endpoint_url, faults={"latency_ms": 0})
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
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Before anything imports Airflow: an Airflow home of our own, no examples, fake credentials.
if "AIRFLOW_HOME" not in os.environ:  # children inherit the parent's
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="smrt-bench-airflow-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)
sys.path.insert(0, str(REPO))

from tests.support import local_control  # noqa: E402 - the local stack's control API

__all__ = ["REPO", "LocalStackProcess", "load", "local_control", "pin_self", "runtime_client", "s3_client"]

_START_TIMEOUT = 90.0


def load() -> str:
    """The 1/5/15-minute load averages, e.g. ``load 1.52 1.80 1.31``."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def pin_self(cpus: set[int]) -> None:
    """Pin this process (every thread created from now on inherits it) to ``cpus``."""
    available = os.sched_getaffinity(0)
    wanted = cpus & available or available
    os.sched_setaffinity(0, wanted)


def _die_with_parent(cpus: set[int] | None) -> Any:
    def preexec() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if cpus:
            os.sched_setaffinity(0, cpus)

    return preexec


class LocalStackProcess:
    """``python -m airflow_provider_smrt.local up --state-file F`` in a subprocess, pinned to ``cpus``.

    Sets ``AIRFLOW_CONN_AWS_DEFAULT`` and the ``SMRT_*`` variables in this process while it runs.
    """

    def __init__(self, *, cpus: set[int] | None = None) -> None:
        self.cpus = cpus
        self.process: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="smrt-bench-stack-"))

    @property
    def runtime_endpoint_url(self) -> str:
        return str(self.state["runtime_endpoint_url"])

    @property
    def s3_endpoint_url(self) -> str:
        return str(self.state["s3_endpoint_url"])

    def start(self) -> LocalStackProcess:
        state_file = self._dir / "stack.json"
        self._log = open(self._dir / "stack.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_smrt.local", "up", "--state-file", str(state_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(self.cpus),
            cwd=REPO,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not state_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the local stack exited with {self.process.returncode}; see {self._dir}/stack.log")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local stack did not start in time")
            time.sleep(0.1)
        self.state = json.loads(state_file.read_text())
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = self.state["airflow_conn"]
        os.environ["SMRT_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        os.environ["SMRT_RUNTIME_ENDPOINT_URL"] = self.runtime_endpoint_url
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalStackProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def runtime_client(url: str, *, max_pool_connections: int = 10, **config: Any) -> Any:
    """A plain boto3 ``sagemaker-runtime`` client on the local endpoint (boto3 defaults unless given)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=max_pool_connections, **config),
    )


def s3_client(url: str, *, max_pool_connections: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=max_pool_connections),
    )
