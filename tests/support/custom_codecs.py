"""A working user encoder and decoder (dotted paths ``tests.support.custom_codecs.<name>``) for the DAG tests."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv


def numbers_csv(features: pa.Table) -> bytes:
    """Every feature column (text holding numbers included) as float64 CSV rows, no header."""
    columns = [pc.cast(features.column(name), pa.float64()) for name in features.column_names]
    table = pa.table(columns, names=features.column_names)
    out = io.BytesIO()
    pacsv.write_csv(table, out, write_options=pacsv.WriteOptions(include_header=False))
    return out.getvalue()


def score_table(body: bytes, num_rows: int) -> pa.Table:
    """One number a line, as a ``score`` column."""
    values = [float(line) for line in body.decode().splitlines() if line.strip()]
    return pa.table({"score": pa.array(values, pa.float64())})
