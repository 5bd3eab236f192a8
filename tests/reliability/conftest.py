"""Fixtures of the reliability suites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.figures import Figures


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """Where tests record measured figures: ``$SMRT_RELIABILITY_FIGURES`` or ``<basetemp>/reliability-figures.json``."""
    target = os.environ.get("SMRT_RELIABILITY_FIGURES")
    path = Path(target) if target else tmp_path_factory.getbasetemp() / "reliability-figures.json"
    return Figures(path)
