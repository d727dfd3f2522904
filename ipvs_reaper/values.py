"""Immutable values shared by every stage: what the IPVS table holds, keyed the way the kernel keys it."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def within(addresses: tuple[IPAddress, ...], networks: tuple[IPNetwork, ...]) -> tuple[IPAddress, ...]:
    """The addresses in any of the networks; all of them when there are no networks (no narrowing)."""
    if not networks:
        return addresses
    return tuple(a for a in addresses if any(a.version == n.version and a in n for n in networks))


def usable_for_node_ports(address: IPAddress) -> bool:
    """kube-proxy builds no NodePort on loopback or IPv6 link-local (netlink_linux.go isValidForSet)."""
    return not address.is_loopback and not (address.version == 6 and address.is_link_local)


def _in_node_port_networks(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    # NewNodePortAddresses: per family, no CIDR of the family or a /0 among them means every address.
    own = [n for n in networks if n.version == address.version]
    return not own or any(n.prefixlen == 0 or address in n for n in own)


def in_node_port_cidrs(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Inside one of the CIDRs of its family, when they are not match-all: kube-proxy's GetNodeIPs path, which
    walks every interface, kube-ipvs0 included."""
    own = [n for n in networks if n.version == address.version]
    return bool(own) and all(n.prefixlen > 0 for n in own) and any(address in n for n in own)


def split_node_port_addresses(
    candidates: tuple[IPAddress, ...], networks: tuple[IPNetwork, ...]
) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]:
    """The node's addresses where kube-proxy puts NodePorts (narrowed by its --nodeport-addresses), and the
    rest of them."""
    used = tuple(a for a in candidates if usable_for_node_ports(a) and _in_node_port_networks(a, networks))
    return used, tuple(a for a in candidates if a not in used)


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"
    # A firewall-mark virtual service has no protocol of its own; kube-proxy never creates one.
    FWM = "FWM"


IPPROTO_NUMBERS: dict[Protocol, int] = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}
PROTOCOLS_BY_NUMBER: dict[int, Protocol] = {number: proto for proto, number in IPPROTO_NUMBERS.items()}


def format_endpoint(address: IPAddress, port: int) -> str:
    """`10.0.0.1:80` or `[fd00::1]:80`, with IPv6 in compressed form."""
    if address.version == 6:
        return f"[{address.compressed}]:{port}"
    return f"{address}:{port}"


# Keys have no dataclass ordering: IPv4 and IPv6 addresses do not compare with each other, so a plain
# sort of mixed keys raises TypeError. `sort_key` gives a total order instead.
@dataclass(frozen=True, slots=True)
class VirtualKey:
    """Identifies a virtual service exactly as the kernel does: (protocol, address, port) or a fwmark."""

    protocol: Protocol
    family: int  # 4 or 6
    address: IPAddress | None  # None for fwmark services
    port: int
    fwmark: int = 0

    @classmethod
    def inet(cls, protocol: Protocol, address: IPAddress, port: int) -> VirtualKey:
        return cls(protocol=protocol, family=address.version, address=address, port=port)

    @classmethod
    def firewall_mark(cls, fwmark: int, family: int = 4) -> VirtualKey:
        return cls(protocol=Protocol.FWM, family=family, address=None, port=0, fwmark=fwmark)

    def sort_key(self) -> tuple[str, int, bytes, int, int]:
        packed = self.address.packed if self.address is not None else b""
        return (self.protocol.value, self.family, packed, self.port, self.fwmark)

    def __str__(self) -> str:
        if self.address is None:
            return f"fwmark:{self.fwmark}"
        return format_endpoint(self.address, self.port)


@dataclass(frozen=True, slots=True)
class VirtualService:
    key: VirtualKey
    scheduler: str
    # Only the flag: /proc/net/ip_vs reports the timeout in jiffies and netlink in seconds, and the
    # kernel's HZ cannot be read from user space, so a timeout value could not be compared across sources.
    persistent: bool = False


@dataclass(frozen=True, slots=True)
class RealKey:
    virtual: VirtualKey
    address: IPAddress
    port: int

    def sort_key(self) -> tuple[tuple[str, int, bytes, int, int], int, bytes, int]:
        return (self.virtual.sort_key(), self.address.version, self.address.packed, self.port)

    def __str__(self) -> str:
        return f"{self.virtual.protocol} {self.virtual} -> {format_endpoint(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class RealServer:
    key: RealKey
    forward: str  # Masq, Route, Tunnel, Local
    weight: int
    active_conns: int
    inactive_conns: int


@dataclass(frozen=True, slots=True)
class IpvsTable:
    """One snapshot of a node's IPVS table."""

    services: tuple[VirtualService, ...]
    real_servers: tuple[RealServer, ...]

    def real_servers_of(self, key: VirtualKey) -> tuple[RealServer, ...]:
        return tuple(rs for rs in self.real_servers if rs.key.virtual == key)
