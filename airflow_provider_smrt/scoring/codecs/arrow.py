"""Arrow type helpers: which feature types each content type can carry, and their preparation for the encoders.

Nothing here writes a body; :mod:`.encoders` and :mod:`.templates` call :func:`prepare` first, so
every column they see has a type they write as documented. Errors name the column and its type,
never a value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_smrt.exceptions import InputDataError
from airflow_provider_smrt.scoring.codecs.base import CSV

__all__ = [
    "column_message",
    "is_nested",
    "is_string",
    "is_temporal_text",
    "iso_text",
    "prepare",
    "python_values",
    "schema_memo",
    "type_problem",
]


def is_nested(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
        or pa.types.is_list_view(data_type)
        or pa.types.is_large_list_view(data_type)
        or pa.types.is_struct(data_type)
        or pa.types.is_map(data_type)
    )


def _is_binary(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
        or pa.types.is_binary_view(data_type)
    )


def is_string(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)
    )


def is_temporal_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(data_type) or pa.types.is_date(data_type) or pa.types.is_time(data_type))


def _children(data_type: pa.DataType) -> list[pa.DataType]:
    if pa.types.is_map(data_type):
        return [data_type.key_type, data_type.item_type]
    if pa.types.is_struct(data_type):
        return [data_type.field(i).type for i in range(data_type.num_fields)]
    return [data_type.value_type]


def type_problem(data_type: pa.DataType, media: str, *, nested: bool = False) -> str | None:
    """Why a column of this type cannot be sent as ``media``, or None if it can."""
    if isinstance(data_type, pa.ExtensionType):
        return type_problem(data_type.storage_type, media, nested=nested)
    if pa.types.is_dictionary(data_type):
        return type_problem(data_type.value_type, media, nested=nested)
    if _is_binary(data_type):
        return "binary values have no text form: cast the column to string (or base64-encode it) first"
    if pa.types.is_union(data_type) or pa.types.is_interval(data_type) or pa.types.is_run_end_encoded(data_type):
        return "this type is not supported: cast the column to a numeric, string or temporal type first"
    if is_nested(data_type):
        if media == CSV:
            return (
                "text/csv cannot carry nested values: use content_type='application/json' or "
                "'application/jsonlines', or flatten the column into scalar columns"
            )
        for child in _children(data_type):
            problem = type_problem(child, media, nested=True)
            if problem:
                return f"a nested field: {problem}"
    return None


def column_message(name: str, data_type: pa.DataType, media: str, problem: str) -> str:
    return f"feature column {name!r} of type {data_type} cannot be sent as {media}: {problem}"


def iso_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps, dates and times as ISO 8601 strings (zoned timestamps in UTC with a ``Z``)."""
    data_type = column.type
    if not pa.types.is_timestamp(data_type):
        return column.cast(pa.string())
    zoned = data_type.tz is not None
    if zoned:  # the stored values are UTC instants: format them as such
        column = pa.chunked_array([chunk.view(pa.timestamp(data_type.unit)) for chunk in column.chunks])
    text = pc.replace_substring(column.cast(pa.string()), " ", "T", max_replacements=1)
    if zoned:
        text = pc.binary_join_element_wise(text, "Z", "")
    return text


def _prepare_column(name: str, column: pa.ChunkedArray, media: str) -> pa.ChunkedArray:
    """Turn one feature column into a type the encoder for ``media`` writes as documented."""
    data_type = column.type
    if isinstance(data_type, pa.ExtensionType):
        column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=data_type.storage_type)
        data_type = column.type
    if pa.types.is_dictionary(data_type):
        column = column.cast(data_type.value_type)
        data_type = column.type
    problem = type_problem(data_type, media)
    if problem:
        raise InputDataError(column_message(name, data_type, media, problem))
    if pa.types.is_boolean(data_type):
        return column.cast(pa.int8()) if media == CSV else column
    if pa.types.is_float16(data_type):
        return column.cast(pa.float32())
    if pa.types.is_decimal(data_type):
        return column if media == CSV else column.cast(pa.float64())
    if pa.types.is_duration(data_type):
        return column.cast(pa.int64())
    if is_temporal_text(data_type):
        return iso_text(column)
    if pa.types.is_string_view(data_type):
        return column.cast(pa.string())
    return column


def _is_sent_as_is(data_type: pa.DataType, media: str) -> bool:
    """Whether a column of this type is written by the encoder for ``media`` without preparation."""
    if pa.types.is_integer(data_type) or pa.types.is_float32(data_type) or pa.types.is_float64(data_type):
        return True
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_null(data_type):
        return True
    if media == CSV:
        return bool(pa.types.is_decimal(data_type))
    return bool(pa.types.is_boolean(data_type) or (is_nested(data_type) and type_problem(data_type, media) is None))


_T = TypeVar("_T")


def schema_memo(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Remember ``fn(schema, *args)`` for the last few schemas seen, compared with ``Schema.equals``.

    A run encodes thousands of requests with one schema. Hashing a schema (as ``functools.lru_cache``
    would) is far dearer than ``Schema.equals``, and happens under the GIL, twice per request (the
    figures are in docs/performance.md).
    Thread-safe: the memo is an immutable tuple, replaced whole.
    """
    memo: list[tuple[tuple[pa.Schema, tuple[Any, ...], _T], ...]] = [()]

    @functools.wraps(fn)
    def wrapper(schema: pa.Schema, *args: Any) -> _T:
        recent = memo[0]
        for seen, seen_args, value in recent:
            if seen_args == args and seen.equals(schema):
                return value
        value = fn(schema, *args)
        memo[0] = ((schema, args, value), *recent[:7])
        return value

    return wrapper


@schema_memo
def _schema_sent_as_is(schema: pa.Schema, media: str) -> bool:
    return all(_is_sent_as_is(data_type, media) for data_type in schema.types)


def prepare(features: pa.Table, media: str) -> pa.Table:
    if features.num_columns == 0:
        raise InputDataError("there are no feature columns to send: set feature_columns or check the input schema")
    if _schema_sent_as_is(features.schema, media):  # the common case: one cached lookup per encode
        return features
    columns = [
        _prepare_column(name, column, media)
        for name, column in zip(features.column_names, features.columns, strict=True)
    ]
    return pa.Table.from_arrays(columns, names=features.column_names)


def python_values(name: str, column: pa.ChunkedArray, media: str) -> list[Any]:
    try:
        return column.to_pylist(maps_as_pydicts="strict")  # type: ignore[no-any-return]
    except (ValueError, TypeError, KeyError, pa.ArrowException) as err:
        raise InputDataError(
            f"feature column {name!r} of type {column.type} cannot be converted for {media} "
            f"({type(err).__name__}, e.g. a map with duplicate keys): cast it to JSON-compatible types first"
        ) from err
