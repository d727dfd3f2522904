"""The shipped alerts in a real Prometheus (Debian's package) scraping the running agent.

The agent runs against kmock's emulator and the fake table; Prometheus (loopback, 1 s scrape and evaluation,
its data in a temp dir) loads the rules as the chart renders them, with `for` shortened so the test is
bounded. Deletions fail in the fake table: IpvsReaperReapFailures fires, and the real server stays overdue:
IpvsReaperStalePending fires. The fake sysctls say nothing of conn_reuse_mode while the table has a virtual
service: IpvsReaperExposureUnknown fires. The target exists: IpvsReaperAbsent stays quiet, and so does the
breaker's alert. The emulator stops: the agent loses its view and IpvsReaperNotReady fires. All read from
Prometheus's own API, where every rule must evaluate without error. A second scene makes the breaker's, the
DaemonSet coverage's (a kube-state-metrics stand-in) and the absence alert fire."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.server
import json
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from ipvs_reaper.ipvs.fake import FakeIpvs
from tests.agent.harness import SLICES, Cluster, eventually, free_port, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint
from tests.chart.render import MONITORING, NAMESPACE, objects_of, render
from tests.tools import debian_binary

NODE = "node-a"


def rules_file(directory: Path) -> Path:
    """The chart's PrometheusRule rules, `for` shortened for the alerts under test."""
    quick = {"for": "1s"}
    values = {
        "alerts": {
            "prometheusRule": {"enabled": True},
            "rules": {
                "IpvsReaperReapFailures": quick,
                "IpvsReaperNotReady": quick,
                "IpvsReaperStalePending": quick | {"threshold": 2},
                "IpvsReaperExposureUnknown": quick,
                "IpvsReaperAbsent": quick,
                "IpvsReaperBreakerOpen": quick,
                "IpvsReaperDaemonSetNotReady": quick,
            },
        }
    }
    (rule,) = objects_of(render(values, MONITORING), "PrometheusRule")
    path = directory / "ipvs-reaper.rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


@contextlib.asynccontextmanager
async def prometheus(
    directory: Path, target_port: int | None, more: tuple[tuple[int, str], ...] = ()
) -> AsyncIterator[str]:
    """`more`: other targets to scrape, (port, node) each; with no target at all, the job has none."""
    port = free_port()
    targets = [{"targets": [f"127.0.0.1:{target_port}"], "labels": {"node": NODE}}] if target_port else []
    targets += [{"targets": [f"127.0.0.1:{p}"], "labels": {"node": node}} for p, node in more]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(rules_file(directory))],
        "scrape_configs": [
            {
                "job_name": "ipvs-reaper",
                "static_configs": targets,
            }
        ],
    }
    (directory / "prometheus.yml").write_text(json.dumps(config))
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(debian_binary("prometheus")),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.console.templates=/dev/null",
            "--web.console.libraries=/dev/null",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/-/ready") as response:
                        if response.status == 200:
                            break
                assert process.poll() is None, (directory / "prometheus.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def firing(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/alerts") as response:
        body = await response.json()
    return [alert for alert in body["data"]["alerts"] if alert["state"] == "firing"]


async def rule_health(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/rules") as response:
        body = await response.json()
    return {
        rule["name"]: rule["health"] + (f": {rule['lastError']}" if rule.get("lastError") else "")
        for group in body["data"]["groups"]
        for rule in group["rules"]
    }


async def wait_for_alert(url: str, name: str, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [alert for alert in await firing(url) if alert["labels"]["alertname"] == name]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"{name} did not fire within {timeout} s"
        await asyncio.sleep(0.5)


async def test_reap_failures_and_not_ready_fire_in_a_real_prometheus(tmp_path: Path) -> None:
    gone = real(WEB, "10.1.0.2", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    fake.fail_deletes[gone.key] = errno.EPERM
    async with kmock.KubernetesEmulator() as emulator:
        emulator.resources.load_bundled()
        server = kmock.Server(emulator)
        await server.__aenter__()
        # Stopping it closes the listener at once but waits for open watch streams (up to a minute): it
        # finishes in the background, and quickly once the agent has stopped and closed them.
        stopping: asyncio.Task[None] | None = None
        try:
            url = str(server.url)
            async with Cluster(url) as cluster:
                await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2")))
            agent_options = options(tmp_path, url)
            async with (
                running(agent_options, fake) as agent,
                prometheus(tmp_path, agent_options.listen_port) as prom,
            ):
                await eventually(lambda: not agent.not_ready_because(), timeout=20, what="ready")
                assert not [a for a in await firing(prom) if a["labels"]["alertname"] == "IpvsReaperNotReady"]
                async with Cluster(url) as cluster:
                    await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))  # the pod goes
                alert = await wait_for_alert(prom, "IpvsReaperReapFailures", timeout=30)
                assert alert["labels"]["reason"] == "EPERM" and alert["labels"]["node"] == NODE
                assert NODE in alert["annotations"]["description"]
                assert fake.deleted == []
                overdue = await wait_for_alert(prom, "IpvsReaperStalePending", timeout=30)
                assert "above 2 seconds, for 1s" in overdue["annotations"]["description"]
                unknown = await wait_for_alert(prom, "IpvsReaperExposureUnknown", timeout=30)
                assert unknown["labels"]["node"] == NODE
                names = {a["labels"]["alertname"] for a in await firing(prom)}
                assert not names & {"IpvsReaperAbsent", "IpvsReaperBreakerOpen", "IpvsReaperDown"}, names
                health = await rule_health(prom)
                assert set(health) >= {"IpvsReaperAbsent", "IpvsReaperDaemonSetNotReady"}
                assert all(state == "ok" for state in health.values()), health

                stopping = asyncio.create_task(server.__aexit__(None, None, None))  # the API goes away
                alert = await wait_for_alert(prom, "IpvsReaperNotReady", timeout=30)
                assert alert["labels"]["node"] == NODE
        finally:
            await asyncio.wait_for(stopping or server.__aexit__(None, None, None), timeout=90)


def kube_state_metrics(port: int) -> http.server.HTTPServer:
    """kube-state-metrics' two DaemonSet series, as it serves them, for the chart's DaemonSet: one node of
    three has no ready pod."""
    labels = f'namespace="{NAMESPACE}",daemonset="reaper-ipvs-reaper"'
    text = (
        f"kube_daemonset_status_desired_number_scheduled{{{labels}}} 3\n"
        f"kube_daemonset_status_number_ready{{{labels}}} 2\n"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def test_the_breaker_and_a_node_without_an_agent_fire_and_no_target_at_all_is_absent(
    api: Any, tmp_path: Path
) -> None:
    """The rules the first test cannot make fire: the breaker's (an agent whose every reconcile it refuses),
    the DaemonSet's coverage (kube-state-metrics says a node has no ready pod), and, in a Prometheus with no
    target of the job at all, the absence alert."""
    config = tmp_path / "config.yaml"
    config.write_text("breaker: {maxShare: 0.1, minDeletions: 1}\n")
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080)))
    ksm = kube_state_metrics(free_port())
    try:
        async with Cluster(str(api.url)) as cluster:
            await seed(cluster, web_slice(endpoint("10.1.0.1")))
            agent_options = options(tmp_path, str(api.url), config_path=config, sweep_interval=0.5)
            async with (
                running(agent_options, fake),
                prometheus(
                    tmp_path, agent_options.listen_port, more=((ksm.server_address[1], "ksm"),)
                ) as prom,
            ):
                breaker = await wait_for_alert(prom, "IpvsReaperBreakerOpen", timeout=30)
                assert breaker["labels"]["node"] == NODE and fake.deleted == []
                coverage = await wait_for_alert(prom, "IpvsReaperDaemonSetNotReady", timeout=30)
                assert coverage["labels"]["daemonset"] == "reaper-ipvs-reaper"
                assert coverage["annotations"]["description"].startswith("1 of the nodes")
                assert "IpvsReaperAbsent" not in {a["labels"]["alertname"] for a in await firing(prom)}
    finally:
        ksm.shutdown()
        ksm.server_close()
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    async with prometheus(nothing, None) as prom:
        absent = await wait_for_alert(prom, "IpvsReaperAbsent", timeout=30)
        assert absent["labels"]["job"] == "ipvs-reaper"
