"""Request templates (one JSON request per row) and ``response_field`` decoding, Airflow-free."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import (
    InputDataError,
    ParameterValidationError,
    PredictionRowCountError,
    ResponseDecodeError,
)
from airflow_provider_smrt.local.models import LlmModel, ModelFailure, generate_text
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.codecs import get_codec
from airflow_provider_smrt.scoring.codecs.templates import (
    RequestTemplateEncoder,
    ResponseFieldDecoder,
    template_columns,
)
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage

SECRET = "s3cr3t-cell-value"


def one_row(**columns: Any) -> pa.Table:
    return pa.table(
        {name: pa.array([value]) if not isinstance(value, pa.Array) else value for name, value in columns.items()}
    )


# ---------------------------------------------------------------------------------------------
# The encoder


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


def test_the_planner_makes_one_request_per_row() -> None:
    codec = get_codec(content_type="application/json", request_template={"inputs": "{prompt}"})
    planner = RequestPlanner(codec=codec, max_rows_per_request=1)
    table = pa.table({"prompt": [f"prompt {i}" for i in range(5)]})
    requests = list(planner.split(table))
    assert [(r.offset, r.num_rows) for r in requests] == [(i, 1) for i in range(5)]
    assert [orjson.loads(r.body) for r in requests] == [{"inputs": f"prompt {i}"} for i in range(5)]


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


# ---------------------------------------------------------------------------------------------
# The configuration and the job


def test_config_forces_one_row_per_request_and_hashes_the_template() -> None:
    base = {"endpoint_name": "e", "input_uri": "/in/", "output_uri": "/out/", "content_type": "application/json"}
    plain = ScoringConfig(**base)
    templated = ScoringConfig(**base, request_template={"inputs": "{prompt}"}, response_field="generated_text")
    assert templated.rows_per_request == 1 and plain.rows_per_request is None
    assert "request_template" not in plain.hash_input(["prompt"], [])  # other configurations keep their hash
    assert templated.hash_input(["prompt"], [])["request_template"] == {"inputs": "{prompt}"}
    other = ScoringConfig(**base, request_template={"inputs": "Say: {prompt}"}, response_field="generated_text")
    assert other.hash_input(["prompt"], []) != templated.hash_input(["prompt"], [])
    with pytest.raises(ParameterValidationError, match="must be 1"):
        ScoringConfig(**base, request_template={"inputs": "{prompt}"}, max_rows_per_request=10).validate()


class FakeLlm:
    """An in-process invoker running the local stack's ``llm`` model."""

    def __init__(self) -> None:
        self.model = LlmModel()
        self.bodies: list[bytes] = []

    def __call__(self, body: bytes) -> Any:
        self.bodies.append(body)
        prediction = self.model.predict(body, "application/json", "application/json")

        class Result:
            invoked_production_variant = "AllTraffic"

        result = Result()
        result.body = prediction.body  # type: ignore[attr-defined]
        return result


def test_job_scores_one_request_per_row(tmp_path: Path) -> None:
    prompts = [f"tell me about item number {i}" for i in range(7)]
    pq.write_table(
        pa.table({"id": pa.array(range(7), pa.int64()), "prompt": prompts, "unused": pa.array([b"x"] * 7)}),
        tmp_path / "in.parquet",
        row_group_size=3,
    )
    endpoint = FakeLlm()
    config = ScoringConfig(
        endpoint_name="llm",
        input_uri=str(tmp_path / "in.parquet"),
        output_uri=str(tmp_path / "out"),
        passthrough_columns=["id"],
        prediction_columns=["completion"],
        content_type="application/json",
        request_template={"inputs": "{prompt}", "parameters": {"max_new_tokens": 3}},
        response_field="generated_text",
        concurrency=2,
    )
    job = ScoringJob(config=config, invoke=endpoint, storage=Storage(), retry_policy=RetryPolicy(max_attempts=1))
    summary = job.run()
    assert summary["rows_scored"] == 7 and summary["requests"] == 7
    assert sorted(orjson.loads(b)["inputs"] for b in endpoint.bodies) == sorted(prompts)
    # the binary column is neither read into requests nor rejected: only template columns are features
    assert job.last_plan is not None and job.last_plan.features == ["prompt"]
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column_names == ["id", "completion"]
    assert out["completion"].to_pylist() == [generate_text(p, max_new_tokens=3) for p in prompts]


def test_local_llm_model() -> None:
    model = LlmModel()
    answer = model.predict(b'{"inputs": "one two three", "parameters": {"max_new_tokens": 2}}', None, None)
    assert orjson.loads(answer.body) == [{"generated_text": "3 words: three two"}]
    batch = model.predict(b'{"inputs": ["a b", "c"]}', "application/json", "application/json")
    assert orjson.loads(batch.body) == [{"generated_text": "2 words: b a"}, {"generated_text": "1 words: c"}]
    for body in (b"[1]", b'{"inputs": 3}', b'{"inputs": "x", "parameters": {"max_new_tokens": 0}}', b"{"):
        with pytest.raises(ModelFailure) as info:
            model.predict(body, "application/json", None)
        assert info.value.status == 400
    with pytest.raises(ModelFailure):
        model.predict(b"1,2\n", "text/csv", None)
