"""The alerts: one rules file, checked and unit-tested with promtool, embedded by the chart as it is (with the
values' switches applied), and each documented in docs/alerts.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART, MONITORING, NAMESPACE, objects_of, render
from tests.conftest import ROOT
from tests.tools import debian_binary

RULES = CHART / "rules" / "ipvs-reaper.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("ipvs-reaper.rules.test.yaml")
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(debian_binary("promtool")), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=UNIT_TESTS.parent,
    )


def alerts(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def shipped() -> list[dict[str, Any]]:
    return alerts(yaml.safe_load(RULES.read_text()))


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(shipped())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", UNIT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [
        case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for rule in shipped():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it stays quiet"


def test_every_alert_is_documented_where_its_runbook_url_points() -> None:
    doc = ALERTS_DOC.read_text()
    for rule in shipped():
        anchor = rule["alert"].lower()
        assert f"\n## {rule['alert']}\n" in doc, f"docs/alerts.md has no section for {rule['alert']}"
        assert rule["annotations"]["runbook_url"].endswith(f"/docs/alerts.md#{anchor}")
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def rendered_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    values = {"alerts": {"prometheusRule": {"enabled": True}} | values.get("alerts", {})}
    (rule,) = objects_of(render(values, MONITORING), "PrometheusRule")
    return alerts(rule["spec"])


def the_releases_daemonset(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file's DaemonSet "ipvs-reaper" as the chart names it for `helm template reaper -n ...`."""
    text = (
        json.dumps(rules)
        .replace('daemonset=\\"reaper-ipvs-reaper\\"', 'daemonset=\\"ipvs-reaper\\"')
        .replace(f'namespace=\\"{NAMESPACE}\\",', "")
    )
    loaded: list[dict[str, Any]] = json.loads(text)
    return loaded


def test_the_chart_embeds_the_file_as_it_is() -> None:
    assert the_releases_daemonset(rendered_rules({})) == shipped()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["alerts"]["rules"]) == {rule["alert"] for rule in shipped()}


def test_the_rules_select_the_job_the_monitors_set_whatever_the_name() -> None:
    for values, job in (({}, "ipvs-reaper"), ({"nameOverride": "reaper"}, "reaper")):
        documents = render(
            values
            | {
                "alerts": {"prometheusRule": {"enabled": True}},
                "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": False}},
            },
            MONITORING,
        )
        (monitor,) = objects_of(documents, "ServiceMonitor")
        (service,) = objects_of(documents, "Service")
        # The ServiceMonitor's job is the value of the Service's label that jobLabel names.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job
        (rule,) = objects_of(documents, "PrometheusRule")
        for alert in alerts(rule["spec"]):
            selectors = re.findall(r'job="([^"]*)"', alert["expr"])
            assert selectors == [job] * len(selectors), alert["alert"]
            assert selectors or alert["alert"] == "IpvsReaperDaemonSetNotReady", alert["alert"]
        (daemonset,) = objects_of(documents, "DaemonSet")
        (coverage,) = [a for a in alerts(rule["spec"]) if a["alert"] == "IpvsReaperDaemonSetNotReady"]
        named = daemonset["metadata"]["name"]
        assert f'namespace="{NAMESPACE}",daemonset="{named}"' in coverage["expr"]


def test_every_description_says_its_for_and_threshold_so_overrides_show() -> None:
    for rule in shipped():
        description = rule["annotations"]["description"]
        assert f"for {rule['for']}" in description, rule["alert"]
        # A threshold is a `>` or `>=` against a number other than 0; `== 1`, `== -1` and `> 0` test a code
        # or the presence of anything.
        threshold = re.search(r"(>=?)\s*([-+0-9.e]+)\s*$", rule["expr"].strip())
        if threshold and threshold[2] != "0":
            assert re.search(rf"(above|at least) {re.escape(threshold[2])}\b", description), rule["alert"]


def test_a_misspelled_alert_name_is_refused_at_install() -> None:
    with pytest.raises(AssertionError, match="IpvsReaperStalePendng"):
        rendered_rules({"alerts": {"rules": {"IpvsReaperStalePendng": {"for": "1h"}}}})


def test_values_switch_alerts_and_move_thresholds(tmp_path: Path) -> None:
    overrides = {
        "IpvsReaperDown": {"enabled": False},
        "IpvsReaperStalePending": {"threshold": 1800, "for": "30m", "severity": "critical"},
        "IpvsReaperReapRateHigh": {"threshold": 20},
    }
    rules = {
        rule["alert"]: rule
        for rule in rendered_rules(
            {"alerts": {"rules": overrides, "runbookBaseUrl": "https://runbooks.example/ipvs-reaper"}}
        )
    }
    assert "IpvsReaperDown" not in rules
    stale = rules["IpvsReaperStalePending"]
    assert stale["expr"].endswith("> 1800") and stale["for"] == "30m"
    # The description says the values in force, not the file's.
    assert "above 1800 seconds, for 30m" in stale["annotations"]["description"]
    assert "600" not in stale["annotations"]["description"]
    assert "above 20 times" in rules["IpvsReaperReapRateHigh"]["annotations"]["description"]
    assert stale["labels"]["severity"] == "critical"
    assert rules["IpvsReaperReapRateHigh"]["expr"].endswith("> 20")
    assert "> 0.1" in rules["IpvsReaperReapRateHigh"]["expr"]  # only the last comparison moves
    assert rules["IpvsReaperNotReady"]["annotations"]["runbook_url"] == (
        "https://runbooks.example/ipvs-reaper#ipvsreapernotready"
    )
    # What the chart made of the file is still a rules file Prometheus loads.
    moved = tmp_path / "moved.rules.yaml"
    moved.write_text(yaml.safe_dump({"groups": [{"name": "ipvs-reaper", "rules": list(rules.values())}]}))
    result = promtool("check", "rules", str(moved))
    assert result.returncode == 0, result.stdout + result.stderr
