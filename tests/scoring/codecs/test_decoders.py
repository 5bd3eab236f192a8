"""Tests of airflow_provider_smrt.scoring.codecs.decoders: response bodies to prediction columns."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import (
    ParameterValidationError,
    PredictionCountMismatchError,
    PredictionRowCountError,
    ResponseDecodeError,
)
from airflow_provider_smrt.scoring.codecs import (
    CSV,
    JSON,
    JSONLINES,
    decoders,
    get_codec,
)

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


def test_decode_of_zero_rows_is_an_empty_table() -> None:
    for content_type, body in ((CSV, b""), (JSON, b'{"predictions": []}'), (JSONLINES, b"")):
        out = get_codec(content_type=content_type, prediction_columns=["p"]).decode(body, num_rows=0, content_type=None)
        assert out.num_rows == 0 and out.column_names == ["p"]


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
