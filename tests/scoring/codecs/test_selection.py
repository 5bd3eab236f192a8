"""Tests of airflow_provider_smrt.scoring.codecs.selection: get_codec, PayloadCodec, schema checks and user codecs."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    PredictionRowCountError,
)
from airflow_provider_smrt.scoring.codecs import (
    CSV,
    JSON,
    JSONLINES,
    Codec,
    check_features_encodable,
    get_codec,
    media_type,
    resolve_callable,
)
from tests.scoring.codecs.tables import mixed_table, numeric_table

# ---------------------------------------------------------------------------------------------
# User codecs referenced by dotted path (this module is importable as tests.scoring.codecs.test_selection).

HERE = "tests.scoring.codecs.test_selection"


def pipe_encoder(features: pa.Table) -> bytes:
    """A user encoder: pipe-separated values, one row per line."""
    rows = zip(*(column.to_pylist() for column in features.columns), strict=True)
    return b"".join(("|".join(str(v) for v in row) + "\n").encode() for row in rows)


def pipe_decoder(body: bytes, num_rows: int) -> list[list[float]]:
    """A user decoder returning a sequence of per-row lists (two outputs)."""
    return [[float(x) for x in line.split(b"|")] for line in body.splitlines()]


def table_decoder(body: bytes, num_rows: int) -> pa.Table:
    """A user decoder returning an Arrow table."""
    values = [float(x) for x in body.split()]
    return pa.table({"score": values})


def numpy_decoder(body: bytes, num_rows: int) -> np.ndarray:
    """A user decoder returning a 2-D numpy array."""
    return np.arange(num_rows * 2, dtype=np.float64).reshape(num_rows, 2)


class Namespace:
    """Holds a decoder reachable as ``module:Namespace.decode``."""

    @staticmethod
    def decode(body: bytes, num_rows: int) -> dict[str, Any]:
        return orjson.loads(body)  # type: ignore[no-any-return]


NOT_CALLABLE = 42


# ---------------------------------------------------------------------------------------------
# get_codec and parameters


def test_get_codec_defaults_to_csv_and_accept_follows_content_type() -> None:
    codec = get_codec()
    assert isinstance(codec, Codec)
    assert (codec.content_type, codec.accept) == (CSV, CSV)
    codec = get_codec(content_type=JSON)
    assert codec.accept == JSON
    codec = get_codec(content_type=JSON, accept=CSV)
    assert (codec.content_type, codec.accept) == (JSON, CSV)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"content_type": "application/x-npy"}, "content_type 'application/x-npy' has no built-in codec"),
        ({"accept": "application/x-protobuf"}, "accept 'application/x-protobuf' has no built-in codec"),
        ({"json_record_format": "table"}, "json_record_format must be 'list' or 'object'"),
        ({"prediction_columns": []}, "prediction_columns is empty"),
        ({"prediction_columns": ["a", "a"]}, "prediction_columns repeats a"),
        ({"prediction_columns": ["a", ""]}, "non-empty strings"),
        ({"content_type": ""}, "content_type must be a non-empty"),
    ],
)
def test_get_codec_rejects_bad_parameters(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ParameterValidationError, match=fragment):
        get_codec(**kwargs)


def test_unknown_content_type_is_allowed_with_user_codecs() -> None:
    codec = get_codec(content_type="application/x-pipe", encoder=pipe_encoder, decoder=pipe_decoder)
    assert codec.content_type == "application/x-pipe"
    assert codec.accept == "application/x-pipe"


def test_single_prediction_column_string_means_one_column() -> None:
    codec = get_codec(prediction_columns="score")
    assert codec.prediction_columns == ("score",)
    assert codec.decode(b"1\n2\n", num_rows=2, content_type=None).column_names == ["score"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("text/csv; charset=utf-8", CSV),
        ("Application/JSON", JSON),
        ("application/jsonl", JSONLINES),
        ("application/x-ndjson", JSONLINES),
        ("application/x-npy", "application/x-npy"),
        (None, None),
    ],
)
def test_media_type_normalises(raw: str | None, expected: str | None) -> None:
    assert media_type(raw) == expected


def test_codec_repr_has_no_payload() -> None:
    text = repr(get_codec(content_type=JSON, prediction_columns=["p"]))
    assert "application/json" in text and "JsonEncoder" in text


# ---------------------------------------------------------------------------------------------
# Schema checks


def test_check_features_encodable_accepts_supported_schemas() -> None:
    schema = mixed_table().schema
    for content_type in (JSON, JSONLINES):
        check_features_encodable(schema, content_type)  # no error
    numeric = pa.schema([field for field in schema if field.name in ("i", "u8", "f", "f32", "b", "d")])
    for content_type in (CSV, "text/csv; charset=utf-8"):
        check_features_encodable(numeric, content_type)  # no error
    nested = pa.schema([("l", pa.list_(pa.struct([("d", pa.decimal128(5, 2))])))])
    check_features_encodable(nested, JSON)
    with pytest.raises(InputDataError, match="nested field"):
        check_features_encodable(pa.schema([("l", pa.list_(pa.binary()))]), JSON)


def test_csv_needs_numeric_or_boolean_features_naming_every_column_and_the_fix() -> None:
    schema = pa.schema([("x", pa.float64()), ("name", pa.string()), ("when", pa.timestamp("us"))])
    with pytest.raises(InputDataError) as info:
        check_features_encodable(schema, CSV)
    message = str(info.value)
    assert "'name' (string)" in message and "'when' (timestamp[us])" in message and "'x'" not in message
    assert "application/json" in message and "encoder=" in message
    check_features_encodable(schema, JSON)  # JSON carries text


def test_check_features_encodable_rejects_empty_schema_and_unknown_type() -> None:
    with pytest.raises(InputDataError, match="no feature columns"):
        check_features_encodable(pa.schema([]), CSV)
    with pytest.raises(ParameterValidationError, match="no built-in codec"):
        check_features_encodable(pa.schema([("a", pa.int64())]), "application/x-npy")


def test_codec_check_features_skips_user_encoders() -> None:
    schema = pa.schema([("blob", pa.binary())])
    get_codec(content_type="application/octet-stream", encoder=pipe_encoder, decoder=pipe_decoder).check_features(
        schema
    )
    with pytest.raises(InputDataError):
        get_codec().check_features(schema)


# ---------------------------------------------------------------------------------------------
# PayloadCodec: encode, then decode by the response's type


def test_decoder_follows_the_response_content_type_when_supported() -> None:
    codec = get_codec(content_type=CSV)  # accept text/csv
    out = codec.decode(b'{"predictions": [1, 2]}', num_rows=2, content_type="application/json; charset=utf-8")
    assert out.to_pydict() == {"prediction": [1.0, 2.0]}
    # an unknown response type falls back to accept
    assert codec.decode(b"1\n2\n", num_rows=2, content_type="application/octet-stream").num_rows == 2
    json_accept = get_codec(content_type=CSV, accept=JSON)
    assert json_accept.decode(b"[3, 4]", num_rows=2, content_type=None).to_pydict() == {"prediction": [3.0, 4.0]}


@pytest.mark.parametrize("content_type", [CSV, JSON, JSONLINES])
def test_encode_decode_round_trip_through_an_echo_model(content_type: str) -> None:
    """A model that echoes its two numeric features back as outputs, in the same format."""
    table = numeric_table(rows=50, cols=2, seed=3)
    codec = get_codec(content_type=content_type, prediction_columns=["a", "b"])
    body = codec.encode(table)
    if content_type == JSON:
        response = orjson.dumps({"predictions": orjson.loads(body)["instances"]})
    else:
        response = body
    out = codec.decode(response, num_rows=table.num_rows, content_type=content_type)
    assert out.column("a").to_pylist() == table.column("x0").to_pylist()
    assert out.column("b").to_pylist() == table.column("x1").to_pylist()


# ---------------------------------------------------------------------------------------------
# User codecs


@pytest.mark.parametrize("path", [f"{HERE}:pipe_encoder", f"{HERE}.pipe_encoder"])
def test_dotted_path_encoder_and_decoder(path: str) -> None:
    codec = get_codec(
        content_type="application/x-pipe",
        encoder=path,
        decoder=path.replace("pipe_encoder", "pipe_decoder"),
        prediction_columns=["a", "b"],
    )
    body = codec.encode(pa.table({"x": [1.0, 2.0], "y": [3.0, 4.0]}))
    assert body == b"1.0|3.0\n2.0|4.0\n"
    out = codec.decode(body, num_rows=2, content_type="application/x-pipe")
    assert out.to_pydict() == {"a": [1.0, 2.0], "b": [3.0, 4.0]}
    with pytest.raises(PredictionRowCountError):
        codec.decode(body, num_rows=3, content_type=None)


def test_user_decoder_returning_table_numpy_and_mapping() -> None:
    codec = get_codec(decoder=f"{HERE}:table_decoder")
    assert codec.decode(b"1 2", num_rows=2, content_type=None).to_pydict() == {"score": [1.0, 2.0]}
    with pytest.raises(PredictionRowCountError, match="expected 3 predictions, got 2"):
        codec.decode(b"1 2", num_rows=3, content_type=None)
    renamed = get_codec(decoder=table_decoder, prediction_columns=["p"]).decode(b"5", num_rows=1, content_type=None)
    assert renamed.column_names == ["p"]
    arrays = get_codec(decoder=numpy_decoder).decode(b"", num_rows=2, content_type=None)
    assert arrays.to_pydict() == {"prediction_0": [0.0, 2.0], "prediction_1": [1.0, 3.0]}
    mapping = get_codec(decoder=f"{HERE}:Namespace.decode").decode(
        b'{"outputs": [1, 2]}', num_rows=2, content_type=None
    )
    assert mapping.to_pydict() == {"prediction": [1.0, 2.0]}


def test_user_encoder_must_return_bytes() -> None:
    codec = get_codec(encoder=lambda features: 12)
    with pytest.raises(ParameterValidationError, match="returned int; it must return the request body as bytes"):
        codec.encode(pa.table({"a": [1]}))
    assert get_codec(encoder=lambda features: "é").encode(pa.table({"a": [1]})) == "é".encode()


def test_user_decoder_must_return_rows() -> None:
    codec = get_codec(decoder=lambda body, num_rows: "oops")
    with pytest.raises(ParameterValidationError, match="returned str"):
        codec.decode(b"", num_rows=1, content_type=None)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no_such_module_xyz:fn", "module 'no_such_module_xyz' cannot be imported"),
        (f"{HERE}:missing_function", "'missing_function' not found"),
        (f"{HERE}:NOT_CALLABLE", "names a int, not a callable"),
        ("justaname", "is not an importable path"),
        ("", "must be a callable or an importable path"),
    ],
)
def test_bad_dotted_paths_name_the_path(path: str, fragment: str) -> None:
    with pytest.raises(ParameterValidationError, match=fragment) as info:
        get_codec(decoder=path)
    if path:
        assert path in str(info.value)
    with pytest.raises(ParameterValidationError, match="encoder"):
        resolve_callable(path, parameter="encoder")


def test_resolve_callable_returns_callables_unchanged() -> None:
    assert resolve_callable(pipe_encoder, parameter="encoder") is pipe_encoder
    assert resolve_callable("json:dumps", parameter="encoder").__name__ == "dumps"
    assert resolve_callable("os.path.join", parameter="encoder").__name__ == "join"
