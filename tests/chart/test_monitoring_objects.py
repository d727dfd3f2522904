"""ServiceMonitor, PodMonitor and PrometheusRule validated against prometheus-operator's own CRD schemas
(`kubernetes-validate` knows only built-in kinds)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
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


def test_the_proxy_is_verified_and_the_scraper_may_read_metrics_only(tmp_path: Path) -> None:
    """With kube-rbac-proxy, Prometheus sends a token of its own ServiceAccount (not Prometheus') only to a
    server whose certificate the release's CA signed for the Service's name; no insecureSkipVerify, no
    deprecated bearerTokenFile. The certificate is checked with openssl."""
    documents = render(
        {"metrics": {"kubeRbacProxy": {"enabled": True}, "serviceMonitor": {"enabled": True}}}, MONITORING
    )
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    (monitor,) = [d for d in documents if d["kind"] == "ServiceMonitor"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert "bearerTokenFile" not in endpoint and "insecureSkipVerify" not in json.dumps(endpoint)
    token = by_kind_name[("Secret", endpoint["authorization"]["credentials"]["name"])]
    assert token["type"] == "kubernetes.io/service-account-token"
    scraper = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert ("ServiceAccount", scraper) in by_kind_name
    (binding,) = [
        d for d in documents if d["kind"] == "ClusterRoleBinding" and d["subjects"][0]["name"] == scraper
    ]
    role = by_kind_name[("ClusterRole", binding["roleRef"]["name"])]
    assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]

    tls = by_kind_name[("Secret", endpoint["tlsConfig"]["ca"]["secret"]["name"])]
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(tls["data"][key]))
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "-verify_hostname", endpoint["tlsConfig"]["serverName"],
         "tls.crt"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and "tls.crt: OK" in verified.stdout, verified.stdout + verified.stderr
    (daemonset,) = [d for d in documents if d["kind"] == "DaemonSet"]
    proxy = daemonset["spec"]["template"]["spec"]["containers"][1]
    assert "--tls-cert-file=/etc/kube-rbac-proxy/tls.crt" in proxy["args"]
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["metrics-tls"]["secret"]["secretName"] == tls["metadata"]["name"]
    assert validate([monitor]).returncode == 0
