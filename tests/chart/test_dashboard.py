"""The Grafana dashboard's JSON, checked as a structure: a datasource variable every query goes through, node
and job variables every query filters on, unique panel ids on a grid without overlaps, and every metric it
names one the agent exports (its registry, enforcing and dry run). tests/agent/test_dashboard_live.py runs
each query against live agents."""

from __future__ import annotations

import json
import re
from typing import Any

from ipvs_reaper.agent.metrics import AgentMetrics
from tests.chart.render import CHART, objects_of, render

DASHBOARD = CHART / "dashboards" / "ipvs-reaper.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def exported() -> set[str]:
    names = set()
    for dry_run in (False, True):
        for family in AgentMetrics(dry_run=dry_run).registry.collect():
            names |= {sample.name for sample in family.samples}
            names.add(family.name)
    # A gauge with labels and no series yet (one series per conflict found).
    names.add("ipvs_reaper_hostport_conflicts")
    return names


def test_variables_and_datasource() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["node"]["includeAll"] and variables["node"]["multi"]
    assert "ipvs_reaper_build_info" in variables["node"]["definition"]
    assert "ipvs_reaper_build_info" in variables["job"]["definition"]
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job=~"$job"' in target["expr"] and 'node=~"$node"' in target["expr"], panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_metric_it_names_is_exported() -> None:
    names = exported()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\b((?:ipvs_reaper|process)_[a-z_]+)\b", target["expr"]))
            assert used, panel["title"]
            assert used <= names, f"{panel['title']}: {sorted(used - names)} not exported"


def test_the_chart_carries_it_for_grafanas_sidecar_when_asked() -> None:
    assert not [
        m for m in objects_of(render({}), "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")
    ]
    values = {"dashboards": {"enabled": True, "annotations": {"grafana_folder": "Networking"}}}
    (config_map,) = [
        m for m in objects_of(render(values), "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Networking"}
    assert json.loads(config_map["data"]["ipvs-reaper.json"]) == dashboard()
