"""Request body encoders (``text/csv``, ``application/json``, ``application/jsonlines``) and the user encoder wrapper.

Vectorised: Arrow's CSV writer and compute kernels, or one 2-D numpy array serialised by orjson;
never a Python loop per value where it can be avoided.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.scoring.codecs.arrow import is_string, prepare, python_values, schema_memo
from airflow_provider_smrt.scoring.codecs.base import CSV, JSON, JSONLINES, JsonRecordFormat
from airflow_provider_smrt.scoring.codecs.json_values import GENERAL_OPTS, NUMPY_OPTS, json_default

__all__ = ["CsvEncoder", "JsonEncoder", "UserEncoder"]

# Strings that need RFC 4180 quoting in a CSV field.
_NEEDS_QUOTING = r'[,"\r\n]'
_MAX_EXACT_INT_IN_FLOAT = 2**53


class CsvEncoder:
    """``text/csv`` request bodies (quoting only where needed).

    Features all float64, all float32 or all integer, without nulls, NaN or infinity (the common case
    for models) are written by orjson from one array (:func:`_csv_of_matrix`). Other tables without a
    string value that needs quoting are written unquoted by Arrow's CSV writer. Otherwise every column
    is formatted with Arrow's cast to string, the values that need it are quoted, and lines are joined
    with Arrow compute kernels: still no Python loop per row.

    :param header: start every body with a line of the feature names (for containers that read the
        first line as a header, such as MLflow's scoring server); one prediction per row is still expected.
    """

    _OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def __init__(self, *, header: bool = False) -> None:
        self.header = header

    def __call__(self, features: pa.Table) -> bytes:
        table = prepare(features, CSV)
        if self.header:
            return _header_line(tuple(table.column_names)) + self._rows(table)
        return self._rows(table)

    def _rows(self, table: pa.Table) -> bytes:
        matrix = _uniform_numeric_matrix(table)
        if matrix is not None:
            return _csv_of_matrix(matrix)
        to_quote = [
            i
            for i in _string_columns(table.schema)
            if pc.any(pc.match_substring_regex(table.column(i), _NEEDS_QUOTING)).as_py()
        ]
        if not to_quote:
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, self._OPTIONS)
            return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]
        return _join_csv(table, set(to_quote))


@functools.lru_cache(maxsize=64)
def _header_line(names: tuple[str, ...]) -> bytes:
    """The CSV header line of ``names`` (RFC 4180 quoting where a name needs it)."""
    fields = ['"' + name.replace('"', '""') + '"' if re.search(_NEEDS_QUOTING, name) else name for name in names]
    return (",".join(fields) + "\n").encode("utf-8")


@schema_memo
def _string_columns(schema: pa.Schema) -> tuple[int, ...]:
    """Indices of the string columns (the only ones whose values may need CSV quoting)."""
    return tuple(i for i, data_type in enumerate(schema.types) if is_string(data_type))


def _join_csv(table: pa.Table, to_quote: set[int]) -> bytes:
    if table.num_rows == 0:
        return b""
    fields: list[pa.ChunkedArray] = []
    for i, column in enumerate(table.columns):
        text = column if pa.types.is_string(column.type) else column.cast(pa.string())
        if i in to_quote:
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
            text = pc.if_else(pc.match_substring_regex(text, _NEEDS_QUOTING), quoted, text)
        fields.append(text)
    lines = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="")
    lines = pc.binary_join_element_wise(lines, "", "\n").combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2][start:end].to_pybytes()  # type: ignore[no-any-return]


def _uniform_numeric_matrix(table: pa.Table) -> np.ndarray | None:
    """Features all float32, all float64 or all integer, without nulls and finite → their 2-D array; else None.

    These are written by :func:`_csv_of_matrix`; a mix of kinds or widths, a null, NaN or infinity goes to
    Arrow's CSV writer, which formats each column by its own type.
    """
    types = table.schema.types
    if not (
        all(pa.types.is_float64(t) for t in types)
        or all(pa.types.is_float32(t) for t in types)
        or all(pa.types.is_integer(t) for t in types)
    ):
        return None
    matrix = _numeric_matrix(table)
    if matrix is None or (matrix.dtype.kind == "f" and not np.isfinite(matrix).all()):
        return None
    return matrix


def _csv_of_matrix(matrix: np.ndarray) -> bytes:
    """CSV lines of a 2-D numeric array: orjson writes the values, each ``ncols``-th comma becomes a newline.

    orjson formats floats in their shortest round-trip form (``0.1``, ``3.0``, ``1e-7``, float32 as float32)
    several times as fast as Arrow's cast to string; the values read back are the same. It works in blocks
    of :data:`_BLOCK_VALUES` values so that every temporary buffer stays below the mmap threshold that
    :func:`~airflow_provider_smrt.scoring.memory.fix_mmap_threshold` pins: a larger one is mapped and
    faulted in afresh on every request, which costs more than the blocks' one extra copy.
    """
    rows, columns = matrix.shape
    step = max(1, _BLOCK_VALUES // columns)
    return b"".join([_csv_lines(matrix[start : start + step]) for start in range(0, rows, step)])


def _csv_lines(block: np.ndarray) -> memoryview:
    """The CSV lines of ``block`` (rows of a C-contiguous array): orjson's output, edited in one copy."""
    columns = block.shape[1]
    text = bytearray(orjson.dumps(block.reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY))  # [v,v,...,v]
    view = np.frombuffer(text, dtype=np.uint8)
    commas = np.flatnonzero(view == _COMMA)
    view[commas[columns - 1 :: columns]] = _NEWLINE
    view[-1] = _NEWLINE
    return memoryview(text)[1:]


_COMMA, _NEWLINE = ord(","), ord("\n")
#: Values per orjson call: ~20 characters each, ~160 KB of text, below the pinned 256 KiB mmap threshold.
_BLOCK_VALUES = 8192


def _numeric_matrix(table: pa.Table) -> np.ndarray | None:
    """All features numeric without nulls → a C-contiguous 2-D array for orjson; else None."""
    types = table.schema.types
    if not all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        return None
    if any(column.null_count for column in table.columns):
        return None
    all_float = all(pa.types.is_floating(t) for t in types)
    all_int = not any(pa.types.is_floating(t) for t in types)
    if all_float:
        dtype: type[np.generic] = np.float32 if all(pa.types.is_float32(t) for t in types) else np.float64
    elif all_int:
        dtype = np.int64
        for column, data_type in zip(table.columns, types, strict=True):
            if pa.types.is_uint64(data_type) and table.num_rows and pc.max(column).as_py() > np.iinfo(np.int64).max:
                return None
    else:  # integers and floats together: float64, unless an integer would lose precision
        dtype = np.float64
        for column, data_type in zip(table.columns, types, strict=True):
            if pa.types.is_integer(data_type) and table.num_rows and data_type.bit_width > 32:
                low, high = pc.min_max(column).values()
                if max(abs(low.as_py()), abs(high.as_py())) > _MAX_EXACT_INT_IN_FLOAT:
                    return None
    if table.num_rows and len(set(types)) == 1 and (pa.types.is_integer(types[0]) or types[0] in _TENSOR_FLOATS):
        # One type throughout: Arrow builds the row-major array in one call, without the GIL.
        batch = table.combine_chunks().to_batches()[0] if isinstance(table, pa.Table) else table
        tensor: np.ndarray = batch.to_tensor(row_major=True).to_numpy()
        return tensor.astype(dtype, copy=False)
    matrix = np.empty((table.num_rows, table.num_columns), dtype=dtype)
    for j, column in enumerate(table.columns):
        matrix[:, j] = column.to_numpy()
    return matrix


_TENSOR_FLOATS = (pa.float32(), pa.float64())


class JsonEncoder:
    """``application/json`` (``{"instances": [...]}``) and ``application/jsonlines`` request bodies.

    Numeric features without nulls (list records) take a fast path: one 2-D numpy array serialised
    by orjson. Anything else goes column by column through ``to_pylist`` and orjson.

    :param lines: JSON lines (one record per line) instead of one ``{"instances": ...}`` document.
    :param record_format: ``"list"`` records (``[v1, v2]``) or ``"object"`` records (``{"col": v}``).
    """

    def __init__(self, *, lines: bool, record_format: JsonRecordFormat = "list") -> None:
        self.lines = lines
        self.record_format = record_format
        self.media = JSONLINES if lines else JSON

    def __call__(self, features: pa.Table) -> bytes:
        table = prepare(features, self.media)
        if self.record_format == "list":
            matrix = _numeric_matrix(table)
            if matrix is not None:
                if not self.lines:
                    return orjson.dumps({"instances": matrix}, option=NUMPY_OPTS)
                if matrix.shape[0] == 0:
                    return b""
                # Numbers only: "],[" occurs exactly between rows.
                return orjson.dumps(matrix, option=NUMPY_OPTS)[1:-1].replace(b"],[", b"]\n[") + b"\n"
        names = table.column_names
        if self.record_format == "object" and len(set(names)) != table.num_columns:
            raise InputDataError(
                "json_record_format='object' needs unique feature column names; rename the duplicated columns"
            )
        columns = [python_values(name, column, self.media) for name, column in zip(names, table.columns, strict=True)]
        rows: Iterable[Any] = zip(*columns, strict=True)
        if self.record_format == "object":
            rows = (dict(zip(names, row, strict=True)) for row in rows)
        try:
            if self.lines:
                opts = GENERAL_OPTS | orjson.OPT_APPEND_NEWLINE
                return b"".join([orjson.dumps(row, default=json_default, option=opts) for row in rows])
            return orjson.dumps({"instances": list(rows)}, default=json_default, option=GENERAL_OPTS)
        except (TypeError, orjson.JSONEncodeError) as err:
            raise InputDataError(
                f"the features cannot be encoded as {self.media}: {type(err).__name__} ({_safe_reason(err)}); "
                "cast nested columns to JSON-compatible types"
            ) from err


def _safe_reason(err: BaseException) -> str:
    # orjson's and our own messages name types, never values; keep only the first line, bounded.
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


class UserEncoder:
    """Wraps a user encoder and checks that it returns bytes."""

    def __init__(self, fn: Callable[..., Any], *, name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, features: pa.Table) -> bytes:
        result = self.fn(features)
        if isinstance(result, bytes):
            return result
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result)
        if isinstance(result, str):
            return result.encode("utf-8")
        raise ParameterValidationError(
            f"encoder {self.name!r} returned {type(result).__name__}; it must return the request body as bytes"
        )
