"""Decode request bodies into a float matrix and encode predictions, for the built-in local models.

Content types: ``text/csv`` (no header, one row per line, quoted fields allowed, empty = null),
``application/jsonlines`` (a JSON list or object per line) and ``application/json``
(``{"instances": [...]}`` or a bare list; answered with ``{"predictions": [...]}``).
Decoding is vectorised: one orjson call for plain numeric CSV, pyarrow's CSV reader otherwise,
one orjson call for JSON. Nulls become NaN; booleans become 1/0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

CSV = "text/csv"
JSONLINES = "application/jsonlines"
JSON = "application/json"
SUPPORTED = (CSV, JSONLINES, JSON)
_ALIASES = {"application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES, "text/plain": CSV}
_TRUE = {"true": 1.0, "false": 0.0}


class PayloadError(ValueError):
    """The body cannot be decoded or encoded; ``status`` is what a model container would answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def media_type(value: str | None, *, default: str) -> str:
    """The bare, lower-case media type of a Content-Type or Accept value (``*/*`` and none → default)."""
    if not value:
        return default
    bare = value.split(";", 1)[0].split(",", 1)[0].strip().lower()
    if not bare or bare == "*/*":
        return default
    return _ALIASES.get(bare, bare)


def decode(body: bytes, content_type: str) -> np.ndarray:
    """Decode ``body`` into a 2-D float64 matrix (rows x features; NaN for nulls)."""
    if content_type == CSV:
        matrix = _decode_csv(body)
    elif content_type == JSONLINES:
        lines = [line for line in body.splitlines() if line.strip()]
        matrix = _rows_to_matrix(_loads(b"[" + b",".join(lines) + b"]"))
    elif content_type == JSON:
        doc = _loads(body)
        if isinstance(doc, dict):
            if "instances" not in doc:
                raise PayloadError('a JSON object body needs an "instances" list')
            doc = doc["instances"]
        if not isinstance(doc, list):
            raise PayloadError('a JSON body must be a list of rows or {"instances": [...]}')
        matrix = _rows_to_matrix(doc)
    else:
        raise PayloadError(f"unsupported content type {content_type!r}; use one of {', '.join(SUPPORTED)}", status=415)
    if matrix.shape[0] == 0:
        raise PayloadError("the payload holds no rows")
    return matrix


def encode(values: np.ndarray, names: Sequence[str], accept: str) -> bytes:
    """Encode a rows x outputs matrix; one output gives bare numbers, several give objects keyed by ``names``."""
    single = values.shape[1] == 1
    if accept == CSV:
        if values.shape[0] == 0:
            return b""
        dumped = orjson.dumps(values.tolist(), option=orjson.OPT_SERIALIZE_NUMPY)
        return dumped[2:-2].replace(b"],[", b"\n") + b"\n"
    if accept == JSONLINES:
        if single:
            dumped = orjson.dumps(values[:, 0].tolist())
            return dumped[1:-1].replace(b",", b"\n") + b"\n" if values.shape[0] else b""
        return b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in values.tolist())
    if accept == JSON:
        if single:
            return orjson.dumps({"predictions": values[:, 0].tolist()})
        return orjson.dumps({"predictions": [dict(zip(names, row, strict=True)) for row in values.tolist()]})
    raise PayloadError(f"unsupported accept {accept!r}; use one of {', '.join(SUPPORTED)}", status=406)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise PayloadError(f"invalid JSON: {err.msg} at position {err.pos}") from err


def _decode_csv(body: bytes) -> np.ndarray:
    fast = _decode_plain_csv(body)
    return fast if fast is not None else _decode_csv_arrow(body)


def _decode_plain_csv(body: bytes) -> np.ndarray | None:
    """The common case (plain numbers, no quotes, no empties) in one orjson call; None when it does not apply.

    The CSV text becomes a flat JSON array (newlines → commas); a per-line comma count checks the shape.
    """
    text = body.rstrip(b"\n")
    if not text or b'"' in text or b"\r" in text:
        return None
    raw = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    commas = np.flatnonzero(raw == 44)
    per_line = np.diff(np.searchsorted(commas, newlines), prepend=0, append=len(commas))
    n_cols = int(per_line[0]) + 1
    if not (per_line == n_cols - 1).all():
        return None
    try:
        flat = orjson.loads(b"[" + text.replace(b"\n", b",") + b"]")
        values = np.fromiter(flat, dtype=np.float64, count=len(flat))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if values.size != (len(newlines) + 1) * n_cols:
        return None
    return values.reshape(len(newlines) + 1, n_cols)


def _decode_csv_arrow(body: bytes) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
            convert_options=pacsv.ConvertOptions(
                null_values=[""],
                strings_can_be_null=True,
                true_values=["true", "True", "TRUE"],
                false_values=["false", "False", "FALSE"],
            ),
        )
    except (pa.ArrowInvalid, ValueError) as err:
        raise PayloadError(f"invalid CSV: {err}") from err
    columns = []
    for index, column in enumerate(table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns.append(np.array([_to_float(v, row=r, col=index) for r, v in enumerate(column.to_pylist())]))
            continue
        try:
            columns.append(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise PayloadError(f"column {index} is not numeric ({column.type})") from err
    if not columns:
        return np.empty((0, 0))
    return np.column_stack(columns).astype(np.float64, copy=False)


def _rows_to_matrix(rows: list[Any]) -> np.ndarray:
    if not rows:
        return np.empty((0, 0))
    rows = [list(row.values()) if isinstance(row, dict) else row for row in rows]
    if all(isinstance(row, list) for row in rows):
        try:
            matrix = np.array(rows, dtype=np.float64)
            if matrix.ndim == 2:
                return matrix
        except (ValueError, TypeError):
            pass
    return _rows_to_matrix_slow(rows)


def _rows_to_matrix_slow(rows: list[Any]) -> np.ndarray:
    """Row by row, for ragged rows, strings and precise error messages."""
    width = 0
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            raise PayloadError(f"row {index} is a {type(row).__name__}, not a list or an object")
        width = max(width, len(row))
    matrix = np.full((len(rows), width), np.nan)
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            matrix[r, c] = _to_float(value, row=r, col=c)
    return matrix


def _to_float(value: Any, *, row: int, col: int) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return float("nan")
        if stripped.lower() in _TRUE:
            return _TRUE[stripped.lower()]
        try:
            return float(stripped)
        except ValueError:
            pass
    raise PayloadError(f"row {row} column {col}: value of type {type(value).__name__} is not numeric")
