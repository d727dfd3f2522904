"""The benchmark's cluster: N Services with one ClusterIP port each, one EndpointSlice of 5 endpoints per
Service, and the node's IPVS table that kube-proxy would have built for them. In the Services the benchmark's
events will change, endpoint 5 is at weight 0 (drained but ready, so it is kept until its endpoint goes);
every other real server is weighted, as on a node between rollouts."""

from __future__ import annotations

import ipaddress
from typing import Any

from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService

ENDPOINTS = 5


def cluster_ip(i: int) -> str:
    return str(ipaddress.ip_address("10.96.0.0") + i + 1)


def pod_ip(i: int, j: int) -> str:
    return str(ipaddress.ip_address("10.128.0.0") + i * 8 + j + 1)


def service_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}", "resourceVersion": f"{i + 1}"},
        "spec": {
            "clusterIP": cluster_ip(i),
            "clusterIPs": [cluster_ip(i)],
            "ports": [{"port": 80, "protocol": "TCP"}],
        },
    }


def slice_body(i: int, endpoints: int = ENDPOINTS, version: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": f"svc-{i}-abcde",
            "namespace": f"ns-{i % 50}",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
            "resourceVersion": f"{1_000_000 + i}-{version}",
        },
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [pod_ip(i, j)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
            for j in range(endpoints)
        ],
    }


def node_body() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a", "resourceVersion": "1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]},
    }


def event_targets(services: int, events: int) -> list[int]:
    """The Service each event changes: spread over the namespaces, none twice."""
    return [(n * 7919) % services for n in range(events)]


def fake_table(services: int, events: int, busy: bool = False) -> IpvsTable:
    """With `busy`, each drained real server still has 3 live connections (ActiveConn 3)."""
    drained = set(event_targets(services, events))
    virtuals, reals = [], []
    for i in range(services):
        key = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(cluster_ip(i)), 80)
        virtuals.append(VirtualService(key, "rr"))
        for j in range(ENDPOINTS):
            weight = 0 if i in drained and j == ENDPOINTS - 1 else 1
            active = 3 if busy and weight == 0 else 0
            reals.append(
                RealServer(RealKey(key, ipaddress.ip_address(pod_ip(i, j)), 8080), "Masq", weight, active, 0)
            )
    return IpvsTable(tuple(virtuals), tuple(reals))
