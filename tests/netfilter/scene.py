"""The node the rule dumps describe: its Services (ClusterIPs in the IPVS table) and its hostPort pods."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests import builders
from tests.netfilter.portmap import JUMP_RESTRICTED, NODE_IP, ORPHAN, SCENE, SECOND_NODE_IP, HostPort

DUMPS = Path(__file__).with_name("dumps")
NODE = "node-a"

# (namespace/name, ClusterIP, port, protocol, what the scene's rules do to it)
SERVICES = (
    ("db/mysql-b", "10.96.0.20", 3306, "TCP", "hijacked by db/mysql-a-0's hostPort"),
    ("web/frontend", "10.96.0.30", 80, "TCP", "hijacked by the ingress controller's hostPort 80"),
    ("kube-system/kube-dns", "10.96.0.10", 53, "UDP", "hijacked by dns-cache's hostPort 53/UDP"),
    ("db/postgres", "10.96.0.40", 5432, "TCP", "safe: pg-local's hostPort has a hostIP"),
    ("web/web", "10.96.0.60", 8080, "TCP", "hijacked by web-a-1 (web-old-9's rule comes later)"),
    ("mon/node-exporter", "10.96.0.50", 9100, "TCP", "safe: both hostPorts on 9100 have a hostIP"),
    ("cache/redis", "10.96.0.70", 6379, "TCP", "safe: the only 6379 rule is in a chain nothing jumps to"),
    ("cache/memcached", "10.96.0.80", 11211, "TCP", "safe: the jump to its chain carries the host IP"),
)
HIJACKED = {name: vip for name, vip, _, _, why in SERVICES if why.startswith("hijacked")}
BACKEND = "10.244.2.{}"


def table() -> IpvsTable:
    services, real = [], []
    for index, (_, vip, port, protocol, _) in enumerate(SERVICES):
        key = VirtualKey.inet(Protocol(protocol), ipaddress.ip_address(vip), port)
        services.append(VirtualService(key, "rr"))
        backend = ipaddress.ip_address(BACKEND.format(index + 1))
        real.append(RealServer(RealKey(key, backend, port), "Masq", 1, 0, 0))
    return IpvsTable(tuple(services), tuple(real))


def _pod_items(ports: tuple[HostPort, ...]) -> list[dict[str, Any]]:
    by_pod: dict[str, list[HostPort]] = {}
    for port in ports:
        by_pod.setdefault(port.pod, []).append(port)
    items = []
    for ref, pod_ports in by_pod.items():
        namespace, name = ref.split("/")
        host_ports = [
            {
                "containerPort": p.container_port,
                "hostPort": p.host_port,
                "protocol": p.protocol.upper(),
                **({"hostIP": p.host_ip} if p.host_ip else {}),
            }
            for p in pod_ports
        ]
        items.append(builders.pod(namespace, name, NODE, pod_ports[0].pod_ip, host_ports))
    return items


def cluster_items(with_pods: bool = True) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [builders.node(NODE, NODE_IP, SECOND_NODE_IP)]
    for index, (ref, vip, port, protocol, _) in enumerate(SERVICES):
        namespace, name = ref.split("/")
        items.append(builders.service(namespace, name, [vip], [builders.port(port, protocol=protocol)]))
        items.append(
            builders.endpoint_slice(
                namespace,
                f"{name}-1",
                name,
                [builders.port(port, protocol=protocol)],
                [builders.endpoint(BACKEND.format(index + 1))],
            )
        )
    if with_pods:
        # web-old-9 and redis-gone are gone: their rules were left behind (a failed CNI DEL).
        living = tuple(p for p in (*SCENE, JUMP_RESTRICTED) if p.pod != "web/web-old-9")
        items += _pod_items(living)
    assert ORPHAN.pod not in {item["metadata"]["name"] for item in items}
    return items
