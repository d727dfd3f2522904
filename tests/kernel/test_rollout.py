"""The rollout lab's short version (bench/rollout_lab.py is the whole): on Debian 6.1 at the one exposed
setting (conn_reuse_mode=0, expire_nodest_conn=0), the same rolling update of 3 pods under the same load,
kube-proxy's graceful termination alone and with the installed agent (`ipvs-reaper run`, default policy),
side by side, each in a node namespace of its own. Counts, never timings: alone, requests fail (else the scene
does not reproduce the incident); with the agent, none does."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.rollout.arm import ArmSpec, Timing
from bench.rollout.guest import run_batch
from bench.rollout.summary import arm_summary

EXPOSED = {"conn_reuse_mode": 0, "expire_nodest_conn": 0}
# Short: 10 s of load before the rollout, 30 s after it (enough for the pinned ports to be reused many times).
SHORT = Timing(warmup=10.0, window=30.0)


def test_a_rollout_fails_requests_with_kube_proxy_alone_and_none_with_the_agent(tmp_path: Path) -> None:
    batch = [
        {"name": arm, "spec": asdict(ArmSpec(arm, "0,0", EXPOSED, SHORT))}
        for arm in ("kube-proxy", "reaper-default")
    ]
    run_batch(batch, tmp_path)
    results = {}
    for arm in ("kube-proxy", "reaper-default"):
        path = tmp_path / f"{arm}.json"
        assert path.exists(), (tmp_path / f"{arm}.log").read_text()
        results[arm] = arm_summary(json.loads(path.read_text()))
        print(arm, json.dumps(results[arm]["clients"]["direct"]))
    alone, with_agent = (
        results["kube-proxy"]["clients"]["direct"],
        results["reaper-default"]["clients"]["direct"],
    )

    assert alone["ports_reused"] > 0 and with_agent["ports_reused"] > 0, "no source port was reused"
    assert alone["failed"] > 0, (
        "kube-proxy alone failed no request: the scene does not reproduce the incident"
    )
    assert results["kube-proxy"]["weight_zero"]["left_at_end"] > 0  # InActConn kept them: kube-proxy's trap
    assert with_agent["failed"] == 0, with_agent["outcomes"]
    assert with_agent["requests"] > 0
    assert results["reaper-default"]["reaper_deleted"] == 3, "each old pod's real server deleted once"
    assert results["reaper-default"]["weight_zero"]["left_at_end"] == 0
