"""`scan` on the live table says what the planner decides for the same inputs, over every endpoint state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.cli import main
from ipvs_reaper.cluster.sources import load_cluster_file
from ipvs_reaper.config import Config
from ipvs_reaper.ipvs.kernel import KernelIpvs
from ipvs_reaper.kernel.facts import read_live_facts
from ipvs_reaper.kernel.sysctl import ProcSysctls
from ipvs_reaper.planner import PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.report import decision_json
from tests import builders
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.lab import Lab

# address -> (weight, the slice's view of it or None when it is gone, expected state, expected decision)
CASES: dict[str, tuple[int, dict[str, Any] | None, str, str]] = {
    "10.244.5.1": (1, builders.endpoint("10.244.5.1"), "ready", "keep"),
    "10.244.5.2": (0, builders.endpoint("10.244.5.2"), "ready", "keep"),
    "10.244.5.3": (
        0,
        builders.endpoint("10.244.5.3", ready=False, serving=True, terminating=True),
        "terminating",
        "keep",
    ),
    "10.244.5.4": (
        0,
        builders.endpoint("10.244.5.4", ready=False, serving=False, terminating=True),
        "terminating",
        "reap",
    ),
    "10.244.5.5": (0, builders.endpoint("10.244.5.5", ready=False), "not-ready", "wait"),
    "10.244.5.6": (0, None, "gone", "reap"),
}


def comparable(entry: dict[str, Any]) -> tuple[Any, ...]:
    # reapAfter is `now + grace`, and the two runs have different nows.
    return (*sorted((k, v) for k, v in entry.items() if k != "reapAfter"), entry["reapAfter"] is None)


def test_scan_agrees_with_the_planner(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab.sysctl("expire_nodest_conn", 1)
    rules = [
        "-A -t 10.96.5.1:80 -s rr",
        "-A -t 10.96.5.2:80 -s rr",
        "-a -t 10.96.5.2:80 -r 10.244.5.7:80 -m -w 0",
    ]
    rules += [
        f"-a -t 10.96.5.1:80 -r {address}:8080 -m -w {weight}" for address, (weight, *_) in CASES.items()
    ]
    lab.restore(rules)
    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("shop", "web", ["10.96.5.1"], [builders.port(80, "http")]),
        builders.endpoint_slice(
            "shop",
            "web-1",
            "web",
            [builders.port(8080, "http")],
            [endpoint for _, endpoint, _, _ in CASES.values() if endpoint is not None],
        ),
    )

    capsys.readouterr()
    assert main(["scan", "--all", "-o", "json", "--cluster-state", str(state), "--node-name", NODE]) == 0
    scanned = json.loads(capsys.readouterr().out)["realServers"]

    kernel = KernelIpvs()
    try:
        table = kernel.read_table()
    finally:
        kernel.close()
    plan = plan_sweep(
        SweepInputs(
            table=table,
            cluster=load_cluster_file(str(state)),
            node_name=NODE,
            config=Config(),
            expire_nodest_conn=read_live_facts(ProcSysctls()).expire_nodest_conn,
            now=datetime.now(UTC),
            first_seen={},
            policy=PolicyChoice.DEFAULT,
        )
    )
    assert sorted(map(comparable, scanned)) == sorted(comparable(decision_json(d)) for d in plan.decisions)

    seen = {entry["real"].split(":")[0]: (entry["endpointState"], entry["decision"]) for entry in scanned}
    expected = {address: (state, decision) for address, (_, _, state, decision) in CASES.items()}
    assert seen == expected | {"10.244.5.7": ("unmapped", "keep")}
