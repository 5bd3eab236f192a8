"""The public signatures spell their defaults as literals (the API reference shows them as they are);
each literal must equal the constant that the rest of the package uses."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from airflow_provider_smrt.async_inference.ledger import DEFAULT_FILENAME
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
from airflow_provider_smrt.invocation import DEFAULT_READ_TIMEOUT_SECONDS, MAX_PAYLOAD_BYTES
from airflow_provider_smrt.operators.async_batch_score import (
    DEFAULT_ASYNC_PAYLOAD_BYTES,
    SageMakerAsyncBatchScoreOperator,
)
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from airflow_provider_smrt.scoring.batching import DEFAULT_FILL_RATIO, DEFAULT_PROBE_ROWS, RequestPlanner
from airflow_provider_smrt.scoring.config import DEFAULT_CONCURRENCY, DEFAULT_MAX_PAYLOAD_BYTES, ScoringConfig


@pytest.mark.parametrize(
    ("callable_", "name", "constant"),
    [
        (SageMakerBatchScoreOperator, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES),
        (SageMakerBatchScoreOperator, "concurrency", DEFAULT_CONCURRENCY),
        (SageMakerAsyncBatchScoreOperator, "max_payload_bytes", DEFAULT_ASYNC_PAYLOAD_BYTES),
        (SageMakerInvokeEndpointAsyncOperator, "filename", DEFAULT_FILENAME),
        (SageMakerRuntimeHook, "read_timeout", DEFAULT_READ_TIMEOUT_SECONDS),
        (ScoringConfig, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES),
        (ScoringConfig, "concurrency", DEFAULT_CONCURRENCY),
        (ScoringConfig, "payload_limit", MAX_PAYLOAD_BYTES),
        (RequestPlanner, "max_payload_bytes", MAX_PAYLOAD_BYTES),
        (RequestPlanner, "service_limit", MAX_PAYLOAD_BYTES),
        (RequestPlanner, "probe_rows", DEFAULT_PROBE_ROWS),
        (RequestPlanner, "fill_ratio", DEFAULT_FILL_RATIO),
    ],
)
def test_literal_default_matches_the_constant(callable_: Any, name: str, constant: Any) -> None:
    assert inspect.signature(callable_.__init__).parameters[name].default == constant
