"""Codec selection: :func:`get_codec` builds a :class:`PayloadCodec` from the operator's parameters.

The formats are described in :mod:`airflow_provider_smrt.scoring.codecs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.scoring.codecs.arrow import column_message, type_problem
from airflow_provider_smrt.scoring.codecs.base import (
    CSV,
    JSON,
    JSONLINES,
    SUPPORTED_CONTENT_TYPES,
    EncoderFn,
    JsonRecordFormat,
    media_type,
)
from airflow_provider_smrt.scoring.codecs.decoders import (
    decode_csv,
    decode_json,
    decode_jsonlines,
    normalise_user_result,
)
from airflow_provider_smrt.scoring.codecs.encoders import CsvEncoder, JsonEncoder, UserEncoder
from airflow_provider_smrt.scoring.codecs.templates import RequestTemplateEncoder, ResponseFieldDecoder

__all__ = ["PayloadCodec", "check_csv_features_numeric", "check_features_encodable", "get_codec", "resolve_callable"]


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
        problem = type_problem(field.type, media)
        if problem:
            raise InputDataError(column_message(field.name, field.type, media, problem))
    if media == CSV:
        check_csv_features_numeric(schema)


def _numeric_or_boolean(data_type: pa.DataType) -> bool:
    if isinstance(data_type, pa.ExtensionType):
        return _numeric_or_boolean(data_type.storage_type)
    if pa.types.is_dictionary(data_type):
        return _numeric_or_boolean(data_type.value_type)
    return bool(
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_decimal(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_null(data_type)
    )


def check_csv_features_numeric(schema: pa.Schema) -> None:
    """Refuse text/csv for feature columns that are not numeric or boolean, naming them all and the fix.

    CSV models parse numbers: text, dates or times in a CSV body fail every request at the model, and
    each failed request costs a bisection. A user encoder is not checked (it knows its own types).
    """
    others = [field for field in schema if not _numeric_or_boolean(field.type)]
    if others:
        listed = ", ".join(f"{field.name!r} ({field.type})" for field in others)
        raise InputDataError(
            f"feature column(s) {listed} are not numeric or boolean, and text/csv sends numbers: send them as "
            "content_type='application/json' or 'application/jsonlines', or pass encoder= (a function or "
            "dotted path building the request body), or leave them out of feature_columns (list them in "
            "passthrough_columns to keep them in the output)"
        )


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
    csv_header: bool = False,
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
        :mod:`airflow_provider_smrt.scoring.codecs.templates`); needs a JSON ``content_type``; excludes ``encoder``.
    :param response_field: dotted path of the field holding the prediction in a JSON response (see
        :mod:`airflow_provider_smrt.scoring.codecs.templates`); excludes ``decoder``.
    :param csv_header: start each ``text/csv`` body with a line of the feature names (built-in CSV encoder only).
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

    if csv_header and (encoder is not None or request_template is not None or media_type(content_type) != CSV):
        raise ParameterValidationError(
            "csv_header=True sends the feature names as the first line of a text/csv body: it needs "
            f"content_type='text/csv' (not {content_type!r}) and the built-in encoder (no encoder or request_template)"
        )
    encode_fn: EncoderFn
    encoder_name: str | None = None
    if request_template is not None:
        if encoder is not None:
            raise ParameterValidationError("pass either request_template or encoder, not both")
        if media_type(content_type) not in (JSON, JSONLINES):
            raise ParameterValidationError(
                f"request_template renders JSON requests: set content_type='application/json', not {content_type!r}"
            )
        encode_fn = RequestTemplateEncoder(request_template)
    elif encoder is not None:
        encoder_name = encoder if isinstance(encoder, str) else getattr(encoder, "__qualname__", repr(encoder))
        encode_fn = UserEncoder(resolve_callable(encoder, parameter="encoder"), name=encoder_name)
    else:
        media = _builtin_media(content_type, parameter="content_type", hint="or pass encoder=")
        encode_fn = (
            CsvEncoder(header=csv_header)
            if media == CSV
            else JsonEncoder(lines=media == JSONLINES, record_format=json_record_format)
        )

    user_decoder: Callable[..., Any] | None = None
    decoder_name: str | None = None
    if response_field is not None:
        if decoder is not None:
            raise ParameterValidationError("pass either response_field or decoder, not both")
        user_decoder = ResponseFieldDecoder(response_field, accept=accept)
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
        if isinstance(self.encoder, UserEncoder):
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
            return normalise_user_result(
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
