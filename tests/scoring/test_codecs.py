"""Tests of airflow_provider_smrt.scoring.codecs: encoders, decoders, user codecs and schema checks."""

from __future__ import annotations

import csv
import datetime as dt
import io
import pickle
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    PredictionCountMismatchError,
    PredictionRowCountError,
    ResponseDecodeError,
)
from airflow_provider_smrt.scoring.codecs import (
    CSV,
    JSON,
    JSONLINES,
    Codec,
    arrow,
    check_features_encodable,
    decoders,
    encoders,
    get_codec,
    media_type,
    resolve_callable,
)

# ---------------------------------------------------------------------------------------------
# User codecs referenced by dotted path (this module is importable as tests.scoring.test_codecs).

HERE = "tests.scoring.test_codecs"


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
# Fixtures and helpers


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
# CSV encoding


def test_csv_round_trip_of_every_scalar_type() -> None:
    table = mixed_table()
    body = get_codec(content_type=CSV).encode(table)
    rows = parse_csv(body)
    assert len(rows) == table.num_rows
    for j, name in enumerate(table.column_names):
        got = [row[j] or None for row in rows]
        assert got == EXPECTED_TEXT[name], name


def test_csv_quotes_only_values_that_need_it() -> None:
    table = pa.table({"a": ["x,y", "plain", 'q"uote', "n\nl", "cr\r"], "n": [1, 2, 3, 4, 5]})
    body = get_codec().encode(table)
    assert body == b'"x,y",1\nplain,2\n"q""uote",3\n"n\nl",4\n"cr\r",5\n'


def test_csv_numeric_only_body_has_no_quotes_and_no_header() -> None:
    table = pa.table({"a": [1.5, 2.0], "b": pa.array([3, None], pa.int32())})
    assert get_codec().encode(table) == b"1.5,3\n2,\n"


def test_csv_accepts_a_record_batch_and_an_empty_slice() -> None:
    batch = pa.record_batch({"a": [1, 2, 3]})
    codec = get_codec()
    assert codec.encode(batch) == b"1\n2\n3\n"
    assert codec.encode(pa.table({"a": pa.array([], pa.int64())})) == b""
    assert codec.encode(pa.table({"s": pa.array(["a,b"])}).slice(0, 0)) == b""


def test_csv_sliced_input_with_quoting_encodes_only_the_slice() -> None:
    table = pa.table({"s": ["a,1", "b,2", "c,3", "d,4"], "n": [1, 2, 3, 4]})
    body = get_codec().encode(table.slice(1, 2))
    assert parse_csv(body) == [["b,2", "2"], ["c,3", "3"]]


def test_csv_large_string_and_string_view_columns() -> None:
    table = pa.table({"l": pa.array(["a,b", "c"], pa.large_string()), "v": pa.array(["x", "y"], pa.string_view())})
    assert parse_csv(get_codec().encode(table)) == [["a,b", "x"], ["c", "y"]]


@pytest.mark.parametrize(
    "column",
    [
        pa.array([[1.0, 2.0], None], pa.list_(pa.float64())),
        pa.array([{"a": 1}, None]),
        pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2)),
    ],
    ids=["list", "struct", "map", "fixed_size_list"],
)
def test_csv_rejects_nested_columns_naming_the_column_and_json(column: pa.Array) -> None:
    table = pa.table({"ok": [1, 2], "embedding": column})
    with pytest.raises(InputDataError) as info:
        get_codec().encode(table)
    message = str(info.value)
    assert "'embedding'" in message
    assert "application/json" in message
    with pytest.raises(InputDataError, match="'embedding'"):
        check_features_encodable(table.schema, CSV)


def test_binary_columns_are_rejected_for_every_type() -> None:
    schema = pa.schema([("blob", pa.binary())])
    for content_type in (CSV, JSON, JSONLINES):
        with pytest.raises(InputDataError, match=r"'blob'.*cast the column to string"):
            check_features_encodable(schema, content_type)
    with pytest.raises(InputDataError, match="'blob'"):
        get_codec(content_type=JSON).encode(pa.table({"blob": pa.array([b"\x00"])}))


def test_check_features_encodable_accepts_supported_schemas() -> None:
    schema = mixed_table().schema
    for content_type in (CSV, "text/csv; charset=utf-8", JSON, JSONLINES):
        check_features_encodable(schema, content_type)  # no error
    nested = pa.schema([("l", pa.list_(pa.struct([("d", pa.decimal128(5, 2))])))])
    check_features_encodable(nested, JSON)
    with pytest.raises(InputDataError, match="nested field"):
        check_features_encodable(pa.schema([("l", pa.list_(pa.binary()))]), JSON)


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


def test_error_messages_never_contain_cell_values() -> None:
    secret = "SECRET-VALUE-123"
    table = pa.table({"payload": pa.array([[secret]], pa.list_(pa.string()))})
    with pytest.raises(InputDataError) as info:
        get_codec().encode(table)
    assert secret not in str(info.value)
    with pytest.raises(ResponseDecodeError) as decode_info:
        get_codec(content_type=JSON).decode(
            b'{"predictions": [1, "' + secret.encode() + b'"', num_rows=2, content_type=None
        )
    assert secret not in str(decode_info.value)


# ---------------------------------------------------------------------------------------------
# JSON encoding


def _json_cells(table: pa.Table) -> dict[str, list[Any]]:
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


def test_json_round_trip_of_every_scalar_type() -> None:
    table = mixed_table()
    document = orjson.loads(get_codec(content_type=JSON).encode(table))
    assert list(document) == ["instances"]
    cells = _json_cells(table)
    expected_rows = [[cells[name][i] for name in table.column_names] for i in range(table.num_rows)]
    assert document["instances"] == expected_rows


def test_jsonlines_round_trip_of_every_scalar_type() -> None:
    table = mixed_table()
    body = get_codec(content_type=JSONLINES).encode(table)
    assert body.endswith(b"\n") and body.count(b"\n") == table.num_rows  # the newline in "multi\nline" is escaped
    rows = [orjson.loads(line) for line in body.splitlines()]
    cells = _json_cells(table)
    assert rows == [[cells[name][i] for name in table.column_names] for i in range(table.num_rows)]


@pytest.mark.parametrize("content_type", [JSON, JSONLINES])
def test_json_object_records(content_type: str) -> None:
    table = mixed_table()
    body = get_codec(content_type=content_type, json_record_format="object").encode(table)
    records = orjson.loads(body)["instances"] if content_type == JSON else [orjson.loads(x) for x in body.splitlines()]
    cells = _json_cells(table)
    assert records == [{name: cells[name][i] for name in table.column_names} for i in range(table.num_rows)]


def test_json_object_records_need_unique_names() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(InputDataError, match="unique feature column names"):
        get_codec(content_type=JSON, json_record_format="object").encode(table)
    assert orjson.loads(get_codec(content_type=JSON).encode(table)) == {"instances": [[1, 2]]}


def test_json_nested_values_become_lists_and_objects() -> None:
    table = pa.table(
        {
            "vec": pa.array([[1.0, 2.5], None, []], pa.list_(pa.float64())),
            "obj": pa.array([{"a": 1, "b": "x"}, {"a": None, "b": "y"}, None]),
            "m": pa.array([[("k", 1), ("j", 2)], None, []], pa.map_(pa.string(), pa.int64())),
            "dl": pa.array([[Decimal("1.25")], None, None], pa.list_(pa.decimal128(5, 2))),
            "tl": pa.array([[dt.date(2024, 1, 2)], None, None], pa.list_(pa.date32())),
        }
    )
    expected = [
        [[1.0, 2.5], {"a": 1, "b": "x"}, {"k": 1, "j": 2}, [1.25], ["2024-01-02"]],
        [None, {"a": None, "b": "y"}, None, None, None],
        [[], None, {}, None, None],
    ]
    assert orjson.loads(get_codec(content_type=JSON).encode(table))["instances"] == expected
    lines = get_codec(content_type=JSONLINES).encode(table).splitlines()
    assert [orjson.loads(line) for line in lines] == expected


@pytest.mark.parametrize("content_type", [JSON, JSONLINES])
def test_json_numeric_fast_path_matches_general_path(content_type: str) -> None:
    table = pa.table(
        {
            "f": pa.array([0.1, 2.0, -3.25], pa.float64()),
            "i": pa.array([1, 2, 3], pa.int32()),
            "g": pa.array([1e-300, 7.0, 0.3], pa.float64()),
        }
    )
    codec = get_codec(content_type=content_type)
    fast = codec.encode(table)
    assert encoders._numeric_matrix(arrow.prepare(table, codec.content_type)) is not None
    with_null = pa.table({"f": [0.1, 2.0, None], "i": [1, 2, 3], "g": [1e-300, 7.0, 0.3]})
    assert encoders._numeric_matrix(with_null) is None
    parse = (
        (lambda b: orjson.loads(b)["instances"])
        if content_type == JSON
        else (lambda b: [orjson.loads(x) for x in b.splitlines()])
    )
    assert parse(fast) == [[0.1, 1.0, 1e-300], [2.0, 2.0, 7.0], [-3.25, 3.0, 0.3]]
    assert parse(codec.encode(with_null)) == [[0.1, 1, 1e-300], [2.0, 2, 7.0], [None, 3, 0.3]]


def test_json_fast_path_keeps_integers_and_float32_exact() -> None:
    ints = pa.table({"a": pa.array([2**62, -5], pa.int64()), "b": pa.array([1, 2], pa.uint16())})
    assert orjson.loads(get_codec(content_type=JSON).encode(ints))["instances"] == [[2**62, 1], [-5, 2]]
    f32 = pa.table({"a": pa.array([0.1, 0.7], pa.float32())})
    assert get_codec(content_type=JSON).encode(f32) == b'{"instances":[[0.1],[0.7]]}'
    # an int64 too large for float64 next to a float column takes the exact general path
    big = pa.table({"a": pa.array([2**60 + 1], pa.int64()), "b": [0.5]})
    assert orjson.loads(get_codec(content_type=JSON).encode(big))["instances"] == [[2**60 + 1, 0.5]]
    huge = pa.table({"a": pa.array([2**64 - 1], pa.uint64())})
    assert orjson.loads(get_codec(content_type=JSON).encode(huge))["instances"] == [[2**64 - 1]]


def test_json_nan_and_infinity_are_null() -> None:
    table = pa.table({"a": [float("nan"), float("inf"), 1.0]})
    assert orjson.loads(get_codec(content_type=JSON).encode(table))["instances"] == [[None], [None], [1.0]]


def test_jsonlines_of_empty_table_is_empty_and_json_has_empty_instances() -> None:
    table = pa.table({"a": pa.array([], pa.float64())})
    assert get_codec(content_type=JSONLINES).encode(table) == b""
    assert orjson.loads(get_codec(content_type=JSON).encode(table)) == {"instances": []}


def test_json_map_with_duplicate_keys_is_an_input_error_naming_the_column() -> None:
    table = pa.table({"m": pa.array([[("k", 1), ("k", 2)]], pa.map_(pa.string(), pa.int64()))})
    with pytest.raises(InputDataError, match="feature column 'm'"):
        get_codec(content_type=JSON).encode(table)


def test_json_durations_are_integer_counts() -> None:
    table = pa.table({"d": pa.array([1500, None], pa.duration("ms"))})
    assert orjson.loads(get_codec(content_type=JSON).encode(table))["instances"] == [[1500], [None]]


def test_no_feature_columns_is_an_input_error() -> None:
    with pytest.raises(InputDataError, match="no feature columns"):
        get_codec().encode(pa.table({"a": [1]}).select([]))


# ---------------------------------------------------------------------------------------------
# Decoding


def test_csv_decode_one_output_is_float64_prediction() -> None:
    out = get_codec().decode(b"1\n0.25\n-3e2\n", num_rows=3, content_type="text/csv")
    assert out.schema == pa.schema([("prediction", pa.float64())])
    assert out.column(0).to_pylist() == [1.0, 0.25, -300.0]


def test_csv_decode_without_final_newline() -> None:
    codec = get_codec()
    assert codec.decode(b"0.5", num_rows=1, content_type=None).to_pydict() == {"prediction": [0.5]}
    assert codec.decode(b"1\n2", num_rows=2, content_type=None).to_pydict() == {"prediction": [1.0, 2.0]}
    assert codec.decode(b"1,x", num_rows=1, content_type=None).to_pydict() == {
        "prediction_0": [1.0],
        "prediction_1": ["x"],
    }


def test_csv_one_number_per_line_fast_path_and_its_fallbacks() -> None:
    codec = get_codec()
    out = codec.decode(b"nan\r\n-inf\r\n1e5\r\n-0\r\n", num_rows=4, content_type=None)
    assert out.schema.types == [pa.float64()]
    assert out.column(0).to_pylist()[1:] == [float("-inf"), 1e5, 0.0] and np.isnan(out.column(0)[0].as_py())
    assert decoders._one_number_per_line(b"1\n2\n", 2) is not None
    assert decoders._one_number_per_line(b"true\nfalse\n", 2) is None  # not numbers: the CSV reader decides
    booleans = codec.decode(b"true\nfalse\n", num_rows=2, content_type=None)
    assert booleans.to_pydict() == {"prediction": [True, False]}
    assert decoders._one_number_per_line(b"1 2\n3 4\n", 4) is None  # two tokens on a line
    with pytest.raises(PredictionRowCountError, match="expected 4 predictions, got 2"):
        codec.decode(b"1 2\n3 4\n", num_rows=4, content_type=None)
    assert decoders._one_number_per_line(b"1\n\n2\n", 3) is None  # a blank line is no prediction
    with pytest.raises(PredictionRowCountError, match="got 2"):
        codec.decode(b"1\n\n2\n", num_rows=3, content_type=None)


def test_csv_decode_integers_are_float64_for_a_stable_schema() -> None:
    out = get_codec().decode(b"1\n2\n", num_rows=2, content_type=None)
    assert out.schema.field("prediction").type == pa.float64()


def test_csv_decode_multi_output_into_prediction_columns() -> None:
    body = b'0.1,cat,true\n0.9,dog,false\n,"a,b",\n'
    out = get_codec(prediction_columns=["score", "label", "flag"]).decode(body, num_rows=3, content_type=None)
    assert out.column_names == ["score", "label", "flag"]
    assert out.schema.types == [pa.float64(), pa.string(), pa.bool_()]
    assert out.to_pydict() == {
        "score": [0.1, 0.9, None],
        "label": ["cat", "dog", "a,b"],
        "flag": [True, False, None],
    }
    default = get_codec().decode(body, num_rows=3, content_type=None)
    assert default.column_names == ["prediction_0", "prediction_1", "prediction_2"]


def test_csv_decode_single_line_of_n_values() -> None:
    out = get_codec().decode(b"0.5,1,2.5\n", num_rows=3, content_type=None)
    assert out.to_pydict() == {"prediction": [0.5, 1.0, 2.5]}
    labels = get_codec(prediction_columns=["label"]).decode(b"a,b,c", num_rows=3, content_type=None)
    assert labels.to_pydict() == {"label": ["a", "b", "c"]}


def test_csv_decode_crlf_quoted_newlines_and_dates_as_text() -> None:
    body = b'"line\nbreak",2024-01-01\r\nplain,2024-01-02\r\n'
    out = get_codec(prediction_columns=["text", "day"]).decode(body, num_rows=2, content_type=None)
    assert out.to_pydict() == {"text": ["line\nbreak", "plain"], "day": ["2024-01-01", "2024-01-02"]}
    assert out.schema.field("day").type == pa.string()


def test_csv_decode_all_null_column_is_float64() -> None:
    out = get_codec(prediction_columns=["a", "b"]).decode(b"1,\n2,\n", num_rows=2, content_type=None)
    assert out.schema.types == [pa.float64(), pa.float64()]
    assert out.column("b").null_count == 2


def test_csv_decode_ragged_lines_is_a_decode_error() -> None:
    with pytest.raises(ResponseDecodeError, match="same number of comma-separated outputs"):
        get_codec().decode(b"1,2\n3\n", num_rows=2, content_type=None)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (CSV, b"1\n2\n"),
        (JSON, b'{"predictions": [1, 2]}'),
        (JSONLINES, b"1\n2\n"),
        (CSV, b""),
        (JSON, b"[]"),
    ],
)
def test_row_count_mismatch_is_reported_with_counts(content_type: str, body: bytes) -> None:
    codec = get_codec(content_type=content_type)
    with pytest.raises(PredictionCountMismatchError) as info:
        codec.decode(body, num_rows=3, content_type=None)
    err = info.value
    assert isinstance(err, PredictionRowCountError)
    assert err.expected == 3
    assert err.got == (2 if body.strip() not in (b"", b"[]") else 0)
    assert str(err).startswith(f"expected 3 predictions, got {err.got}")
    # composable: the caller prefixes the file and row range, and the error pickles
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), clone.expected, clone.got, str(clone)) == (type(err), 3, err.got, str(err))


@pytest.mark.parametrize(
    "body",
    [
        b'{"predictions": [0.1, 0.2, null]}',
        b'{"outputs": [0.1, 0.2, null]}',
        b'{"results": [0.1, 0.2, null]}',
        b"[0.1, 0.2, null]",
        b"[[0.1], [0.2], [null]]",
        b'{"predictions": [{"score": 0.1}, {"score": 0.2}, {"score": null}]}',
    ],
)
def test_json_decode_shapes_of_one_output(body: bytes) -> None:
    out = get_codec(content_type=JSON).decode(body, num_rows=3, content_type="application/json")
    assert out.column(0).to_pylist() == [0.1, 0.2, None]
    assert out.schema.field(0).type == pa.float64()
    assert out.column_names[0] in ("prediction", "score")


def test_json_decode_scalar_types() -> None:
    codec = get_codec(content_type=JSON)
    assert codec.decode(b"[1, 2]", num_rows=2, content_type=None).schema.types == [pa.float64()]
    bools = codec.decode(b"[true, false, null]", num_rows=3, content_type=None)
    assert bools.schema.types == [pa.bool_()] and bools.column(0).to_pylist() == [True, False, None]
    strings = codec.decode(b'["a", null]', num_rows=2, content_type=None)
    assert strings.schema.types == [pa.string()] and strings.column(0).to_pylist() == ["a", None]
    mixed = codec.decode(b'[1, "a", true, null]', num_rows=4, content_type=None)
    assert mixed.column(0).to_pylist() == ["1", "a", "true", None]
    big = codec.decode(b"[100000000000000000000000, 1]", num_rows=2, content_type=None)
    assert big.schema.types == [pa.float64()] and big.column(0).to_pylist() == [1e23, 1.0]
    single = codec.decode(b"0.75", num_rows=1, content_type=None)
    assert single.to_pydict() == {"prediction": [0.75]}


def test_json_decode_multi_output_lists_into_prediction_columns() -> None:
    body = b'{"predictions": [[0.1, "a", [1, 2]], [0.9, "b", {"k": 1}], null]}'
    out = get_codec(content_type=JSON, prediction_columns=["p", "label", "extra"]).decode(
        body, num_rows=3, content_type=None
    )
    assert out.column_names == ["p", "label", "extra"]
    assert out.schema.types == [pa.float64(), pa.string(), pa.string()]
    assert out.to_pydict() == {"p": [0.1, 0.9, None], "label": ["a", "b", None], "extra": ["[1,2]", '{"k":1}', None]}
    default = get_codec(content_type=JSON).decode(b"[[1, 2], [3, 4]]", num_rows=2, content_type=None)
    assert default.to_pydict() == {"prediction_0": [1.0, 3.0], "prediction_1": [2.0, 4.0]}


def test_json_decode_column_count_mismatch_tells_user_to_fix_prediction_columns() -> None:
    codec = get_codec(content_type=JSON, prediction_columns=["only"])
    with pytest.raises(ParameterValidationError, match=r"2 output\(s\) per row.*set prediction_columns"):
        codec.decode(b"[[1, 2], [3, 4]]", num_rows=2, content_type=None)
    csv_codec = get_codec(prediction_columns=["a", "b", "c"])
    with pytest.raises(ParameterValidationError, match="prediction_columns"):
        csv_codec.decode(b"1,2\n3,4\n", num_rows=2, content_type=None)


def test_json_decode_objects_keep_field_names_and_select_by_prediction_columns() -> None:
    body = b'{"predictions": [{"label": "a", "score": 0.5, "probs": [0.5, 0.5]}, {"label": "b", "score": 1}, null]}'
    out = get_codec(content_type=JSON).decode(body, num_rows=3, content_type=None)
    assert out.column_names == ["label", "score", "probs"]
    assert out.schema.types == [pa.string(), pa.float64(), pa.string()]
    assert out.to_pydict() == {"label": ["a", "b", None], "score": [0.5, 1.0, None], "probs": ["[0.5,0.5]", None, None]}
    picked = get_codec(content_type=JSON, prediction_columns=["score"]).decode(body, num_rows=3, content_type=None)
    assert picked.to_pydict() == {"score": [0.5, 1.0, None]}
    with pytest.raises(ParameterValidationError, match="names nope, which the response objects do not have"):
        get_codec(content_type=JSON, prediction_columns=["nope"]).decode(body, num_rows=3, content_type=None)


def test_json_decode_objects_with_mixed_field_types_fall_back() -> None:
    body = b'[{"v": 1}, {"v": "x"}, {"w": true}]'
    out = get_codec(content_type=JSON).decode(body, num_rows=3, content_type=None)
    assert out.to_pydict() == {"v": ["1", "x", None], "w": [None, None, True]}


def test_json_decode_rejects_bad_shapes() -> None:
    codec = get_codec(content_type=JSON)
    with pytest.raises(ResponseDecodeError, match="not valid JSON"):
        codec.decode(b"{nope", num_rows=1, content_type=None)
    with pytest.raises(ResponseDecodeError, match="without a 'predictions'"):
        codec.decode(b'{"scores": [1]}', num_rows=1, content_type=None)
    with pytest.raises(ResponseDecodeError, match="mix"):
        codec.decode(b"[1, [2]]", num_rows=2, content_type=None)
    with pytest.raises(ResponseDecodeError, match="different numbers of outputs"):
        codec.decode(b"[[1, 2], [3]]", num_rows=2, content_type=None)


def test_jsonlines_decode() -> None:
    codec = get_codec(content_type=JSONLINES)
    assert codec.decode(b"0.5\n\n1.5\r\n", num_rows=2, content_type=None).to_pydict() == {"prediction": [0.5, 1.5]}
    out = codec.decode(b'{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n', num_rows=2, content_type=None)
    assert out.to_pydict() == {"a": [1.0, 2.0], "b": ["x", "y"]}
    lists = codec.decode(b"[1, 2]\n[3, 4]\n", num_rows=2, content_type=None)
    assert lists.column_names == ["prediction_0", "prediction_1"]
    with pytest.raises(ResponseDecodeError, match="not valid JSON"):
        codec.decode(b"1\n{\n", num_rows=2, content_type=None)


def test_decoder_follows_the_response_content_type_when_supported() -> None:
    codec = get_codec(content_type=CSV)  # accept text/csv
    out = codec.decode(b'{"predictions": [1, 2]}', num_rows=2, content_type="application/json; charset=utf-8")
    assert out.to_pydict() == {"prediction": [1.0, 2.0]}
    # an unknown response type falls back to accept
    assert codec.decode(b"1\n2\n", num_rows=2, content_type="application/octet-stream").num_rows == 2
    json_accept = get_codec(content_type=CSV, accept=JSON)
    assert json_accept.decode(b"[3, 4]", num_rows=2, content_type=None).to_pydict() == {"prediction": [3.0, 4.0]}


def test_decode_of_zero_rows_is_an_empty_table() -> None:
    for content_type, body in ((CSV, b""), (JSON, b'{"predictions": []}'), (JSONLINES, b"")):
        out = get_codec(content_type=content_type, prediction_columns=["p"]).decode(body, num_rows=0, content_type=None)
        assert out.num_rows == 0 and out.column_names == ["p"]


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


def _column_types(table: pa.Table) -> Sequence[pa.DataType]:
    return table.schema.types


def test_decoded_schema_is_stable_across_batches() -> None:
    codec = get_codec(content_type=JSON)
    first = codec.decode(b"[1, 2]", num_rows=2, content_type=None)
    second = codec.decode(b"[0.5, null]", num_rows=2, content_type=None)
    third = codec.decode(b"[null, null]", num_rows=2, content_type=None)
    assert _column_types(first) == _column_types(second) == _column_types(third) == [pa.float64()]


def test_csv_plain_numbers_are_parsed_without_arrow_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain numbers take the orjson path (no Arrow kernel, so no GIL release per request); other
    number spellings still parse, through Arrow."""

    def no_cast(*args: object, **kwargs: object) -> None:
        raise AssertionError("Arrow's cast was called for plain numbers")

    body = b"1\r\n-2.5\r\n3e5\r\n123456789\r\n"
    with monkeypatch.context() as patched:
        patched.setattr(decoders.pc, "cast", no_cast)
        out = decoders._one_number_per_line(body, 4)
    assert out is not None and out.type == pa.float64()
    assert out.to_pylist() == [1.0, -2.5, 3e5, 123456789.0]
    huge = decoders._one_number_per_line(b"1\n12345678901234567890\n", 2)  # an integer past 2**53: Arrow parses it
    assert huge is not None and huge.to_pylist() == [1.0, 12345678901234567890.0]
    spelled = decoders._one_number_per_line(b"1.\n.5\n+2\ninf\n", 4)  # not JSON numbers: Arrow parses them
    assert spelled is not None and spelled.to_pylist() == [1.0, 0.5, 2.0, float("inf")]
    assert decoders._one_number_per_line(b"1\n2,3\n", 2) is None  # two outputs on a line: the CSV reader
