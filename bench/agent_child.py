"""The agent under benchmark, in a process of its own (so its RSS and CPU are its own): the real `run_agent`
against the emulator, with a fake IPVS table matching the benchmark's cluster. Prints one JSON line when
ready and one per deleted real server, with CLOCK_MONOTONIC times (shared by every process on the host).
BENCH_DOCTOR_INTERVAL=0 in the environment turns the doctor pass off, to measure what it costs."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agent_cluster import ENDPOINTS, cluster_ip, fake_table, pod_ip
from ipvs_reaper.cli import without_the_official_client
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.values import Protocol, RealKey, RealServer, VirtualKey


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


_EMITTING = threading.Lock()


def emit(**fields: object) -> None:
    """One JSON line on stdout. Locked: garbage collections are reported from whichever thread runs them,
    and two threads' lines must not interleave."""
    line = json.dumps(fields) + "\n"
    with _EMITTING:
        sys.stdout.write(line)
        sys.stdout.flush()


async def loop_lag_probe(period: float = 0.01, report_over: float = 0.02) -> None:
    """How late the event loop runs a timer: every stall of the loop longer than `report_over` is printed."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        late = loop.time() - before - period
        if late > report_over:
            emit(lag=round(late, 4), at=time.monotonic())


def time_collections(report_over: float = 0.005) -> None:
    """Every garbage collection longer than `report_over` is printed, with its generation."""
    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["at"] = time.monotonic()
        elif "at" in started and (took := time.monotonic() - started["at"]) > report_over:
            emit(gc=info["generation"], took=round(took, 4), collected=info["collected"], at=time.monotonic())

    gc.callbacks.append(callback)


def fake_kube_proxy(fake: FakeIpvs, services: int) -> Callable[[dict[str, Any]], None]:
    """What kube-proxy does with a slice event, before the agent sees it: a real server per endpoint, weight 1
    while its endpoint is listed, weight 0 once it is not (the soak's churn removes and restores one)."""

    def apply(body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]  # svc-{i}-abcde
        i = int(name.split("-")[1])
        virtual = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(cluster_ip(i)), 80)
        listed = {a for e in body.get("endpoints", []) for a in e.get("addresses", [])}
        for j in range(ENDPOINTS):
            address = pod_ip(i, j)
            key = RealKey(virtual, ipaddress.ip_address(address), 8080)
            fake.put(RealServer(key, "Masq", 1 if address in listed else 0, 0, 0), add=address in listed)

    return apply


async def report_resources(every: float = 10.0) -> None:
    """The process's RSS, threads, open files (sockets included) and asyncio tasks, every `every` seconds."""
    while True:
        emit(
            stats=time.monotonic(),
            rss_mib=round(_rss_mib(), 1),
            threads=threading.active_count(),
            fds=len(os.listdir("/proc/self/fd")),
            tasks=len(asyncio.all_tasks()),
        )
        await asyncio.sleep(every)


async def main(kubeconfig: str, services: int, events: int, port: int, watch_timeout: float) -> None:
    # Imported here, after the official client is marked absent, as `ipvs-reaper run` does.
    from ipvs_reaper.agent.agent import Agent
    from ipvs_reaper.agent.main import run_agent
    from ipvs_reaper.agent.options import AgentOptions
    from ipvs_reaper.kernel.sysctl import FakeSysctls
    from ipvs_reaper.netfilter.sources import RuleSources

    fake = FakeIpvs(fake_table(services, events))
    original = fake.delete_real_server

    def delete(key):  # type: ignore[no-untyped-def]
        outcome = original(key)
        emit(deleted=str(key), at=time.monotonic())
        return outcome

    fake.delete_real_server = delete  # type: ignore[method-assign]
    options = AgentOptions(
        node_name="node-a",
        config_path=None,
        dry_run=False,
        kubeconfig=kubeconfig,
        listen_host="127.0.0.1",
        listen_port=port,
        sweep_interval=60.0,
        sweep_jitter=0.1,
        relist_interval=0.0,
        heartbeat_interval=30.0,
        max_silence=120.0,
        watch_timeout=watch_timeout,
        follow_up_delays=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        post_events=False,
        event_interval=60.0,
        first_seen_file=None,
        doctor_interval=float(os.environ.get("BENCH_DOCTOR_INTERVAL", "300")),
    )
    started: asyncio.Future[Agent] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_agent(
            options,
            fake,
            FakeSysctls({"expire_nodest_conn": 1}),
            lambda: (),
            started=started,
            # The host's own NAT rules are not the benchmark's: the doctor pass walks the table through none.
            read_rules=lambda: RuleSources((), (), True),
        )
    )
    agent = await started
    # The probe wakes the loop 100 times a second, which is CPU of its own: the benchmark starts it (SIGUSR1)
    # after the idle window, for the events.
    probes: list[asyncio.Task[None]] = []
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: probes.append(asyncio.create_task(loop_lag_probe()))
    )
    on_event = agent.on_event
    kube_proxy = fake_kube_proxy(fake, services) if os.environ.get("BENCH_SOAK") else None
    if kube_proxy is not None:
        probes.append(asyncio.create_task(report_resources()))

    def timed(kind: str, event_type: str | None, body: object) -> None:
        if kind == "EndpointSlice" and event_type == "MODIFIED":
            meta = body.get("metadata", {}) if isinstance(body, dict) else {}
            emit(event=meta.get("name"), at=time.monotonic())
        # kube-proxy acts on every slice it is told of: a change can come as ADDED when a watch restarts.
        if (
            kube_proxy is not None
            and kind == "EndpointSlice"
            and event_type != "DELETED"
            and isinstance(body, dict)
        ):
            kube_proxy(body)
        on_event(kind, event_type, body)

    agent.on_event = timed  # type: ignore[method-assign]
    while agent.not_ready_because():
        await asyncio.sleep(0.01)
    emit(ready=time.monotonic(), rss_mib=round(_rss_mib(), 1))
    await task
    for probe in probes:
        probe.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    time_collections()
    without_the_official_client()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
