"""A node's NAT rules as values, whichever tool they were read from: tables, chains, rules, matches, targets.

Only what decides where a packet to a local address:port goes is understood (protocol, destination port and
address, address type, kube-proxy's IP sets, the interfaces a hook has or has not); every other match is kept
as text and judged "may match", and a rule the reader cannot read at all "may do anything", so what is not
understood can widen a finding but never hide one."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ipvs_reaper.values import IPAddress, IPNetwork, format_endpoint


class Truth(enum.Enum):
    FALSE = 0
    MAYBE = 1
    TRUE = 2

    def negated(self, negate: bool) -> Truth:
        if not negate or self is Truth.MAYBE:
            return self
        return Truth.FALSE if self is Truth.TRUE else Truth.TRUE


def truth(value: bool) -> Truth:
    return Truth.TRUE if value else Truth.FALSE


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a connection to a local address, as the nat table's hooks see it."""

    family: int  # 4 or 6
    protocol: str  # tcp | udp | sctp
    port: int
    address: IPAddress | None  # None: some local address, not a particular one
    # Membership in kube-proxy's IP sets as far as it can be told (KUBE-CLUSTER-IP: ClusterIP,proto:port).
    sets: Mapping[str, Truth] = field(default_factory=dict)
    hook: str | None = None  # set by the walk: the hook whose chain is being judged
    # nf_tables compares a missing interface's name as "" since Linux 5.3 (before, the rule never matched,
    # negated or not: NFT_BREAK); iptables-legacy always compared "".
    nft_empty_interface: bool = False


@dataclass(frozen=True, slots=True)
class ProtocolMatch:
    protocols: frozenset[str]
    negate: bool
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        return truth(packet.protocol in self.protocols).negated(self.negate)


@dataclass(frozen=True, slots=True)
class PortMatch:
    """A destination port in one of the ranges (inclusive)."""

    ranges: tuple[tuple[int, int], ...]
    negate: bool
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        inside = any(low <= packet.port <= high for low, high in self.ranges)
        return truth(inside).negated(self.negate)

    def ports(self) -> tuple[int, ...]:
        return tuple(p for low, high in self.ranges for p in range(low, min(high, low + 64) + 1))


@dataclass(frozen=True, slots=True)
class DestinationMatch:
    networks: tuple[IPNetwork, ...]
    negate: bool
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        if self.networks and all(n.version != packet.family for n in self.networks):
            # `ip daddr != X` never matches an IPv6 packet: nft adds the family as a dependency, and
            # iptables' and ip6tables' rules never see the other family at all.
            return Truth.FALSE
        if packet.address is None:
            return Truth.MAYBE
        inside = any(n.version == packet.address.version and packet.address in n for n in self.networks)
        return truth(inside).negated(self.negate)


@dataclass(frozen=True, slots=True)
class FamilyMatch:
    """`dnat ip to` in an `inet` table (the nat expression acts on its own family only), `meta nfproto`."""

    family: int
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        return truth(packet.family == self.family)


# A packet at these hooks has no such interface: the kernel compares the name with "" (xt's -i/-o always,
# nft's iifname/oifname since 5.3), so `-i docker0` cannot match a locally generated packet and
# `! -i docker0` always does.
_NO_INTERFACE = {"in": frozenset({"output"}), "out": frozenset({"prerouting"})}


@dataclass(frozen=True, slots=True)
class InterfaceMatch:
    direction: str  # in | out
    names: tuple[str, ...]  # as written; iptables' `+` and nft's `*` end a prefix
    negate: bool
    text: str
    nft: bool = True  # judged by nf_tables (nftables, iptables-nft, or a backend nothing names)

    def evaluate(self, packet: Packet) -> Truth:
        if packet.hook not in _NO_INTERFACE[self.direction]:
            return Truth.MAYBE
        # An empty prefix (`-i +`, `iifname "*"`) matches every name, the empty one included.
        empty = any(name in ("+", "*") for name in self.names)
        compared = truth(empty).negated(self.negate)
        if self.nft and not packet.nft_empty_interface:
            # Before 5.3 nf_tables ends the rule here (NFT_BREAK): no match, negated or not. Which kernel
            # this is not known, only what fails on both is sure.
            return Truth.FALSE if compared is Truth.FALSE else Truth.MAYBE
        return compared


@dataclass(frozen=True, slots=True)
class LocalDestinationMatch:
    """`-m addrtype --dst-type T` or `fib daddr type T`: every packet judged here goes to a local address."""

    types: frozenset[str]
    negate: bool
    text: str
    per_interface: bool = False  # --limit-iface-in, fib daddr . iif: local on the incoming interface only

    def evaluate(self, packet: Packet) -> Truth:
        if self.per_interface:
            return Truth.MAYBE
        return truth("LOCAL" in self.types).negated(self.negate)


@dataclass(frozen=True, slots=True)
class SetMatch:
    name: str
    negate: bool
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        found = packet.sets.get(self.name)
        if found is None:
            # A name ending in "-" speaks for every set named after it (subsets of one set).
            prefixes = (v for k, v in packet.sets.items() if k.endswith("-") and self.name.startswith(k))
            found = next(prefixes, Truth.MAYBE)
        return found.negated(self.negate)


@dataclass(frozen=True, slots=True)
class AnyMatch:
    """One of several alternatives, each a conjunction: `ip daddr . tcp dport { 10.0.0.1 . 80, ... }`."""

    alternatives: tuple[tuple[Match, ...], ...]
    negate: bool
    text: str

    def evaluate(self, packet: Packet) -> Truth:
        best = Truth.FALSE
        for alternative in self.alternatives:
            results = [m.evaluate(packet) for m in alternative]
            if Truth.FALSE in results:
                continue
            if all(r is Truth.TRUE for r in results):
                best = Truth.TRUE
                break
            best = Truth.MAYBE
        return best.negated(self.negate)


@dataclass(frozen=True, slots=True)
class OtherMatch:
    """Anything else (source, interface, mark, conntrack state...): it may or may not match."""

    text: str

    def evaluate(self, packet: Packet) -> Truth:
        return Truth.MAYBE


Match = (
    ProtocolMatch
    | PortMatch
    | DestinationMatch
    | FamilyMatch
    | InterfaceMatch
    | LocalDestinationMatch
    | SetMatch
    | AnyMatch
    | OtherMatch
)


class Action(enum.StrEnum):
    JUMP = "jump"
    GOTO = "goto"
    RETURN = "return"
    ACCEPT = "accept"
    DROP = "drop"
    DNAT = "dnat"
    REDIRECT = "redirect"
    CONTINUE = "continue"  # MARK, LOG, counter, masquerade...: the packet goes on to the next rule
    # A rule the reader could not read (or a target it does not know): it may rewrite the destination, end
    # the traversal, return, or do nothing. Whatever it touches is possible, never certain.
    UNKNOWN = "unknown"


TERMINAL = frozenset({Action.ACCEPT, Action.DROP, Action.DNAT, Action.REDIRECT})


@dataclass(frozen=True, slots=True)
class Target:
    action: Action
    chain: str = ""  # JUMP, GOTO
    address: IPAddress | None = None  # DNAT
    port: int | None = None  # DNAT (None: unchanged), REDIRECT
    why: str = ""  # UNKNOWN: what could not be read
    stateless: bool = False  # UNKNOWN: a payload rewrite of the destination (nft's `tcp dport set 8080`)

    def destination(self) -> str:
        if self.action is Action.UNKNOWN:
            return f"unknown (a rule the doctor cannot read: {self.why})"
        if self.action is Action.REDIRECT:
            return f"this node, port {self.port}" if self.port else "this node, same port"
        if self.address is None:
            # A port alone: the packet keeps its own address.
            return f"the same address, port {self.port}" if self.port else "?"
        return format_endpoint(self.address, self.port) if self.port else str(self.address)


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    target: Target
    text: str  # as the tool printed it (iptables-save's line, or nft's rule in its own syntax)
    comment: str = ""
    line: int | None = None  # in the file it was read from


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None  # prerouting, output, ... for a base chain
    nat: bool = False  # a base chain of type nat (every chain of iptables' nat table is)
    # Base chains at one hook run in this order (lowest first); iptables' nat table sits at -100
    # (NF_IP_PRI_NAT_DST), as nft's `dstnat` does.
    priority: int = -100
    policy: str = "accept"  # what a packet that runs off a base chain gets


@dataclass(frozen=True, slots=True)
class Table:
    backend: str  # iptables-legacy | iptables-nft | nftables
    family: str  # ip | ip6 | inet
    name: str
    chains: Mapping[str, Chain]
    source: str  # the file or command it came from
    # iptables-nft's table as `nft -j` lists it: its xt matches and targets show no details.
    opaque: bool = False
    # A save dump without its header and with nothing in it to tell the family: read as both, never certain.
    family_guessed: bool = False
    # Some rule rewrites a destination statelessly (`tcp dport set`): its non-nat base chains are walked too.
    stateless: bool = False

    def families(self) -> tuple[int, ...]:
        return {"ip": (4,), "ip6": (6,), "inet": (4, 6)}.get(self.family, ())

    @property
    def label(self) -> str:
        return f"{self.backend} {self.family} {self.name}"


def jump_loop(chains: Mapping[str, Chain]) -> tuple[str, ...] | None:
    """A chain that jumps back to itself (directly or through others), as a path; None when there is none.
    The kernel refuses such rules, so a dump with one is not a real node's."""
    done: set[str] = set()
    for start in chains:
        if start in done:
            continue
        # Iterative depth-first search: a deep chain of jumps must not exhaust Python's recursion.
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(_callees(chains[start]))]
        while stack:
            callee = next(stack[-1], None)
            if callee is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if callee in on_path:
                return (*path[path.index(callee) :], callee)
            if callee in done or callee not in chains:
                continue
            path.append(callee)
            on_path.add(callee)
            stack.append(iter(_callees(chains[callee])))
    return None


def _callees(chain: Chain) -> list[str]:
    return [r.target.chain for r in chain.rules if r.target.action in (Action.JUMP, Action.GOTO)]


def network(text: str) -> IPNetwork:
    """`10.0.0.1`, `10.0.0.0/8`, `fd00::/64` (raises ValueError)."""
    return ipaddress.ip_network(text, strict=False)
