"""Every query of the Grafana dashboard, run by a real Prometheus against live agents, returns data.

Two agents are scraped: one enforcing (it reaps one real server, fails to delete another, and its doctor pass
finds a hostPort conflict), one in a dry run (would-reap). Each panel's expression is sent to Prometheus'
query API as Grafana would send it, with the dashboard's variables filled in ($job, $node = All,
$__rate_interval)."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

import aiohttp

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.netfilter.sources import read_rule_files
from tests.agent.harness import SLICES, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.agent.test_alerts_live import prometheus
from tests.builders import endpoint
from tests.conftest import ROOT

DASHBOARD = ROOT / "charts" / "ipvs-reaper" / "dashboards" / "ipvs-reaper.json"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def as_grafana_sends_it(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$job", "ipvs-reaper").replace("$node", ".*")


async def query(url: str, expr: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/api/v1/query", params={"query": expr}) as response,
    ):
        body = await response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_every_panel_returns_data_from_live_agents(api: Any, tmp_path: Path) -> None:
    gone, failing = real(WEB, "10.1.0.2", 8080), real(WEB, "10.1.0.3", 8080)
    enforcing = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone, failing))
    enforcing.fail_deletes[failing.key] = errno.EPERM
    dry = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.4", 8080)))
    hijack = read_rule_files(
        [str(ROOT / "tests" / "netfilter" / "dumps" / "portmap.iptables-legacy-save")], []
    )
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(*(endpoint(f"10.1.0.{n}") for n in (1, 2, 3))))
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        one = options(tmp_path / "a", str(api.url), doctor_interval=0.5, sweep_interval=1.0)
        two = options(tmp_path / "b", str(api.url), dry_run=True, sweep_interval=1.0, node_name="node-b")
        async with (
            running(one, enforcing, rules=lambda: hijack) as agent,
            running(two, dry),
            prometheus(tmp_path, one.listen_port, more=((two.listen_port, "node-b"),)) as prom,
        ):
            await eventually(lambda: not agent.not_ready_because(), timeout=20, what="ready")
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))  # two pods go
            await eventually(lambda: enforcing.deleted == [gone.key], timeout=20, what="reaped")
            missing: list[str] = []
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                missing = [
                    f"{title}: {expr}"
                    for title, expr in panel_queries()
                    if not await query(prom, as_grafana_sends_it(expr))
                ]
                if not missing or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(1)
    assert not missing, "panels without data:\n" + "\n".join(missing)
