"""ServiceMonitor, PodMonitor and PrometheusRule validated against prometheus-operator's own CRD schemas
(`kubernetes-validate` knows only built-in kinds)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.chart.render import MONITORING, render
from tests.tools import monitoring_validator


def validate(documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        monitoring_validator(), input=json.dumps(documents), capture_output=True, text=True, check=False
    )


def monitoring_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in render(values, MONITORING) if d["apiVersion"].startswith("monitoring.coreos.com/")]


def test_the_monitoring_objects_are_valid() -> None:
    documents = monitoring_objects(
        {
            "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
            "alerts": {"prometheusRule": {"enabled": True}},
        }
    ) + monitoring_objects(
        {"metrics": {"serviceMonitor": {"enabled": True}, "kubeRbacProxy": {"enabled": True}}}
    )
    assert {d["kind"] for d in documents} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    result = validate(documents)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("valid ") == len(documents)


def test_the_validator_rejects_a_broken_one() -> None:
    (monitor,) = monitoring_objects({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitor["spec"]["endpoints"][0]["interval"] = "every minute"
    result = validate([monitor])
    assert result.returncode == 1 and "interval" in result.stdout, result.stdout + result.stderr
