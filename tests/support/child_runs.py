"""Runs of the reliability DAG in a child process, to kill it (``SIGKILL``/``SIGTERM``) mid-run.

The child runs ``r_score`` of ``tests/dags/reliability_dags.py`` with ``dag.test()`` on this session's
metadata database and environment (so a connection set with ``tests.support.connections.env`` applies).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import local_control
from tests.support.dag_runs import ROOT, ensure_db
from tests.support.scoring_rig import ScoringRig

_CHILD = """
import json, sys
from tests.support.dag_runs import run_dag
conf = json.loads(sys.argv[1])
run = run_dag(conf.pop("dag_id"), conf)
print("RESULT " + json.dumps({"state": run.state, "tasks": run.states}), flush=True)
"""


def start_child(conf: dict[str, Any], report_dir: Path) -> subprocess.Popen[str]:
    """Start ``r_score`` with ``conf`` in a new process group; its output goes to ``<report_dir>/child.log``."""
    ensure_db()  # the child reuses this session's metadata database
    report_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({**conf, "dag_id": "r_score", "report_dir": str(report_dir)})
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, payload],
        cwd=ROOT,
        env=dict(os.environ),
        start_new_session=True,
        stdout=(report_dir / "child.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def requests_settled(rig: ScoringRig, endpoint: str) -> dict[str, Any]:
    """The endpoint's counters once nothing is in flight any more (see :func:`local_control.wait_until_idle`)."""
    return local_control.wait_until_idle(rig.stack.runtime_endpoint_url, endpoint)


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], *, deadline_seconds: float = 180) -> None:
    """SIGKILL the child's process group as soon as ``ready()`` (polled, e.g. a count at the endpoint), then
    reap it; fail if the run ends first or makes no progress within ``deadline_seconds``."""
    deadline = time.monotonic() + deadline_seconds
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
