"""Tests of airflow_provider_smrt.scoring.codecs.encoders: the CSV and JSON request bodies."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import numpy as np
import orjson
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    ResponseDecodeError,
)
from airflow_provider_smrt.scoring.codecs import (
    CSV,
    JSON,
    JSONLINES,
    arrow,
    check_features_encodable,
    encoders,
    get_codec,
)
from tests.scoring.codecs.tables import EXPECTED_TEXT, json_cells, mixed_table, parse_csv

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


def test_csv_of_uniform_numeric_features_reads_back_exactly() -> None:
    # All float64, all float32 or all integer, no null, finite: written from one array by orjson.
    rng = np.random.default_rng(7)
    # 3,000 rows x 7 columns: written in blocks of whole rows (encoders._BLOCK_VALUES values at most)
    values = rng.normal(size=(3000, 7)) * 10.0 ** rng.integers(-30, 30, size=(3000, 7))
    values[0] = [0.1, 3.0, -0.0, 1e-7, 1.7976931348623157e308, 5e-324, -2.5]
    assert values.size > 2 * encoders._BLOCK_VALUES
    codec = get_codec()
    body = codec.encode(pa.table({f"f{j}": values[:, j] for j in range(7)}))
    # shortest round-trip forms; the exponent's sign of large values varies with orjson's version (e308, e+308)
    first_line = body.split(b"\n", 1)[0].replace(b"e+308", b"e308")
    assert first_line == b"0.1,3.0,-0.0,1e-7,1.7976931348623157e308,5e-324,-2.5" and body.count(b"\n") == 3000
    assert np.array_equal(np.loadtxt(io.BytesIO(body), delimiter=",", ndmin=2), values)
    singles = values[:, :2].astype(np.float32)
    body = codec.encode(pa.table({"a": singles[:, 0], "b": singles[:, 1]}).slice(10, 50))
    assert np.array_equal(np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.float32, ndmin=2), singles[10:60])
    ints = pa.table({"a": pa.array([-(2**63), 2**63 - 1], pa.int64()), "b": pa.array([0, 255], pa.uint8())})
    assert codec.encode(ints) == b"-9223372036854775808,0\n9223372036854775807,255\n"
    assert codec.encode(pa.table({"one": [0.5, 2.0]})) == b"0.5\n2.0\n"
    whole = pa.table({"a": values[:100, 0], "b": values[:100, 1]})
    chunked = pa.concat_tables([whole.slice(0, 30), whole.slice(30)])  # as read from several row groups
    assert chunked.column(0).num_chunks == 2
    assert codec.encode(chunked.slice(20, 40)) == codec.encode(whole.slice(20, 40))


def test_csv_of_mixed_or_non_finite_numbers_is_arrows() -> None:
    # A mix of kinds, NaN or infinity: Arrow's writer, which formats each column by its type.
    codec = get_codec()
    assert codec.encode(pa.table({"a": [1.0, 2.0], "b": [3, 4]})) == b"1,3\n2,4\n"
    assert codec.encode(pa.table({"a": [1.5, float("nan")], "b": [float("inf"), 1e-7]})) == b"1.5,inf\nnan,1e-7\n"
    mixed = pa.table({"a": pa.array([0.1], pa.float32()), "b": [0.1]})
    assert codec.encode(mixed) == b"0.1,0.1\n"


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


def test_csv_header_is_the_first_line_of_every_body_quoted_where_needed() -> None:
    table = pa.table({"f0": [1.0, 2.0], 'we,ird "name"': ["a", "b,c"], "f2": [3, 4]})
    codec = get_codec(content_type=CSV, csv_header=True)
    rows = parse_csv(codec.encode(table))
    assert rows == [["f0", 'we,ird "name"', "f2"], ["1", "a", "3"], ["2", "b,c", "4"]]
    numeric = table.select(["f0", "f2"])
    assert codec.encode(numeric.slice(1, 1)) == b"f0,f2\n2,4\n"
    assert get_codec(content_type=CSV).encode(numeric) == b"1,3\n2,4\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content_type": JSON},
        {"content_type": CSV, "encoder": "json:dumps"},
        {"content_type": JSON, "request_template": {"inputs": "{f0}"}},
    ],
)
def test_csv_header_needs_the_built_in_csv_encoder(kwargs: dict[str, object]) -> None:
    with pytest.raises(ParameterValidationError, match="csv_header=True"):
        get_codec(csv_header=True, **kwargs)  # type: ignore[arg-type]


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


def test_json_round_trip_of_every_scalar_type() -> None:
    table = mixed_table()
    document = orjson.loads(get_codec(content_type=JSON).encode(table))
    assert list(document) == ["instances"]
    cells = json_cells(table)
    expected_rows = [[cells[name][i] for name in table.column_names] for i in range(table.num_rows)]
    assert document["instances"] == expected_rows


def test_jsonlines_round_trip_of_every_scalar_type() -> None:
    table = mixed_table()
    body = get_codec(content_type=JSONLINES).encode(table)
    assert body.endswith(b"\n") and body.count(b"\n") == table.num_rows  # the newline in "multi\nline" is escaped
    rows = [orjson.loads(line) for line in body.splitlines()]
    cells = json_cells(table)
    assert rows == [[cells[name][i] for name in table.column_names] for i in range(table.num_rows)]


@pytest.mark.parametrize("content_type", [JSON, JSONLINES])
def test_json_object_records(content_type: str) -> None:
    table = mixed_table()
    body = get_codec(content_type=content_type, json_record_format="object").encode(table)
    records = orjson.loads(body)["instances"] if content_type == JSON else [orjson.loads(x) for x in body.splitlines()]
    cells = json_cells(table)
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
