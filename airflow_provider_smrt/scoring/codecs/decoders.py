"""Response body decoders (``text/csv``, ``application/json``, ``application/jsonlines``) and the normalisation
of their items, and of a user decoder's result, into prediction columns of the documented types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from airflow_provider_smrt.exceptions import ParameterValidationError, PredictionRowCountError, ResponseDecodeError
from airflow_provider_smrt.scoring.codecs.arrow import is_nested, is_string, is_temporal_text, iso_text
from airflow_provider_smrt.scoring.codecs.json_values import json_text

__all__ = ["RESPONSE_KEYS", "decode_csv", "decode_json", "decode_jsonlines", "normalise_user_result"]

#: Keys of a JSON response object that hold the per-row items, in order of preference.
RESPONSE_KEYS: tuple[str, ...] = ("predictions", "outputs", "results")


def decode_csv(body: bytes, *, num_rows: int, prediction_columns: Sequence[str] | None = None) -> pa.Table:
    """Decode a ``text/csv`` response: one line per row, or one line of ``num_rows`` values for one output."""
    if not body.strip():
        return _empty_or_count_error(num_rows, got=0, prediction_columns=prediction_columns)
    if b"," not in body and b'"' not in body:
        numbers = _one_number_per_line(body, num_rows)
        if numbers is not None:
            return pa.table([numbers], names=_output_names(1, prediction_columns))
    table = _read_csv(body)
    one_output = prediction_columns is None or len(prediction_columns) == 1
    if table.num_rows == 1 and num_rows > 1 and table.num_columns == num_rows and one_output:
        columns = [_normalise_output(column.combine_chunks()) for column in table.columns]
        if all(c.type == columns[0].type for c in columns) and not pa.types.is_string(columns[0].type):
            values = pa.concat_arrays(columns)
        else:
            values = pa.concat_arrays([_as_text(c) for c in columns])
        return pa.table([values], names=_output_names(1, prediction_columns))
    if table.num_rows != num_rows:
        raise PredictionRowCountError(expected=num_rows, got=table.num_rows, detail="text/csv lines")
    arrays = [_normalise_output(column.combine_chunks()) for column in table.columns]
    return pa.table(arrays, names=_output_names(len(arrays), prediction_columns))


def _one_number_per_line(body: bytes, num_rows: int) -> pa.Array | None:
    """Fast path for the most common response, one number per line.

    Plain numbers (digits, sign, point, exponent) are parsed by orjson as one JSON array, without
    releasing the GIL: each release costs a thread switch when many threads are busy, and a worker
    decodes once per request. Other tokens (``nan``, ``inf``, ``.5``) are split and parsed by Arrow.
    Returns None (the caller falls back to the CSV reader) unless the body holds exactly ``num_rows``
    lines of one number each.
    """
    text = body.strip()
    if text.count(b"\n") + 1 != num_rows:
        return None
    if not text.translate(None, _NUMBER_BYTES):
        # Not JSON (a blank line, two numbers on a line, "1."), or an integer past 2**53, which
        # pa.array will not turn into a float64: Arrow's cast below decides.
        with contextlib.suppress(orjson.JSONDecodeError, pa.ArrowInvalid, OverflowError):
            return pa.array(orjson.loads(b"[" + text.replace(b"\n", b",") + b"]"), type=pa.float64())
    tokens = text.split()
    if len(tokens) != num_rows:
        return None
    try:
        return pc.cast(pa.array(tokens, pa.string()), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None


#: The bytes a line of JSON numbers can hold (with the whitespace a line may carry).
_NUMBER_BYTES = b"0123456789+-.eE \t\r\n"


def _read_csv(body: bytes, *, text_width: int | None = None) -> pa.Table:
    if not body.endswith((b"\n", b"\r")):
        body += b"\n"  # Arrow's reader cannot infer the columns of a single line without an end of line
    read_options = pacsv.ReadOptions(autogenerate_column_names=True, use_threads=len(body) > 1 << 20)
    parse_options = pacsv.ParseOptions(newlines_in_values=b'"' in body)
    column_types = {f"f{i}": pa.string() for i in range(text_width)} if text_width else None
    convert_options = pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(body),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
    except pa.ArrowInvalid as err:
        raise ResponseDecodeError(
            f"the text/csv response ({len(body)} bytes) cannot be parsed: lines must have the same number of "
            "comma-separated outputs"
        ) from err
    if text_width is None and any(not _is_plain_output_type(t) for t in table.schema.types):
        # Arrow inferred dates/timestamps/decimals: keep the model's text instead.
        return _read_csv(body, text_width=table.num_columns)
    return table


def _is_plain_output_type(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_null(data_type)
        or is_string(data_type)
    )


def decode_json(body: bytes, *, num_rows: int, prediction_columns: Sequence[str] | None = None) -> pa.Table:
    """Decode an ``application/json`` response: ``{"predictions"|"outputs"|"results": [...]}`` or a bare list."""
    if not body.strip():
        return _empty_or_count_error(num_rows, got=0, prediction_columns=prediction_columns)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ResponseDecodeError(
            f"the application/json response ({len(body)} bytes) is not valid JSON (error at byte {err.pos})"
        ) from err
    items = _items_from_document(document)
    return _table_from_items(items, num_rows=num_rows, prediction_columns=prediction_columns)


def _items_from_document(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in RESPONSE_KEYS:
            if key in document:
                value = document[key]
                return value if isinstance(value, list) else [value]
        keys = ", ".join(repr(str(k)[:40]) for k in list(document)[:5])
        raise ResponseDecodeError(
            "the JSON response is an object without a 'predictions', 'outputs' or 'results' list "
            f"(its keys: {keys}); pass a decoder= for this response shape"
        )
    return [document]  # a bare scalar: one prediction


def decode_jsonlines(body: bytes, *, num_rows: int, prediction_columns: Sequence[str] | None = None) -> pa.Table:
    """Decode an ``application/jsonlines`` response: one item per non-blank line."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return _empty_or_count_error(num_rows, got=0, prediction_columns=prediction_columns)
    try:
        items = orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError as err:
        raise ResponseDecodeError(
            f"the application/jsonlines response ({len(body)} bytes, {len(lines)} lines) has a line that is "
            "not valid JSON"
        ) from err
    return _table_from_items(items, num_rows=num_rows, prediction_columns=prediction_columns)


def _empty_or_count_error(num_rows: int, *, got: int, prediction_columns: Sequence[str] | None) -> pa.Table:
    if num_rows != got:
        raise PredictionRowCountError(expected=num_rows, got=got, detail="empty response body" if not got else "")
    names = list(prediction_columns) if prediction_columns else ["prediction"]
    return pa.table([pa.array([], pa.float64()) for _ in names], names=names)


def _output_names(count: int, prediction_columns: Sequence[str] | None) -> list[str]:
    if prediction_columns is not None:
        if len(prediction_columns) != count:
            raise ParameterValidationError(
                f"the endpoint returned {count} output(s) per row but prediction_columns names "
                f"{len(prediction_columns)} ({', '.join(prediction_columns)}): set prediction_columns to {count} "
                "name(s), or leave it unset to use the default names"
            )
        return list(prediction_columns)
    if count == 1:
        return ["prediction"]
    return [f"prediction_{i}" for i in range(count)]


def _table_from_items(items: Sequence[Any], *, num_rows: int, prediction_columns: Sequence[str] | None) -> pa.Table:
    """Per-row items (scalars, lists or objects) → prediction columns, vectorised where Arrow can infer a type."""
    if len(items) != num_rows:
        raise PredictionRowCountError(expected=num_rows, got=len(items))
    if num_rows == 0:
        return _empty_or_count_error(0, got=0, prediction_columns=prediction_columns)
    present = [item for item in items if item is not None]
    kinds = {_item_kind(item) for item in present}
    if len(kinds) > 1:
        raise ResponseDecodeError(
            f"the response items mix {' and '.join(sorted(kinds))}: each row must be a scalar, a list or an object "
            "in every row; pass a decoder= for this response shape"
        )
    kind = kinds.pop() if kinds else "scalar"
    if kind == "scalar":
        return pa.table([_column_from_values(items)], names=_output_names(1, prediction_columns))
    if kind == "list":
        widths = {len(item) for item in present}
        if len(widths) > 1:
            raise ResponseDecodeError(
                f"the response rows have different numbers of outputs ({min(widths)} to {max(widths)}); "
                "every row must have the same outputs"
            )
        width = widths.pop()
        names = _output_names(width, prediction_columns)
        arrays = _list_columns(items, width)
        return pa.table(arrays, names=names)
    # objects
    keys: dict[str, None] = {}
    for item in present:
        keys.update(dict.fromkeys(item))
    if prediction_columns is not None:
        missing = [name for name in prediction_columns if name not in keys]
        if missing:
            available = ", ".join(list(keys)[:20])
            raise ParameterValidationError(
                f"prediction_columns names {', '.join(missing)}, which the response objects do not have "
                f"(their fields: {available}); set prediction_columns to some of those fields or leave it unset"
            )
        selected = list(prediction_columns)
    else:
        selected = list(keys)
    arrays = _object_columns(items, selected)
    return pa.table(arrays, names=selected)


def _item_kind(item: Any) -> str:
    if isinstance(item, dict):
        return "objects"
    if isinstance(item, (list, tuple)):
        return "list"
    return "scalar"


def _list_columns(items: Sequence[Any], width: int) -> list[pa.Array]:
    try:
        lists = pa.array(items)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        lists = None
    if lists is not None and (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)):
        return [_normalise_output(pc.list_element(lists, i)) for i in range(width)]
    return [_column_from_values([None if item is None else item[i] for item in items]) for i in range(width)]


def _object_columns(items: Sequence[Any], names: Sequence[str]) -> list[pa.Array]:
    try:
        structs = pa.array(items)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        structs = None
    if structs is not None and pa.types.is_struct(structs.type):
        return [_normalise_output(pc.struct_field(structs, [name])) for name in names]
    return [_column_from_values([None if item is None else item.get(name) for item in items]) for name in names]


def _column_from_values(values: Sequence[Any]) -> pa.Array:
    """One output's per-row values → an Arrow array of the documented type."""
    try:
        return _normalise_output(pa.array(values))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    present = [v for v in values if v is not None]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    # Mixed kinds: strings as they are, everything else as its JSON text.
    return pa.array(
        [v if v is None or isinstance(v, str) else json_text(v) for v in values],
        pa.string(),
    )


def _as_text(array: pa.Array) -> pa.Array:
    if is_string(array.type):
        return array.cast(pa.string())
    if pa.types.is_floating(array.type) or pa.types.is_boolean(array.type) or pa.types.is_null(array.type):
        return pa.array([None if v is None else json_text(v) for v in array.to_pylist()], pa.string())
    return array.cast(pa.string())


def _normalise_output(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """numbers → float64, bool → bool, strings → string, nested → JSON text, null → float64 nulls."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    data_type = array.type
    if pa.types.is_dictionary(data_type):
        return _normalise_output(array.dictionary_decode())
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return array.cast(pa.float64())
    if pa.types.is_null(data_type):
        return pa.nulls(len(array), pa.float64())
    if pa.types.is_boolean(data_type):
        return array
    if is_string(data_type):
        return array.cast(pa.string())
    if is_nested(data_type):
        return pa.array(
            [None if v is None else json_text(v) for v in array.to_pylist(maps_as_pydicts="lossy")], pa.string()
        )
    if is_temporal_text(data_type):
        return iso_text(pa.chunked_array([array])).combine_chunks()
    return array.cast(pa.string())


def normalise_user_result(
    result: Any, *, num_rows: int, prediction_columns: Sequence[str] | None, name: str | None
) -> pa.Table:
    """A user decoder's result (table, array, numpy array, mapping or sequence) → prediction table."""
    if isinstance(result, pa.RecordBatch):
        result = pa.Table.from_batches([result])
    if isinstance(result, pa.Table):
        if result.num_rows != num_rows:
            raise PredictionRowCountError(expected=num_rows, got=result.num_rows, detail=f"decoder {name!r}")
        if prediction_columns is not None:
            result = result.rename_columns(_output_names(result.num_columns, prediction_columns))
        return result
    if isinstance(result, (pa.Array, pa.ChunkedArray)):
        if len(result) != num_rows:
            raise PredictionRowCountError(expected=num_rows, got=len(result), detail=f"decoder {name!r}")
        return pa.table([_normalise_output(result)], names=_output_names(1, prediction_columns))
    if isinstance(result, np.ndarray):
        if result.ndim == 1:
            result_array = pa.array(result)
            if len(result_array) != num_rows:
                raise PredictionRowCountError(expected=num_rows, got=len(result_array), detail=f"decoder {name!r}")
            return pa.table([_normalise_output(result_array)], names=_output_names(1, prediction_columns))
        if result.ndim == 2:
            if result.shape[0] != num_rows:
                raise PredictionRowCountError(expected=num_rows, got=result.shape[0], detail=f"decoder {name!r}")
            width = result.shape[1]
            names = _output_names(width, prediction_columns)
            return pa.table([_normalise_output(pa.array(result[:, j])) for j in range(width)], names=names)
        raise ParameterValidationError(
            f"decoder {name!r} returned a {result.ndim}-D array; return one value (or one list of outputs) per row"
        )
    if isinstance(result, Mapping):
        result = _items_from_document(dict(result))
    if isinstance(result, (str, bytes, bytearray)) or not isinstance(result, Sequence):
        raise ParameterValidationError(
            f"decoder {name!r} returned {type(result).__name__}; it must return a pyarrow Table or a sequence "
            "with one prediction per row"
        )
    return _table_from_items(list(result), num_rows=num_rows, prediction_columns=prediction_columns)
