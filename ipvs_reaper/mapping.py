"""Maps IPVS virtual services to Service ports, and real servers to the state of their endpoint.

Built the way kube-proxy builds its table, in reverse: a Service port becomes a virtual service on each
ClusterIP, on each of this node's addresses at its NodePort, on each externalIP and on each load-balancer
ingress IP; its real servers are the endpoints of the Service's slices at the slice port with the same
name and protocol.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ipvs_reaper.cluster.model import ClusterState, Endpoint, EndpointSlice, Service, ServicePort
from ipvs_reaper.values import IPAddress, Protocol, VirtualKey


class EndpointState(enum.StrEnum):
    READY = "ready"
    TERMINATING = "terminating"
    NOT_READY = "not-ready"
    GONE = "gone"
    UNMAPPED = "unmapped"
    # The view cannot tell: it is unusable (incomplete, stale) or the part that would tell is unreadable.
    UNKNOWN = "unknown"


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


def service_virtual_keys(
    service: Service, node_addresses: Iterable[IPAddress]
) -> Iterator[tuple[VirtualKey, ServicePort]]:
    """Every virtual service kube-proxy builds for `service` on a node with these addresses."""
    node_addresses = tuple(node_addresses)
    for port in service.ports:
        for address in (*service.cluster_ips, *service.external_ips, *service.load_balancer_ips):
            yield VirtualKey.inet(port.protocol, address, port.port), port
        if port.node_port is not None:
            for address in node_addresses:
                yield VirtualKey.inet(port.protocol, address, port.node_port), port


class ClusterIndex:
    def __init__(self, state: ClusterState, node_name: str) -> None:
        self._targets: dict[VirtualKey, Target] = {}
        self.ambiguous: dict[VirtualKey, tuple[str, ...]] = {}
        claims: dict[VirtualKey, list[Target]] = defaultdict(list)
        node = state.node(node_name)
        node_addresses = node.addresses if node is not None else ()
        for service in state.services:
            for key, port in service_virtual_keys(service, node_addresses):
                claims[key].append(Target(service, port))
        for key, targets in claims.items():
            ports = {(t.service.ref, t.port.name) for t in targets}
            if len(ports) == 1:
                self._targets[key] = targets[0]
                continue
            # Two Services, or two ports of one Service, claiming one address:port is a misconfiguration
            # (the API rejects the second); we cannot tell which endpoints these real servers are, so
            # they are left alone.
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

    def endpoint_status(self, target: Target | None, address: IPAddress, port: int) -> EndpointStatus:
        if target is None:
            return _UNMAPPED
        statuses = self._endpoints_of(target.service.ref)
        return statuses.get((target.port.name, target.port.protocol, address, port), _GONE)
