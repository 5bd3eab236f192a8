"""Airflow discovers the provider: its entry point, metadata, hook, operator, sensor, trigger and link modules.

The CLI runs in subprocesses with the test session's AIRFLOW_HOME (set by conftest), as a user's
``airflow providers ...`` would; the commands start in parallel because each one boots Airflow (~5-10 s).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_smrt
from airflow_provider_smrt.get_provider_info import get_provider_info

DIST = "airflow-provider-smrt"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMMANDS: dict[str, list[str]] = {
    "list": ["providers", "list", "-o", "json"],
    "get": ["providers", "get", DIST, "--full", "-o", "json"],
    "hooks": ["providers", "hooks", "-o", "json"],
    "triggers": ["providers", "triggers", "-o", "json"],
    "links": ["providers", "links", "-o", "json"],
}
SECTIONS = ("hooks", "operators", "sensors", "triggers")


@pytest.fixture(scope="module")
def cli() -> Iterator[dict[str, Any]]:
    """The parsed JSON output of each ``airflow providers`` command above."""
    env = dict(os.environ, AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)  # it logs a line to stdout, ahead of the JSON
    procs = {
        name: subprocess.Popen(
            [AIRFLOW, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, args in COMMANDS.items()
    }
    out: dict[str, Any] = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"airflow {' '.join(COMMANDS[name])} failed:\n{stderr.decode()[-3000:]}"
            out[name] = _json_output(stdout.decode())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    yield out


def _json_output(stdout: str) -> Any:
    """The JSON document of ``-o json``; Airflow 3.0 may print log lines before it."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        for line in reversed(stdout.splitlines()):
            if line.startswith("[{") or line == "[]":
                return json.loads(line)
        raise


def _modules(info: dict[str, Any], section: str) -> list[str]:
    return [module for entry in info.get(section, []) for module in entry["python-modules"]]


def test_entry_point_points_at_get_provider_info() -> None:
    found = [ep for ep in entry_points(group="apache_airflow_provider") if ep.dist and ep.dist.name == DIST]
    assert len(found) == 1, found
    assert found[0].value == "airflow_provider_smrt.get_provider_info:get_provider_info"
    assert found[0].load()() == get_provider_info()


def test_provider_info_matches_airflow_schema() -> None:
    import jsonschema
    from airflow import __file__ as airflow_init

    schema = json.loads((Path(airflow_init).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_provider_info_lists_only_importable_modules_and_classes() -> None:
    info = get_provider_info()
    assert info["package-name"] == DIST
    assert info["versions"][0] == airflow_provider_smrt.__version__
    for section in SECTIONS:
        for module in _modules(info, section):
            importlib.import_module(module)
    for path in info.get("extra-links", []) + [c["hook-class-name"] for c in info.get("connection-types", [])]:
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path
    integrations = {i["integration-name"] for i in info.get("integrations", [])}
    for section in SECTIONS:
        for entry in info.get(section, []):
            assert entry["integration-name"] in integrations, entry


def test_every_public_adapter_module_is_registered() -> None:
    """A new module under hooks/, operators/, sensors/ or triggers/ must be added to get_provider_info."""
    info = get_provider_info()
    for section in SECTIONS:
        package = importlib.import_module(f"airflow_provider_smrt.{section}")
        on_disk = {
            f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
        }
        assert on_disk == set(_modules(info, section)), section


def test_airflow_lists_the_provider(cli: dict[str, Any]) -> None:
    ours = [p for p in cli["list"] if p["package_name"] == DIST]
    assert ours and ours[0]["version"] == airflow_provider_smrt.__version__, cli["list"]


def test_airflow_sees_our_hook_operator_sensor_and_trigger_modules(cli: dict[str, Any]) -> None:
    (full,) = cli["get"]
    for section in SECTIONS:
        assert _modules(full, section) == _modules(get_provider_info(), section), section
    assert "airflow_provider_smrt.hooks.sagemaker_runtime" in _modules(full, "hooks")


def test_airflow_lists_our_triggers(cli: dict[str, Any]) -> None:
    ours = {t["class"] for t in cli["triggers"] if t["package_name"] == DIST}
    assert ours == set(_modules(get_provider_info(), "triggers"))


def test_hooks_command_works_and_aws_connections_use_the_amazon_hook(cli: dict[str, Any]) -> None:
    """``providers hooks`` lists connection types; we add none (the hook uses the Amazon provider's ``aws``)."""
    by_type = {h["connection_type"]: h for h in cli["hooks"]}
    assert by_type["aws"]["package_name"] == "apache-airflow-providers-amazon"
    assert not [h for h in cli["hooks"] if h["package_name"] == DIST]


def test_airflow_registers_our_extra_links(cli: dict[str, Any]) -> None:
    links = set(get_provider_info().get("extra-links", []))
    listed = {entry["extra_link_class_name"] for entry in cli["links"]}
    assert links <= listed
    assert {name for name in listed if name.startswith("airflow_provider_smrt.")} == links


def test_distribution_metadata_names_license_authors_and_python() -> None:
    from importlib.metadata import metadata

    meta = metadata("airflow-provider-smrt")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert "airflow-provider-smrt maintainers" in (meta["Author"] or "")
    classifiers = set(meta.get_all("Classifier") or [])
    assert {"Framework :: Apache Airflow :: Provider", "Programming Language :: Python :: 3.11"} <= classifiers


def test_airflow_shows_the_documentation_url_and_the_spdx_license() -> None:
    """Airflow reads the provider's documentation-url from the ``Documentation`` project URL of its metadata."""
    from importlib.metadata import metadata

    from airflow.providers_manager import ProvidersManager

    meta = metadata(DIST)
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [])
    assert urls.get("Documentation", "").startswith("https://"), urls
    assert meta["License-Expression"] == "Apache-2.0"
    provider = ProvidersManager().providers[DIST]
    if "documentation-url" in provider.data or not _airflow_before(3, 1):  # Airflow 3.0 does not read it
        assert provider.data["documentation-url"] == urls["Documentation"]


def _airflow_before(major: int, minor: int) -> bool:
    from airflow import __version__ as airflow_version

    return tuple(int(part) for part in airflow_version.split(".")[:2]) < (major, minor)
