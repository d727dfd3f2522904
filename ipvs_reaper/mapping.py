"""The one model of kube-proxy's IPVS table: which virtual services it builds for which Service port on this
node, and the state of each real server's endpoint. `scan`, `reap --once`, the agent's cache and the doctor
all read it from here; docs/kube-proxy-fidelity.md gives each rule with its place in kube-proxy's source.

A Service port stands on several addresses (its fronts): its ClusterIP, its externalIPs, its load-balancer
ingress IPs and, with a NodePort, the node's own addresses. kube-proxy builds a virtual service on a front
only when it proxies the Service at all (not ExternalName, not headless, no excluding label), only in the
families the Service has a ClusterIP of, and only for ingress IPs in VIP mode. A front it does not build may
be another IPVS user's (keepalived, kube-vip, another service proxy): it is kept, with the reason.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ipvs_reaper.cluster.model import ClusterState, Endpoint, EndpointSlice, Service, ServicePort
from ipvs_reaper.values import IPAddress, Protocol, VirtualKey, in_node_port_cidrs


class EndpointState(enum.StrEnum):
    READY = "ready"
    TERMINATING = "terminating"
    NOT_READY = "not-ready"
    GONE = "gone"
    UNMAPPED = "unmapped"
    # The view cannot tell: it is unusable (incomplete, stale) or the part that would tell is unreadable.
    UNKNOWN = "unknown"


class FrontKind(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    EXTERNAL_IP = "externalIP"
    LOAD_BALANCER = "load-balancer ingress IP"
    NODE_PORT = "NodePort"


@dataclass(frozen=True, slots=True)
class Front:
    """One address:port a Service port stands on, and whether kube-proxy builds a virtual service there."""

    key: VirtualKey
    port: ServicePort
    kind: FrontKind
    skipped: str | None = None  # why kube-proxy builds nothing here; None: it builds it


@dataclass(frozen=True, slots=True)
class Target:
    service: Service
    port: ServicePort


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    state: EndpointState
    serving: bool = False


_GONE = EndpointStatus(EndpointState.GONE)
_UNMAPPED = EndpointStatus(EndpointState.UNMAPPED)
UNKNOWN_STATUS = EndpointStatus(EndpointState.UNKNOWN)
FAMILIES = (4, 6)


def _service_skipped(service: Service) -> str | None:
    """Why kube-proxy proxies none of the Service (ShouldSkipService, its informers' label selector)."""
    if service.excluding_label is not None:
        return f"labelled {service.excluding_label}: kube-proxy does not watch it"
    if service.type == "ExternalName":
        return "ExternalName Services are not proxied"
    if not service.cluster_ips:
        return "headless Services (no ClusterIP) are not proxied"
    return None


def cluster_ip_of_family(service: Service, family: int) -> IPAddress | None:
    """kube-proxy's GetClusterIPByFamily: `ipFamilies[i]` names `clusterIPs[i]`; without ipFamilies, the one
    ClusterIP in its own family."""
    if not service.ip_families:
        first = service.cluster_ips[0] if service.cluster_ips else None
        return first if first is not None and first.version == family else None
    for index, named in enumerate(service.ip_families):
        if named == family and index < len(service.cluster_ips):
            address = service.cluster_ips[index]
            # kube-proxy would take the address whatever its family; the API never writes such a pair, and an
            # address in the wrong family's table is nothing kube-proxy could have built.
            return address if address.version == family else None
    return None


def _ingress_skipped(mode: str | None) -> str | None:
    # IsVIPMode: no ipMode is VIP. Before LoadBalancerIPMode was on by default (1.30) kube-proxy built Proxy
    # ingresses too; not claiming them keeps more.
    if mode is None or mode == "VIP":
        return None
    return f"load-balancer ingress with ipMode {mode}: the load balancer proxies, kube-proxy builds nothing"


_LEFT_OUT = (
    "not one of the node's NodePort addresses (loopback, IPv6 link-local, nodePortAddresses, kube-ipvs0)"
)


def service_fronts(
    service: Service, node_addresses: Iterable[IPAddress], left_out: Iterable[IPAddress] = ()
) -> Iterator[Front]:
    """Every address:port of `service` on a node with these NodePort addresses (and these other addresses),
    built by kube-proxy or not."""
    node_addresses, left_out = tuple(node_addresses), tuple(left_out)
    whole = _service_skipped(service)
    written = (
        *service.cluster_ips,
        *(() if service.unlisted_cluster_ip is None else (service.unlisted_cluster_ip,)),
    )
    if whole is not None:
        for port in service.ports:
            for address in written:
                yield Front(
                    VirtualKey.inet(port.protocol, address, port.port), port, FrontKind.CLUSTER_IP, whole
                )
    for family in FAMILIES:
        cluster_ip = cluster_ip_of_family(service, family) if whole is None else None
        no_cluster_ip = f"IPv{family} address of a Service with no IPv{family} ClusterIP"
        skipped = whole or (None if cluster_ip is not None else no_cluster_ip)
        unread = [a for a in written if a.version == family and a != cluster_ip] if whole is None else []
        for port in service.ports:
            if cluster_ip is not None:
                yield Front(VirtualKey.inet(port.protocol, cluster_ip, port.port), port, FrontKind.CLUSTER_IP)
            for address in unread:
                key = VirtualKey.inet(port.protocol, address, port.port)
                yield Front(
                    key,
                    port,
                    FrontKind.CLUSTER_IP,
                    "not the ClusterIP kube-proxy reads (see spec.ipFamilies)",
                )
            for address in service.external_ips:
                if address.version == family:
                    key = VirtualKey.inet(port.protocol, address, port.port)
                    yield Front(key, port, FrontKind.EXTERNAL_IP, skipped)
            for ingress in service.load_balancer_ingress:
                if ingress.ip.version == family:
                    key = VirtualKey.inet(port.protocol, ingress.ip, port.port)
                    yield Front(
                        key, port, FrontKind.LOAD_BALANCER, skipped or _ingress_skipped(ingress.ip_mode)
                    )
            if port.node_port is not None:
                for address in node_addresses:
                    if address.version == family:
                        key = VirtualKey.inet(port.protocol, address, port.node_port)
                        yield Front(key, port, FrontKind.NODE_PORT, skipped)
                for address in left_out:
                    if address.version == family:
                        key = VirtualKey.inet(port.protocol, address, port.node_port)
                        yield Front(key, port, FrontKind.NODE_PORT, skipped or _LEFT_OUT)


def services_without_slices(state: ClusterState) -> tuple[str, ...]:
    """Services with a selector and no EndpointSlice in the view: whose endpoints the view does not know."""
    with_slices = {endpoint_slice.service_ref for endpoint_slice in state.slices}
    with_slices |= set(state.broken)  # a slice that cannot be read is still a slice
    return tuple(s.ref for s in state.services if s.has_selector and s.ref not in with_slices)


def _status_of(endpoint: Endpoint) -> EndpointStatus:
    if endpoint.ready:
        return EndpointStatus(EndpointState.READY, serving=True)
    if endpoint.terminating:
        return EndpointStatus(EndpointState.TERMINATING, serving=endpoint.serving)
    return EndpointStatus(EndpointState.NOT_READY, serving=endpoint.serving)


def _wanted_more(status: EndpointStatus) -> tuple[bool, bool, bool]:
    # When one address shows up in several slices (a slice being rewritten), the most "wanted" reading wins.
    return (status.state is EndpointState.READY, status.serving, status.state is EndpointState.NOT_READY)


# (slice port name, protocol, address, port), within one Service
_EndpointKey = tuple[str, Protocol, IPAddress, int]


class ClusterIndex:
    def __init__(self, state: ClusterState, node_name: str) -> None:
        self._targets: dict[VirtualKey, Target] = {}
        self.ambiguous: dict[VirtualKey, tuple[str, ...]] = {}
        # Virtual services on a Service's address that kube-proxy does not build, and why.
        self.not_built: dict[VirtualKey, str] = {}
        self.fronts: list[tuple[Service, Front]] = []
        claims: dict[VirtualKey, list[Target]] = defaultdict(list)
        named: dict[VirtualKey, set[tuple[str, str]]] = defaultdict(set)
        node = state.node(node_name)
        node_addresses, left_out = (node.addresses, node.left_out) if node is not None else ((), ())
        networks = node.node_port_networks if node is not None else ()
        # With nodePortAddresses, kube-proxy puts NodePorts on kube-ipvs0's addresses inside them too (a
        # ClusterIP, say). Not claimed, but such a NodePort makes the address:port ambiguous. Looked up per
        # key, not made into fronts: every ClusterIP times every NodePort would be too many.
        bound = (
            {a for s in state.services for a in s.addresses() if in_node_port_cidrs(a, networks)}
            if networks
            else set()
        )
        node_port_users: dict[tuple[Protocol, int], set[tuple[str, str]]] = defaultdict(set)
        for service in state.services:
            for port in service.ports:
                if bound and port.node_port is not None:
                    node_port_users[(port.protocol, port.node_port)].add((service.ref, port.name))
            for front in service_fronts(service, node_addresses, left_out):
                self.fronts.append((service, front))
                named[front.key].add((service.ref, front.port.name))
                if front.skipped is None:
                    claims[front.key].append(Target(service, front.port))
                else:
                    self.not_built.setdefault(front.key, f"{service.ref}'s {front.kind}, but {front.skipped}")
        for key, targets in claims.items():
            # Every Service port on the address:port counts, built or not: one not built here may be built by
            # another release of kube-proxy or another proxy, and then its endpoints are real servers too.
            ports = named[key]
            if key.address in bound:
                ports = ports | node_port_users.get((key.protocol, key.port), set())
            if len(ports) == 1:
                self._targets[key] = targets[0]
                continue
            # Two Services, or two ports of one Service, on one address:port is a misconfiguration (the API
            # rejects most such pairs); we cannot tell whose endpoints these real servers are, so they are
            # left alone.
            services = sorted({ref for ref, _ in ports})
            if len(services) > 1:
                self.ambiguous[key] = tuple(services)
            else:
                self.ambiguous[key] = tuple(
                    f"{ref} port {name or '(unnamed)'}" for ref, name in sorted(ports)
                )

        # Endpoints are indexed per Service on first use: a sweep looks only at the Services of weight-0
        # real servers, a small share of a large cluster's 10^5 endpoints.
        self._slices: dict[str, list[EndpointSlice]] = defaultdict(list)
        for endpoint_slice in state.slices:
            self._slices[endpoint_slice.service_ref].append(endpoint_slice)
        self._endpoints: dict[str, dict[_EndpointKey, EndpointStatus]] = {}

    def _endpoints_of(self, service_ref: str) -> dict[_EndpointKey, EndpointStatus]:
        known = self._endpoints.get(service_ref)
        if known is not None:
            return known
        statuses: dict[_EndpointKey, EndpointStatus] = {}
        # Every slice and every address counts, where kube-proxy reads only the first address and skips slices
        # with an excluding label: an endpoint the API calls ready or serving is never taken for gone.
        for endpoint_slice in self._slices.get(service_ref, ()):
            for slice_port in endpoint_slice.ports:
                for endpoint in endpoint_slice.endpoints:
                    status = _status_of(endpoint)
                    for address in endpoint.addresses:
                        key = (slice_port.name, slice_port.protocol, address, slice_port.port)
                        seen = statuses.get(key)
                        if seen is None or _wanted_more(status) > _wanted_more(seen):
                            statuses[key] = status
        self._endpoints[service_ref] = statuses
        return statuses

    def target(self, virtual: VirtualKey) -> Target | None:
        return self._targets.get(virtual)

    def has_no_slices(self, target: Target) -> bool:
        """A Service with a selector always has a slice (the controller writes a placeholder): none in the
        view means the view lacks them (a one-namespace export, or just after the Service was created)."""
        return target.service.has_selector and not self._slices.get(target.service.ref)

    def endpoint_status(self, target: Target | None, address: IPAddress, port: int) -> EndpointStatus:
        if target is None:
            return _UNMAPPED
        if self.has_no_slices(target):
            return UNKNOWN_STATUS
        statuses = self._endpoints_of(target.service.ref)
        return statuses.get((target.port.name, target.port.protocol, address, port), _GONE)
