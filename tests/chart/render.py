"""`helm template` of the chart, with values given as Python data."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.tools import helm

CHART = ROOT / "charts" / "ipvs-reaper"
NAMESPACE = "ipvs-reaper"
MONITORING = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def values_file(values: dict[str, Any], directory: Path) -> Path:
    path = directory / "values.json"  # JSON is YAML, and says exactly which types the values have
    path.write_text(json.dumps(values))
    return path


def render_text(values: dict[str, Any], api_versions: tuple[str, ...] = (), *extra: str) -> str:
    """The manifest; AssertionError with helm's message when helm refuses."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            str(helm()),
            "template",
            "reaper",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "-f",
            str(values_file(values, Path(scratch))),
            *(f"--api-versions={version}" for version in api_versions),
            *extra,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(result.stderr.strip())
    return result.stdout


def render(values: dict[str, Any], api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(values, api_versions)) if doc]


def objects_of(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def containers(daemonset: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = daemonset["spec"]["template"]["spec"]["containers"]
    return found
