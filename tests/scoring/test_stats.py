"""The run's call counters: the fixed-bucket latency histogram and the InferenceId layout (narrow unit tests)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.scoring.inference_ids import MAX_PREFIX_CHARS, inference_id, validate_inference_id_prefix
from airflow_provider_smrt.scoring.stats import LATENCY_BOUNDS_MS, NO_VARIANT, LatencyHistogram, RunStats


def test_percentiles_are_bucket_edges_and_memory_is_fixed() -> None:
    histogram = LatencyHistogram()
    for _ in range(90):
        histogram.add(100.0)
    for _ in range(10):
        histogram.add(1_000.0)
    assert len(histogram.counts) == len(LATENCY_BOUNDS_MS) + 1
    p50, p95 = histogram.percentile(0.5), histogram.percentile(0.95)
    assert p50 is not None and p95 is not None
    assert LatencyHistogram.bucket(p50) == LatencyHistogram.bucket(100.0) and 100.0 <= p50 < 100.0 * 2**0.25
    assert LatencyHistogram.bucket(p95) == LatencyHistogram.bucket(1_000.0) and p95 <= 1_000.0  # never above the max
    for _ in range(10_000):
        histogram.add(5.0)
    assert len(histogram.counts) == len(LATENCY_BOUNDS_MS) + 1
    assert LatencyHistogram().percentile(0.5) is None


def test_record_call_keeps_totals_variants_and_the_busy_window() -> None:
    stats = RunStats()
    stats.record_call(variant=None, sent=10, received=0, started=1.0, ended=1.5)
    stats.record_call(variant="blue", sent=20, received=7, started=1.2, ended=3.0)
    assert stats.calls.http_calls == 2 and stats.calls.bytes_sent == 30 and stats.calls.bytes_received == 7
    assert set(stats.calls_by_variant) == {NO_VARIANT, "blue"}
    assert stats.calls.seconds == pytest.approx(2.3)
    assert stats.busy_wall_seconds == pytest.approx(2.0)


def test_inference_id_layout_fits_64_characters() -> None:
    unit = cast(Any, SimpleNamespace(key="f-0123456789-0000020000-0000030000", start=20_000))
    made = inference_id("p" * MAX_PREFIX_CHARS, unit, 9_999_999_999 - 20_000, 9_999_999)
    assert made.startswith("p" * MAX_PREFIX_CHARS) and made.endswith("-9999999999-9999999")
    assert len(made) == 64
    assert inference_id("x-", unit, 5, 50) == inference_id("x-", unit, 5, 50)  # deterministic
    assert inference_id("x-", unit, 5, 50) != inference_id("x-", unit, 5, 25)  # a bisected half differs


@pytest.mark.parametrize("prefix", ["", " lead", "p" * (MAX_PREFIX_CHARS + 1), "tab\tinside", "é"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ParameterValidationError, match="inference_id_prefix"):
        validate_inference_id_prefix(prefix)
