"""A demo Parquet dataset made of the diabetes features, for the example DAGs and benchmarks."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.local.models import DIABETES_FEATURES, diabetes_dataset


def demo_table(*, rows: int, seed: int = 0, first_id: int = 0) -> pa.Table:
    """``rows`` diabetes rows resampled with small noise, plus ``patient_id`` (int64) and ``visit_date`` (date32)."""
    source, _ = diabetes_dataset()
    rng = np.random.default_rng(seed)
    picked = source[rng.integers(0, len(source), size=rows)]
    noisy = picked + rng.normal(0.0, 0.002, size=picked.shape)
    start = dt.date(2024, 1, 1)
    days = rng.integers(0, 365, size=rows)
    columns: dict[str, Any] = {
        "patient_id": pa.array(np.arange(first_id, first_id + rows, dtype=np.int64)),
        "visit_date": pa.array([start + dt.timedelta(days=int(d)) for d in days], type=pa.date32()),
    }
    for index, name in enumerate(DIABETES_FEATURES):
        columns[name] = pa.array(noisy[:, index])
    return pa.table(columns)


def write_demo_dataset(
    *, s3_client: Any, uri: str, rows: int = 10_000, files: int = 4, seed: int = 0, row_groups_per_file: int = 4
) -> list[str]:
    """Write ``rows`` rows over ``files`` Parquet files under ``uri`` (``s3://bucket/prefix/``); return their URIs."""
    if not uri.startswith("s3://"):
        raise ValueError(f"uri must be s3://bucket/prefix/; got {uri!r}")
    if rows < 1 or files < 1:
        raise ValueError("rows and files must be positive")
    bucket, _, prefix = uri[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    written = []
    bounds = [rows * i // files for i in range(files + 1)]
    for index in range(files):
        count = bounds[index + 1] - bounds[index]
        if count == 0:
            continue
        table = demo_table(rows=count, seed=seed + index, first_id=bounds[index])
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=max(1, -(-count // row_groups_per_file)))
        key = f"{prefix}part-{index:05d}.parquet"
        s3_client.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        written.append(f"s3://{bucket}/{key}")
    return written
