"""The mapped fan-out on CeleryExecutor: Redis as the broker, two Celery workers, all on loopback.

Run by ``scripts/test-celery`` (which installs Debian's ``redis-server`` and the Celery provider if
missing and sets ``SMRT_TEST_CELERY=1``); skipped otherwise, so ``scripts/test`` and CI do not run it.
The ``celery_deployment`` fixture starts redis-server, the API server, DAG processor, scheduler and
two workers (2 task slots each), and kills them all on teardown.

One input is split by ``plan_shards`` into 4 shards scored by mapped tasks on the workers; the output
must equal a single run's, row for row and part for part, with each worker having run tasks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from tests.scale.deployment import Deployment, _free_port
from tests.scoring.fakes import numeric_table
from tests.support.s3_objects import list_keys, put_parquet, read_parts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SMRT_TEST_CELERY") != "1", reason="run by scripts/test-celery"),
]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dags"))
import scale_dags  # noqa: E402 - the DAGs' constants (their folder is the deployment's DAG folder)

FILES, ROWS_PER_FILE = 8, 250
WORKERS = ("w1", "w2")


@pytest.fixture(scope="module")
def celery_deployment(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis = shutil.which("redis-server")
    assert redis, "redis-server is missing: run scripts/test-celery (it installs Debian's redis-server)"
    home = tmp_path_factory.mktemp("airflow-celery")
    port = _free_port()
    broker = f"redis://127.0.0.1:{port}"
    deployment = Deployment(
        home,
        dags_folder=HERE / "dags",
        executor="CeleryExecutor",
        extra_env={
            "AIRFLOW__CELERY__BROKER_URL": f"{broker}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"{broker}/1",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        },
    )
    redis_log = (home / "redis.log").open("wb")
    server = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdin=subprocess.DEVNULL,
        stdout=redis_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while b"Ready to accept connections" not in (home / "redis.log").read_bytes():
            assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.2)
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
        server.kill()
        server.wait(timeout=30)
        redis_log.close()


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
