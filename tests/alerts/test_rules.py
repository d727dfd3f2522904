"""The alerts: one rules file, checked and unit-tested with promtool, embedded by the chart as it is (with the
values' switches applied), and each documented in docs/alerts.md."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.chart.render import CHART, MONITORING, objects_of, render
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


def test_the_chart_embeds_the_file_as_it_is() -> None:
    assert rendered_rules({}) == shipped()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["alerts"]["rules"]) == {rule["alert"] for rule in shipped()}


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
