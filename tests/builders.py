"""Builders for Kubernetes objects as the API serves them (camelCase dicts), for tests."""

from __future__ import annotations

from typing import Any


def service(
    namespace: str,
    name: str,
    cluster_ips: list[str],
    ports: list[dict[str, Any]],
    *,
    type_: str = "ClusterIP",
    external_ips: list[str] | None = None,
    lb_ips: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
    ip_modes: list[str | None] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "ports": ports}
    if cluster_ips:
        spec["clusterIP"] = cluster_ips[0]
        spec["clusterIPs"] = cluster_ips
        # As the API writes them: one family per ClusterIP, in the same order.
        families = ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips if ip != "None"]
        if families:
            spec["ipFamilies"] = families
            spec["ipFamilyPolicy"] = "RequireDualStack" if len(families) > 1 else "SingleStack"
    if selector:
        spec["selector"] = selector
    if external_ips:
        spec["externalIPs"] = external_ips
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    if labels:
        metadata["labels"] = labels
    ingress: list[dict[str, Any]] = []
    for i, ip in enumerate(lb_ips or ()):
        mode = ip_modes[i] if ip_modes else None
        ingress.append({"ip": ip} if mode is None else {"ip": ip, "ipMode": mode})
    status = {"loadBalancer": {"ingress": ingress} if ingress else {}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec, "status": status}


def port(port: int, name: str = "", protocol: str = "TCP", node_port: int | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"port": port, "protocol": protocol}
    if name:
        result["name"] = name
    if node_port is not None:
        result["nodePort"] = node_port
    return result


def endpoint(
    address: str, ready: bool | None = True, serving: bool | None = None, terminating: bool | None = False
) -> dict[str, Any]:
    conditions = {
        key: value
        for key, value in (
            ("ready", ready),
            ("serving", ready if serving is None else serving),
            ("terminating", terminating),
        )
        if value is not None
    }
    return {"addresses": [address], "conditions": conditions}


def endpoint_slice(
    namespace: str,
    name: str,
    service_name: str,
    ports: list[dict[str, Any]],
    endpoints: list[dict[str, Any]],
    family: str = "IPv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": family,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "ports": ports,
        "endpoints": endpoints,
    }


def node(name: str, *addresses: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


def pod(
    namespace: str, name: str, node_name: str, pod_ip: str, host_ports: list[dict[str, Any]]
) -> dict[str, Any]:
    """host_ports: container ports ({"containerPort", "hostPort", "protocol", "hostIP"})."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "ports": host_ports}]},
        "status": {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]},
    }
