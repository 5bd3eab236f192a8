"""The scoring configuration's validation: one check of max_payload_bytes, shared with the planner."""

from __future__ import annotations

import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import MAX_PAYLOAD_BYTES
from airflow_provider_smrt.scoring.config import ScoringConfig, manifest_name_for

BASE = {"endpoint_name": "e", "input_uri": "/in/", "output_uri": "/out/"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_payload_bytes": 0}, r"between 1 and 6,291,456 \(the InvokeEndpoint body limit\)"),
        ({"max_payload_bytes": MAX_PAYLOAD_BYTES + 1}, "between 1 and 6,291,456"),
        ({"max_payload_bytes": True}, "must be an integer"),
        ({"max_payload_bytes": 2_000_000_000, "payload_limit": 1_000_000_000}, r"1,000,000,000 \(the service limit\)"),
    ],
)
def test_max_payload_bytes_is_checked_against_the_invoker_limit(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ParameterValidationError, match=fragment):
        ScoringConfig(**BASE, **kwargs).validate()  # type: ignore[arg-type]


def test_a_larger_payload_limit_admits_larger_requests() -> None:
    ScoringConfig(**BASE, max_payload_bytes=64 * 1024 * 1024, payload_limit=1_000_000_000).validate()  # type: ignore[arg-type]
    assert ScoringConfig(**{**BASE, "input_uri": ["/a/", "/b/"]}).input_uris == ["/a/", "/b/"]  # type: ignore[arg-type]
    assert ScoringConfig(**BASE).input_uris == ["/in/"]  # type: ignore[arg-type]


def test_manifest_name_of_a_mapped_task() -> None:
    assert manifest_name_for(None) == manifest_name_for(-1) == "_manifest.json"
    assert manifest_name_for(3) == "_manifest-00003.json"
