"""Shards of one input scored by several tasks into one output: balanced, equal to one run, rerun per shard.

Real parts: the input and output live on the local S3 server, and every shard is scored by a
``SageMakerBatchScoreOperator`` job against the local endpoint (counted there).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.row_groups import split_row_groups, with_row_groups
from airflow_provider_smrt.scoring.shards import plan_shards
from airflow_provider_smrt.scoring.storage import Storage
from airflow_provider_smrt.shards import plan_shards as plan_shards_task
from tests.scoring.fakes import numeric_table
from tests.support.s3_objects import list_keys, put_parquet, read_parts

UNIT_ROWS = 1_000
#: file name → (rows, rows per row group): small files, one large file of many row groups, and a file
#: whose single row group holds several work units (it cannot be split).
FILES = {
    "a.parquet": (900, 900),
    "b.parquet": (1_200, 600),
    "c.parquet": (300, 300),
    "big.parquet": (12_000, 1_000),
    "wide.parquet": (2_500, 2_500),
}
TOTAL = sum(rows for rows, _ in FILES.values())


@pytest.fixture(autouse=True)
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "UNIT_ROWS", UNIT_ROWS)


@pytest.fixture
def inputs(s3_client: Any, s3_prefix: str) -> str:
    start = 0
    for name, (rows, group) in FILES.items():
        put_parquet(s3_client, f"{s3_prefix}in/{name}", numeric_table(rows, start=start), row_group_size=group)
        start += rows
    return s3_prefix + "in/"


def score(endpoint: str, input_uri: str | list[str], output_uri: str, map_index: int | None, **kwargs: Any) -> dict:
    operator = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name=endpoint,
        input_uri=input_uri,
        output_uri=output_uri,
        passthrough_columns=["id"],
        max_rows_per_request=250,
        concurrency=2,
        **kwargs,
    )
    return operator.build_job(map_index).run()


def sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.sort_by("id").to_pylist()


def test_shards_are_balanced_and_cover_every_row_once(s3_client: Any, inputs: str) -> None:
    storage = Storage(s3_client=s3_client)
    shards = plan_shards(storage, inputs, 4)
    assert len(shards) == 4
    # the large file is split into row-group ranges; the file of one big row group never is
    assert any("big.parquet#row_groups=" in uri for shard in shards for uri in shard)
    assert not any("wide.parquet#" in uri for shard in shards for uri in shard)
    rows = []
    for shard in shards:
        files = dataset.read_input_files(storage, dataset.resolve_inputs(storage, shard))
        rows.append(sum(unit.num_rows for file in files for unit in dataset.plan_units(file)))
    assert sum(rows) == TOTAL
    largest_piece = 2_500  # the one-row-group file
    assert max(rows) - min(rows) <= largest_piece, rows
    assert plan_shards(storage, inputs, 4) == shards  # deterministic
    assert len(plan_shards(storage, inputs, 1000)) == 12 + 1 + 2 + 1 + 1  # at most one shard per piece


def test_the_union_of_the_shards_is_a_single_run(
    s3_client: Any, s3_prefix: str, inputs: str, make_endpoint: Callable[..., str]
) -> None:
    endpoint = make_endpoint("sum")
    single = score(endpoint, inputs, s3_prefix + "single/", None)
    shards = plan_shards_task(inputs, 4)  # through the Airflow connection, as a mapped DAG calls it
    assert json_round_trip(shards) == shards
    with ThreadPoolExecutor(max_workers=len(shards)) as pool:  # the shards share the output at once
        summaries = list(
            pool.map(lambda item: score(endpoint, item[1], s3_prefix + "sharded/", item[0]), enumerate(shards))
        )
    assert sum(summary["rows_in"] for summary in summaries) == single["rows_in"] == TOTAL
    assert sum(summary["rows_scored"] for summary in summaries) == TOTAL
    assert sorted_rows(read_parts(s3_client, s3_prefix + "sharded/")) == sorted_rows(
        read_parts(s3_client, s3_prefix + "single/")
    )
    sharded_keys = list_keys(s3_client, s3_prefix + "sharded/")
    single_keys = list_keys(s3_client, s3_prefix + "single/")
    assert [key for key in sharded_keys if key.startswith("part-")] == [
        key for key in single_keys if key.startswith("part-")
    ]  # the same parts, by name
    assert [key for key in sharded_keys if key.startswith("_manifest")] == [
        f"_manifest-{index:05d}.json" for index in range(4)
    ]


def json_round_trip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def test_rerunning_a_failed_shard_rescores_only_that_shard(
    s3_client: Any,
    s3_prefix: str,
    inputs: str,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
    patch_faults: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> None:
    endpoint = make_endpoint("sum")
    output = s3_prefix + "out/"
    shards = plan_shards(Storage(s3_client=s3_client), inputs, 4)
    failed = 2
    rows = {
        index: score(endpoint, shard, output, index)["rows_in"] for index, shard in enumerate(shards) if index != failed
    }
    patch_faults(endpoint, {"error_5xx_rate": 1.0})  # the endpoint has a bad minute while shard 2 runs
    with pytest.raises(Exception):  # noqa: B017 - whatever error class, the shard failed
        score(endpoint, shards[failed], output, failed, max_attempts=1)
    patch_faults(endpoint, {"error_5xx_rate": 0.0})
    before = endpoint_stats(endpoint)["rows_ok"]
    rerun = score(endpoint, shards[failed], output, failed)
    assert endpoint_stats(endpoint)["rows_ok"] - before == rerun["rows_in"] == rerun["rows_scored"]
    assert rerun["rows_in"] == TOTAL - sum(rows.values())
    # every shard's parts survived the others' runs: the output is the whole input, each row once
    out = read_parts(s3_client, output)
    assert sorted(out["id"].to_pylist()) == list(range(TOTAL))
    # and rerunning every shard now sends nothing
    before = endpoint_stats(endpoint)["requests"]
    for index, shard in enumerate(shards):
        assert score(endpoint, shard, output, index)["units_skipped"] > 0
    assert endpoint_stats(endpoint)["requests"] == before


def test_row_group_selectors(s3_client: Any, inputs: str) -> None:
    storage = Storage(s3_client=s3_client)
    big = inputs + "big.parquet"
    assert split_row_groups(with_row_groups(big, 3, 5)) == (big, (3, 5))
    assert split_row_groups(big) == (big, None)
    for bad in (big + "#row_groups=5:3", big + "#row_groups=x", inputs + "#row_groups=0:1"):
        with pytest.raises(InputDataError, match="row-group selector"):
            split_row_groups(bad)
    with pytest.raises(InputDataError, match="has 12 row group"):
        dataset.read_input_files(storage, dataset.resolve_inputs(storage, [with_row_groups(big, 10, 13)]))
    with pytest.raises(InputDataError, match="more than once"):
        dataset.resolve_inputs(storage, [with_row_groups(big, 0, 2), with_row_groups(big, 2, 4)])
    (selected,) = dataset.read_input_files(storage, dataset.resolve_inputs(storage, [with_row_groups(big, 3, 5)]))
    assert [(unit.start, unit.end) for unit in dataset.plan_units(selected)] == [(3_000, 4_000), (4_000, 5_000)]
    with pytest.raises(ParameterValidationError, match="num_shards"):
        plan_shards(storage, inputs, 0)
    assert plan_shards(storage, inputs.replace("/in/", "/nothing/"), 4, allow_empty_input=True) == []
