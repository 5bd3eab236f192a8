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
the file and row range. This package imports neither Airflow nor boto3.

Modules, each importing only those listed before it: :mod:`.base` (the :class:`Codec` protocol,
content types, :func:`media_type`), :mod:`.json_values` (orjson options and fallbacks),
:mod:`.arrow` (which Arrow types each content type carries, column preparation), :mod:`.encoders`,
:mod:`.decoders`, :mod:`.templates` (``request_template`` and ``response_field``) and
:mod:`.selection` (:func:`get_codec`, :class:`PayloadCodec`). Import the public names from this package.
"""

from __future__ import annotations

from airflow_provider_smrt.scoring.codecs.base import (
    CSV,
    JSON,
    JSONLINES,
    SUPPORTED_CONTENT_TYPES,
    Codec,
    DecoderFn,
    EncoderFn,
    media_type,
)
from airflow_provider_smrt.scoring.codecs.selection import (
    PayloadCodec,
    check_features_encodable,
    get_codec,
    resolve_callable,
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
