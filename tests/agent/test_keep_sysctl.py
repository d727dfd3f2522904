"""With `expireNodestConn: enforce` the agent keeps net.ipv4.vs.expire_nodest_conn=1 from its first sweep,
with nothing to delete: on kernels with c95c07836fa4 that alone sends a reused source port away from a
terminating pod's weight-0 real server, which the reaper must not delete while the pod still serves
(docs/rollout.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from tests.agent.harness import Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint


def _fake() -> FakeIpvs:
    return FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))


async def test_enforce_sets_it_at_the_first_sweep_and_again_when_someone_resets_it(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sysctls = FakeSysctls({"expire_nodest_conn": 0})
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), sweep_interval=0.5), _fake(), sysctls) as agent:
            await eventually(lambda: sysctls.values["expire_nodest_conn"] == 1, what="set at a sweep")
            sysctls.values["expire_nodest_conn"] = 0  # someone else's tool, or a node image's sysctl.d
            await eventually(lambda: sysctls.values["expire_nodest_conn"] == 1, what="set again")
            assert agent.metrics.reconciles.labels("sweep")._value.get() >= 2
    said = [r.getMessage() for r in caplog.records if "expire_nodest_conn=1 (it was 0)" in r.getMessage()]
    assert len(said) == 2, said
    assert sysctls.writes == [("expire_nodest_conn", 1)] * 2


@pytest.mark.parametrize(
    ("config", "dry_run"),
    [("expireNodestConn: report-only\n", False), ("expireNodestConn: ignore\n", False), ("", True)],
)
async def test_only_enforce_writes_it_and_never_in_a_dry_run(
    api: Any, tmp_path: Path, config: str, dry_run: bool
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    sysctls = FakeSysctls({"expire_nodest_conn": 0})
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        agent_options = options(tmp_path, str(api.url), sweep_interval=0.2, config_path=path, dry_run=dry_run)
        async with running(agent_options, _fake(), sysctls) as agent:
            sweeps = agent.metrics.reconciles.labels("sweep")
            await eventually(lambda: sweeps._value.get() >= 3, what="three sweeps")
    assert sysctls.writes == []


async def test_a_refused_write_is_said_once_and_the_agent_goes_on(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sysctls = FakeSysctls({"expire_nodest_conn": 0}, writable=False)
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), sweep_interval=0.2), _fake(), sysctls) as agent:
            sweeps = agent.metrics.reconciles.labels("sweep")
            await eventually(lambda: sweeps._value.get() >= 3, what="three sweeps")
            sysctls.writable = True
            await eventually(lambda: sysctls.values["expire_nodest_conn"] == 1, what="set once it can be")
    warnings = [
        r.getMessage()
        for r in caplog.records
        if "cannot keep net.ipv4.vs.expire_nodest_conn" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
