"""Request templates through the request planner, the configuration and the scoring job (Airflow-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.local.models import LlmModel, ModelFailure, generate_text
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.codecs import get_codec
from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage

# ---------------------------------------------------------------------------------------------
# The planner


def test_the_planner_makes_one_request_per_row() -> None:
    codec = get_codec(content_type="application/json", request_template={"inputs": "{prompt}"})
    planner = RequestPlanner(codec=codec, max_rows_per_request=1)
    table = pa.table({"prompt": [f"prompt {i}" for i in range(5)]})
    requests = list(planner.split(table))
    assert [(r.offset, r.num_rows) for r in requests] == [(i, 1) for i in range(5)]
    assert [orjson.loads(r.body) for r in requests] == [{"inputs": f"prompt {i}"} for i in range(5)]


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
