"""How the scoring core uses S3 (moto's server on the local stack): which requests, how many, and the
guarantees they carry (bounded ranged reads pinned to the planned ETag, one PutObject per object)."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import InputDataError
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring import dataset
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import S3RangeReader, Storage
from tests.scoring.fakes import FakeEndpoint, numeric_table
from tests.support.s3_objects import list_keys, put_parquet, read_parts, split


class S3Calls:
    """Counts a client's S3 operations and records the Range header of every GetObject."""

    def __init__(self, client: Any) -> None:
        self.ops: Counter[str] = Counter()
        self.ranges: list[str | None] = []
        client.meta.events.register("before-call.s3", self._call)
        client.meta.events.register("before-send.s3.GetObject", self._send)

    def _call(self, model: Any, **_: Any) -> None:
        self.ops[model.name] += 1

    def _send(self, request: Any, **_: Any) -> None:
        value = request.headers.get("Range")
        self.ranges.append(value.decode() if isinstance(value, bytes) else value)

    def reset(self) -> None:
        self.ops.clear()
        self.ranges.clear()


@pytest.fixture
def counted_s3(local_stack: Any) -> tuple[Any, S3Calls]:
    """A fresh S3 client (its own event hooks) and the counter attached to it."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=local_stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )
    return client, S3Calls(client)


def test_scoring_reads_each_window_with_one_bounded_get_and_writes_with_one_put(
    counted_s3: tuple[Any, S3Calls], s3_prefix: str
) -> None:
    client, calls = counted_s3
    # 3 files x 4 row groups of 250 rows; units of 1,000 rows → one unit (and one part) per file.
    for index in range(3):
        put_parquet(client, f"{s3_prefix}in/f{index}.parquet", numeric_table(1_000, start=index * 1_000), 250)
    config = ScoringConfig(
        endpoint_name="fake",
        input_uri=f"{s3_prefix}in/",
        output_uri=f"{s3_prefix}out/",
        passthrough_columns=["id"],
        max_rows_per_request=100,
        concurrency=4,
    )
    endpoint = FakeEndpoint()
    job = ScoringJob(config=config, invoke=endpoint, storage=Storage(s3_client=client), retry_policy=RetryPolicy())
    plan = job.plan()
    assert [len(f.row_group_rows) for f in plan.files] == [4, 4, 4]
    calls.reset()

    summary = job.run()
    ops, ranges = dict(calls.ops), list(calls.ranges)

    assert summary["rows_scored"] == 3_000
    out = read_parts(client, f"{s3_prefix}out/").sort_by("id")
    assert out.column("id").to_pylist() == list(range(3_000))
    # Reading: run() plans again (per file one GET for the magic bytes, one for the footer), then one
    # GET per file for all four row groups (they fit one read window), every one with a bounded Range.
    assert ops["GetObject"] == 3 * 3, ranges
    assert all(r is not None and r.startswith("bytes=") and r.split("-")[1] for r in ranges), (
        f"an open-ended or missing Range: {ranges}"
    )
    footer_and_magic = [r for r in ranges if r.startswith("bytes=0-")]
    assert len(footer_and_magic) == 6, ranges
    # Writing: one PutObject per part plus the manifest; no multipart upload at all.
    assert ops["PutObject"] == 3 + 1
    assert not {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} & set(ops)
    assert "_manifest.json" in list_keys(client, f"{s3_prefix}out/")


def test_row_groups_beyond_the_window_budget_are_read_in_several_gets(
    counted_s3: tuple[Any, S3Calls], s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, calls = counted_s3
    uri = f"{s3_prefix}in/wide.parquet"
    put_parquet(client, uri, numeric_table(1_000), 250)
    storage = Storage(s3_client=client)
    file = dataset.read_input_file(storage, storage.stat(uri))  # type: ignore[arg-type]
    # A budget of two row groups: four row groups → two windows → two GETs, rows still all there in order.
    sizes = file.row_group_bytes
    monkeypatch.setattr(dataset, "READ_WINDOW_BYTES", max(sizes[0] + sizes[1], sizes[2] + sizes[3]))
    assert min(sizes[0] + sizes[1] + sizes[2], sizes[1] + sizes[2] + sizes[3]) > dataset.READ_WINDOW_BYTES
    assert dataset.read_windows(file, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    calls.reset()
    with storage.open_read(file.info) as handle:
        parquet = pq.ParquetFile(handle, metadata=file.metadata, pre_buffer=True)
        units = dataset.plan_units(file, 1_000)
        ids = [
            value
            for _, batch in dataset.iter_units(parquet, units, columns=["id"], batch_rows=100)
            for value in batch.column(0).to_pylist()
        ]
    assert ids == list(range(1_000))
    assert calls.ops["GetObject"] == 2, calls.ranges


def test_read_windows_keep_a_large_row_group_alone() -> None:
    file = dataset.InputFile(
        info=dataset.ObjectInfo(uri="s3://b/k", size=1),
        num_rows=40,
        row_group_rows=(10, 10, 10, 10),
        schema=pa.schema([]),
        row_group_bytes=(30, 80, 10, 10),
    )
    assert dataset.read_windows(file, [0, 1, 2, 3], 50) == [[0], [1], [2, 3]]
    assert dataset.read_windows(file, [2, 3], 50) == [[2, 3]]


def test_an_input_replaced_after_planning_fails_clearly(counted_s3: tuple[Any, S3Calls], s3_prefix: str) -> None:
    client, _ = counted_s3
    uri = f"{s3_prefix}in/moving.parquet"
    put_parquet(client, uri, numeric_table(100), 50)
    storage = Storage(s3_client=client)
    info = storage.stat(uri)
    assert info is not None and info.etag
    put_parquet(client, uri, numeric_table(120), 50)  # replaced after the run was planned

    with storage.open_read(info) as handle, pytest.raises(InputDataError) as caught:
        handle.seek(-8, io.SEEK_END)
        handle.read(8)
    assert uri in str(caught.value)
    assert "changed while it was being read" in str(caught.value)
    assert "rerun" in str(caught.value)


def test_range_reader_reads_exactly_what_is_asked(counted_s3: tuple[Any, S3Calls], s3_prefix: str) -> None:
    client, calls = counted_s3
    bucket, key = split(f"{s3_prefix}blob.bin")
    data = bytes(range(256)) * 40
    client.put_object(Bucket=bucket, Key=key, Body=data)
    calls.reset()
    reader = S3RangeReader(client, bucket, key, size=len(data))
    assert reader.seek(-10, io.SEEK_END) == len(data) - 10
    assert reader.read(100) == data[-10:]  # clipped at the end
    assert reader.read(5) == b""  # at the end: no request
    reader.seek(1000)
    buffer = bytearray(24)
    assert reader.readinto(buffer) == 24 and bytes(buffer) == data[1000:1024]
    reader.seek(0)
    assert reader.read() == data
    assert calls.ranges == [f"bytes={len(data) - 10}-{len(data) - 1}", "bytes=1000-1023", f"bytes=0-{len(data) - 1}"]
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)
