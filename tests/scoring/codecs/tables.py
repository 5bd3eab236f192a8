"""Feature tables and their documented text and JSON forms, shared by the codec tests."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa


def mixed_table() -> pa.Table:
    """Every scalar type the encoders handle, with nulls, unicode, commas, quotes and newlines."""
    return pa.table(
        {
            "i": pa.array([1, -2, None, 2**40], pa.int64()),
            "u8": pa.array([0, 255, 7, None], pa.uint8()),
            "f": pa.array([0.1, -1.5e-7, None, 1e20], pa.float64()),
            "f32": pa.array([0.5, None, 2.25, -1.0], pa.float32()),
            "b": pa.array([True, False, None, True]),
            "d": pa.array([Decimal("1.50"), Decimal("-0.01"), None, Decimal("12345.67")], pa.decimal128(10, 2)),
            "s": pa.array(["plain", 'say "hi", ok', "multi\nline", None]),
            "u": pa.array(["héllo wörld", "日本語", "", "emoji 🎉"]),
            "cat": pa.array(["red", "blue", None, "red"]).dictionary_encode(),
            "ts": pa.array(
                [dt.datetime(2024, 5, 1, 12, 0, 0, 500000), None, dt.datetime(1999, 12, 31, 23, 59, 59), None],
                pa.timestamp("us"),
            ),
            "tz": pa.array(
                [dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), None, None, None],
                pa.timestamp("s", tz="+02:00"),
            ),
            "date": pa.array([dt.date(2024, 2, 29), None, dt.date(1970, 1, 1), dt.date(2000, 1, 1)]),
        }
    )


EXPECTED_TEXT = {  # the documented text form of mixed_table() per column (None = null)
    "i": ["1", "-2", None, str(2**40)],
    "u8": ["0", "255", "7", None],
    "f": ["0.1", "-1.5e-7", None, "1e+20"],
    "f32": ["0.5", None, "2.25", "-1"],
    "b": ["1", "0", None, "1"],
    "d": ["1.50", "-0.01", None, "12345.67"],
    "s": ["plain", 'say "hi", ok', "multi\nline", None],
    "u": ["héllo wörld", "日本語", None, "emoji 🎉"],  # an empty string and a null are both an empty field
    "cat": ["red", "blue", None, "red"],
    "ts": ["2024-05-01T12:00:00.500000", None, "1999-12-31T23:59:59.000000", None],
    "tz": ["2024-05-01T10:00:00Z", None, None, None],
    "date": ["2024-02-29", None, "1970-01-01", "2000-01-01"],
}


def parse_csv(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def numeric_table(rows: int = 5, cols: int = 3, *, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({f"x{j}": rng.normal(size=rows) for j in range(cols)})


def json_cells(table: pa.Table) -> dict[str, list[Any]]:
    """The documented JSON value of each cell of mixed_table()."""
    return {
        "i": [1, -2, None, 2**40],
        "u8": [0, 255, 7, None],
        "f": [0.1, -1.5e-7, None, 1e20],
        "f32": [0.5, None, 2.25, -1.0],
        "b": [True, False, None, True],
        "d": [1.5, -0.01, None, 12345.67],
        "s": ["plain", 'say "hi", ok', "multi\nline", None],
        "u": ["héllo wörld", "日本語", "", "emoji 🎉"],
        "cat": ["red", "blue", None, "red"],
        "ts": ["2024-05-01T12:00:00.500000", None, "1999-12-31T23:59:59.000000", None],
        "tz": ["2024-05-01T10:00:00Z", None, None, None],
        "date": ["2024-02-29", None, "1970-01-01", "2000-01-01"],
    }
