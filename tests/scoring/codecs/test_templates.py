"""Tests of airflow_provider_smrt.scoring.codecs.templates: request templates and ``response_field`` decoding."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    PredictionRowCountError,
    ResponseDecodeError,
)
from airflow_provider_smrt.scoring.codecs import get_codec
from airflow_provider_smrt.scoring.codecs.templates import (
    RequestTemplateEncoder,
    ResponseFieldDecoder,
    template_columns,
)

SECRET = "s3cr3t-cell-value"


# ---------------------------------------------------------------------------------------------
# The encoder


def one_row(**columns: Any) -> pa.Table:
    return pa.table(
        {name: pa.array([value]) if not isinstance(value, pa.Array) else value for name, value in columns.items()}
    )


def test_whole_string_placeholders_keep_the_json_type() -> None:
    template = {
        "inputs": "{prompt}",
        "parameters": {"max_new_tokens": "{limit}", "temperature": "{temp}", "sample": "{flag}", "stop": "{stops}"},
        "missing": "{nothing}",
        "fixed": [1, "two", None, {"deep": "{limit}"}],
    }
    table = pa.table(
        {
            "prompt": pa.array(["Hello there"]),
            "limit": pa.array([16], pa.int32()),
            "temp": pa.array([0.5]),
            "flag": pa.array([True]),
            "stops": pa.array([["\n", "."]]),
            "nothing": pa.array([None], pa.float64()),
        }
    )
    body = RequestTemplateEncoder(template)(table)
    assert orjson.loads(body) == {
        "inputs": "Hello there",
        "parameters": {"max_new_tokens": 16, "temperature": 0.5, "sample": True, "stop": ["\n", "."]},
        "missing": None,
        "fixed": [1, "two", None, {"deep": 16}],
    }


def test_placeholders_inside_text_are_formatted_as_text() -> None:
    template = {"inputs": "Q: {question} (id {id}, score {score:.2f}, ok {ok}, note '{note}') {{literal}}"}
    table = one_row(question="Why?", id=7, score=0.12345, ok=False, note=pa.array([None], pa.string()))
    assert orjson.loads(RequestTemplateEncoder(template)(table)) == {
        "inputs": "Q: Why? (id 7, score 0.12, ok false, note '') {literal}"
    }


def test_temporal_values_are_iso_text() -> None:
    table = pa.table(
        {
            "when": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5)], pa.timestamp("us")),
            "day": pa.array([dt.date(2026, 1, 2)], pa.date32()),
        }
    )
    body = RequestTemplateEncoder({"at": "{when}", "text": "on {day}"})(table)
    assert orjson.loads(body) == {"at": "2026-01-02T03:04:05.000000", "text": "on 2026-01-02"}


def test_template_columns_in_order_of_first_use() -> None:
    assert template_columns({"a": "{x} and {y}", "b": ["{z}", "{x}"], "c": 3}) == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (["{x}"], "must be a dict"),
        ({"a": "{}"}, "empty placeholder"),
        ({"a": "{x!r}"}, "conversions"),
        ({"a": "{x"}, "not a valid template"),
        ({"a": 1.5}, "no '{column}' placeholder"),
        ({"a": "{x}", "b": {1, 2}}, "use JSON types"),
    ],
)
def test_invalid_templates_are_rejected(template: Any, message: str) -> None:
    with pytest.raises(ParameterValidationError, match=message):
        RequestTemplateEncoder(template)


def test_one_row_per_request_only() -> None:
    encoder = RequestTemplateEncoder({"inputs": "{prompt}"})
    with pytest.raises(ParameterValidationError, match="max_rows_per_request=1"):
        encoder(pa.table({"prompt": ["a", "b"]}))


def test_a_missing_column_is_named_without_values() -> None:
    encoder = RequestTemplateEncoder({"inputs": "{prompt}"})
    with pytest.raises(InputDataError, match="prompt") as info:
        encoder(pa.table({"text": [SECRET]}))
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The decoder


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        (b'[{"generated_text": "hi"}]', "generated_text", ["hi"]),
        (b'{"generated_text": "hi"}', "generated_text", ["hi"]),
        (b'{"choices": [{"message": {"content": "hi"}}]}', "choices.0.message.content", ["hi"]),
        (b'{"choices": [{"message": {"content": "hi"}}]}', "choices.message.content", ["hi"]),
        (b'{"outputs": {"score": 0.5}}', "outputs.score", [0.5]),
        (b'[{"label": "A", "score": 0.9}]', "0", [{"label": "A", "score": 0.9}]),
    ],
)
def test_response_field_one_row(body: bytes, field: str, expected: list[Any]) -> None:
    assert ResponseFieldDecoder(field, accept="application/json")(body, 1) == expected


def test_response_field_several_rows() -> None:
    decoder = ResponseFieldDecoder("generated_text", accept="application/json")
    assert decoder(b'[{"generated_text": "a"}, {"generated_text": "b"}]', 2) == ["a", "b"]
    assert ResponseFieldDecoder("data.scores", accept="application/json")(b'{"data": {"scores": [1, 2, 3]}}', 3) == [
        1,
        2,
        3,
    ]
    lines = ResponseFieldDecoder("generated_text", accept="application/jsonlines")
    assert lines(b'{"generated_text": "a"}\n{"generated_text": "b"}\n', 2) == ["a", "b"]
    with pytest.raises(ResponseDecodeError, match="one item per row"):
        decoder(b'{"generated_text": "a"}', 2)


def test_response_field_errors_name_the_path_not_the_values() -> None:
    decoder = ResponseFieldDecoder("generated_text", accept="application/json")
    with pytest.raises(ResponseDecodeError, match="'text'") as info:
        decoder(orjson.dumps([{"text": SECRET}]), 1)
    assert SECRET not in str(info.value)
    with pytest.raises(ResponseDecodeError, match="has no field"):
        decoder(orjson.dumps([SECRET]), 1)
    with pytest.raises(ResponseDecodeError, match="not valid JSON") as info:
        decoder(SECRET.encode(), 1)
    assert SECRET not in str(info.value)
    with pytest.raises(ResponseDecodeError, match="no index 3"):
        ResponseFieldDecoder("choices.3", accept="application/json")(b'{"choices": [1]}', 1)


def test_codec_decodes_the_field_into_prediction_columns() -> None:
    codec = get_codec(
        content_type="application/json", request_template={"inputs": "{prompt}"}, response_field="generated_text"
    )
    table = codec.decode(b'[{"generated_text": "hi there"}]', num_rows=1)
    assert table.column_names == ["prediction"] and table.column(0).to_pylist() == ["hi there"]
    assert table.schema.field("prediction").type == pa.string()
    named = get_codec(
        content_type="application/json", response_field="generated_text", prediction_columns=["completion"]
    )
    assert named.decode(b'[{"generated_text": "x"}]', num_rows=1).column_names == ["completion"]
    with pytest.raises(PredictionRowCountError):
        named.decode(b'[{"generated_text": "x"}, {"generated_text": "y"}]', num_rows=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content_type": "text/csv", "request_template": {"i": "{p}"}}, "application/json"),
        ({"content_type": "application/json", "request_template": {"i": "{p}"}, "encoder": "json.dumps"}, "not both"),
        ({"content_type": "text/csv", "response_field": "x"}, "needs a JSON response"),
        ({"content_type": "application/json", "response_field": "x", "decoder": "json.loads"}, "not both"),
        ({"content_type": "application/json", "response_field": "a..b"}, "empty segment"),
    ],
)
def test_get_codec_rejects_conflicts(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterValidationError, match=message):
        get_codec(**kwargs)
