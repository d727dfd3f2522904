"""Values helm must refuse at install rather than render into something that fails later or silently does
nothing, each next to the nearest value that must pass (a near miss on either side of the rule). Each pair is
checked against the JSON Schema alone, and through helm itself, which also runs the templates' checks."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.chart.render import CHART, MONITORING, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# (values that must be refused, the words of helm's refusal, values just on the other side that must pass)
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    (
        "a tag inside image.repository",
        {"image": {"repository": "registry.example/ipvs-reaper:0.1.0"}},
        "image.repository",
        {"image": {"repository": "registry.example:5000/ipvs-reaper"}},
    ),
    (
        "a digest inside image.repository",
        {"image": {"repository": "registry.example/ipvs-reaper@sha256:" + "0" * 64}},
        "image.repository",
        {"image": {"repository": "registry.example/team/ipvs-reaper"}},
    ),
    (
        "a name with a tag and no registry",
        {"image": {"repository": "ipvs-reaper:0.1"}},
        "image.repository",
        {"image": {"repository": "ipvs-reaper"}},
    ),
    (
        "doctor.interval below the minimum",
        {"doctor": {"interval": 5}},
        "doctor.interval",
        {"doctor": {"interval": 30}},
    ),
    (
        "firstSeen.hostPath in /etc",
        {"firstSeen": {"hostPath": "/etc"}},
        "firstSeen.hostPath",
        {"firstSeen": {"hostPath": "/var/lib/ipvs-reaper"}},
    ),
    (
        "firstSeen.hostPath in kubelet's directory",
        {"firstSeen": {"hostPath": "/var/lib/kubelet"}},
        "firstSeen.hostPath",
        {"firstSeen": {"hostPath": "/var/lib/ipvs-reaper/clocks"}},
    ),
    (
        "firstSeen.hostPath climbing out",
        {"firstSeen": {"hostPath": "/var/lib/ipvs-reaper/../kubelet"}},
        "firstSeen.hostPath",
        {"firstSeen": {"hostPath": "/run/ipvs-reaper"}},
    ),
    (
        "a toleration with a misspelled key",
        {"tolerations": [{"operater": "Exists"}]},
        "tolerations",
        {"tolerations": [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]},
    ),
    (
        "an update strategy that is not one",
        {"updateStrategy": {"type": "Recreate"}},
        "updateStrategy",
        {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}},
    ),
    (
        "an environment variable without a name",
        {"extraEnv": [{"value": "1"}]},
        "extraEnv",
        {"extraEnv": [{"name": "PYTHONFAULTHANDLER", "value": "1"}]},
    ),
    (
        "a duration Prometheus' monitors do not take",
        {"metrics": {"serviceMonitor": {"interval": "1y"}}},
        "interval",
        {"metrics": {"serviceMonitor": {"interval": "1m30s"}}},
    ),
]


def schema_accepts(values: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(values, SCHEMA, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize(("case", "refused", "words", "taken"), CASES, ids=[c[0] for c in CASES])
def test_the_schema_refuses_it_and_takes_its_near_miss(
    case: str, refused: dict[str, Any], words: str, taken: dict[str, Any]
) -> None:
    assert not schema_accepts(refused), case
    assert schema_accepts(taken), case


@pytest.mark.parametrize(("case", "refused", "words", "taken"), CASES, ids=[c[0] for c in CASES])
def test_helm_refuses_it_naming_the_value_and_installs_its_near_miss(
    case: str, refused: dict[str, Any], words: str, taken: dict[str, Any]
) -> None:
    with pytest.raises(AssertionError, match=words):
        render(refused)
    render(taken)


def test_a_scrape_timeout_longer_than_the_interval_is_refused() -> None:
    for monitor in ("serviceMonitor", "podMonitor"):
        too_long = {"metrics": {monitor: {"enabled": True, "interval": "30s", "scrapeTimeout": "31s"}}}
        with pytest.raises(AssertionError, match=rf"metrics\.{monitor}\.scrapeTimeout: must not exceed"):
            render(too_long, MONITORING)
        render(
            {"metrics": {monitor: {"enabled": True, "interval": "1m", "scrapeTimeout": "60s"}}}, MONITORING
        )
