"""`doctor --probe-kernel`: what this kernel does with a reused source port once a real server is at weight 0
and its pod is dead, for each conn_reuse_mode and expire_nodest_conn; measured, not read from version numbers
that vendors' backports make lie (see the exposure verdict).

Each row is built in fresh anonymous network namespaces (netns.py): a node with IPVS, two pods behind veths
with /32 routes and proxy ARP (as Calico wires them) and a client pod that always uses one source port. IPVS
sysctls are per namespace, so the node's own settings are neither read nor changed."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from ipvs_reaper.doctor.netns import NamespaceError, new_namespace, run_in
from ipvs_reaper.errors import RuntimeFailure

PORT = 80
ROWS = ((0, 0), (0, 1), (1, 0), (1, 1))
LIVE, DEAD, TIMEOUT = "live pod", "dead pod", "timeout"
_VIP, _POD_A, _POD_B, _CLIENT = "10.255.0.1", "10.255.1.2", "10.255.1.3", "10.255.9.9"


@dataclass(frozen=True, slots=True)
class ProbeRow:
    conn_reuse_mode: int
    expire_nodest_conn: int
    weight_zero: str  # where a reused source port went while the dead pod's real server was at weight 0
    deleted: str  # ... and once it was deleted

    @property
    def exposed(self) -> bool:
        return self.weight_zero != LIVE or self.deleted != LIVE

    def as_json(self) -> dict[str, Any]:
        return {
            "connReuseMode": self.conn_reuse_mode,
            "expireNodestConn": self.expire_nodest_conn,
            "weightZero": self.weight_zero,
            "deleted": self.deleted,
            "exposed": self.exposed,
        }


def _write(path: str, value: int) -> None:
    Path(path).write_text(f"{value}\n")


class _Server:
    """Answers each connection with its name, then closes first (so the entry ends in TIME_WAIT)."""

    def __init__(self, namespace: int, name: str, address: str) -> None:
        self.name = name
        self._socket = run_in(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((address, PORT))
        self._socket.listen(16)
        self._killed = False
        self._thread = threading.Thread(target=self._serve, name=f"probe-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # killed
            with connection:
                try:
                    connection.settimeout(5)
                    connection.recv(64)
                    connection.sendall(self.name.encode())
                except OSError:
                    continue

    def kill(self) -> None:
        """The pod's process dies; its address and route stay, as while a pod terminates."""
        if self._killed:
            return
        self._killed = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError as error:
            if error.errno != errno.ENOTCONN:
                raise
        self._socket.close()
        self._thread.join(timeout=10)


def _connect(namespace: int, source_port: int, timeout: float) -> str:
    made = run_in(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with made:
        made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        made.settimeout(timeout)
        made.bind((_CLIENT, source_port))
        try:
            made.connect((_VIP, PORT))
            made.sendall(b"who?\n")
            return made.recv(64).decode() or "closed"
        except TimeoutError:
            return TIMEOUT
        except ConnectionRefusedError:
            return DEAD  # refused from the dead pod's address: nothing listens there any more
        except OSError as error:
            return errno.errorcode.get(error.errno or 0, str(error))


def _wire_pod(node: int, pod: int, index: int, address: str) -> None:
    host_side = f"probe{index}"

    def on_node() -> None:
        with IPRoute() as route:
            route.link("add", ifname=host_side, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod})
            link = route.link_lookup(ifname=host_side)[0]
            route.link("set", index=link, state="up")
            route.route("add", dst=f"{address}/32", oif=link)
        _write(f"/proc/sys/net/ipv4/conf/{host_side}/proxy_arp", 1)

    def in_pod() -> None:
        with IPRoute() as route:
            route.link("set", index=route.link_lookup(ifname="lo")[0], state="up")
            link = route.link_lookup(ifname="eth0")[0]
            route.link("set", index=link, state="up")
            route.addr("add", index=link, address=address, prefixlen=32)
            route.route("add", dst="0.0.0.0/0", oif=link)

    run_in(node, on_node)
    run_in(pod, in_pod)


def _ipvs(node: int, work: Callable[[Any], None]) -> None:
    def inside() -> None:
        with IPVS() as ipvs:
            work(ipvs)

    run_in(node, inside)


_SERVICE = {"af": socket.AF_INET, "protocol": socket.IPPROTO_TCP, "addr": _VIP, "port": PORT}


def _dest(address: str, weight: int) -> IPVSDest:
    return IPVSDest(addr=address, port=PORT, fwd_method=0, weight=weight, u_threshold=0, l_threshold=0)


@contextmanager
def _namespaces(count: int) -> Iterator[list[int]]:
    with ExitStack() as stack:
        made = []
        for _ in range(count):
            namespace = new_namespace()
            stack.callback(os.close, namespace)
            made.append(namespace)
        yield made


def _row(reuse: int, nodest: int, source_port: int, timeout: float) -> ProbeRow:
    with _namespaces(4) as (node, pod_a, pod_b, client):

        def node_setup() -> None:
            with IPRoute() as route:
                route.link("set", index=route.link_lookup(ifname="lo")[0], state="up")
                route.link("add", ifname="probe-ipvs0", kind="dummy")
                link = route.link_lookup(ifname="probe-ipvs0")[0]
                route.addr("add", index=link, address=_VIP, prefixlen=32)
                route.link("set", index=link, state="up")
            _write("/proc/sys/net/ipv4/ip_forward", 1)

        run_in(node, node_setup)
        pods = {"pod-a": (pod_a, _POD_A), "pod-b": (pod_b, _POD_B)}
        for index, (namespace, address) in enumerate([*pods.values(), (client, _CLIENT)]):
            _wire_pod(node, namespace, index, address)

        def ipvs_setup(ipvs: Any) -> None:
            # The sysctls exist in this namespace once IPVS is set up in it.
            ipvs.service("add", service=IPVSService(**_SERVICE, sched_name="rr", netmask="255.255.255.255"))
            for _, address in pods.values():
                ipvs.dest("add", service=IPVSService(**_SERVICE), dest=_dest(address, 1))
            _write("/proc/sys/net/ipv4/vs/conn_reuse_mode", reuse)
            _write("/proc/sys/net/ipv4/vs/expire_nodest_conn", nodest)

        _ipvs(node, ipvs_setup)
        servers = {name: _Server(namespace, name, address) for name, (namespace, address) in pods.items()}
        try:
            first = _connect(client, source_port, timeout)
            if first not in servers:
                raise RuntimeFailure(f"the probe's first connection did not reach a pod: {first}")
            live = next(name for name in servers if name != first)
            dead_address = pods[first][1]
            # kube-proxy's reaction to the endpoint going away, then the pod's process exits.
            _ipvs(
                node,
                lambda ipvs: ipvs.dest("set", service=IPVSService(**_SERVICE), dest=_dest(dead_address, 0)),
            )
            servers[first].kill()
            before = _connect(client, source_port, timeout)
            _ipvs(
                node,
                lambda ipvs: ipvs.dest("del", service=IPVSService(**_SERVICE), dest=_dest(dead_address, 0)),
            )
            after = _connect(client, source_port, timeout)
        finally:
            for server in servers.values():
                server.kill()

        def named(reply: str) -> str:
            return LIVE if reply == live else DEAD if reply in (first, DEAD) else reply

        return ProbeRow(reuse, nodest, named(before), named(after))


def probe_kernel(timeout: float = 3.0, first_port: int = 41000) -> list[ProbeRow]:
    """The four rows. Raises RuntimeFailure when the probe cannot be built (not root, no IPVS)."""
    rows = []
    try:
        for number, (reuse, nodest) in enumerate(ROWS):
            rows.append(_row(reuse, nodest, first_port + number, timeout))
    except (NamespaceError, NetlinkError, OSError) as error:
        raise RuntimeFailure(
            f"the kernel probe could not run (it needs root and IPVS in the kernel): {error}"
        ) from None
    return rows


def exposed_at(rows: list[ProbeRow], reuse: int | None, nodest: int | None) -> bool | None:
    """Whether the node's own settings land on a row that reached the dead pod (None: settings unknown)."""
    for row in rows:
        if (row.conn_reuse_mode, row.expire_nodest_conn) == (reuse, nodest):
            return row.exposed
    return None
