"""S3 helpers shared by the tests: write Parquet inputs, list and read what an operator wrote."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


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
