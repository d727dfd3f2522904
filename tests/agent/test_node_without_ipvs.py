"""A node without IPVS (ip_vs not loaded: kube-proxy in another mode, or a node rebooted after the move to
nftables) gets a running, ready agent that says so once, not an error loop; and an agent told to enforce
expire_nodest_conn that cannot write it says so in its readiness, not in a failed delete each time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from tests.agent.harness import SLICES, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint


async def test_no_ipvs_is_said_once_the_pod_stays_ready_and_ipvs_arriving_later_is_reaped(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080)))
    fake.absent = True
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), sweep_interval=0.2), fake) as agent:
            sweeps = agent.metrics.reconciles
            await eventually(lambda: agent.metrics.ipvs_loaded._value.get() == 0, what="said absent")
            # Slice events on a node without IPVS: nothing to read, no retries, no errors.
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.3")))
            before = agent.metrics.errors.labels("ipvs")._value.get()
            await eventually(lambda: len([r for r in caplog.records if "no IPVS" in r.getMessage()]) >= 1)
            await eventually(lambda: agent.metrics.table_size.labels("virtual_services")._value.get() == -1)
            assert agent.not_ready_because() == []
            assert before == 0 and agent.metrics.errors.labels("ipvs")._value.get() == 0
            assert sweeps.labels("sweep")._value.get() == 0  # nothing was reconciled
            fake.absent = False  # ip_vs loaded (kube-proxy started in IPVS mode)
            await eventually(lambda: bool(fake.deleted), what="reaped once IPVS is there")
            assert agent.metrics.ipvs_loaded._value.get() == 1
    said = [r.getMessage() for r in caplog.records if "IPVS" in r.getMessage() and "ipvs_reaper" in r.name]
    assert len([m for m in said if m.startswith("no IPVS on this node")]) == 1, said
    assert len([m for m in said if m == "IPVS is loaded now: reaping"]) == 1, said
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_enforce_without_a_writable_sysctl_is_a_readiness_reason_until_the_config_says_otherwise(
    api: Any, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("expireNodestConn: enforce\n")
    sysctls = FakeSysctls({"expire_nodest_conn": 0}, writable=False)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        agent_options = options(tmp_path, str(api.url), sweep_interval=0.2, config_path=config)
        async with running(agent_options, fake, sysctls) as agent:
            await eventually(
                lambda: any("cannot be set to 1" in r for r in agent.not_ready_because()), what="not ready"
            )
            (reason,) = agent.not_ready_because()
            assert "Read-only file system" in reason and "sysctlMount" in reason
            assert agent.metrics.ready._value.get() == 0
            config.write_text("expireNodestConn: report-only\n")  # the operator's answer: a live edit
            await eventually(lambda: agent.not_ready_because() == [], timeout=15, what="ready again")
