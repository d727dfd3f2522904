"""The agent's doctor pass waits for the first complete listing: from an empty view it could name no Service
and tell no virtual service to be kube-proxy's, so it would warn (and alert) about what it does not know."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kmock
import pytest

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.netfilter.sources import read_rule_files
from tests.agent.harness import CHURN_AGENT, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint
from tests.conftest import ROOT


async def test_no_doctor_pass_before_the_first_complete_listing(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hijack = read_rule_files(
        [str(ROOT / "tests" / "netfilter" / "dumps" / "portmap.iptables-legacy-save")], []
    )
    passes = 0

    def rules() -> Any:
        nonlocal passes
        passes += 1
        return hijack

    slices_down = {"down": True}
    (
        api[lambda request: slices_down["down"] and CHURN_AGENT not in request.headers.get("User-Agent", "")][
            kmock.resource("discovery.k8s.io", "v1", "endpointslices")
        ]
        << 503
    )
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), doctor_interval=0.2), fake, rules=rules) as agent:
            await asyncio.sleep(2.5)
            assert not agent.cache.ready and passes == 0
            assert not list(agent.metrics.hostport_conflicts.collect()[0].samples)
            slices_down["down"] = False
            await eventually(lambda: passes > 0, timeout=15, what="a pass once listed")
            await eventually(lambda: bool(list(agent.metrics.hostport_conflicts.collect()[0].samples)))
            (sample,) = agent.metrics.hostport_conflicts.collect()[0].samples
    assert sample.labels == {"protocol": "TCP", "port": "80", "service": "a/web", "certainty": "certain"}
    said = [r.getMessage() for r in caplog.records if "hostPort conflict" in r.getMessage()]
    assert said and all("(a/web)" in line for line in said), said
