"""The few fields of Services, EndpointSlices and Nodes the reaper needs, as immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ipvs_reaper.values import IPAddress, IPNetwork, Protocol, split_node_port_addresses


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" for the single unnamed port
    protocol: Protocol
    port: int
    node_port: int | None


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    ip: IPAddress
    ip_mode: str | None  # status.loadBalancer.ingress[].ipMode as written; None when absent


@dataclass(frozen=True, slots=True)
class Service:
    """A Service's fields as written; which ones kube-proxy builds virtual services on is `mapping`'s call."""

    namespace: str
    name: str
    cluster_ips: tuple[IPAddress, ...]  # spec.clusterIPs (or clusterIP); empty for headless and ExternalName
    external_ips: tuple[IPAddress, ...]
    load_balancer_ingress: tuple[LoadBalancerIngress, ...]
    ports: tuple[ServicePort, ...]
    policy_annotation: str | None = None
    type: str = "ClusterIP"
    ip_families: tuple[int, ...] = ()  # spec.ipFamilies (4 or 6), in order; empty when not written
    # A label that keeps it out of kube-proxy's informers (service-proxy-name, headless), as "key=value".
    excluding_label: str | None = None
    # The EndpointSlice controller writes at least one slice for a Service with a selector.
    has_selector: bool = False
    # spec.clusterIP when spec.clusterIPs does not list it (a hand-made object): kube-proxy may not read it,
    # but it is an address the Service names.
    unlisted_cluster_ip: IPAddress | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def addresses(self) -> tuple[IPAddress, ...]:
        """Every address it names; on an IPVS node kube-proxy binds those it proxies to kube-ipvs0."""
        unlisted = () if self.unlisted_cluster_ip is None else (self.unlisted_cluster_ip,)
        return (*self.cluster_ips, *unlisted, *self.external_ips, *(i.ip for i in self.load_balancer_ingress))


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    # Conditions read as kube-proxy reads them (endpointslicecache.go): a missing ready or serving is true,
    # a missing terminating false. Defaulting towards "still wanted" is also the safe side.
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    family: int  # 4 or 6; FQDN slices are dropped while parsing since IPVS never uses them
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...]

    @property
    def service_ref(self) -> str:
        return f"{self.namespace}/{self.service_name}"


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...]  # where kube-proxy puts NodePorts
    # The node's other addresses: no NodePort there by the reading above, but another release's reading (or
    # an address also bound to kube-ipvs0) could put one there, so a Service port there still counts when
    # telling whether a virtual service is claimed by several Service ports.
    left_out: tuple[IPAddress, ...] = ()
    # kube-proxy's --nodeport-addresses: inside them it puts NodePorts on kube-ipvs0's addresses too.
    node_port_networks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class HostPort:
    protocol: Protocol
    host_port: int
    container_port: int
    host_ip: IPAddress | None  # None: every address of the node


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod with hostPorts: only the doctor reads them, to name who owns a port-forwarding rule."""

    namespace: str
    name: str
    node_name: str
    pod_ips: tuple[IPAddress, ...]
    host_ports: tuple[HostPort, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ClusterState:
    services: tuple[Service, ...]
    slices: tuple[EndpointSlice, ...]
    nodes: tuple[Node, ...]
    # Why this view must not be acted on (a kind missing, a listing that failed). Empty: usable.
    problems: tuple[str, ...] = ()
    # Parts of the view that could not be read, by what they make untouchable: a Service ref, or
    # "namespace/*" when not even the Service could be told.
    broken: Mapping[str, str] = field(default_factory=dict)
    # Pods with hostPorts; None when Pods were not part of the view (then owners cannot be named).
    pods: tuple[Pod, ...] | None = None

    @property
    def usable(self) -> bool:
        return not self.problems

    def node(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)

    def with_node_port_addresses(
        self,
        node_name: str,
        local: tuple[IPAddress, ...],
        networks: tuple[IPNetwork, ...] = (),
        local_lists_service_addresses: bool = False,
    ) -> ClusterState:
        """The view with the node's NodePort addresses as kube-proxy takes them: the node's interface
        addresses (the Node object's stand in when they are not known), narrowed to `networks` when
        kube-proxy's are (`--nodeport-addresses`). kube-proxy leaves out kube-ipvs0's addresses; a plain list
        (`hostname -I`) cannot tell those apart, so then every Service address of the view is left out."""
        node = self.node(node_name)
        service_addresses = (
            {a for service in self.services for a in service.addresses()}
            if local_lists_service_addresses
            else set()
        )
        candidates = local or (node.addresses if node is not None else ())
        addresses, left_out = split_node_port_addresses(
            tuple(a for a in candidates if a not in service_addresses), networks
        )
        left_out += tuple(a for a in candidates if a in service_addresses)
        if node is None and not candidates and not networks:
            return self
        return replace(
            self,
            nodes=(
                *(n for n in self.nodes if n.name != node_name),
                Node(node_name, addresses, left_out, networks),
            ),
        )
