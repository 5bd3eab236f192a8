"""S3 objects in tests: write Parquet inputs, list, read and check what an operator wrote, delete prefixes."""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: The name of a data part an operator writes: ``part-<unit>-<start>-<end>-<fingerprint>.parquet``.
PART = re.compile(r"^part-.+-\d{10}-\d{10}-[0-9a-f]{12}\.parquet$")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def put_parquet(s3: Any, uri: str, table: pa.Table, row_group_size: int | None = None) -> None:
    """Write ``table`` as one Parquet object (one row group unless ``row_group_size`` says otherwise)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size or max(table.num_rows, 1))
    bucket, key = split(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def list_keys(s3: Any, uri: str) -> list[str]:
    """Keys under an ``s3://`` prefix, relative to it, sorted."""
    bucket, prefix = split(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", []))


def read_parts(s3: Any, uri: str, folder: str = "") -> pa.Table:
    """The parts (``part-*``, or ``<folder>part-*`` e.g. ``_errors/``) under an output prefix, concatenated."""
    bucket, prefix = split(uri)
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()))
        for name in list_keys(s3, uri)
        if name.startswith(folder + "part-")
    ]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_table(s3: Any, uri: str) -> pa.Table:
    """One Parquet object."""
    bucket, key = split(uri)
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def data_parts(s3: Any, uri: str) -> list[str]:
    """The data parts (names matching :data:`PART`) under an output prefix."""
    return [key for key in list_keys(s3, uri) if PART.match(key)]


def read_output(s3: Any, uri: str, folder: str = "") -> pa.Table:
    """Every data part (or every ``_errors/`` part) under ``uri``, by the strict part name; each must be a
    complete Parquet file."""
    names = [k for k in list_keys(s3, uri) if k.startswith(folder) and PART.match(k[len(folder) :])]
    tables = [read_table(s3, uri + name) for name in names]
    return pa.concat_tables(tables) if tables else pa.table({})


def incomplete_uploads(s3: Any, uri: str) -> list[str]:
    """Keys of multipart uploads under ``uri`` that were neither completed nor aborted."""
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


def delete_prefix(s3: Any, uri: str) -> None:
    """Delete every object under an ``s3://`` prefix."""
    bucket, prefix = split(uri)
    for key in list_keys(s3, uri):
        s3.delete_object(Bucket=bucket, Key=prefix + key)


#: A checkpoint segment an operator leaves: ``_checkpoints/<part name>/seg-<first row>-<end row>.parquet``.
SEGMENT = re.compile(r"^_checkpoints/(?P<part>part-[^/]+)/seg-(?P<start>\d{10})-(?P<end>\d{10})\.parquet$")


def checkpoint_segments(s3: Any, uri: str) -> list[tuple[str, int, int]]:
    """``(part name stem, first row, end row)`` of every checkpoint segment under an output prefix."""
    found = [SEGMENT.match(key) for key in list_keys(s3, uri)]
    return [(m["part"], int(m["start"]), int(m["end"])) for m in found if m]


def checkpointed_rows(s3: Any, uri: str) -> int:
    """Rows the checkpoint segments under an output prefix hold (what a rerun does not send again)."""
    return sum(end - start for _, start, end in checkpoint_segments(s3, uri))
