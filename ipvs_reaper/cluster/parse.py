"""Turns Kubernetes objects (as JSON dicts, the API's camelCase) into cluster-model values.

Strict where a wrong reading could delete something (addresses, ports, conditions): a malformed field is
an ObjectError naming it. Lenient where the API itself is (missing optional lists).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipvs_reaper.cluster.model import (
    ClusterState,
    Endpoint,
    EndpointSlice,
    HostPort,
    LoadBalancerIngress,
    Node,
    Pod,
    Service,
    ServicePort,
    SlicePort,
)
from ipvs_reaper.values import IPAddress, Protocol

POLICY_ANNOTATION = "ipvs-reaper.io/policy"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# kube-proxy's informers select Services and EndpointSlices without these labels (cmd/kube-proxy/app/
# server.go): a Service with either is not kube-proxy's, whatever its value.
EXCLUDING_LABELS = ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless")
_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_FAMILIES = {"IPv4": 4, "IPv6": 6}
_SLOPPY_IPV4 = re.compile(r"([0-9]{1,8})\.([0-9]{1,8})\.([0-9]{1,8})\.([0-9]{1,8})")


@dataclass(frozen=True, slots=True)
class ObjectError(Exception):
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _get(obj: Mapping[str, Any], key: str, path: str, kind: type, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ObjectError(
            f"{path}.{key}" if path else key, f"expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _ip(value: Any, path: str) -> IPAddress:
    if not isinstance(value, str):
        raise ObjectError(path, f"expected an IP address string, got {type(value).__name__}")
    # inet_pton (C) first: it accepts a subset of what ipaddress does (no zone ids) and is four times
    # faster, which matters with tens of thousands of endpoints.
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError):  # not dotted-quad IPv4 (ValueError: an embedded NUL)
        pass
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        sloppy = _SLOPPY_IPV4.fullmatch(value)
        if sloppy is None or any(int(part) > 255 for part in sloppy.groups()):
            raise ObjectError(path, f"{value!r} is not an IP address") from None
        # "010.096.000.001": the API stored such addresses before its strict validation, and kube-proxy's
        # ParseIPSloppy reads each part as decimal. Refusing it would make one old Service stop all reaping.
        return ipaddress.IPv4Address(".".join(str(int(part)) for part in sloppy.groups()))
    # Go's ParseIP reads "::ffff:10.1.2.3" as the IPv4 address, and so does kube-proxy: the kernel's real
    # server is 10.1.2.3, and an endpoint read as IPv6 would never match it (and look gone).
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else address


def _port(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65535:
        raise ObjectError(path, f"expected a port number 1-65535, got {value!r}")
    return value


def _protocol(obj: Mapping[str, Any], path: str) -> Protocol:
    name = _get(obj, "protocol", path, str, "TCP")
    if name not in _PROTOCOLS:
        raise ObjectError(f"{path}.protocol" if path else "protocol", f"unknown protocol {name!r}")
    return _PROTOCOLS[name]


def _metadata(obj: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    meta = _get(obj, "metadata", "", dict, {})
    name = _get(meta, "name", "metadata", str, "")
    if not name:
        raise ObjectError("metadata.name", "missing")
    # Interned: tens of thousands of objects share a few hundred namespaces, and JSON decoding makes a new
    # string for each occurrence.
    return sys.intern(_get(meta, "namespace", "metadata", str, "")), name, meta


def _ips(texts: list[Any], field: str) -> tuple[IPAddress, ...]:
    # The path of a bad address is built only when there is one (see _parse_endpoint).
    addresses = []
    for i, text in enumerate(texts):
        try:
            addresses.append(_ip(text, ""))
        except ObjectError as error:
            raise ObjectError(f"{field}[{i}]", error.message) from None
    return tuple(addresses)


def _parse_service_port(port: Any) -> ServicePort:
    # Paths relative to the port; parse_service prefixes them.
    if not isinstance(port, dict):
        raise ObjectError("", "expected an object")
    node_port = port.get("nodePort")
    return ServicePort(
        name=_get(port, "name", "", str, ""),
        protocol=_protocol(port, ""),
        port=_port(port.get("port"), "port"),
        node_port=_port(node_port, "nodePort") if node_port else None,
    )


def _load_balancer_ingress(status: Mapping[str, Any]) -> tuple[LoadBalancerIngress, ...]:
    load_balancer = _get(status, "loadBalancer", "status", dict, {})
    found = []
    for i, ingress in enumerate(_get(load_balancer, "ingress", "status.loadBalancer", list, [])):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ingress, dict):
            raise ObjectError(path, "expected an object")
        if ingress.get("ip"):  # an ingress with only a hostname gets no virtual service
            found.append(
                LoadBalancerIngress(
                    _ip(ingress["ip"], f"{path}.ip"), _get(ingress, "ipMode", path, str, None)
                )
            )
    return tuple(found)


def _ip_families(spec: Mapping[str, Any]) -> tuple[int, ...]:
    families = []
    for i, family in enumerate(_get(spec, "ipFamilies", "spec", list, [])):
        if not isinstance(family, str) or family not in _FAMILIES:
            raise ObjectError(f"spec.ipFamilies[{i}]", f"expected IPv4 or IPv6, got {family!r}")
        families.append(_FAMILIES[family])
    return tuple(families)


def _excluding_label(meta: Mapping[str, Any]) -> str | None:
    labels = _get(meta, "labels", "metadata", dict, {})
    for label in EXCLUDING_LABELS:
        if label in labels:
            return f"{label}={labels[label]}"
    return None


def parse_service(obj: Mapping[str, Any]) -> Service:
    namespace, name, meta = _metadata(obj)
    spec = _get(obj, "spec", "", dict, {})
    status = _get(obj, "status", "", dict, {})
    # kube-proxy decides "headless" on the singular clusterIP (ShouldSkipService) and pairs clusterIPs with
    # ipFamilies by position (GetClusterIPByFamily): no entry may be dropped. Without ipFamilies it reads the
    # singular clusterIP alone: that one comes first.
    cluster_ip = _get(spec, "clusterIP", "spec", str, "")
    cluster_ip_texts = _get(spec, "clusterIPs", "spec", list, [])
    ip_families = _ip_families(spec)
    if not ip_families:
        cluster_ip_texts = [cluster_ip, *(text for text in cluster_ip_texts if text != cluster_ip)]
    cluster_ips = () if cluster_ip in ("", "None") else _ips(cluster_ip_texts, "spec.clusterIPs")
    unlisted = (
        _ip(cluster_ip, "spec.clusterIP") if cluster_ips and cluster_ip not in cluster_ip_texts else None
    )
    external_ips = _ips(_get(spec, "externalIPs", "spec", list, []), "spec.externalIPs")
    ports = []
    for i, port in enumerate(_get(spec, "ports", "spec", list, [])):
        try:
            ports.append(_parse_service_port(port))
        except ObjectError as error:
            field = f"spec.ports[{i}].{error.field}" if error.field else f"spec.ports[{i}]"
            raise ObjectError(field, error.message) from None
    annotations = _get(meta, "annotations", "metadata", dict, {})
    annotation = annotations.get(POLICY_ANNOTATION)
    if annotation is not None and not isinstance(annotation, str):
        # The API stores annotations as strings; only a hand-made export can get here.
        raise ObjectError(f"metadata.annotations.{POLICY_ANNOTATION}", "expected a string")
    return Service(
        namespace=namespace,
        name=name,
        cluster_ips=cluster_ips,
        external_ips=external_ips,
        load_balancer_ingress=_load_balancer_ingress(status),
        ports=tuple(ports),
        policy_annotation=annotation,
        # The API defaults the type; only a hand-made object lacks it.
        type=sys.intern(_get(spec, "type", "spec", str, "ClusterIP")),
        ip_families=ip_families,
        excluding_label=_excluding_label(meta),
        has_selector=bool(_get(spec, "selector", "spec", dict, {})),
        unlisted_cluster_ip=unlisted,
    )


def _condition(conditions: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = conditions.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ObjectError(f"{path}.{key}", f"expected true or false, got {value!r}")
    return value


def _parse_endpoint(endpoint: Any) -> Endpoint:
    # Error paths here are relative to the endpoint and built only on failure: a large cluster has
    # hundreds of thousands of endpoints, and formatting a path for each one cost more than parsing it.
    if not isinstance(endpoint, dict):
        raise ObjectError("", "expected an object")
    addresses = _ips(_get(endpoint, "addresses", "", list, []), "addresses")
    conditions = _get(endpoint, "conditions", "", dict, {})
    return Endpoint(
        addresses=addresses,
        ready=_condition(conditions, "ready", "conditions", True),
        # Not `ready`: kube-proxy reads a missing serving as true (endpointslicecache.go), and so keeps more.
        serving=_condition(conditions, "serving", "conditions", True),
        terminating=_condition(conditions, "terminating", "conditions", False),
    )


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice | None:
    """None for slices IPVS never uses (FQDN) or that belong to no Service."""
    namespace, name, meta = _metadata(obj)
    address_type = _get(obj, "addressType", "", str, "")
    if address_type == "FQDN":
        return None
    if address_type not in _FAMILIES:
        raise ObjectError("addressType", f"unknown address type {address_type!r}")
    labels = _get(meta, "labels", "metadata", dict, {})
    service_name = labels.get(SERVICE_NAME_LABEL)
    if service_name is not None and not isinstance(service_name, str):
        # Whose endpoints these are cannot be told: unreadable (its namespace's real servers are kept),
        # never ignored (its Service's endpoints would all look gone).
        raise ObjectError(f"metadata.labels.{SERVICE_NAME_LABEL}", "expected a string")
    if not service_name:
        return None
    ports = []
    for i, port in enumerate(_get(obj, "ports", "", list, [])):
        path = f"ports[{i}]"
        if not isinstance(port, dict):
            raise ObjectError(path, "expected an object")
        if port.get("port") is None:
            continue  # "all ports": kube-proxy builds no real server from it either
        ports.append(
            SlicePort(
                name=_get(port, "name", path, str, ""),
                protocol=_protocol(port, path),
                port=_port(port["port"], f"{path}.port"),
            )
        )
    endpoints = []
    for i, endpoint in enumerate(_get(obj, "endpoints", "", list, [])):
        try:
            endpoints.append(_parse_endpoint(endpoint))
        except ObjectError as error:
            field = f"endpoints[{i}].{error.field}" if error.field else f"endpoints[{i}]"
            raise ObjectError(field, error.message) from None
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=sys.intern(service_name),
        family=_FAMILIES[address_type],
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def parse_node(obj: Mapping[str, Any]) -> Node:
    _, name, _ = _metadata(obj)
    status = _get(obj, "status", "", dict, {})
    addresses = []
    for i, entry in enumerate(_get(status, "addresses", "status", list, [])):
        path = f"status.addresses[{i}]"
        if not isinstance(entry, dict):
            raise ObjectError(path, "expected an object")
        # These stand in for the node's interface addresses only while those are unknown. An InternalIP is one
        # of them; an ExternalIP is often a cloud's NAT address that no interface has, where kube-proxy builds
        # nothing.
        if entry.get("type") == "InternalIP":
            addresses.append(_ip(entry.get("address"), f"{path}.address"))
    return Node(name=name, addresses=tuple(addresses))


def _host_port(entry: Any, path: str) -> HostPort | None:
    if not isinstance(entry, dict):
        raise ObjectError(path, "expected an object")
    if not entry.get("hostPort"):
        return None
    host_ip = _get(entry, "hostIP", path, str, "")
    return HostPort(
        protocol=_protocol(entry, path),
        host_port=_port(entry["hostPort"], f"{path}.hostPort"),
        container_port=_port(entry.get("containerPort"), f"{path}.containerPort"),
        host_ip=_ip(host_ip, f"{path}.hostIP") if host_ip not in ("", "0.0.0.0", "::") else None,
    )


def parse_pod(obj: Mapping[str, Any]) -> Pod | None:
    """None for a pod without hostPorts: the doctor needs no other."""
    namespace, name, _ = _metadata(obj)
    spec = _get(obj, "spec", "", dict, {})
    status = _get(obj, "status", "", dict, {})
    host_ports = []
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(_get(spec, kind, "spec", list, [])):
            if not isinstance(container, dict):
                raise ObjectError(f"spec.{kind}[{i}]", "expected an object")
            for j, entry in enumerate(_get(container, "ports", f"spec.{kind}[{i}]", list, [])):
                found = _host_port(entry, f"spec.{kind}[{i}].ports[{j}]")
                if found is not None:
                    host_ports.append(found)
    if not host_ports:
        return None
    pod_ips = [
        entry.get("ip") if isinstance(entry, dict) else entry
        for entry in _get(status, "podIPs", "status", list, [])
    ]
    if not pod_ips and _get(status, "podIP", "status", str, ""):
        pod_ips = [status["podIP"]]
    return Pod(
        namespace=namespace,
        name=name,
        node_name=_get(spec, "nodeName", "spec", str, ""),
        pod_ips=_ips(pod_ips, "status.podIPs"),
        host_ports=tuple(host_ports),
    )


_KIND_PARSERS = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Node": parse_node,
    "Pod": parse_pod,
}


def broken_scope(kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> str | None:
    """What an object that cannot be read makes untouchable: its Service's real servers (a Service ref), its
    namespace's ("namespace/*") when not even its Service can be told, or everything (None) for a Service,
    which could claim any address."""
    if kind == "Service":
        return None
    if kind == "Node":
        # Without the Node its NodePort virtual services map to nothing, and unmapped ones are kept anyway.
        return f"node/{name}"
    if kind == "Pod":
        return f"pod/{namespace}/{name}"  # only a port's owner goes unnamed
    meta = body.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return f"{namespace}/{service}" if isinstance(service, str) and service else f"{namespace}/*"


def _describe(index: int, item: Mapping[str, Any]) -> str:
    meta = item.get("metadata")
    parts = (meta.get("namespace"), meta.get("name")) if isinstance(meta, dict) else ()
    name = "/".join(str(part) for part in parts if part)
    return f"items[{index}] ({item.get('kind', '?')} {name or '?'})"


def _namespace(item: Mapping[str, Any]) -> str:
    meta = item.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return namespace if isinstance(namespace, str) else ""


def cluster_state_from_items(items: list[Any]) -> ClusterState:
    """Build a ClusterState from a kubectl-style list of items (a file, or the API's listings joined).

    An item that cannot be read costs only what it could decide: a bad EndpointSlice keeps its Service's
    real servers, a bad Service (or an item that is not an object at all) makes the whole view unusable.
    """
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    nodes: list[Node] = []
    pods: list[Pod] = []
    seen: set[str] = set()
    problems: list[str] = []
    broken: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"items[{index}] is not an object: it could be anything")
            continue
        kind = item.get("kind")
        parser = _KIND_PARSERS.get(kind) if isinstance(kind, str) else None
        if parser is None:
            if kind == "Endpoints":
                seen.add("Endpoints")
            continue
        seen.add(str(kind))
        try:
            parsed = parser(item)
        except ObjectError as error:
            meta = item.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            scope = broken_scope(str(kind), _namespace(item), str(name), item)
            message = f"{_describe(index, item)} cannot be read ({error})"
            if scope is None:
                problems.append(f"{message}: it could claim any address")
            else:
                broken[scope] = message
            continue
        if isinstance(parsed, Service):
            services.append(parsed)
        elif isinstance(parsed, EndpointSlice):
            slices.append(parsed)
        elif isinstance(parsed, Node):
            nodes.append(parsed)
        elif isinstance(parsed, Pod):
            pods.append(parsed)
    # Every real cluster has the `kubernetes` Service and its EndpointSlice; a view without either kind is
    # a partial export or listing, and acting on it would make every endpoint look gone.
    for missing in ("Service", "EndpointSlice"):
        if missing not in seen:
            hint = (
                ": it has legacy Endpoints instead; export `endpointslices` "
                "(kubectl get services,endpointslices,nodes -A -o json)"
                if missing == "EndpointSlice" and "Endpoints" in seen
                else " (incomplete export?)"
            )
            problems.append(f"the cluster state has no {missing} objects{hint}")
    return ClusterState(
        services=tuple(services),
        slices=tuple(slices),
        nodes=tuple(nodes),
        problems=tuple(problems),
        broken=broken,
        pods=tuple(pods) if "Pod" in seen else None,
    )
