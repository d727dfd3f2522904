"""Our table interface on a real kernel: the whole-table read (/proc/net/ip_vs) against `ipvsadm`, the
per-service netlink read against the whole-table read, and deletes over netlink for every kind of service."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from ipvs_reaper.actor import Outcome, apply_plan
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config
from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsError
from ipvs_reaper.ipvs.kernel import KernelIpvs
from ipvs_reaper.kernel.sysctl import ProcSysctls
from ipvs_reaper.planner import Action, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey
from tests import builders
from tests.ipvsadm_text import list_counters, parse_restore_format, rows, table_counters
from tests.kernel.cluster import NODE, NODE_IP
from tests.kernel.lab import Lab
from tests.kernel.pods import socket_in

RULES = [
    # TCP, two real servers: one held open (ActiveConn), one weight 0.
    "-A -t 10.96.2.1:80 -s rr",
    "-a -t 10.96.2.1:80 -r 10.244.2.2:8080 -m -w 1",
    "-a -t 10.96.2.1:80 -r 10.244.2.3:8080 -m -w 0",
    # TCP whose only real server has closed a connection (InActConn).
    "-A -t 10.96.2.5:80 -s rr",
    "-a -t 10.96.2.5:80 -r 10.244.2.7:80 -m -w 3",
    "-A -u 10.96.2.2:53 -s rr",
    "-a -u 10.96.2.2:53 -r 10.244.2.4:53 -m -w 1",
    "-a -u 10.96.2.2:53 -r 10.244.2.8:53 -m -w 0",
    "-A --sctp-service 10.96.2.3:3868 -s rr",
    "-a --sctp-service 10.96.2.3:3868 -r 10.244.2.5:3868 -m -w 2",
    "-A -t [fd00:10:96::2]:443 -s wrr",
    "-a -t [fd00:10:96::2]:443 -r [fd00:10:244::2]:8443 -m -w 5",
    "-a -t [fd00:10:96::2]:443 -r [fd00:10:244::3]:8443 -m -w 0",
    "-A -u [fd00:10:96::3]:53 -s rr",
    "-a -u [fd00:10:96::3]:53 -r [fd00:10:244::4]:53 -m -w 1",
    "-A -f 42 -s rr",
    "-a -f 42 -r 10.244.2.9:0 -m -w 1",
    "-A -f 43 -6 -s rr",
    "-a -f 43 -6 -r [fd00:10:244::9]:0 -m -w 1",
    "-A -t 10.96.2.4:6379 -s sh -p 10800",
    "-a -t 10.96.2.4:6379 -r 10.244.2.6:6379 -m -w 1",
    # No real servers at all: the netlink read must say "empty", not "gone".
    "-A -t 10.96.2.7:80 -s rr",
    # Direct routing and tunnelling, which kube-proxy never uses but a node may carry.
    "-A -t 10.96.2.6:80 -s rr",
    "-a -t 10.96.2.6:80 -r 10.244.2.10:80 -g -w 1",
    "-a -t 10.96.2.6:80 -r 10.244.2.11:80 -i -w 1",
]


@pytest.fixture
def table(lab: Lab, source_ports: Iterator[int]) -> Iterator[IpvsTable]:
    lab.cluster_ips("10.96.2.1", "10.96.2.5")
    lab.restore(RULES)
    # One connection held open against a listener that never accepts: the kernel completes the handshake,
    # so IPVS counts it as active.
    held_pod = lab.pod("held", "10.244.2.2")
    listener = socket_in(held_pod.name, socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("0.0.0.0", 8080))
    listener.listen(8)
    closer = lab.serve(lab.pod("closer", "10.244.2.7"), 80)
    held = lab.client(next(source_ports)).connect_and_hold("10.96.2.1", 80)
    reply = lab.client(next(source_ports)).tcp("10.96.2.5", 80)
    assert reply.pod == "closer", reply
    kernel = KernelIpvs()
    try:
        yield kernel.read_table()
    finally:
        kernel.close()
        held.close()
        listener.close()
        closer.kill()


def test_whole_table_read_matches_ipvsadm(lab: Lab, table: IpvsTable) -> None:
    assert rows(table) == parse_restore_format(lab.ipvsadm("-Sn"))
    assert table_counters(table) == list_counters(lab.ipvsadm("-Ln"))
    by_text = {str(service.key): service for service in table.services}
    assert by_text["10.96.2.4:6379"].persistent and by_text["10.96.2.4:6379"].scheduler == "sh"
    assert by_text["10.96.2.3:3868"].key.protocol is Protocol.SCTP
    assert by_text["fwmark:43"].key.family == 6
    counters = {str(rs.key.address): (rs.active_conns, rs.inactive_conns) for rs in table.real_servers}
    assert counters["10.244.2.2"] == (1, 0), "the held connection must count as active"
    assert counters["10.244.2.7"] == (0, 1), "the closed connection must count as inactive (TIME_WAIT)"


def test_netlink_read_of_each_service_equals_the_whole_table_read(table: IpvsTable) -> None:
    kernel = KernelIpvs()
    try:
        for service in table.services:
            expected = sorted(
                (rs for rs in table.real_servers if rs.key.virtual == service.key),
                key=lambda rs: rs.key.sort_key(),
            )
            read = kernel.read_service(service.key)
            assert read is not None, f"netlink lost {service.key}"
            assert sorted(read, key=lambda rs: rs.key.sort_key()) == expected, service.key
    finally:
        kernel.close()
    assert len(table.services) == 11


def _without(table: IpvsTable, gone: RealServer) -> set[str]:
    return {str(rs.key) for rs in table.real_servers if rs.key != gone.key}


def test_delete_each_kind_then_again_then_without_its_service(lab: Lab, table: IpvsTable) -> None:
    kernel = KernelIpvs()
    try:
        current = table
        for victim in [rs for rs in table.real_servers if rs.weight == 0] + [
            rs
            for rs in table.real_servers
            if rs.key.virtual.fwmark or rs.key.virtual.protocol is Protocol.SCTP
        ]:
            assert kernel.delete_real_server(victim.key) is DeleteOutcome.DELETED, victim.key
            after = kernel.read_table()
            assert {str(rs.key) for rs in after.real_servers} == _without(current, victim)
            assert rows(after) == parse_restore_format(lab.ipvsadm("-Sn"))
            # kube-proxy got there first: ENOENT is success.
            assert kernel.delete_real_server(victim.key) is DeleteOutcome.ALREADY_GONE
            current = after

        udp = next(rs for rs in current.real_servers if str(rs.key.virtual) == "10.96.2.2:53")
        lab.ipvsadm("-D", "-u", "10.96.2.2:53")
        # The whole virtual service vanished (ESRCH): also success, and the netlink read says "gone".
        assert kernel.delete_real_server(udp.key) is DeleteOutcome.ALREADY_GONE
        assert kernel.read_service(udp.key.virtual) is None
    finally:
        kernel.close()


def test_weight_change_between_read_and_delete_is_noticed(lab: Lab, table: IpvsTable) -> None:
    cluster = cluster_state_from_items(
        [
            builders.node(NODE, NODE_IP),
            builders.service("shop", "web", ["10.96.2.1"], [builders.port(80)]),
            # Only .2 is an endpoint: .3 (weight 0) is gone from the cluster and reapable.
            builders.endpoint_slice(
                "shop", "web-1", "web", [builders.port(8080)], [builders.endpoint("10.244.2.2")]
            ),
        ]
    )
    plan = plan_sweep(
        SweepInputs(
            table=table,
            cluster=cluster,
            node_name=NODE,
            config=Config(),
            expire_nodest_conn=lab.read_sysctl("expire_nodest_conn"),
            now=datetime.now(UTC),
            first_seen={},
            policy=PolicyChoice.DEFAULT,
        )
    )
    assert [d.real_server.key.address.compressed for d in plan.reaps] == ["10.244.2.3"]
    assert plan.reaps[0].action is Action.REAP
    # kube-proxy brings the endpoint back between our read and our delete.
    lab.ipvsadm("-e", "-t", "10.96.2.1:80", "-r", "10.244.2.3:8080", "-m", "-w", "1")
    kernel = KernelIpvs()
    try:
        result = apply_plan(
            plan,
            kernel,
            ProcSysctls(),
            dry_run=False,
            clock=lambda: datetime.now(UTC),
            recorder=lambda _: None,
        )
        assert [r.outcome for r in result.records] == [Outcome.SKIPPED]
        assert "weight changed to 1" in result.records[0].detail
        still_there = kernel.read_service(plan.reaps[0].real_server.key.virtual) or ()
        assert [rs.weight for rs in still_there if str(rs.key.address) == "10.244.2.3"] == [1]
    finally:
        kernel.close()


async def test_one_backend_used_as_the_agent_uses_it_loses_no_operation(lab: Lab) -> None:
    """The agent's backend (one KernelIpvs for the process) called the way the agent calls it: from
    asyncio.to_thread's pool, by several tasks at once, while real servers are deleted and put back. With
    pyroute2's socket used from whichever thread asked, about half of such calls failed with ECONNRESET;
    every one must succeed."""
    services = [f"10.96.9.{n}" for n in range(1, 9)]
    reals = [f"10.244.9.{n}" for n in range(1, 7)]
    lab.restore(
        [f"-A -t {vip}:80 -s rr" for vip in services]
        + [f"-a -t {vip}:80 -r {real}:8080 -m -w 0" for vip in services for real in reals]
    )
    keys = {vip: VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(vip), 80) for vip in services}
    backend = KernelIpvs()
    failures: list[str] = []
    done = {"reads": 0, "deletes": 0}

    async def reader(offset: int, rounds: int) -> None:
        for n in range(rounds):
            try:
                found = await asyncio.to_thread(
                    backend.read_service, keys[services[(n + offset) % len(services)]]
                )
                assert found is not None
                done["reads"] += 1
            except IpvsError as error:
                failures.append(f"read: {error}")

    async def churner(parity: int, rounds: int) -> None:
        # Each churner its own half of the virtual services: a delete always finds its real server there.
        mine = services[parity::2]
        for n in range(rounds):
            vip, real = mine[n % len(mine)], reals[n % len(reals)]
            key = RealKey(keys[vip], ipaddress.ip_address(real), 8080)
            try:
                outcome = await asyncio.to_thread(backend.delete_real_server, key)
            except IpvsError as error:
                failures.append(f"delete: {error}")
                continue
            if outcome is not DeleteOutcome.DELETED:
                failures.append(f"delete of {key}: {outcome}")
                continue
            done["deletes"] += 1
            await asyncio.to_thread(
                lab.ipvsadm, "-a", "-t", f"{vip}:80", "-r", f"{real}:8080", "-m", "-w", "0"
            )

    try:
        # Bounded: on the socket shared across threads, pyroute2 could also hang here.
        await asyncio.wait_for(
            asyncio.gather(*(reader(offset, 300) for offset in range(4)), churner(0, 150), churner(1, 150)),
            timeout=300,
        )
    finally:
        backend.close()
    assert failures == [], f"{len(failures)} failed, first: {failures[:3]}"
    assert done == {"reads": 1200, "deletes": 300}
