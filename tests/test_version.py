"""The version lives in one place (``airflow_provider_smrt.__version__``); everything else reads it."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import airflow_provider_smrt
from airflow_provider_smrt.get_provider_info import get_provider_info

ROOT = Path(__file__).resolve().parent.parent


def test_package_provider_info_and_installed_metadata_agree() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", airflow_provider_smrt.__version__)
    assert get_provider_info()["versions"][0] == airflow_provider_smrt.__version__
    assert version("airflow-provider-smrt") == airflow_provider_smrt.__version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]  # the [project] table (no tomllib on 3.10)
    assert re.search(r'^dynamic = \[[^\]]*"version"', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M), "a static version in [project] would be a second copy"
    assert 'version = { attr = "airflow_provider_smrt.__version__" }' in pyproject


def test_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(airflow_provider_smrt.__version__)}\]", changelog, re.M)
