"""The netlink half of the kernel table, against pyroute2's own message encoding.

The real-kernel proof is the VM tier; here the conversions and the error handling are pinned down with
messages encoded and decoded by pyroute2 exactly as they cross the socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.ipvs import ipvsmsg

from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsAbsent, IpvsError
from ipvs_reaper.ipvs.kernel import (
    KernelIpvs,
    real_server_from_message,
    service_spec,
    virtual_key_from_message,
)
from ipvs_reaper.values import Protocol, RealKey, VirtualKey

VIP = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.12.7"), 443)
REAL = RealKey(VIP, ipaddress.ip_address("10.244.4.9"), 8443)


def _wire(attrs: list[tuple[str, Any]]) -> ipvsmsg:
    msg = ipvsmsg()
    msg["cmd"] = 8
    msg["version"] = 1
    msg["attrs"] = attrs
    msg.encode()
    decoded = ipvsmsg(msg.data)
    decoded.decode()
    return decoded


def _dest(address: str, port: int, weight: int, active: int, inactive: int, forward: int = 0) -> ipvsmsg:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return _wire(
        [
            (
                "IPVS_CMD_ATTR_DEST",
                {
                    "attrs": [
                        ("IPVS_DEST_ATTR_ADDR", address),
                        ("IPVS_DEST_ATTR_PORT", port),
                        ("IPVS_DEST_ATTR_FWD_METHOD", forward),
                        ("IPVS_DEST_ATTR_WEIGHT", weight),
                        ("IPVS_DEST_ATTR_ACTIVE_CONNS", active),
                        ("IPVS_DEST_ATTR_INACT_CONNS", inactive),
                        ("IPVS_DEST_ATTR_ADDR_FAMILY", family),
                    ]
                },
            )
        ]
    )


def test_destination_message_becomes_real_server() -> None:
    rs = real_server_from_message(_dest("10.244.4.9", 8443, 0, 2, 7, forward=3), VIP)
    assert rs.key == REAL
    assert (rs.forward, rs.weight, rs.active_conns, rs.inactive_conns) == ("Route", 0, 2, 7)


def test_ipv6_destination() -> None:
    vip6 = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("fd00:10:96::a"), 80)
    rs = real_server_from_message(_dest("fd00:10:244:2::7", 8080, 1, 0, 0), vip6)
    assert rs.key.address == ipaddress.ip_address("fd00:10:244:2::7")


@pytest.mark.parametrize(
    "key",
    [
        VirtualKey.inet(Protocol.UDP, ipaddress.ip_address("10.96.0.10"), 53),
        VirtualKey.inet(Protocol.SCTP, ipaddress.ip_address("10.96.40.2"), 3868),
        VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("fd00:10:96::a"), 80),
        VirtualKey.firewall_mark(42),
    ],
)
def test_service_spec_round_trips_through_the_wire(key: VirtualKey) -> None:
    message = _wire([("IPVS_CMD_ATTR_SERVICE", service_spec(key).dump_key())])
    assert virtual_key_from_message(message) == key


class FakeSocket:
    """Stands in for pyroute2.IPVS: answers or raises like the kernel did on 6.1."""

    def __init__(
        self, dests: list[ipvsmsg] | None = None, error: int | None = None, get_error: int | None = None
    ):
        self.dests = dests or []
        self.error = error
        self.get_error = get_error
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    def service(self, command: str, service: Any = None) -> list[Any]:
        self.calls.append(("service", command))
        if self.get_error is not None:
            raise NetlinkError(self.get_error)
        return []

    def dest(self, command: str, service: Any, dest: Any = None) -> list[Any]:
        self.calls.append(("dest", command))
        if self.error is not None:
            raise NetlinkError(self.error)
        return self.dests

    def close(self) -> None:
        self.closed = True


def test_read_service_converts_the_dump() -> None:
    sock = FakeSocket(dests=[_dest("10.244.4.9", 8443, 0, 0, 7), _dest("10.244.3.17", 8443, 1, 3, 9)])
    table = KernelIpvs(connect=lambda: sock)
    found = table.read_service(VIP)
    assert found is not None
    assert [(rs.key.address.compressed, rs.weight) for rs in found] == [("10.244.4.9", 0), ("10.244.3.17", 1)]
    # One request when the service has real servers: the dump alone proves it exists.
    assert sock.calls == [("dest", "dump")]


def test_read_service_of_a_missing_service_is_none() -> None:
    sock = FakeSocket(get_error=errno.ESRCH)
    assert KernelIpvs(connect=lambda: sock).read_service(VIP) is None
    assert sock.calls == [("dest", "dump"), ("service", "get")]


def test_read_service_without_real_servers_is_empty_not_gone() -> None:
    sock = FakeSocket()
    assert KernelIpvs(connect=lambda: sock).read_service(VIP) == ()


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ESRCH])
def test_delete_of_something_already_gone_is_success(code: int) -> None:
    table = KernelIpvs(connect=lambda: FakeSocket(error=code))
    assert table.delete_real_server(REAL) is DeleteOutcome.ALREADY_GONE


def test_delete_success() -> None:
    sock = FakeSocket()
    assert KernelIpvs(connect=lambda: sock).delete_real_server(REAL) is DeleteOutcome.DELETED
    assert sock.calls == [("dest", "del")]


def test_other_netlink_errors_are_errors() -> None:
    table = KernelIpvs(connect=lambda: FakeSocket(error=errno.EPERM))
    with pytest.raises(IpvsError, match=r"deleting"):
        table.delete_real_server(REAL)


def test_missing_ipvs_family_is_an_error_not_already_gone(tmp_path: Any) -> None:
    # pyroute2 raises NetlinkError(ENOENT) when the IPVS generic netlink family does not exist (seen on
    # this host): that must never read as "the real server is already gone". Without /proc/net/ip_vs it is a
    # node without IPVS (nothing to reap); with it, a failure to say.
    def connect() -> Any:
        raise NetlinkError(errno.ENOENT)

    with pytest.raises(IpvsAbsent, match=r"ip_vs is not loaded"):
        KernelIpvs(proc_path=tmp_path / "ip_vs", connect=connect).delete_real_server(REAL)
    (tmp_path / "ip_vs").write_text("IP Virtual Server version 1.2.1 (size=4096)\n")
    with pytest.raises(
        IpvsError, match=r"cannot open the IPVS netlink family \(is ip_vs loaded\?\)"
    ) as raised:
        KernelIpvs(proc_path=tmp_path / "ip_vs", connect=connect).delete_real_server(REAL)
    assert not isinstance(raised.value, IpvsAbsent)


def test_missing_proc_file_is_a_node_without_ipvs(tmp_path: Any) -> None:
    with pytest.raises(IpvsAbsent, match=r"ip_vs is not loaded \(.*ip_vs does not exist\)"):
        KernelIpvs(proc_path=tmp_path / "ip_vs").read_table()


def test_a_kernel_table_we_cannot_parse_is_an_ipvs_error(tmp_path: Any) -> None:
    # The agent retries an IpvsError at the next sweep; any other exception would end its work loop.
    proc = tmp_path / "ip_vs"
    proc.write_text("IP Virtual Server version 1.2.1 (size=4096)\nTCP  0A000001:0050 rr newflag\n")
    with pytest.raises(IpvsError, match=r"cannot parse the kernel's table: .*line 2: unknown service flags"):
        KernelIpvs(proc_path=proc).read_table()


def test_an_unexpected_netlink_answer_is_an_ipvs_error() -> None:
    without_address = _wire([("IPVS_CMD_ATTR_DEST", {"attrs": [("IPVS_DEST_ATTR_PORT", 8443)]})])
    sock = FakeSocket(dests=[without_address])
    with pytest.raises(IpvsError, match="unexpected answer"):
        KernelIpvs(connect=lambda: sock).read_service(VIP)


class ThreadRecordingSocket(FakeSocket):
    """Notes the thread of its making and of every call: pyroute2's sync socket works only from the one."""

    def __init__(self) -> None:
        super().__init__()
        self.made_on = threading.get_ident()
        self.threads: set[int] = set()

    def dest(self, command: str, service: Any, dest: Any = None) -> list[Any]:
        self.threads.add(threading.get_ident())
        return super().dest(command, service, dest)


def test_one_socket_on_one_thread_serves_every_operation_and_is_closed() -> None:
    sockets: list[ThreadRecordingSocket] = []

    def connect() -> ThreadRecordingSocket:
        sockets.append(ThreadRecordingSocket())
        return sockets[-1]

    table = KernelIpvs(connect=connect)
    # As the agent calls it: from asyncio.to_thread's pool, several at once.
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(table.read_service, VIP) for _ in range(50)]
        futures += [pool.submit(table.delete_real_server, REAL) for _ in range(50)]
        for future in futures:
            future.result()
    table.close()
    assert len(sockets) == 1
    assert sockets[0].threads == {sockets[0].made_on}
    assert sockets[0].made_on != threading.get_ident()
    assert sockets[0].closed
