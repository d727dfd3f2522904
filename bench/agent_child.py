"""The agent under benchmark, in a process of its own (so its RSS and CPU are its own): the real `run_agent`
against the emulator, with a fake IPVS table matching the benchmark's cluster. Prints one JSON line when
ready and one per deleted real server, with CLOCK_MONOTONIC times (shared by every process on the host).
BENCH_DOCTOR_INTERVAL=0 in the environment turns the doctor pass off, to measure what it costs;
BENCH_TRACEMALLOC=FILE writes where memory grew since ready into FILE every minute; BENCH_WAVE=1 (the rollout
wave, bench/agent_wave.py) gives the drained real servers live connections, prints the table reads made each
second, and on SIGUSR2 ends those connections; BENCH_RECHECK_INTERVAL and BENCH_RECHECK_RATE set the agent's
--recheck-interval and --recheck-rate."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agent_cluster import cluster_ip, fake_table
from ipvs_reaper.cli import without_the_official_client
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.values import Protocol, RealServer, VirtualKey


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

    # The table's own key objects, taken before ready: a new key per write would be the benchmark's growth in
    # the agent's process (a deleted key comes back as an equal one; the kernel's table is not in our heap).
    keys = {virtual: tuple(group) for virtual, group in fake.real_servers.of.items()}

    def apply(body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]  # svc-{i}-abcde
        i = int(name.split("-")[1])
        virtual = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(cluster_ip(i)), 80)
        listed = {a for e in body.get("endpoints", []) for a in e.get("addresses", [])}
        for key in keys[virtual]:
            here = str(key.address) in listed
            fake.put(RealServer(key, "Masq", 1 if here else 0, 0, 0), add=here)

    return apply


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    # Looked up once: find_library runs ldconfig in a child process.
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallinfo2 = ctypes.CDLL(name).mallinfo2
    except AttributeError:  # glibc before 2.33, or not glibc
        return None
    mallinfo2.restype = _Mallinfo2
    return mallinfo2


def _malloc_mib() -> dict[str, float]:
    """glibc's own account (mallinfo2, every arena and the mmapped blocks): what is held and what the heap
    keeps free. Beside Python's allocated blocks it tells a leak (blocks grow) from fragmentation (RSS grows,
    the blocks do not)."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return {}
    info = mallinfo2()
    return {
        "malloc_in_use_mib": round((info.uordblks + info.hblkhd) / 2**20, 1),
        "malloc_free_mib": round(info.fordblks / 2**20, 1),
    }


async def report_resources(every: float = 10.0) -> None:
    """The process's RSS, threads, open files (sockets included) and asyncio tasks, every `every` seconds."""
    while True:
        emit(
            stats=time.monotonic(),
            rss_mib=round(_rss_mib(), 1),
            threads=threading.active_count(),
            fds=len(os.listdir("/proc/self/fd")),
            tasks=len(asyncio.all_tasks()),
            python_blocks=sys.getallocatedblocks(),
            **_malloc_mib(),
        )
        await asyncio.sleep(every)


async def trace_growth(path: Path, every: float = 60.0) -> None:
    """Every `every` seconds, the 30 source lines whose allocations grew most since ready, into `path`
    (BENCH_TRACEMALLOC=FILE; tracemalloc itself costs memory and time: figures of such a run are not RSS)."""
    baseline = tracemalloc.take_snapshot()
    while True:
        await asyncio.sleep(every)
        growth = tracemalloc.take_snapshot().compare_to(baseline, "lineno")[:30]
        path.write_text("".join(f"{stat}\n" for stat in growth))


class CountedReads:
    """The wave's account of what the agent asks of the table: reads of one virtual service (a netlink
    request each on a node) and whole-table reads, printed once a second."""

    def __init__(self, fake: FakeIpvs) -> None:
        self.services = self.tables = 0
        read_service, read_table = fake.read_service, fake.read_table

        def one(virtual: VirtualKey) -> tuple[RealServer, ...] | None:
            self.services += 1
            return read_service(virtual)

        def whole() -> Any:
            self.tables += 1
            return read_table()

        fake.read_service = one  # type: ignore[method-assign]
        fake.read_table = whole  # type: ignore[method-assign]

    async def report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit(reads=self.services, table_reads=self.tables, at=time.monotonic())
            self.services = self.tables = 0


def end_connections(fake: FakeIpvs) -> None:
    """Every drained real server's last connection ends (SIGUSR2): from now on each may go."""
    for rs in list(fake.real_servers.values()):
        if rs.weight == 0 and rs.active_conns:
            fake.put(RealServer(rs.key, rs.forward, 0, 0, rs.inactive_conns), add=False)
    emit(idle=time.monotonic())


async def main(kubeconfig: str, services: int, events: int, port: int, watch_timeout: float) -> None:
    # Imported here, after the official client is marked absent, as `ipvs-reaper run` does.
    from ipvs_reaper.agent.agent import Agent
    from ipvs_reaper.agent.main import run_agent
    from ipvs_reaper.agent.options import AgentOptions
    from ipvs_reaper.kernel.sysctl import FakeSysctls
    from ipvs_reaper.netfilter.sources import RuleSources

    wave = bool(os.environ.get("BENCH_WAVE"))
    fake = FakeIpvs(fake_table(services, events, busy=wave))
    counted = CountedReads(fake) if wave else None
    original = fake.delete_real_server

    def delete(key):  # type: ignore[no-untyped-def]
        outcome = original(key)
        emit(deleted=str(key), at=time.monotonic())
        fake.deleted.clear()  # said on stdout; kept, every deleted key would be the benchmark's growth
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
        recheck_interval=float(os.environ.get("BENCH_RECHECK_INTERVAL", "2")),
        recheck_rate=float(os.environ.get("BENCH_RECHECK_RATE", "50")),
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
    if counted is not None:
        probes.append(asyncio.create_task(counted.report()))
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, end_connections, fake)
    if kube_proxy is not None:
        # From ready: the soak's first sample is the agent holding the whole view, not one still listing.
        probes.append(asyncio.create_task(report_resources()))
    if tracemalloc.is_tracing():
        probes.append(asyncio.create_task(trace_growth(Path(os.environ["BENCH_TRACEMALLOC"]))))
    await task
    for probe in probes:
        probe.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    time_collections()
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start()
    without_the_official_client()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
