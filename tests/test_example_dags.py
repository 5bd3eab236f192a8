"""Every example DAG imports into a DagBag and runs with ``dag.test()`` on the local stack."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_smrt.local.demo_data import write_demo_dataset
from airflow_provider_smrt.local.models import generate_text
from tests.support.dag_runs import EXAMPLE_DAGS, ensure_db, example_module, get_dag, run_dag
from tests.support.local_control import patch_faults
from tests.support.s3_objects import list_keys, read_parts

EXAMPLE_DAG_IDS = {
    "smrt_example_batch_score",
    "smrt_example_backfill",
    "smrt_example_mapped_fanout",
    "smrt_example_async_large_payload",
    "smrt_example_llm",
    "smrt_example_csv_header",
    "smrt_example_stream",
    "smrt_example_oversize",
    "smrt_example_assets_features",
    "smrt_example_assets_score",
    "smrt_example_assets_notify",
    "smrt_example_run_cost",
    "smrt_example_compare_targets",
}
OUTPUT_COLUMNS = ["patient_id", "visit_date", "disease_progression"]


def test_example_dags_import_into_a_dagbag() -> None:
    from airflow.dag_processing.dagbag import DagBag

    ensure_db()
    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    for dag_id in EXAMPLE_DAG_IDS:
        dag = bag.dags[dag_id]
        assert dag.tags, f"{dag_id} has no tags"
        assert dag_id.startswith("smrt_"), f"{dag_id} lacks the smrt_ prefix of the provider's DAG ids"
        assert get_dag(dag_id).dag_id == dag_id  # also runnable through tests/dags/example_dags.py


def test_daily_batch_score(s3_client: Any, s3_prefix: str) -> None:
    write_demo_dataset(s3_client=s3_client, uri=s3_prefix + "in/ds=2026-01-05/", rows=300, files=2)
    write_demo_dataset(s3_client=s3_client, uri=s3_prefix + "in/ds=2026-01-04/", rows=50, files=1)
    conf = {"input_root": s3_prefix + "in", "output_root": s3_prefix + "out"}
    run = run_dag("smrt_example_batch_score", conf, logical_date=datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/ds=2026-01-05/")
    assert out.column_names == OUTPUT_COLUMNS and out.num_rows == 300
    assert run.xcom("score")["rows_scored"] == 300


def test_run_cost_reports_calls_and_cost_and_tags_requests(
    s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any
) -> None:
    module = example_module("example_run_cost")
    write_demo_dataset(s3_client=s3_client, uri=s3_prefix + "in/ds=2026-01-05/", rows=300, files=2)
    endpoint = make_endpoint("diabetes", faults={"latency_ms": 20})
    conf = {"endpoint_name": endpoint, "input_root": s3_prefix + "in", "output_root": s3_prefix + "out"}
    run = run_dag("smrt_example_run_cost", conf, logical_date=datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert run.state == "success", run.states
    summary, figures = run.xcom("score"), run.xcom("report")
    stats = endpoint_stats(endpoint)
    assert figures["http_calls"] == summary["requests"] == stats["requests"] > 0  # no fault: no retry
    assert figures["bytes_sent"] == stats["bytes_in"]
    assert figures["estimated_cost_usd"] == round(
        summary["busy_wall_seconds"] / 3600 * module.INSTANCE_COUNT * module.INSTANCE_HOURLY_USD, 6
    )
    ids = stats["inference_ids"]
    assert len(set(ids)) == len(ids) == summary["requests"] and all(i.startswith("smrt-cost-20260105-") for i in ids)


def test_backfill_three_dates_then_rerun_sends_nothing(
    s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any
) -> None:
    from airflow.models.pool import Pool

    module = example_module("example_backfill")
    ensure_db()
    Pool.create_or_update_pool(
        name=module.POOL, slots=3 * module.CONCURRENCY, description="tests", include_deferred=False
    )
    endpoint = make_endpoint("diabetes")
    dates = [datetime(2026, 1, day, tzinfo=timezone.utc) for day in (1, 2, 3)]
    rows = {date: 100 * (i + 1) for i, date in enumerate(dates)}
    shards = 2  # one shard per file (each file is one work unit)
    for i, date in enumerate(dates):
        uri = f"{s3_prefix}features/ds={date:%Y-%m-%d}/"
        write_demo_dataset(s3_client=s3_client, uri=uri, rows=rows[date], files=shards, seed=i)
    conf = {
        "endpoint_name": endpoint,
        "features_root": s3_prefix + "features",
        "predictions_root": s3_prefix + "predictions",
    }
    for date in dates:
        run = run_dag("smrt_example_backfill", conf, logical_date=date)
        assert run.state == "success", (date, run.states)
        assert len(run.xcom("plan_shards")) == shards
    task = get_dag("smrt_example_backfill").get_task("score_partition")
    assert (task.pool, task.pool_slots) == (module.POOL, module.CONCURRENCY) and task.retries == 2
    for date in dates:
        out = read_parts(s3_client, f"{s3_prefix}predictions/ds={date:%Y-%m-%d}/")
        assert out.column_names == OUTPUT_COLUMNS
        assert out.num_rows == rows[date]
        keys = list_keys(s3_client, f"{s3_prefix}predictions/ds={date:%Y-%m-%d}/")
        assert [key for key in keys if key.startswith("_manifest")] == [
            f"_manifest-{i:05d}.json" for i in range(shards)
        ]
    sent = endpoint_stats(endpoint)["rows_ok"]
    assert sent == sum(rows.values())

    rerun = run_dag("smrt_example_backfill", conf, logical_date=dates[1])
    assert rerun.state == "success", rerun.states
    assert endpoint_stats(endpoint)["rows_ok"] == sent  # the rerun re-sent nothing
    for index in range(shards):
        summary = rerun.xcom("score_partition", map_index=index)
        assert summary["units_skipped"] == summary["units_total"] > 0 and summary["requests"] == 0


def test_backfill_of_an_empty_partition_fails_without_retries(s3_prefix: str) -> None:
    conf = {"features_root": s3_prefix + "features", "predictions_root": s3_prefix + "predictions"}
    run = run_dag("smrt_example_backfill", conf, logical_date=datetime(2026, 1, 9, tzinfo=timezone.utc))
    assert run.state == "failed"
    assert run.states["plan_shards"] == "failed"  # not up_for_retry: a retry cannot create the input


def test_mapped_fan_out_with_a_pool(s3_client: Any, s3_prefix: str) -> None:
    from airflow.models.pool import Pool

    pool = example_module("example_mapped_fanout").POOL
    ensure_db()
    Pool.create_or_update_pool(name=pool, slots=2, description="tests", include_deferred=False)
    regions = ["ap", "eu", "us"]
    for i, region in enumerate(regions):
        write_demo_dataset(s3_client=s3_client, uri=f"{s3_prefix}features/region={region}/", rows=150, files=1, seed=i)
    conf = {"features_root": s3_prefix + "features/", "output_uri": s3_prefix + "predictions/"}
    run = run_dag("smrt_example_mapped_fanout", conf)
    assert run.state == "success", run.states
    assert {key for key in run.states if key.startswith("score[")} == {"score[0]", "score[1]", "score[2]"}
    assert get_dag("smrt_example_mapped_fanout").get_task("score").pool == pool
    keys = list_keys(s3_client, s3_prefix + "predictions/")
    assert [k for k in keys if k.startswith("_manifest")] == [f"_manifest-0000{i}.json" for i in range(3)]
    out = read_parts(s3_client, s3_prefix + "predictions/")
    assert out.num_rows == 450 and out.column_names == OUTPUT_COLUMNS
    # map_index_template: the UI shows each mapped task's partition, not 0, 1, 2.
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        shown = {
            ti.rendered_map_index
            for ti in session.query(TaskInstance).filter_by(
                dag_id="smrt_example_mapped_fanout", run_id=run.run_id, task_id="score"
            )
        }
    assert shown == {f"{s3_prefix}features/region={region}/" for region in regions}


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(str(record.msg))


def test_async_large_payload_with_a_deferrable_sensor(local_stack: Any, s3_prefix: str, make_endpoint: Any) -> None:
    dag = get_dag("smrt_example_async_large_payload")
    assert dag.get_task("wait").deferrable is True
    # The endpoint holds the requests until the trigger runs, so the sensor's first check (before it defers)
    # cannot find the outputs already there, however slow the machine.
    endpoint = make_endpoint("sum", faults={"hold_after_requests": 0})
    conf = {"prefix": s3_prefix[len("s3://smrt-local/") :] + "async/", "payloads": 1, "endpoint_name": endpoint}
    handler, root = _Messages(), logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    run_over = threading.Event()

    def release_once_deferred() -> None:
        deadline = time.monotonic() + 600  # only a broken sensor (one that never defers) waits this long
        while not run_over.wait(0.05) and time.monotonic() < deadline:
            if any("running trigger in line" in message for message in handler.messages):
                break
        patch_faults(local_stack.runtime_endpoint_url, endpoint, {"hold_after_requests": None})

    releaser = threading.Thread(target=release_once_deferred, daemon=True)
    releaser.start()
    try:
        run = run_dag("smrt_example_async_large_payload", conf)
    finally:
        run_over.set()  # release whatever is still held
        releaser.join(timeout=30)
        root.removeHandler(handler)
        root.setLevel(level)
    assert run.state == "success", run.states
    assert run.xcom("check") == {"payloads": 1, "rows": 100_000}
    # dag.test() runs a deferred task's trigger in line, then resumes the task
    assert any("running trigger in line" in message for message in handler.messages), "the sensor did not defer"


def test_llm_one_request_per_row(s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any) -> None:
    questions = example_module("example_llm").QUESTIONS
    endpoint = make_endpoint("llm")
    conf = {
        "endpoint_name": endpoint,
        "input_uri": s3_prefix + "prompts/",
        "output_uri": s3_prefix + "answers/",
        "max_new_tokens": 3,
    }
    run = run_dag("smrt_example_llm", conf)
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "answers/").sort_by("id")
    assert out.column_names == ["id", "answer"]
    assert out["answer"].to_pylist() == [generate_text(f"Answer briefly: {q}", max_new_tokens=3) for q in questions]
    stats = endpoint_stats(endpoint)
    assert stats["invocations_ok"] == len(questions) == stats["rows_ok"]


@pytest.mark.parametrize(
    ("dag_id", "spec"), [("smrt_example_csv_header", {"csv_header": True}), ("smrt_example_stream", {})]
)
def test_csv_header_and_stream_examples(
    dag_id: str, spec: dict[str, Any], s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any
) -> None:
    endpoint = make_endpoint("sum", **spec)
    conf = {"endpoint_name": endpoint, "input_uri": s3_prefix + "in/", "output_uri": s3_prefix + "out/"}
    run = run_dag(dag_id, conf)
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/").sort_by("id")
    rows = example_module(dag_id.removeprefix("smrt_")).ROWS
    assert out["prediction"].to_pylist() == [i / 10 + i % 7 for i in range(rows)]
    assert endpoint_stats(endpoint)["invocations_ok"] == rows // 50


def test_oversize_example_sends_the_big_row_to_the_async_endpoint(
    s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any
) -> None:
    module = example_module("example_oversize")
    realtime = make_endpoint("constant", mode="realtime")
    asynchronous = make_endpoint("constant", mode="async")
    conf = {
        "endpoint_name": realtime,
        "oversize_endpoint_name": asynchronous,
        "input_uri": s3_prefix + "in/",
        "output_uri": s3_prefix + "out/",
    }
    run = run_dag("smrt_example_oversize", conf)
    assert run.state == "success", run.states
    assert read_parts(s3_client, s3_prefix + "out/")["id"].to_pylist() == list(range(module.ROWS))
    assert run.xcom("score")["rows_async"] == 1
    assert endpoint_stats(realtime)["rows_ok"] == module.ROWS - 1
    assert endpoint_stats(asynchronous)["async_succeeded"] == 1


def test_compare_targets_scores_prod_and_shadow_in_one_pass(
    s3_client: Any, s3_prefix: str, make_endpoint: Any, endpoint_stats: Any
) -> None:
    write_demo_dataset(s3_client=s3_client, uri=s3_prefix + "in/ds=2026-01-05/", rows=300, files=2)
    endpoint = make_endpoint("diabetes", variants={"prod": {"weight": 1.0}, "shadow": {"weight": 0.0, "model": "sum"}})
    conf = {"endpoint_name": endpoint, "input_root": s3_prefix + "in", "output_root": s3_prefix + "out"}
    run = run_dag("smrt_example_compare_targets", conf, logical_date=datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert run.state == "success", run.states
    out = read_parts(s3_client, s3_prefix + "out/ds=2026-01-05/")
    assert out.column_names == [
        "patient_id",
        "visit_date",
        "disease_progression__prod",
        "disease_progression__shadow",
    ]
    assert out.num_rows == 300 and endpoint_stats(endpoint)["rows_ok"] == 600
    prod = out["disease_progression__prod"].to_pylist()
    shadow = out["disease_progression__shadow"].to_pylist()
    diffs = [abs(a - b) for a, b in zip(prod, shadow, strict=True)]
    figures = run.xcom("report")
    assert figures["rows_failed_by_shadow"] == 0
    assert figures["agreement"]["rows"] == 300
    assert figures["agreement"]["mean_abs_diff"] == pytest.approx(sum(diffs) / 300)
    assert figures["agreement"]["max_abs_diff"] == pytest.approx(max(diffs))
