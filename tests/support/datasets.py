"""Feature tables of the scoring tests and what the local ``sum`` model predicts for them."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tests.support.s3_objects import put_parquet


def features(ids: range, *, poison: set[int] | None = None, secret: str | None = None) -> pa.Table:
    """Rows ``id, f0, f1, f2`` (and a pass-through ``note`` when ``secret`` is given); the sum model adds f0..f2."""
    f0 = [-999.0 if poison and i in poison else float(i % 13) for i in ids]
    columns: dict[str, pa.Array] = {
        "id": pa.array(list(ids), pa.int64()),
        "f0": pa.array(f0, pa.float64()),
        "f1": pa.array([float(i % 5) / 4 for i in ids], pa.float64()),
        "f2": pa.array([i % 3 for i in ids], pa.int32()),
    }
    if secret is not None:
        columns["note"] = pa.array([f"{secret}-{i}" for i in ids], pa.string())
    return pa.table(columns)


def expected_sum(table: pa.Table) -> dict[int, float]:
    """``{id: f0 + f1 + f2}``: the sum model's prediction of every row."""
    rows = table.select(["id", "f0", "f1", "f2"]).to_pylist()
    return {r["id"]: float(r["f0"]) + float(r["f1"]) + float(r["f2"]) for r in rows}


def put_files(s3: Any, prefix: str, *, files: int, rows: int, poison: set[int] | None = None) -> pa.Table:
    """``files`` Parquet files of ``rows`` rows each (one work unit each) under ``prefix``."""
    tables = []
    for k in range(files):
        table = features(range(k * 10_000, k * 10_000 + rows), poison=poison)
        put_parquet(s3, f"{prefix}f{k:03d}.parquet", table)
        tables.append(table)
    return pa.concat_tables(tables)
