"""Backfills through a real Airflow deployment: API server, scheduler, DAG processor, LocalExecutor.

``dag.test()`` runs mapped tasks one after another and enforces no pool; here the scheduler runs
``airflow backfill create`` over 7 daily partitions of ``tests/scale/dags/scale_dags.py`` (3 runs at
once, each run's partition split into 2 shards scored by mapped tasks) on SQLite, against the local
stack. Every server is started by the ``deployment`` fixture on loopback ports and killed on teardown.

- every partition is scored exactly once (rows counted at the endpoint), and the endpoint's peak of
  requests in flight stays within the pool's slots while 3 tasks score at once;
- SIGKILL of the scheduler and every task process mid-backfill, then a restart: the backfill completes,
  each row once in the output, and only rows of parts not committed before the kill are sent again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.scale.deployment import RUN_TIMEOUT, Deployment
from tests.scoring.fakes import numeric_table
from tests.support.local_control import release_hold_when
from tests.support.s3_objects import list_keys, put_parquet, read_parts

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dags"))
import scale_dags  # noqa: E402 - the DAG's constants (its folder is the deployment's DAG folder)

PARTITIONS = 7
FILES_PER_PARTITION, ROWS_PER_FILE = 8, 250  # one work unit per file; 5 requests of 50 rows per unit
ROWS_PER_PARTITION = FILES_PER_PARTITION * ROWS_PER_FILE
TOTAL = PARTITIONS * ROWS_PER_PARTITION
#: the endpoint takes this many requests at once: the pool holds that many slots, 3 tasks' worth
POOL_SLOTS = 3 * scale_dags.CONCURRENCY
LATENCY_MS = 300


@pytest.fixture(scope="module")
def deployment(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow-deployment")
    deployment = Deployment(home, dags_folder=HERE / "dags")
    try:
        deployment.boot({scale_dags.POOL: POOL_SLOTS})
        yield deployment
    finally:
        deployment.stop()


def _seed(s3: Any, root: str, days: list[datetime], first_id: int) -> dict[str, list[int]]:
    """Write each day's partition; return the ids per ``ds``."""
    ids: dict[str, list[int]] = {}
    start = first_id
    for day in days:
        ds = day.strftime("%Y-%m-%d")
        for index in range(FILES_PER_PARTITION):
            put_parquet(
                s3, f"{root}features/ds={ds}/part-{index:03d}.parquet", numeric_table(ROWS_PER_FILE, start=start)
            )
            start += ROWS_PER_FILE
        ids[ds] = list(range(start - ROWS_PER_PARTITION, start))
    return ids


def _etag(s3: Any, uri: str) -> str:
    bucket, key = uri[len("s3://") :].split("/", 1)
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"])


def _manifests(s3: Any, root: str) -> list[str]:
    return [key for key in list_keys(s3, root + "predictions/") if "/_manifest" in key]


def _days(first: datetime) -> list[datetime]:
    return [first + timedelta(days=offset) for offset in range(PARTITIONS)]


def _conf(endpoint: str, root: str) -> dict[str, str]:
    return {
        "endpoint_name": endpoint,
        "features_root": root + "features",
        "predictions_root": root + "predictions",
    }


def _check_output(s3: Any, root: str, ids: dict[str, list[int]]) -> None:
    for ds, expected in ids.items():
        out = read_parts(s3, f"{root}predictions/ds={ds}/")
        assert sorted(out["id"].to_pylist()) == expected, f"ds={ds}: rows lost or duplicated"
        manifests = [key for key in list_keys(s3, f"{root}predictions/ds={ds}/") if key.startswith("_manifest")]
        assert manifests == [f"_manifest-{index:05d}.json" for index in range(scale_dags.SHARDS)]


def _max_overlap(deployment: Deployment, backfill: int) -> int:
    """The most ``score`` tasks of the backfill running at one time, from their recorded start and end."""
    rows = deployment.query(
        "SELECT ti.start_date, ti.end_date FROM task_instance ti JOIN dag_run dr ON ti.dag_id = dr.dag_id "
        "AND ti.run_id = dr.run_id WHERE dr.backfill_id = ? AND ti.task_id = 'score'",
        backfill,
    )
    events = []
    for start, end in rows:
        events += [(datetime.fromisoformat(start), 1), (datetime.fromisoformat(end), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):
        running += step
        peak = max(peak, running)
    return peak


def _retries(deployment: Deployment, backfill: int) -> tuple[int, int]:
    """Request retries the ``score`` tasks' summaries report, and task attempts beyond each one's first."""
    summaries = deployment.query(
        "SELECT x.value FROM xcom x JOIN dag_run dr ON x.dag_id = dr.dag_id AND x.run_id = dr.run_id "
        "WHERE dr.backfill_id = ? AND x.task_id = 'score' AND x.key = 'return_value'",
        backfill,
    )
    assert len(summaries) == PARTITIONS * scale_dags.SHARDS, summaries
    requests = sum(int(json.loads(value)["retries"]) for (value,) in summaries)
    tries = deployment.query(
        "SELECT ti.try_number FROM task_instance ti JOIN dag_run dr ON ti.dag_id = dr.dag_id "
        "AND ti.run_id = dr.run_id WHERE dr.backfill_id = ? AND ti.task_id = 'score'",
        backfill,
    )
    return requests, sum(int(try_number) - 1 for (try_number,) in tries)


def test_backfill_scores_each_partition_once_within_the_pool(
    deployment: Deployment,
    local_stack: Any,
    s3_client: Any,
    s3_prefix: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
) -> None:
    # Every request is held until the pool's slots are all in flight (3 tasks, each CONCURRENCY requests):
    # the overlap is observed at the endpoint, not hoped for from the tasks' durations on a loaded machine.
    endpoint = make_endpoint("sum", faults={"latency_ms": LATENCY_MS, "hold_after_requests": 0})
    release = release_hold_when(
        local_stack.runtime_endpoint_url, endpoint, lambda s: s["concurrent"] >= POOL_SLOTS, timeout=RUN_TIMEOUT
    )
    days = _days(datetime(2026, 1, 1))
    ids = _seed(s3_client, s3_prefix, days, first_id=0)
    backfill = deployment.backfill(scale_dags.DAG_ID, days[0], days[-1], _conf(endpoint, s3_prefix))
    states = deployment.wait_for_backfill(backfill, PARTITIONS)
    assert set(states.values()) == {"success"}, (states, deployment.log_tail("scheduler"))
    _check_output(s3_client, s3_prefix, ids)
    stats = endpoint_stats(endpoint)
    # Every partition is scored once: the endpoint answers no row more than the input holds, unless a
    # request or a task attempt was retried (a read timeout while requests are held, a heartbeat lost on
    # a loaded machine). Those are counted, and each may re-send at most what it had in flight.
    retried_requests, retried_attempts = _retries(deployment, backfill)
    resent = stats["rows_ok"] - TOTAL
    rows_per_shard = ROWS_PER_PARTITION // scale_dags.SHARDS
    allowed = retried_requests * scale_dags.MAX_ROWS_PER_REQUEST + retried_attempts * rows_per_shard
    assert 0 <= resent <= allowed, (
        f"{resent} rows scored more than once, with {retried_requests} request retries and "
        f"{retried_attempts} task retries (at most {allowed} allowed)"
    )
    # The pool is the lever: at most POOL_SLOTS // CONCURRENCY tasks score at once, so the endpoint never
    # sees more requests in flight than the pool's slots, while 3 tasks score together. A retried request
    # (its first attempt abandoned while held) or a retried task attempt (its predecessor's requests still
    # held) can leave that many more at the endpoint, and no more.
    left_behind = retried_requests + retried_attempts * scale_dags.CONCURRENCY
    retried = (retried_requests, retried_attempts)
    assert POOL_SLOTS <= stats["max_concurrent"] <= POOL_SLOTS + left_behind, (stats, retried)
    release.join(timeout=5)
    assert _max_overlap(deployment, backfill) >= 3


def test_killed_scheduler_and_tasks_resume_without_loss_or_duplicates(
    deployment: Deployment,
    s3_client: Any,
    s3_prefix: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
) -> None:
    endpoint = make_endpoint("sum", faults={"latency_ms": LATENCY_MS})
    days = _days(datetime(2026, 2, 1))
    ids = _seed(s3_client, s3_prefix, days, first_id=1_000_000)
    backfill = deployment.backfill(scale_dags.DAG_ID, days[0], days[-1], _conf(endpoint, s3_prefix))

    def committed() -> list[str]:
        return [key for key in list_keys(s3_client, s3_prefix + "predictions/") if "/part-" in key]

    deadline = time.monotonic() + RUN_TIMEOUT
    while not (len(committed()) >= FILES_PER_PARTITION and deployment.running_scores() > 0):
        deployment.check_alive()
        assert time.monotonic() < deadline, "the backfill made no progress"
        time.sleep(0.3)
    deployment.kill("scheduler")  # the scheduler, its executor's workers and every task process
    parts_at_kill = committed()
    manifests_at_kill = {
        key: _etag(s3_client, s3_prefix + "predictions/" + key) for key in _manifests(s3_client, s3_prefix)
    }
    assert len(parts_at_kill) < PARTITIONS * FILES_PER_PARTITION, "the backfill finished before the kill"
    deployment.start("scheduler", "scheduler")

    states = deployment.wait_for_backfill(backfill, PARTITIONS)
    assert set(states.values()) == {"success"}, (states, deployment.log_tail("scheduler"))
    _check_output(s3_client, s3_prefix, ids)
    resent = endpoint_stats(endpoint)["rows_ok"] - TOTAL
    unfinished = TOTAL - len(parts_at_kill) * ROWS_PER_FILE
    # Only rows of parts not committed at the kill were scored again; finished shards were not rerun.
    assert 0 <= resent <= unfinished, (resent, unfinished)
    for key, etag in manifests_at_kill.items():
        assert _etag(s3_client, s3_prefix + "predictions/" + key) == etag, f"{key} was written again"
