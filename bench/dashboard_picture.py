"""docs/dashboard.png: the Grafana dashboard's panels, drawn from real data.

The scene of tests/agent/test_dashboard_live.py, run for a few minutes: two live agents (`run`, on fake IPVS
tables, against kmock's emulator over HTTP), one enforcing and one in a dry run, scraped every 2 s by a real
Prometheus (Debian's). Every 15 s a pod of a 4-pod Service is replaced: the slice drops it, kube-proxy's
stand-in weights its real servers 0 (and adds the new pod's), the agents reap (or would). One real server
refuses deletion for the first minute (EPERM) and a hostPort rule takes the Service's port on node-a. Each
panel's queries are then asked over the whole run (query_range) and drawn with matplotlib, in the dashboard's
layout. Grafana itself is not run: the picture shows what the queries return, not Grafana's styling.

    .venv/bin/python -m bench.dashboard_picture [--minutes 4] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.netfilter.sources import read_rule_files
from tests.agent.harness import SLICES, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.agent.test_alerts_live import prometheus
from tests.agent.test_dashboard_live import DASHBOARD, as_grafana_sends_it
from tests.builders import endpoint
from tests.conftest import ROOT

STEP = 5  # seconds between the points drawn


async def churn(cluster: Cluster, fakes: list[FakeIpvs], until: float) -> None:
    """Replace one pod every 15 s: 10.1.0.<n> goes, 10.1.0.<n+4> comes."""
    pods = [1, 2, 3, 4]
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await asyncio.sleep(15)
        old = pods.pop(0)
        new = old + 4
        pods.append(new)
        await cluster.patch(SLICES, web_slice(*(endpoint(f"10.1.0.{n}") for n in pods)))
        for fake in fakes:
            fake.put(real(WEB, f"10.1.0.{new}", 8080, weight=1))
            if real(WEB, f"10.1.0.{old}", 8080).key in fake.real_servers:
                fake.set_weight(real(WEB, f"10.1.0.{old}", 8080).key, 0)


async def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = {"query": expr, "start": str(start), "end": str(end), "step": str(STEP)}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/api/v1/query_range", params=params) as response,
    ):
        body = await response.json()
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


async def collect(minutes: float) -> tuple[list[dict[str, Any]], float, float]:
    dashboard = json.loads(DASHBOARD.read_text())
    hijack = read_rule_files(
        [str(ROOT / "tests" / "netfilter" / "dumps" / "portmap.iptables-legacy-save")], []
    )
    first = [real(WEB, f"10.1.0.{n}", 8080, weight=1) for n in (1, 2, 3, 4)]
    # node-a reschedules reused ports (conn_reuse_mode=1); node-b, a dry run writing no sysctl, is exposed.
    sysctls_a = FakeSysctls({"conn_reuse_mode": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1})
    sysctls_b = FakeSysctls({"conn_reuse_mode": 0, "expire_nodest_conn": 0, "expire_quiescent_template": 1})
    enforcing, dry = FakeIpvs(table(*first)), FakeIpvs(table(*first))
    enforcing.fail_deletes[first[1].key] = errno.EPERM
    async with kmock.KubernetesEmulator() as emulator:
        emulator.resources.load_bundled()
        async with kmock.Server(emulator) as server:
            url = str(server.url)
            with tempfile.TemporaryDirectory() as scratch:
                work = Path(scratch)
                (work / "a").mkdir()
                (work / "b").mkdir()
                one = options(work / "a", url, doctor_interval=30, sweep_interval=5.0)
                two = options(work / "b", url, dry_run=True, sweep_interval=5.0, node_name="node-b")
                async with Cluster(url) as cluster:
                    await seed(cluster, web_slice(*(endpoint(f"10.1.0.{n}") for n in (1, 2, 3, 4))))
                    async with (
                        running(one, enforcing, sysctls_a, rules=lambda: hijack) as agent,
                        running(two, dry, sysctls_b),
                        prometheus(work, one.listen_port, more=((two.listen_port, "node-b"),)) as prom,
                    ):
                        await eventually(lambda: not agent.not_ready_because(), timeout=30, what="ready")
                        start = time.time()
                        loop = asyncio.get_running_loop()
                        stop = loop.time() + minutes * 60
                        churning = asyncio.create_task(churn(cluster, [enforcing, dry], stop))
                        await asyncio.sleep(60)
                        enforcing.fail_deletes.clear()  # the failing delete succeeds at its next retry
                        await churning
                        end = time.time()
                        panels = []
                        for panel in dashboard["panels"]:
                            series = []
                            for target in panel["targets"]:
                                expr = as_grafana_sends_it(target["expr"]).replace("[1m]", "[30s]")
                                if panel["type"] in ("stat", "table"):  # what they show: the value now
                                    found_now = await query_range(prom, expr, end, end)
                                    for found in found_now:
                                        name = legend(target["legendFormat"], found["metric"])
                                        series.append(
                                            (name, target["refId"], [(0.0, float(found["values"][-1][1]))])
                                        )
                                    continue
                                for found in await query_range(prom, expr, start, end):
                                    name = legend(target["legendFormat"], found["metric"])
                                    points = [(float(t) - start, float(v)) for t, v in found["values"]]
                                    series.append((name, target["refId"], points))
                            panels.append({"panel": panel, "series": series})
                        return panels, start, end


def draw(panels: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # the bench extra (`pip install -e '.[bench]'`), not the product's

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(14, 3.1 * rows))
    for axis, entry in zip(axes.flat, panels, strict=False):
        panel, series = entry["panel"], entry["series"]
        axis.set_title(panel["title"], fontsize=10, loc="left")
        if panel["type"] in ("stat", "table"):
            axis.axis("off")
            lines = [f"{name}: {points[-1][1]:g}" for name, _, points in series if points] or ["(none)"]
            axis.text(0.02, 0.9, "\n".join(lines[:8]), va="top", family="monospace", fontsize=9)
            continue
        # A second query with a unit of its own (Grafana's override) goes on a right-hand axis.
        right = {o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])}
        other = axis.twinx() if right else None
        for name, ref, points in series:
            if not any(value for _, value in points):
                continue  # a series that stayed 0 (most pre-created ones): left out of the picture
            xs, ys = zip(*points, strict=True)
            target_axis = other if other is not None and ref in right else axis
            target_axis.plot(
                xs, ys, label=name, linewidth=1.2, color=None if target_axis is axis else "tab:red"
            )
        if other is not None:
            other.tick_params(labelsize=8)
            other.legend(fontsize=7, loc="lower right")
        axis.set_xlabel("seconds into the run", fontsize=8)
        axis.tick_params(labelsize=8)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if unit not in ("short", ""):
            axis.set_ylabel(unit, fontsize=8)
        if axis.get_lines():
            axis.legend(fontsize=7, loc="upper left", ncol=2)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(
        "ipvs-reaper dashboard: two agents, a pod replaced every 15 s (real Prometheus data; series that "
        "stayed 0 left out)"
    )
    figure.tight_layout()
    figure.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="(default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "dashboard.png", help="(default: %(default)s)"
    )
    options_ = parser.parse_args(argv)
    panels, _, _ = asyncio.run(collect(options_.minutes))
    draw(panels, options_.out)
    empty = [entry["panel"]["title"] for entry in panels if not entry["series"]]
    print(f"{options_.out}: {len(panels)} panels" + (f"; without data: {empty}" if empty else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
