"""Runs the real agent (kopf, our listings, the health server) against kmock's Kubernetes emulator over real
HTTP, with a fake IPVS table; changes the cluster the way the API server would, also over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from ipvs_reaper.agent.agent import Agent, Clocks
from ipvs_reaper.agent.main import run_agent
from ipvs_reaper.agent.options import AgentOptions
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.netfilter.sources import RuleSources
from ipvs_reaper.values import IPAddress, IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService

CHURN_AGENT = "cluster-churn"  # the User-Agent of the test's own writes, which the write guard leaves out
SERVICES = "v1/services"
SLICES = "discovery.k8s.io/v1/endpointslices"
NODES = "v1/nodes"
_PATHS = {
    SERVICES: "api/v1/namespaces/{ns}/services",
    SLICES: "apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
    NODES: "api/v1/nodes",
}


def kubeconfig(directory: Path, url: str) -> str:
    path = directory / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{url}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    return str(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WallClock:
    """The planner's wall clock, moved by tests instead of sleeping through grace periods."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# The host's own iptables and nftables are not the agent tests' business: the doctor pass reads none.
NO_RULES = RuleSources((), (), True)


def options(directory: Path, url: str, **overrides: Any) -> AgentOptions:
    base = AgentOptions(
        node_name="node-a",
        config_path=None,
        dry_run=False,
        kubeconfig=kubeconfig(directory, url),
        listen_host="127.0.0.1",
        listen_port=free_port(),
        sweep_interval=30.0,
        sweep_jitter=0.0,
        relist_interval=0.0,
        relist_spread=0.2,
        heartbeat_interval=0.5,
        max_silence=3.0,
        watch_timeout=300.0,
        follow_up_delays=(0.05, 0.1, 0.2, 0.5),
        post_events=False,
        event_interval=60.0,
        first_seen_file=None,
        # Off, as a short sweep interval is short: tests of other things need no 5 s wait for each gone
        # endpoint; test_gone_settle.py tests the settle itself.
        gone_settle=0.0,
    )
    return replace(base, **overrides)


def vip(address: str, port: int, protocol: Protocol = Protocol.TCP) -> VirtualKey:
    return VirtualKey.inet(protocol, ipaddress.ip_address(address), port)


def real(virtual: VirtualKey, address: str, port: int, weight: int = 0, active: int = 0) -> RealServer:
    return RealServer(RealKey(virtual, ipaddress.ip_address(address), port), "Masq", weight, active, 0)


def table(*real_servers: RealServer) -> IpvsTable:
    services = {rs.key.virtual: VirtualService(rs.key.virtual, "rr") for rs in real_servers}
    return IpvsTable(tuple(services.values()), real_servers)


@dataclass
class Cluster:
    """Writes to the emulator over HTTP, as the control plane would: every change is a watch event."""

    url: str
    session: aiohttp.ClientSession = field(init=False)

    async def __aenter__(self) -> Cluster:
        self.session = aiohttp.ClientSession(headers={"User-Agent": CHURN_AGENT})
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    def _url(self, resource: str, body: dict[str, Any], named: bool) -> str:
        meta = body["metadata"]
        path = _PATHS[resource].format(ns=meta.get("namespace"))
        return f"{self.url.rstrip('/')}/{path}" + (f"/{meta['name']}" if named else "")

    async def create(self, resource: str, body: dict[str, Any]) -> None:
        async with self.session.post(self._url(resource, body, named=False), json=body) as response:
            assert response.status < 300, await response.text()

    async def patch(self, resource: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(self._url(resource, body, named=True), json=body, headers=headers) as r:
            assert r.status < 300, await r.text()

    async def delete(self, resource: str, body: dict[str, Any]) -> None:
        async with self.session.delete(self._url(resource, body, named=True)) as response:
            assert response.status < 300, await response.text()


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    agent_options: AgentOptions,
    ipvs: FakeIpvs,
    sysctls: FakeSysctls | None = None,
    wall: WallClock | None = None,
    local_addresses: tuple[IPAddress, ...] = (),
    rules: Callable[[], RuleSources] = lambda: NO_RULES,
) -> AsyncIterator[Agent]:
    stop = asyncio.Event()
    started: asyncio.Future[Agent] = asyncio.get_running_loop().create_future()
    clocks = Clocks(now=wall) if wall is not None else Clocks()
    task = asyncio.create_task(
        run_agent(
            agent_options,
            ipvs,
            sysctls or FakeSysctls({"expire_nodest_conn": 1}),
            lambda: local_addresses,
            stop=stop,
            clocks=clocks,
            started=started,
            read_rules=rules,
        )
    )
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what stopped it
    agent = started.result()
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
