"""The few fields of Services, EndpointSlices and Nodes the reaper needs, as immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ipvs_reaper.values import IPAddress, IPNetwork, Protocol, within


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" for the single unnamed port
    protocol: Protocol
    port: int
    node_port: int | None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    cluster_ips: tuple[IPAddress, ...]  # empty for headless and ExternalName Services
    external_ips: tuple[IPAddress, ...]
    load_balancer_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    policy_annotation: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    # Conditions with the API's documented reading of a missing value: ready and serving default to
    # true, terminating to false. Defaulting towards "still wanted" is also the safe side.
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
    addresses: tuple[IPAddress, ...]


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
        self, node_name: str, local: tuple[IPAddress, ...], networks: tuple[IPNetwork, ...] = ()
    ) -> ClusterState:
        """The view with the node's NodePort addresses as kube-proxy takes them: the node's own interface
        addresses as well as the Node object's, narrowed to `networks` when kube-proxy is
        (`--nodeport-addresses`)."""
        if not local and not networks:
            return self
        node = self.node(node_name)
        known = node.addresses if node is not None else ()
        addresses = within((*known, *(a for a in local if a not in known)), networks)
        if node is None and not addresses:
            return self
        return replace(
            self, nodes=(*(n for n in self.nodes if n.name != node_name), Node(node_name, addresses))
        )
