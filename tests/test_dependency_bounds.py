"""``scripts/test-oldest`` pins the lower bounds of pyproject.toml's dependencies, so raising a bound updates CI."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# boto3's effective lower bound is the Amazon provider's (9.30 needs boto3>=1.41), so it follows that pin.
NOT_PINNED = {"boto3"}


def _pins() -> dict[str, Version]:
    script = (ROOT / "scripts" / "test-oldest").read_text()
    block = script.split("PINS=(", 1)[1].split(")", 1)[0]
    return {name.lower(): Version(v) for name, v in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', block)}


def _lower_bounds() -> dict[str, Version]:
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = pyproject.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    bounds: dict[str, Version] = {}
    for line in re.findall(r'^\s*"([^"]+)",?\s*$', block, re.M):
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[requirement.name.lower()] = Version(spec.version)
    return bounds


def test_oldest_pins_sit_on_the_lower_bounds() -> None:
    pins, bounds = _pins(), _lower_bounds()
    assert "apache-airflow" in bounds and "apache-airflow-providers-amazon" in bounds
    for name, bound in bounds.items():
        if name in NOT_PINNED:
            continue
        assert name in pins, f"scripts/test-oldest does not pin {name} (pyproject: >={bound})"
        pin = pins[name]
        # The pin is the bound itself, or a patch release of the series the bound names (numpy>=1.26 → 1.26.x).
        assert pin >= bound and pin.release[: len(bound.release)] == bound.release, f"{name}: {pin} vs >={bound}"
    assert set(pins) <= set(bounds), f"pins without a bound in pyproject: {set(pins) - set(bounds)}"
