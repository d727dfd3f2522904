"""The live kernel table: /proc/net/ip_vs for the whole table, generic netlink for targeted work.

A pyroute2 service-then-destination dump of a 2,000-service table took 106 s in our VM against 0.44 s for
/proc/net/ip_vs, so netlink is used only where one service is concerned: re-reading it right before a
delete, and the delete itself.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPVS, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsAbsent, IpvsError, errno_name
from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs
from ipvs_reaper.values import (
    IPPROTO_NUMBERS,
    PROTOCOLS_BY_NUMBER,
    IPAddress,
    IpvsTable,
    RealKey,
    RealServer,
    VirtualKey,
)

PROC_IP_VS = Path("/proc/net/ip_vs")

# IP_VS_CONN_F_FWD_MASK values, named as /proc/net/ip_vs names them.
_FORWARD_NAMES = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route", 4: "Bypass"}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSIONS = {socket.AF_INET: 4, socket.AF_INET6: 6}
# ENOENT: the real server is gone. ESRCH: its whole virtual service is gone. Either way, nothing to delete.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


def service_spec(virtual: VirtualKey) -> IPVSService:
    """The netlink key of a virtual service."""
    if virtual.address is None:
        return IPVSService(af=_FAMILIES[virtual.family], fwmark=virtual.fwmark)
    return IPVSService(
        af=_FAMILIES[virtual.family],
        protocol=IPPROTO_NUMBERS[virtual.protocol],
        addr=str(virtual.address),
        port=virtual.port,
    )


def real_server_from_message(message: Any, virtual: VirtualKey) -> RealServer:
    """Convert one IPVS_CMD_GET_DEST answer into a RealServer of `virtual`."""
    dest = message.get_attr("IPVS_CMD_ATTR_DEST")
    if dest is None:
        raise IpvsError(f"netlink answer for {virtual} carries no destination")
    address: IPAddress = ipaddress.ip_address(dest.get_attr("IPVS_DEST_ATTR_ADDR"))
    forward = dest.get_attr("IPVS_DEST_ATTR_FWD_METHOD") or 0
    return RealServer(
        key=RealKey(virtual=virtual, address=address, port=dest.get_attr("IPVS_DEST_ATTR_PORT")),
        forward=_FORWARD_NAMES.get(forward & 0x7, "Unknown"),
        weight=dest.get_attr("IPVS_DEST_ATTR_WEIGHT"),
        active_conns=dest.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS"),
        inactive_conns=dest.get_attr("IPVS_DEST_ATTR_INACT_CONNS"),
    )


def virtual_key_from_message(message: Any) -> VirtualKey:
    """Convert one IPVS_CMD_GET_SERVICE answer into the service's key."""
    svc = message.get_attr("IPVS_CMD_ATTR_SERVICE")
    family = _VERSIONS[svc.get_attr("IPVS_SVC_ATTR_AF")]
    fwmark = svc.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
    if fwmark:
        return VirtualKey.firewall_mark(fwmark, family=family)
    number = svc.get_attr("IPVS_SVC_ATTR_PROTOCOL")
    if number not in PROTOCOLS_BY_NUMBER:
        raise IpvsError(f"virtual service with unsupported IP protocol number {number}")
    return VirtualKey.inet(
        PROTOCOLS_BY_NUMBER[number],
        ipaddress.ip_address(svc.get_attr("IPVS_SVC_ATTR_ADDR")),
        svc.get_attr("IPVS_SVC_ATTR_PORT"),
    )


_T = TypeVar("_T")


class KernelIpvs:
    """The node's own IPVS table (the network namespace this process runs in).

    One netlink socket is opened on first use and kept: each new socket costs a generic-netlink family
    lookup, which a sweep deleting many real servers should pay once.

    Every netlink operation runs on one thread of this object's own, where the socket is also made. pyroute2
    0.9's synchronous IPVS object keeps its socket, event loop and message queue per thread (threading.local)
    but its status and sequence numbers per object, and sets up and tears down its transport around every
    call: used from more than one thread, even one call at a time, it answers about half of the requests with
    ECONNRESET (104), and some with KeyErrors from its own state (seen in the VM: of 2,000 dumps from four
    threads at once 987 failed, of 1,500 from four threads one at a time 749, of 2,000 from the thread that
    made it none, and none from four threads each with its own object). The agent calls this object from
    asyncio.to_thread's pool (sweeps, event reconciles, follow-ups and the doctor's pass at once), so any
    call may come from any thread; here they all reach pyroute2 from the same one, one at a time.
    """

    def __init__(self, proc_path: Path = PROC_IP_VS, connect: Callable[[], Any] = IPVS) -> None:
        self._proc_path = proc_path
        self._connect = connect
        self._ipvs: Any = None
        self._netlink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipvs-netlink")

    def _on_netlink_thread(self, work: Callable[[], _T]) -> _T:
        return self._netlink.submit(work).result()

    def close(self) -> None:
        """Close the socket (the next operation opens a new one)."""
        self._on_netlink_thread(self._drop_socket)

    def _drop_socket(self) -> None:
        if self._ipvs is not None:
            self._ipvs.close()
            self._ipvs = None

    def _socket(self) -> Any:
        if self._ipvs is None:
            try:
                self._ipvs = self._connect()
            except (NetlinkError, OSError) as error:
                # Kept apart from the operations' errors: ENOENT here means "no IPVS netlink family"
                # (ip_vs not loaded), not "real server already gone".
                if not self._proc_path.exists():
                    raise IpvsAbsent(f"ip_vs is not loaded ({self._proc_path} does not exist)") from None
                raise IpvsError(f"cannot open the IPVS netlink family (is ip_vs loaded?): {error}") from None
        return self._ipvs

    def read_table(self) -> IpvsTable:
        try:
            text = self._proc_path.read_text()
        except FileNotFoundError:
            raise IpvsAbsent(f"ip_vs is not loaded ({self._proc_path} does not exist)") from None
        except OSError as error:
            raise IpvsError(f"cannot read {self._proc_path}: {error}") from None
        try:
            return parse_proc_ip_vs(text, source=str(self._proc_path))
        except TableParseError as error:
            # The kernel's own text that we cannot read: nothing can be decided from it, and the agent must
            # retry rather than stop.
            raise IpvsError(f"cannot parse the kernel's table: {error}") from None

    def read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        return self._on_netlink_thread(partial(self._read_service, virtual))

    def delete_real_server(self, key: RealKey) -> DeleteOutcome:
        return self._on_netlink_thread(partial(self._delete_real_server, key))

    def _read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        spec = service_spec(virtual)
        ipvs = self._socket()
        try:
            answers: list[Any] = list(ipvs.dest("dump", service=spec))
            if not answers:
                # A destination dump of a missing service answers with an empty list rather than an error:
                # only asking for the service itself tells 'gone' from 'no real servers'. Asked only then,
                # since each request costs as much as the dump.
                ipvs.service("get", service=spec)
        except NetlinkError as error:
            if error.code in _GONE_ERRNOS:
                return None
            raise IpvsError(
                f"reading {virtual.protocol} {virtual} over netlink: {error}", errno_name(error.code)
            ) from None
        except OSError as error:
            self._drop_socket()
            raise IpvsError(
                f"reading {virtual.protocol} {virtual} over netlink: {error}", errno_name(error.errno)
            ) from None
        try:
            return tuple(real_server_from_message(answer, virtual) for answer in answers)
        except (ValueError, TypeError) as error:
            raise IpvsError(
                f"reading {virtual.protocol} {virtual} over netlink: unexpected answer: {error}"
            ) from None

    def _delete_real_server(self, key: RealKey) -> DeleteOutcome:
        dest = IPVSDest(addr=str(key.address), port=key.port)
        ipvs = self._socket()
        try:
            ipvs.dest("del", service=service_spec(key.virtual), dest=dest)
        except NetlinkError as error:
            if error.code in _GONE_ERRNOS:
                return DeleteOutcome.ALREADY_GONE
            raise IpvsError(f"deleting {key} over netlink: {error}", errno_name(error.code)) from None
        except OSError as error:
            self._drop_socket()
            raise IpvsError(f"deleting {key} over netlink: {error}", errno_name(error.errno)) from None
        return DeleteOutcome.DELETED
