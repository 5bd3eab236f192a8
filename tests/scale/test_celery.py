"""The mapped fan-out on CeleryExecutor: two Celery workers on a broker that needs no server.

Part of ``scripts/test`` (and CI): nothing but Python packages of the ``test`` extra (the Celery
provider, celery, kombu), no system package and no broker server. The ``celery_deployment`` fixture
starts the API server, DAG processor, scheduler and two workers (2 task slots each, prefetching
nothing more) on loopback, and kills them all on teardown, also when the test fails.

The broker and the result backend are two SQLite files of the deployment's home, outside Airflow's
metadata database:

- broker: kombu's SQLAlchemy transport (``sqla+sqlite:///<home>/broker.db``). A consumer takes a
  message inside ``BEGIN IMMEDIATE`` (it holds the write lock before it reads), so two workers never
  take the same message and never hit SQLite's instant "database is locked" of a read lock upgraded to
  a write lock; every other write is a single insert or update. ``?timeout=60`` lets a writer wait up
  to 60 s for the lock on a loaded machine (pysqlite's default is 5 s). kombu's filesystem transport
  was the alternative, but a consumer there can move a message file its producer has created and not
  yet written (it does not take the producer's lock) and then fail to decode it, losing the task.
- result backend: Celery's database backend (``db+sqlite:///<home>/results.db``, the same timeout),
  which the executor reads in bulk.

Both files are created in WAL mode, with their tables, before any process starts: readers (the
scheduler polling results, the workers polling the queue) then never block the writers, and no two
processes race to create the tables (kombu does not retry that).

One input is split by ``plan_shards`` into 4 shards scored by mapped tasks on the workers; the output
must equal a single run's, row for row and part for part, with each worker having run tasks. The test
waits on the run's state in the metadata database (generous overall timeouts, no timed assertion).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from celery.backends.database.models import ResultModelBase
from sqlalchemy import create_engine

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.scale.deployment import Deployment
from tests.scoring.fakes import numeric_table
from tests.support.s3_objects import list_keys, put_parquet, read_parts

pytestmark = [
    pytest.mark.slow,
    # kombu's table models (declared here when the fixture creates the broker's tables) on SQLAlchemy 2.1
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dags"))
import scale_dags  # noqa: E402 - the DAGs' constants (their folder is the deployment's DAG folder)

FILES, ROWS_PER_FILE = 8, 250
WORKERS = ("w1", "w2")
QUEUE = "default"  # Airflow's [operators] default_queue, the workers' queue
SQLITE_TIMEOUT = 60  # seconds a writer waits for the lock of a broker or results file


def _prepare_sqlite(path: Path) -> None:
    """Create ``path`` in WAL mode (persistent: every later connection uses it)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)


def _prepare_broker_and_results(home: Path) -> tuple[str, str]:
    """The broker and result backend URLs, their files created with their tables (and the queue)."""
    broker_db, results_db = home / "broker.db", home / "results.db"
    _prepare_sqlite(broker_db)
    _prepare_sqlite(results_db)
    broker = f"sqla+sqlite:///{broker_db}?timeout={SQLITE_TIMEOUT}"
    results = f"sqlite:///{results_db}?timeout={SQLITE_TIMEOUT}"
    with kombu.Connection(broker) as connection:
        connection.default_channel.queue_declare(QUEUE)  # the kombu tables and the queue's row
    engine = create_engine(results)
    try:
        ResultModelBase.metadata.create_all(engine)  # celery_taskmeta, celery_tasksetmeta
    finally:
        engine.dispose()
    return broker, f"db+{results}"


@pytest.fixture(scope="module")
def celery_deployment(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow-celery")
    broker, results = _prepare_broker_and_results(home)
    deployment = Deployment(
        home,
        dags_folder=HERE / "dags",
        executor="CeleryExecutor",
        extra_env={
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": results,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": QUEUE,
        },
    )
    try:
        deployment.boot({})
        for name in WORKERS:
            deployment.start(
                name,
                "celery",
                "worker",
                "--concurrency",
                "2",
                "--celery-hostname",
                f"{name}@127.0.0.1",
                "--pid",
                str(home / f"{name}.pid"),
                "--skip-serve-logs",
            )
        yield deployment
    finally:
        deployment.stop()


def test_mapped_fan_out_on_two_celery_workers_gives_the_single_run_result(
    celery_deployment: Deployment,
    s3_client: Any,
    s3_prefix: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
) -> None:
    endpoint = make_endpoint("sum", faults={"latency_ms": 200})
    for index in range(FILES):
        table = numeric_table(ROWS_PER_FILE, start=index * ROWS_PER_FILE)
        put_parquet(s3_client, f"{s3_prefix}in/part-{index:03d}.parquet", table)
    single = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name=endpoint,
        input_uri=s3_prefix + "in/",
        output_uri=s3_prefix + "single/",
        passthrough_columns=["id"],
        max_rows_per_request=50,
    )
    assert single.build_job(None).run()["rows_scored"] == FILES * ROWS_PER_FILE
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "fanout/"}
    run_id = celery_deployment.trigger(scale_dags.FANOUT_DAG_ID, conf)
    state = celery_deployment.wait_for_run(run_id)
    assert state == "success", celery_deployment.log_tail("scheduler")
    assert endpoint_stats(endpoint)["rows_ok"] == 2 * FILES * ROWS_PER_FILE  # the fan-out scored each row once
    fanout = read_parts(s3_client, s3_prefix + "fanout/").sort_by("id").to_pylist()
    assert fanout == read_parts(s3_client, s3_prefix + "single/").sort_by("id").to_pylist()
    fanout_keys = list_keys(s3_client, s3_prefix + "fanout/")
    single_keys = list_keys(s3_client, s3_prefix + "single/")
    assert [key for key in fanout_keys if key.startswith("part-")] == [k for k in single_keys if k.startswith("part-")]
    assert [key for key in fanout_keys if key.startswith("_manifest")] == [
        f"_manifest-{index:05d}.json" for index in range(scale_dags.FANOUT_SHARDS)
    ]
    # both workers ran tasks (each takes 2 at most and prefetches nothing more)
    for name in WORKERS:
        assert "Executing workload in Celery" in celery_deployment.log_tail(name, chars=10**7), f"{name} ran no task"
