"""The agent (`ipvs-reaper run`, the installed command) on the real kernel: its cluster is kmock's emulator
over HTTP, its table is the VM's IPVS table with real pods. The test changes the cluster the way the control
plane would, and the table the way kube-proxy would (ipvsadm), and sets every resourceVersion itself: a real
API server bumps it on each write, the emulator does not."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import builders
from tests.agent.harness import CHURN_AGENT, NODES, SERVICES, SLICES, Cluster, free_port, kubeconfig
from tests.ipvsadm_text import parse_restore_format
from tests.kernel.cluster import NODE, NODE_IP
from tests.kernel.lab import Lab, incident_sysctls
from tests.kernel.pods import Outcome
from tests.vm.variant import Variant

REAPER = Path(sys.executable).with_name("ipvs-reaper")
VIP, PORT = "10.96.7.10", 80
OLD, NEW = "10.244.7.2", "10.244.7.3"
# The VM runs ~20x slower than the host: generous bounds, never timing asserts on the agent's speed.
READY_WITHIN = 120.0


@pytest.fixture
def api(kmock: Any) -> Any:
    kmock.resources.load_bundled()
    return kmock


_versions = itertools.count(100)


def versioned(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["resourceVersion"] = str(next(_versions))
    return body


def web_slice(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return versioned(builders.endpoint_slice("shop", "web-1", "web", [builders.port(PORT)], list(endpoints)))


async def seed(cluster: Cluster, *endpoints: dict[str, Any]) -> None:
    await cluster.create(SERVICES, versioned(builders.service("shop", "web", [VIP], [builders.port(PORT)])))
    await cluster.create(SLICES, web_slice(*endpoints))
    await cluster.create(NODES, versioned(builders.node(NODE, NODE_IP)))


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    async def readyz(self) -> tuple[int, str]:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"http://127.0.0.1:{self.port}/readyz", timeout=aiohttp.ClientTimeout(total=5)
                ) as response,
            ):
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            return 0, str(error)

    async def wait_ready(self) -> float:
        await until(lambda: self.process.poll() is None, 1, "agent alive", self)
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the agent exited ({self.process.returncode}):\n{self.log.read_text()}")
            if (await self.readyz())[0] == 200:
                print(f"agent ready {READY_WITHIN - (deadline - time.monotonic()):.1f} s after its start")
                return time.monotonic()
            await asyncio.sleep(0.5)
        raise AssertionError(f"not ready within {READY_WITHIN} s:\n{self.log.read_text()}")

    async def sweeps(self) -> int:
        """Whole-table sweeps so far, from /metrics."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
            ) as response,
        ):
            text = await response.text()
        return next(
            int(float(line.split()[-1]))
            for line in text.splitlines()
            if line.startswith("ipvs_reaper_sweep_duration_seconds_count ")
        )

    async def stop(self) -> None:
        # Waited for off the loop: the emulator serves from this loop, and a stopping agent may still ask it.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.process.wait, 60)


@asynccontextmanager
async def agent(tmp_path: Path, url: str, *extra: str) -> AsyncIterator[RunningAgent]:
    port = free_port()
    log = tmp_path / f"agent-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(REAPER), "run", "--node-name", NODE, "--kubeconfig", kubeconfig(tmp_path, url),
             "--listen", f"127.0.0.1:{port}", "--sweep-interval", "5", "--heartbeat-interval", "1",
             "--max-silence", "4", "--log-format", "json", *extra],
            stdout=sink, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    running = RunningAgent(process, port, log)
    try:
        yield running
    finally:
        await running.stop()


async def until(check: Any, timeout: float, what: str, running: RunningAgent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = f"\nagent log:\n{running.log.read_text()}" if running is not None else ""
            raise AssertionError(f"not within {timeout} s: {what}{tail}")
        await asyncio.sleep(0.2)


def real_servers(lab: Lab) -> set[tuple[str, int]]:
    """(real, weight) of the test's virtual service."""
    return {(row[2], row[3]) for row in parse_restore_format(lab.ipvsadm("-Sn")) if row[1] == f"{VIP}:{PORT}"}


def agent_writes(api: Any) -> list[tuple[str, str]]:
    ours = [r for r in api if CHURN_AGENT not in r.headers.get("User-Agent", "")]
    return [(r.method.value, r.url.path) for r in ours if r.method.value not in ("GET", "HEAD")]


@pytest.fixture
def rollout_lab(
    lab: Lab, source_ports: Iterator[int], variant: Variant
) -> Iterator[tuple[Lab, Any, Any, Any]]:
    """Two pods behind one ClusterIP; two clients whose entries lead to the old pod; the node's sysctls
    those under which the incident happens on this IPVS (kube-proxy's own, on the pre-fix one)."""
    lab.sysctls(incident_sysctls(variant))
    lab.cluster_ips(VIP)
    old, new = lab.pod("old", OLD), lab.pod("new", NEW)
    old_server = lab.serve(old, PORT)
    lab.serve(new, PORT)
    lab.ipvsadm("-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    lab.ipvsadm("-a", "-t", f"{VIP}:{PORT}", "-r", f"{OLD}:{PORT}", "-m", "-w", "1")
    reused, control = lab.client(next(source_ports)), lab.client(next(source_ports))
    for client in (reused, control):
        assert client.tcp(VIP, PORT).pod == "old"
    yield lab, old_server, reused, control


@pytest.mark.kernels("6.1", "pre-fix")
async def test_the_agent_ends_the_incident_after_the_slice_event(
    api: Any,
    tmp_path: Path,
    rollout_lab: tuple[Lab, Any, Any, Any],
    source_ports: Iterator[int],
    variant: Variant,
) -> None:
    lab, old_server, reused, control = rollout_lab
    # Another IPVS user's weight-0 real server, which no Service claims.
    lab.restore(["-A -t 10.96.7.99:8080 -s rr", "-a -t 10.96.7.99:8080 -r 10.244.7.99:8080 -m -w 0"])
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, builders.endpoint(OLD))
        async with agent(tmp_path, str(api.url)) as running:
            await running.wait_ready()
            # The rolling update: the new pod joins, kube-proxy weights the old one 0, and the old pod dies
            # while its endpoint is still listed ready (the slice event has not come yet): kept.
            await cluster.patch(SLICES, web_slice(builders.endpoint(OLD), builders.endpoint(NEW)))
            lab.ipvsadm("-a", "-t", f"{VIP}:{PORT}", "-r", f"{NEW}:{PORT}", "-m", "-w", "1")
            lab.ipvsadm("-e", "-t", f"{VIP}:{PORT}", "-r", f"{OLD}:{PORT}", "-m", "-w", "0")
            old_server.kill()
            await asyncio.sleep(6)  # a sweep has looked at it
            assert (f"{OLD}:{PORT}", 0) in real_servers(lab), running.log.read_text()
            before_the_event = await asyncio.to_thread(control.tcp, VIP, PORT)
            if variant is Variant.PREFIX:
                # kube-proxy's own settings, expire_nodest_conn=1 already: the reused port meets the dead pod.
                assert before_the_event.outcome is Outcome.REFUSED, "incident not reproduced"
            else:
                # The node had expire_nodest_conn=0; the agent set it to 1 at its first sweep, and Debian's
                # IPVS (c95c07836fa4) then sends a reused port away from a weight-0 real server at once.
                assert before_the_event.pod == "new", before_the_event

            # The slice event: the old endpoint is gone. The agent reaps it.
            await cluster.patch(SLICES, web_slice(builders.endpoint(NEW)))
            await until(lambda: real_servers(lab) == {(f"{NEW}:{PORT}", 1)}, 60, "old reaped", running)

            assert (await asyncio.to_thread(reused.tcp, VIP, PORT)).pod == "new"
            fresh = lab.client(next(source_ports))
            assert (await asyncio.to_thread(fresh.tcp, VIP, PORT)).pod == "new"
            assert lab.read_sysctl("expire_nodest_conn") == 1
            assert ("TCP", "10.96.7.99:8080", "10.244.7.99:8080", 0, "Masq") in parse_restore_format(
                lab.ipvsadm("-Sn")
            )
    records = [json.loads(line) for line in running.log.read_text().splitlines() if line.startswith("{")]
    deletions = [r for r in records if r.get("outcome") == "deleted"]
    assert [(r["real"], r["service"], r["endpointState"]) for r in deletions] == [
        (f"{OLD}:{PORT}", "shop/web", "gone")
    ]
    assert all({"time", "level", "logger"} <= set(r) for r in records)
    assert agent_writes(api) == []  # no write to anything it watches (and no Events: --post-events is off)


async def test_grace_survives_a_restart_and_reaping_pauses_while_the_api_is_down(
    api: Any, tmp_path: Path, rollout_lab: tuple[Lab, Any, Any, Any]
) -> None:
    lab, old_server, _, _ = rollout_lab
    # The first agent runs for `dwell`, so a clock reset by the restart would end the grace well after the
    # kept one does (by the dwell plus the second agent's start). The grace leaves room for slow starts in
    # the VM: the second agent must be ready before it ends.
    grace, dwell = 90, 20
    config = tmp_path / "config.yaml"
    config.write_text(f"policy:\n  notReady: {{reap: always, graceSeconds: {grace}}}\n")
    first_seen = tmp_path / "first-seen.json"
    down = {"on": False}
    api[lambda request: down["on"] and CHURN_AGENT not in request.headers.get("User-Agent", "")] << 503
    extra = ("--config", str(config), "--first-seen-file", str(first_seen))
    async with Cluster(str(api.url)) as cluster:
        # The old pod is not ready (failing its probe) and kube-proxy has weighted it 0: its grace starts.
        await seed(cluster, builders.endpoint(OLD, ready=False), builders.endpoint(NEW))
        lab.ipvsadm("-a", "-t", f"{VIP}:{PORT}", "-r", f"{NEW}:{PORT}", "-m", "-w", "1")
        lab.ipvsadm("-e", "-t", f"{VIP}:{PORT}", "-r", f"{OLD}:{PORT}", "-m", "-w", "0")
        old_server.kill()
        async with agent(tmp_path, str(api.url), *extra) as first:
            await first.wait_ready()
            await until(
                lambda: first_seen.exists() and OLD in first_seen.read_text(), 30, "clock kept", first
            )
            seen_at = time.monotonic()  # no earlier than when the first agent saw it
            await asyncio.sleep(dwell)
            assert (f"{OLD}:{PORT}", 0) in real_servers(lab)  # still in its grace
        clocks = json.loads(first_seen.read_text())

        async with agent(tmp_path, str(api.url), *extra) as second:
            ready_again = await second.wait_ready()
            assert (f"{OLD}:{PORT}", 0) in real_servers(lab)
            # The emulator goes away before the grace ends; the agent must notice and pause.
            down["on"] = True
            deadline = time.monotonic() + 30
            while (await second.readyz())[0] == 200:
                assert time.monotonic() < deadline, "the agent never noticed the API was down"
                await asyncio.sleep(0.5)
            # The grace ends while the view is stale: nothing is reaped.
            await asyncio.sleep(max(0.0, seen_at + grace + 3 - time.monotonic()))
            assert (f"{OLD}:{PORT}", 0) in real_servers(lab), second.log.read_text()
            assert json.loads(first_seen.read_text()) == clocks  # the restart kept the clock
            down["on"] = False
            await until(
                lambda: real_servers(lab) == {(f"{NEW}:{PORT}", 1)}, 60, "reaped after recovery", second
            )
            reaped_at = time.monotonic()
    # Had the restart reset the clock, the grace would have run from the second agent's first sweep.
    assert reaped_at < ready_again + grace, (reaped_at - ready_again, second.log.read_text())
    assert reaped_at > seen_at + grace  # and it never came early
    assert agent_writes(api) == []


# Another IPVS user on the node (keepalived, with its own VIPs and direct-routing real servers), on addresses
# that Services name but kube-proxy never builds a virtual service on: the externalIP of an ExternalName
# Service, and the IPv6 externalIP of an IPv4-only Service.
DB_VIP, DB_PORT = "192.168.49.100", 5432
V6_VIP = "fd00:49::100"
LEGACY_VIP, LEGACY_POD = "10.96.7.20", "10.244.7.20"
KEEPALIVED = [
    f"-A -t {DB_VIP}:{DB_PORT} -s wrr",
    f"-a -t {DB_VIP}:{DB_PORT} -r 192.168.49.11:{DB_PORT} -g -w 1",
    f"-a -t {DB_VIP}:{DB_PORT} -r 192.168.49.12:{DB_PORT} -g -w 0",
    f"-A -t [{V6_VIP}]:80 -s wrr",
    f"-a -t [{V6_VIP}]:80 -r [fd00:49::11]:80 -g -w 1",
    f"-a -t [{V6_VIP}]:80 -r [fd00:49::12]:80 -g -w 0",
]
KEEPALIVED_ROWS = {
    ("TCP", f"{DB_VIP}:{DB_PORT}", f"192.168.49.11:{DB_PORT}", 1, "Route"),
    ("TCP", f"{DB_VIP}:{DB_PORT}", f"192.168.49.12:{DB_PORT}", 0, "Route"),
    ("TCP", f"{V6_VIP}:80", "fd00:49::11:80", 1, "Route"),
    ("TCP", f"{V6_VIP}:80", "fd00:49::12:80", 0, "Route"),
}


def selected(body: dict[str, Any], app: str) -> dict[str, Any]:
    body["spec"]["selector"] = {"app": app}
    return body


async def scan(tmp_path: Path, url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`ipvs-reaper scan --all -o json` from the emulator and the live table, by (virtual, real)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [str(REAPER), "scan", "--all", "-o", "json", "--node-name", NODE,
         "--kubeconfig", kubeconfig(tmp_path, url)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {(e["virtual"], e["real"]): e for e in json.loads(done.stdout)["realServers"]}


async def test_the_agent_leaves_another_ipvs_users_virtual_services_alone(
    api: Any, lab: Lab, tmp_path: Path
) -> None:
    lab.cluster_ips(VIP, LEGACY_VIP)
    # kube-proxy's: shop/web with its old pod's real server at weight 0 and gone from the slice, and the
    # ClusterIP of the IPv4-only shop/legacy. Then keepalived's, weight-0 real servers with no connections.
    lab.restore([
        f"-A -t {VIP}:{PORT} -s rr",
        f"-a -t {VIP}:{PORT} -r {NEW}:{PORT} -m -w 1",
        f"-a -t {VIP}:{PORT} -r {OLD}:{PORT} -m -w 0",
        f"-A -t {LEGACY_VIP}:80 -s rr",
        f"-a -t {LEGACY_VIP}:80 -r {LEGACY_POD}:80 -m -w 1",
        *KEEPALIVED,
    ])  # fmt: skip
    db = builders.service(
        "shop", "db", [], [builders.port(DB_PORT)], type_="ExternalName", external_ips=[DB_VIP]
    )
    db["spec"]["externalName"] = "db.example"
    legacy = builders.service("shop", "legacy", [LEGACY_VIP], [builders.port(80)], external_ips=[V6_VIP])
    legacy["spec"] |= {"ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}
    legacy_slice = builders.endpoint_slice(
        "shop", "legacy-1", "legacy", [builders.port(80)], [builders.endpoint(LEGACY_POD)]
    )
    web = builders.service("shop", "web", [VIP], [builders.port(PORT)])
    async with Cluster(str(api.url)) as cluster:
        await cluster.create(SERVICES, versioned(selected(web, "web")))
        await cluster.create(SLICES, web_slice(builders.endpoint(NEW)))
        await cluster.create(SERVICES, versioned(db))
        await cluster.create(SERVICES, versioned(selected(legacy, "legacy")))
        await cluster.create(SLICES, versioned(legacy_slice))
        await cluster.create(NODES, versioned(builders.node(NODE, NODE_IP)))
        async with agent(tmp_path, str(api.url)) as running:
            await running.wait_ready()
            await until(lambda: real_servers(lab) == {(f"{NEW}:{PORT}", 1)}, 60, "old reaped", running)
            reaped_by = await running.sweeps()
            deadline = time.monotonic() + 90
            while await running.sweeps() < reaped_by + 3:  # three more whole-table sweeps
                assert time.monotonic() < deadline, f"no three sweeps in 90 s:\n{running.log.read_text()}"
                await asyncio.sleep(0.5)

            table = parse_restore_format(lab.ipvsadm("-Sn"))
            missing = KEEPALIVED_ROWS - table
            assert not missing, (missing, running.log.read_text())
            assert ("TCP", f"{LEGACY_VIP}:80", f"{LEGACY_POD}:80", 1, "Masq") in table
            scanned = await scan(tmp_path, str(api.url))
            assert running.process.poll() is None, running.log.read_text()

    # The weight-0 ones, which only the reason keeps: they name the Service and why kube-proxy builds nothing.
    expected = {
        (f"{DB_VIP}:{DB_PORT}", f"192.168.49.12:{DB_PORT}"): ("shop/db", "ExternalName"),
        (f"[{V6_VIP}]:80", "[fd00:49::12]:80"): ("shop/legacy", "IPv6"),
    }
    said = {key: (entry["decision"], entry["reason"]) for key, entry in scanned.items() if key in expected}
    assert said.keys() == expected.keys(), sorted(scanned)
    wrong = {
        key: (decision, reason)
        for key, (decision, reason) in said.items()
        if decision != "keep" or not all(word in reason for word in expected[key])
    }
    assert not wrong, wrong
    records = [json.loads(line) for line in running.log.read_text().splitlines() if line.startswith("{")]
    deletions = [r for r in records if r.get("outcome") is not None]
    assert [(r["real"], r["service"], r["outcome"]) for r in deletions] == [
        (f"{OLD}:{PORT}", "shop/web", "deleted")
    ]
    assert agent_writes(api) == []
