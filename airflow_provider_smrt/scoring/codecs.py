"""Request and response codecs: Arrow feature tables to request bodies, response bodies to prediction columns.

A :class:`Codec` turns a table of feature columns into one InvokeEndpoint request body
(:meth:`Codec.encode`) and the response body back into a table of prediction columns with exactly
as many rows as were sent (:meth:`Codec.decode`). :func:`get_codec` builds one from the operator's
parameters; :func:`check_features_encodable` rejects a dataset schema before anything is sent.

Built-in request types (``content_type``):

``text/csv``
    No header, one line per row, RFC 4180 quoting only for values that need it (a comma, quote, CR
    or LF), nulls as empty fields, booleans as ``1``/``0``, decimals as their exact text,
    dictionary columns as their values, timestamps as ISO 8601 (``2024-05-01T12:00:00.5``; zoned
    timestamps in UTC with a ``Z``), dates and times as ISO text, floats in shortest round-trip
    form (NaN as ``nan``). Nested columns (list, struct, map) cannot be carried: use JSON.
``application/jsonlines``
    One JSON record per line (``[v1, v2, ...]``, or ``{"column": v, ...}`` with
    ``json_record_format="object"``), every line ending in ``\\n``.
``application/json``
    ``{"instances": [record, ...]}`` with the same records.

JSON values: nulls and NaN/infinity are ``null``; decimals are JSON *numbers* (converted to float64,
so digits beyond ~15 significant ones are rounded: cast the column to string first to keep them
exactly); booleans are ``true``/``false``; timestamps, dates and times are ISO strings as in CSV;
nested values become JSON lists and objects (maps become objects). Durations are sent as integer
counts of their unit. Binary, union and interval columns are rejected with a fix.

Built-in response types (``accept``, which defaults to ``content_type``; the response's own
``ContentType`` wins when it is one of these): ``text/csv`` (one line per row; several
comma-separated outputs per line are several prediction columns; or a single line of N values for N
rows), ``application/json`` (``{"predictions"|"outputs"|"results": [...]}`` or a bare list) and
``application/jsonlines`` (one item per line). Each item is a scalar (one output), a list (several
outputs, in order) or an object (one output per field, by name).

Prediction columns and types: ``prediction_columns`` names the outputs when given (for object items
it *selects* fields by name); otherwise one output is ``prediction``, several list outputs are
``prediction_0`` ... ``prediction_{k-1}`` and object outputs keep their field names. Numbers are
always float64 (so every batch of a part shares one Parquet schema), booleans bool, strings string,
nested values JSON text; nulls stay null; a column that mixes kinds (numbers and strings) becomes
strings (numbers as their JSON text).

User codecs: ``encoder`` is ``(features: pa.Table) -> bytes`` and ``decoder`` is
``(body: bytes, num_rows: int) -> pa.Table | Sequence``, given as callables or as importable dotted
paths (``"package.module:function"`` or ``"package.module.function"``), which survive DAG
serialisation. A sequence (or mapping, or numpy array) returned by a decoder is normalised like JSON
items; a table it returns is used as it is, renamed to ``prediction_columns`` when given.

Errors never quote cell values or bodies; they name columns, sizes and counts, so callers can add
the file and row range. This module imports neither Airflow nor boto3.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    PredictionRowCountError,
    ResponseDecodeError,
)

__all__ = [
    "CSV",
    "JSON",
    "JSONLINES",
    "SUPPORTED_CONTENT_TYPES",
    "Codec",
    "DecoderFn",
    "EncoderFn",
    "PayloadCodec",
    "check_features_encodable",
    "get_codec",
    "media_type",
    "resolve_callable",
]

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
#: The content types with a built-in encoder and decoder.
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = (CSV, JSON, JSONLINES)

_MEDIA_ALIASES: dict[str, str] = {
    "text/csv": CSV,
    "application/csv": CSV,
    "application/json": JSON,
    "application/jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/json-lines": JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
}

#: Keys of a JSON response object that hold the per-row items, in order of preference.
RESPONSE_KEYS: tuple[str, ...] = ("predictions", "outputs", "results")

JsonRecordFormat = Literal["list", "object"]
EncoderFn = Callable[[pa.Table], bytes]
DecoderFn = Callable[[bytes, int], Any]  # returns pa.Table | pa.RecordBatch | Sequence[Any] | np.ndarray

_NUMPY_OPTS = orjson.OPT_SERIALIZE_NUMPY
_GENERAL_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Strings that need RFC 4180 quoting in a CSV field.
_NEEDS_QUOTING = r'[,"\r\n]'
_MAX_EXACT_INT_IN_FLOAT = 2**53


# ---------------------------------------------------------------------------------------------
# Errors


# ---------------------------------------------------------------------------------------------
# The protocol and the public entry points


@runtime_checkable
class Codec(Protocol):
    """Encodes feature tables into request bodies and decodes response bodies into prediction tables."""

    #: The request ``Content-Type``.
    content_type: str
    #: The response type asked for (the request's ``Accept``).
    accept: str

    def encode(self, features: pa.Table) -> bytes:
        """Encode every row of ``features`` (feature columns only, in order) into one request body."""
        ...

    def decode(self, body: bytes, *, num_rows: int, content_type: str | None) -> pa.Table:
        """Decode a response body into a table of prediction columns with exactly ``num_rows`` rows.

        :param content_type: the response's ``ContentType``, if it had one.
        :raises PredictionRowCountError: the body holds a different number of predictions.
        """
        ...


def media_type(value: str | None) -> str | None:
    """Normalise a MIME type for dispatch: drop parameters, lower-case, map aliases (``application/jsonl``...)."""
    if not value:
        return None
    base = value.split(";", 1)[0].strip().lower()
    return _MEDIA_ALIASES.get(base, base)


def resolve_callable(spec: str | Callable[..., Any], *, parameter: str) -> Callable[..., Any]:
    """Return ``spec`` if callable, else import it from ``"package.module:attr"`` or ``"package.module.attr"``.

    :param parameter: the parameter name used in error messages (``encoder`` or ``decoder``).
    :raises ParameterValidationError: the path does not import or does not name a callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterValidationError(
            f"{parameter} must be a callable or an importable path such as 'package.module:function', "
            f"not {type(spec).__name__}"
        )
    path = spec.strip()
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ParameterValidationError(
            f"{parameter} {path!r} is not an importable path: "
            "use 'package.module:function' or 'package.module.function'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ParameterValidationError(
            f"{parameter} {path!r}: module {module_name!r} cannot be imported ({type(err).__name__}); "
            "check the path and that the module is installed on the workers"
        ) from err
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ParameterValidationError(
                f"{parameter} {path!r}: {part!r} not found in {module_name!r}; check the function name"
            ) from err
    if not callable(obj):
        raise ParameterValidationError(f"{parameter} {path!r} names a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def check_features_encodable(schema: pa.Schema, content_type: str) -> None:
    """Check that every feature column of ``schema`` can be sent as ``content_type``, before any request.

    :raises InputDataError: a column cannot be encoded (the message names it and the fix), or there
        are no feature columns.
    :raises ParameterValidationError: ``content_type`` has no built-in encoder.
    """
    media = _builtin_media(content_type, parameter="content_type")
    if len(schema) == 0:
        raise InputDataError("there are no feature columns to send: set feature_columns or check the input schema")
    for field in schema:
        problem = _type_problem(field.type, media)
        if problem:
            raise InputDataError(_column_message(field.name, field.type, media, problem))


def get_codec(
    *,
    content_type: str = CSV,
    accept: str | None = None,
    prediction_columns: Sequence[str] | str | None = None,
    encoder: str | Callable[..., Any] | None = None,
    decoder: str | Callable[..., Any] | None = None,
    json_record_format: JsonRecordFormat = "list",
    request_template: Mapping[str, Any] | None = None,
    response_field: str | None = None,
) -> PayloadCodec:
    """Build the codec for a scoring run.

    :param content_type: request ``Content-Type``; one of :data:`SUPPORTED_CONTENT_TYPES` unless
        ``encoder`` is given (then any type the model accepts).
    :param accept: response type asked for; defaults to ``content_type``. Must be a supported type
        unless ``decoder`` is given.
    :param prediction_columns: names of the prediction columns (a single string means one column).
        With object items, the fields to keep, by name.
    :param encoder: a user encoder ``(features: pa.Table) -> bytes`` or its dotted path.
    :param decoder: a user decoder ``(body: bytes, num_rows: int) -> pa.Table | Sequence`` or its dotted path.
    :param json_record_format: ``"list"`` (``[v1, v2]``) or ``"object"`` (``{"col": v}``) records for
        the JSON request types.
    :param request_template: one JSON request per row from this template (see
        :mod:`airflow_provider_smrt.scoring.templating`); needs a JSON ``content_type``; excludes ``encoder``.
    :param response_field: dotted path of the field holding the prediction in a JSON response (see
        :mod:`airflow_provider_smrt.scoring.templating`); excludes ``decoder``.
    :raises ParameterValidationError: a parameter is invalid (the message says which and how to fix it).
    """
    if not isinstance(content_type, str) or not content_type.strip():
        raise ParameterValidationError("content_type must be a non-empty MIME type such as 'text/csv'")
    if accept is not None and (not isinstance(accept, str) or not accept.strip()):
        raise ParameterValidationError("accept must be a non-empty MIME type such as 'text/csv', or None")
    if json_record_format not in ("list", "object"):
        raise ParameterValidationError(f"json_record_format must be 'list' or 'object', not {json_record_format!r}")
    names = _validate_prediction_columns(prediction_columns)
    accept = accept or content_type

    encode_fn: EncoderFn
    encoder_name: str | None = None
    if request_template is not None or response_field is not None:
        from airflow_provider_smrt.scoring import templating  # imports this module: import on use

    if request_template is not None:
        if encoder is not None:
            raise ParameterValidationError("pass either request_template or encoder, not both")
        if media_type(content_type) not in (JSON, JSONLINES):
            raise ParameterValidationError(
                f"request_template renders JSON requests: set content_type='application/json', not {content_type!r}"
            )
        encode_fn = templating.RequestTemplateEncoder(request_template)
    elif encoder is not None:
        encoder_name = encoder if isinstance(encoder, str) else getattr(encoder, "__qualname__", repr(encoder))
        encode_fn = _UserEncoder(resolve_callable(encoder, parameter="encoder"), name=encoder_name)
    else:
        media = _builtin_media(content_type, parameter="content_type", hint="or pass encoder=")
        encode_fn = (
            CsvEncoder() if media == CSV else JsonEncoder(lines=media == JSONLINES, record_format=json_record_format)
        )

    user_decoder: Callable[..., Any] | None = None
    decoder_name: str | None = None
    if response_field is not None:
        if decoder is not None:
            raise ParameterValidationError("pass either response_field or decoder, not both")
        user_decoder = templating.ResponseFieldDecoder(response_field, accept=accept)
        decoder_name = f"response_field={response_field!r}"
    elif decoder is not None:
        decoder_name = decoder if isinstance(decoder, str) else getattr(decoder, "__qualname__", repr(decoder))
        user_decoder = resolve_callable(decoder, parameter="decoder")
    else:
        _builtin_media(accept, parameter="accept", hint="or pass decoder=")

    return PayloadCodec(
        content_type=content_type,
        accept=accept,
        encoder=encode_fn,
        decoder=user_decoder,
        decoder_name=decoder_name,
        prediction_columns=names,
    )


# ---------------------------------------------------------------------------------------------
# The codec


class PayloadCodec:
    """The codec returned by :func:`get_codec`: a built-in or user encoder plus a built-in or user decoder.

    Stateless after construction, so one instance may be shared by threads.

    :param content_type: request ``Content-Type``.
    :param accept: response type asked for.
    :param encoder: turns a feature table into a body.
    :param decoder: a user decoder, or None for the built-in decoders (chosen by the response's
        ``ContentType`` when it is a supported type, else by ``accept``).
    :param decoder_name: how to name the user decoder in error messages.
    :param prediction_columns: output names, or None for the defaults.
    """

    def __init__(
        self,
        *,
        content_type: str,
        accept: str,
        encoder: EncoderFn,
        decoder: Callable[..., Any] | None = None,
        decoder_name: str | None = None,
        prediction_columns: Sequence[str] | None = None,
    ) -> None:
        self.content_type = content_type
        self.accept = accept
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_name = decoder_name
        self.prediction_columns: tuple[str, ...] | None = (
            tuple(prediction_columns) if prediction_columns is not None else None
        )

    def __repr__(self) -> str:
        return (
            f"PayloadCodec(content_type={self.content_type!r}, accept={self.accept!r}, "
            f"encoder={type(self.encoder).__name__}, decoder={self.decoder_name or 'built-in'}, "
            f"prediction_columns={self.prediction_columns!r})"
        )

    def check_features(self, schema: pa.Schema) -> None:
        """Reject an unencodable schema up front; a no-op for a user encoder (it knows its own types)."""
        if isinstance(self.encoder, _UserEncoder):
            return
        check_features_encodable(schema, self.content_type)

    def encode(self, features: pa.Table | pa.RecordBatch) -> bytes:
        """Encode ``features`` into one request body (see the module docstring for the formats)."""
        if isinstance(features, pa.RecordBatch):
            features = pa.Table.from_batches([features])
        return self.encoder(features)

    def decode(self, body: bytes, *, num_rows: int, content_type: str | None = None) -> pa.Table:
        """Decode ``body`` into ``num_rows`` rows of prediction columns.

        :raises PredictionRowCountError: the body holds a different number of predictions.
        :raises ParameterValidationError: ``prediction_columns`` does not match the outputs.
        :raises ResponseDecodeError: the body cannot be parsed as the expected type.
        """
        body = bytes(body) if not isinstance(body, bytes) else body
        if self.decoder is not None:
            result = self.decoder(body, num_rows)
            return _normalise_user_result(
                result, num_rows=num_rows, prediction_columns=self.prediction_columns, name=self.decoder_name
            )
        media = media_type(content_type)
        if media not in SUPPORTED_CONTENT_TYPES:
            media = media_type(self.accept)
        if media == CSV:
            return decode_csv(body, num_rows=num_rows, prediction_columns=self.prediction_columns)
        if media == JSONLINES:
            return decode_jsonlines(body, num_rows=num_rows, prediction_columns=self.prediction_columns)
        return decode_json(body, num_rows=num_rows, prediction_columns=self.prediction_columns)


# ---------------------------------------------------------------------------------------------
# Column preparation shared by the encoders


def _is_nested(data_type: pa.DataType) -> bool:
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


def _is_string(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)
    )


def _is_temporal_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(data_type) or pa.types.is_date(data_type) or pa.types.is_time(data_type))


def _children(data_type: pa.DataType) -> list[pa.DataType]:
    if pa.types.is_map(data_type):
        return [data_type.key_type, data_type.item_type]
    if pa.types.is_struct(data_type):
        return [data_type.field(i).type for i in range(data_type.num_fields)]
    return [data_type.value_type]


def _type_problem(data_type: pa.DataType, media: str, *, nested: bool = False) -> str | None:
    """Why a column of this type cannot be sent as ``media``, or None if it can."""
    if isinstance(data_type, pa.ExtensionType):
        return _type_problem(data_type.storage_type, media, nested=nested)
    if pa.types.is_dictionary(data_type):
        return _type_problem(data_type.value_type, media, nested=nested)
    if _is_binary(data_type):
        return "binary values have no text form: cast the column to string (or base64-encode it) first"
    if pa.types.is_union(data_type) or pa.types.is_interval(data_type) or pa.types.is_run_end_encoded(data_type):
        return "this type is not supported: cast the column to a numeric, string or temporal type first"
    if _is_nested(data_type):
        if media == CSV:
            return (
                "text/csv cannot carry nested values: use content_type='application/json' or "
                "'application/jsonlines', or flatten the column into scalar columns"
            )
        for child in _children(data_type):
            problem = _type_problem(child, media, nested=True)
            if problem:
                return f"a nested field: {problem}"
    return None


def _column_message(name: str, data_type: pa.DataType, media: str, problem: str) -> str:
    return f"feature column {name!r} of type {data_type} cannot be sent as {media}: {problem}"


def _iso_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
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
    problem = _type_problem(data_type, media)
    if problem:
        raise InputDataError(_column_message(name, data_type, media, problem))
    if pa.types.is_boolean(data_type):
        return column.cast(pa.int8()) if media == CSV else column
    if pa.types.is_float16(data_type):
        return column.cast(pa.float32())
    if pa.types.is_decimal(data_type):
        return column if media == CSV else column.cast(pa.float64())
    if pa.types.is_duration(data_type):
        return column.cast(pa.int64())
    if _is_temporal_text(data_type):
        return _iso_text(column)
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
    return bool(pa.types.is_boolean(data_type) or (_is_nested(data_type) and _type_problem(data_type, media) is None))


_T = TypeVar("_T")


def _schema_memo(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Remember ``fn(schema, *args)`` for the last few schemas seen, compared with ``Schema.equals``.

    A run encodes thousands of requests with one schema. Hashing a schema (as ``functools.lru_cache``
    would) costs ~20 µs for 20 columns, under the GIL and twice per request; ``equals`` costs 0.1 µs.
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


@_schema_memo
def _schema_sent_as_is(schema: pa.Schema, media: str) -> bool:
    return all(_is_sent_as_is(data_type, media) for data_type in schema.types)


def _prepare(features: pa.Table, media: str) -> pa.Table:
    if features.num_columns == 0:
        raise InputDataError("there are no feature columns to send: set feature_columns or check the input schema")
    if _schema_sent_as_is(features.schema, media):  # the common case: one cached lookup per encode
        return features
    columns = [
        _prepare_column(name, column, media)
        for name, column in zip(features.column_names, features.columns, strict=True)
    ]
    return pa.Table.from_arrays(columns, names=features.column_names)


# ---------------------------------------------------------------------------------------------
# Encoders


class CsvEncoder:
    """``text/csv`` request bodies via :func:`pyarrow.csv.write_csv` (no header, quoting only where needed).

    When no string value needs quoting (the common case) the table is written unquoted by Arrow's
    CSV writer. Otherwise every column is formatted with Arrow's cast to string, the values that
    need it are quoted, and lines are joined with Arrow compute kernels: still no Python loop per row.
    """

    _OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def __call__(self, features: pa.Table) -> bytes:
        table = _prepare(features, CSV)
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


@_schema_memo
def _string_columns(schema: pa.Schema) -> tuple[int, ...]:
    """Indices of the string columns (the only ones whose values may need CSV quoting)."""
    return tuple(i for i, data_type in enumerate(schema.types) if _is_string(data_type))


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


def _json_default(value: Any) -> Any:
    """orjson fallback for values nested inside lists/structs/maps."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} values cannot be sent as JSON")


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
    matrix = np.empty((table.num_rows, table.num_columns), dtype=dtype)
    for j, column in enumerate(table.columns):
        matrix[:, j] = column.to_numpy()
    return matrix


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
        table = _prepare(features, self.media)
        if self.record_format == "list":
            matrix = _numeric_matrix(table)
            if matrix is not None:
                if not self.lines:
                    return orjson.dumps({"instances": matrix}, option=_NUMPY_OPTS)
                if matrix.shape[0] == 0:
                    return b""
                # Numbers only: "],[" occurs exactly between rows.
                return orjson.dumps(matrix, option=_NUMPY_OPTS)[1:-1].replace(b"],[", b"]\n[") + b"\n"
        names = table.column_names
        if self.record_format == "object" and len(set(names)) != table.num_columns:
            raise InputDataError(
                "json_record_format='object' needs unique feature column names; rename the duplicated columns"
            )
        columns = [_python_values(name, column, self.media) for name, column in zip(names, table.columns, strict=True)]
        rows: Iterable[Any] = zip(*columns, strict=True)
        if self.record_format == "object":
            rows = (dict(zip(names, row, strict=True)) for row in rows)
        try:
            if self.lines:
                opts = _GENERAL_OPTS | orjson.OPT_APPEND_NEWLINE
                return b"".join([orjson.dumps(row, default=_json_default, option=opts) for row in rows])
            return orjson.dumps({"instances": list(rows)}, default=_json_default, option=_GENERAL_OPTS)
        except (TypeError, orjson.JSONEncodeError) as err:
            raise InputDataError(
                f"the features cannot be encoded as {self.media}: {type(err).__name__} ({_safe_reason(err)}); "
                "cast nested columns to JSON-compatible types"
            ) from err


def _python_values(name: str, column: pa.ChunkedArray, media: str) -> list[Any]:
    try:
        return column.to_pylist(maps_as_pydicts="strict")  # type: ignore[no-any-return]
    except (ValueError, TypeError, KeyError, pa.ArrowException) as err:
        raise InputDataError(
            f"feature column {name!r} of type {column.type} cannot be converted for {media} "
            f"({type(err).__name__}, e.g. a map with duplicate keys): cast it to JSON-compatible types first"
        ) from err


def _safe_reason(err: BaseException) -> str:
    # orjson's and our own messages name types, never values; keep only the first line, bounded.
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


class _UserEncoder:
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


# ---------------------------------------------------------------------------------------------
# Decoders


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
        or _is_string(data_type)
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
        [v if v is None or isinstance(v, str) else _json_text(v) for v in values],
        pa.string(),
    )


def _json_text(value: Any) -> str:
    return orjson.dumps(value, default=_json_default, option=_GENERAL_OPTS).decode("utf-8")


def _as_text(array: pa.Array) -> pa.Array:
    if _is_string(array.type):
        return array.cast(pa.string())
    if pa.types.is_floating(array.type) or pa.types.is_boolean(array.type) or pa.types.is_null(array.type):
        return pa.array([None if v is None else _json_text(v) for v in array.to_pylist()], pa.string())
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
    if _is_string(data_type):
        return array.cast(pa.string())
    if _is_nested(data_type):
        return pa.array(
            [None if v is None else _json_text(v) for v in array.to_pylist(maps_as_pydicts="lossy")], pa.string()
        )
    if _is_temporal_text(data_type):
        return _iso_text(pa.chunked_array([array])).combine_chunks()
    return array.cast(pa.string())


def _normalise_user_result(
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


# ---------------------------------------------------------------------------------------------
# Parameter helpers


def _builtin_media(value: str, *, parameter: str, hint: str = "") -> str:
    media = media_type(value)
    if media not in SUPPORTED_CONTENT_TYPES:
        raise ParameterValidationError(
            f"{parameter} {value!r} has no built-in codec: use one of {', '.join(SUPPORTED_CONTENT_TYPES)}"
            + (f" {hint}" if hint else "")
        )
    return media


def _validate_prediction_columns(prediction_columns: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if prediction_columns is None:
        return None
    names: tuple[Any, ...] = (prediction_columns,) if isinstance(prediction_columns, str) else tuple(prediction_columns)
    if not names:
        raise ParameterValidationError("prediction_columns is empty: name at least one column, or leave it unset")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ParameterValidationError("prediction_columns must be non-empty strings")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ParameterValidationError(f"prediction_columns repeats {', '.join(duplicates)}: names must be unique")
    return names
