"""Fixtures of the reliability suites: ``figures`` (session) and ``rig`` (per test, see ScoringRig)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.figures import Figures
from tests.support.scoring_rig import ScoringRig


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """Where tests record measured figures: ``$SMRT_RELIABILITY_FIGURES`` or ``<basetemp>/reliability-figures.json``."""
    target = os.environ.get("SMRT_RELIABILITY_FIGURES")
    path = Path(target) if target else tmp_path_factory.getbasetemp() / "reliability-figures.json"
    return Figures(path)


@pytest.fixture
def rig(
    local_stack: Any,
    s3_client: Any,
    make_endpoint: Callable[..., str],
    endpoint_stats: Callable[[str], dict[str, Any]],
    patch_faults: Callable[[str, dict[str, Any]], dict[str, Any]],
    s3_prefix: str,
    tmp_path: Path,
    figures: Figures,
) -> ScoringRig:
    """The local stack, its endpoint fixtures, a fresh S3 prefix, this test's temporary folder and the figures."""
    return ScoringRig(
        stack=local_stack,
        s3=s3_client,
        make_endpoint=make_endpoint,
        endpoint_stats=endpoint_stats,
        patch_faults=patch_faults,
        prefix=s3_prefix,
        tmp_path=tmp_path,
        figures=figures,
    )
