"""Port-forwarding rules (a pod's hostPort, through the CNI portmap plugin) that take traffic away from IPVS.

In IPVS mode every ClusterIP, externalIP and load-balancer IP is bound to `kube-ipvs0`, so all of them are
LOCAL addresses: a hostPort rule limited to `--dst-type LOCAL` captures every Service's address at that
port, before IPVS sees the packet. Each virtual service of the table is sent through the node's nat rules as a
packet would be; a DNAT or REDIRECT on its way is a hijack."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.doctor.findings import Evidence, Finding, Kind, Severity
from ipvs_reaper.mapping import ClusterIndex, FrontKind
from ipvs_reaper.netfilter.ipsets import IpSet
from ipvs_reaper.netfilter.rules import Action, Packet, PortMatch, ProtocolMatch, Table, Truth, truth
from ipvs_reaper.netfilter.walk import NAT_HOOKS, ChainWalk, Outcome, walk, walk_chains
from ipvs_reaper.values import IPAddress, IpvsTable, Protocol, VirtualKey, format_endpoint

WELL_KNOWN_BELOW = 1024
_HOOK_TRAFFIC = {
    "prerouting": "from pods on this node and from other hosts (PREROUTING)",
    "output": "from processes in the node's own network namespace, hostNetwork pods included (OUTPUT)",
}
# kube-proxy's IP sets (IPVS mode, pkg/proxy/ipvs/ipset.go and proxier.go) whose members the cluster state
# tells, as named for IPv4; IPv6's are named KUBE-6-... (kube-proxy's newIPSet).
CLUSTER_IP_SET = "KUBE-CLUSTER-IP"  # every ClusterIP,proto:port
EXTERNAL_IP_SET = "KUBE-EXTERNAL-IP"  # externalIPs of Services with externalTrafficPolicy Cluster...
EXTERNAL_IP_LOCAL_SET = "KUBE-EXTERNAL-IP-LOCAL"  # ...and Local: which one, the view does not keep
LOAD_BALANCER_SET = "KUBE-LOAD-BALANCER"  # every load-balancer ingress IP,proto:port
# Sets that hold some of KUBE-LOAD-BALANCER's members (-LOCAL, -FW, -SOURCE-IP, -SOURCE-CIDR): outside it, a
# packet is outside them; inside, the view cannot tell.
_LOAD_BALANCER_SUBSETS = "KUBE-LOAD-BALANCER-"


def _family_name(name: str, family: int) -> str:
    return name if family == 4 else "KUBE-6-" + name.removeprefix("KUBE-")


class Names:
    """What the cluster state tells about addresses: whose Service a virtual service is, whose pod a rule's
    destination is. Without a cluster state every answer is None and `unavailable` says why."""

    def __init__(self, cluster: ClusterState | None, node: str, unavailable: str | None = None) -> None:
        self.cluster, self.node, self.unavailable = cluster, node, unavailable
        self._index = ClusterIndex(cluster, node) if cluster is not None else None
        # kube-proxy's members of each kind of front: the mapping's own model of what it builds.
        self._members: dict[FrontKind, set[tuple[IPAddress, Protocol, int]]] = {}
        # Every address, protocol and port the view knows a Service front for, built by kube-proxy or not.
        self._known: set[tuple[IPAddress, Protocol, int]] = set()
        if self._index is not None and cluster is not None and cluster.usable:
            self._known = {
                (front.key.address, front.key.protocol, front.key.port)
                for _, front in self._index.fronts
                if front.key.address is not None
            }
            for _, front in self._index.fronts:
                if front.skipped is None and front.key.address is not None:
                    member = (front.key.address, front.key.protocol, front.key.port)
                    self._members.setdefault(front.kind, set()).add(member)

    def service(self, key: VirtualKey) -> str | None:
        target = self._index.target(key) if self._index is not None else None
        return target.service.ref if target is not None else None

    def owner(self, outcome: Outcome) -> str | None:
        target = outcome.rule.target
        if self.cluster is None or self.cluster.pods is None or target.address is None:
            return None
        for pod in self.cluster.pods:
            if pod.node_name in ("", self.node) and target.address in pod.pod_ips:
                return pod.ref
        return None

    def owners_known(self) -> bool:
        return self.cluster is not None and self.cluster.pods is not None

    def set_membership(self, key: VirtualKey) -> dict[str, Truth]:
        """kube-proxy puts every ClusterIP, externalIP and load-balancer IP with its protocol and port in its
        sets. A virtual service the view knows no Service front for (a Service made after the export, or not
        yet in the agent's cache) is unknown, not outside: in the sets or not, the view cannot tell; and
        without a usable cluster state nothing is known."""
        if key.address is None or self._index is None:
            return {}
        member = (key.address, key.protocol, key.port)
        if member not in self._known:
            return {}

        def inside(kind: FrontKind) -> bool:
            return member in self._members.get(kind, set())

        external = Truth.MAYBE if inside(FrontKind.EXTERNAL_IP) else Truth.FALSE
        balanced = inside(FrontKind.LOAD_BALANCER)
        sets = {
            CLUSTER_IP_SET: truth(inside(FrontKind.CLUSTER_IP)),
            EXTERNAL_IP_SET: external,
            EXTERNAL_IP_LOCAL_SET: external,
            LOAD_BALANCER_SET: truth(balanced),
        }
        named = {_family_name(name, key.family): value for name, value in sets.items()}
        if not balanced:
            named[_family_name(_LOAD_BALANCER_SUBSETS, key.family)] = Truth.FALSE
        return named


def _evidence(outcomes: Sequence[Outcome]) -> Evidence:
    first = outcomes[0]
    where = first.table.label + f" ({first.table.source})"
    rule = first.rule.text if first.rule.line is None else f"{first.rule.text}  [line {first.rule.line}]"
    return Evidence(
        rule=rule,
        chain_path=first.chain_path(),
        source=where,
        hooks=tuple(h for h in NAT_HOOKS if any(o.hook == h for o in outcomes)),
        conditions=tuple(dict.fromkeys(c for o in outcomes for c in o.conditions)),
    )


def _group(outcomes: Iterable[Outcome]) -> list[list[Outcome]]:
    """The same rule reached from PREROUTING and from OUTPUT is one finding."""
    groups: dict[tuple[str, str, str, int | None], list[Outcome]] = {}
    for outcome in outcomes:
        key = (outcome.table.label, outcome.table.source, outcome.rule.text, outcome.rule.line)
        groups.setdefault(key, []).append(outcome)
    return list(groups.values())


def _affected(hooks: Iterable[str]) -> str:
    return "; ".join(_HOOK_TRAFFIC.get(h, h) for h in hooks)


def _owner_text(owner: str | None, names: Names) -> str:
    if owner is not None:
        return f"pod {owner}"
    if not names.owners_known():
        return "the pod behind it (owners unavailable: no Pods in the cluster state)"
    return "no pod on this node has that address (a rule left behind by a deleted pod?)"


_RELEASE = re.compile(r"^(\d+)\.(\d+)")


def nft_empty_interface(release: str | None) -> bool:
    """Whether this kernel's nf_tables compares a missing interface's name as "" (Linux 5.3 on): known only
    from an upstream version at least that; a vendor's older number with backports stays unknown."""
    found = _RELEASE.match(release or "")
    return found is not None and (int(found[1]), int(found[2])) >= (5, 3)


def _kernel_sets(ipsets: Mapping[str, IpSet], key: VirtualKey) -> dict[str, Truth]:
    """Membership in the node's own `hash:ip,port` sets of the key's family: the kernel's answer."""
    if key.address is None:
        return {}
    member = (key.address, key.protocol.value.lower(), key.port)
    return {
        s.name: truth(member in s.members)
        for s in ipsets.values()
        if s.kind == "hash:ip,port" and s.family == key.family
    }


def hijacks(
    tables: Sequence[Table],
    table: IpvsTable,
    names: Names,
    kernel_release: str | None = None,
    ipsets: Mapping[str, IpSet] | None = None,
) -> list[Finding]:
    """A finding for each virtual service whose traffic a DNAT or REDIRECT can take before IPVS sees it.
    `ipsets`: the node's IP sets when read; their members decide kube-proxy's set matches (the cluster state
    only says what kube-proxy means to put there, and the sets lag it)."""
    empty_interface = nft_empty_interface(kernel_release)
    findings = []
    backends_of: dict[VirtualKey, set[tuple[IPAddress | None, int | None]]] = {}
    for rs in table.real_servers:
        # One pass: asking the table per virtual service would be quadratic on a large node.
        backends_of.setdefault(rs.key.virtual, set()).add((rs.key.address, rs.key.port))
    for service in table.services:
        key = service.key
        if key.address is None or key.protocol is Protocol.FWM:
            continue
        packet = Packet(
            key.family,
            key.protocol.value.lower(),
            key.port,
            key.address,
            {**names.set_membership(key), **(_kernel_sets(ipsets, key) if ipsets is not None else {})},
            nft_empty_interface=empty_interface,
        )
        backends = backends_of.get(key, set())
        walks = list(walk_chains(tables, packet))
        rewriting = [o for w in walks for o in w.outcomes if _elsewhere(o, backends, key.port)]
        # The title names the first: the rule of the chain the kernel runs first at a hook (lowest priority),
        # a certain one before a possible one.
        rewriting.sort(key=lambda o: (o.table.chains[o.path[0].chain].priority, not o.certain))
        if rewriting:
            certain_hooks = _certain_hooks(walks, backends, key.port)
            findings.append(_hijack(key, _group(rewriting), names, certain_hooks))
    return findings


def _certain_hooks(
    walks: Sequence[ChainWalk], backends: set[tuple[IPAddress | None, int | None]], port: int
) -> tuple[str, ...]:
    """The hooks at which the traffic is surely taken: some nat chain there takes it whatever the packet (a
    rule that applies unconditionally, or every way through ending in a rule that takes it), and no nat
    chain that may run before it (a lower priority, or the same) may drop the packet or translate it
    harmlessly first (netfilter stops at a hook's first translation or drop)."""
    hooks = []
    for walk_ in walks:
        takes = [o for o in walk_.outcomes if _elsewhere(o, backends, port)]
        surely = any(o.certain and o.rewrites for o in takes) or (
            walk_.surely_rewritten() and len(takes) == len(walk_.outcomes)
        )
        before = [
            w
            for w in walks
            if w is not walk_ and w.hook == walk_.hook and w.chain.priority <= walk_.chain.priority
        ]
        spoiled = any(
            w.may_drop
            or any(
                o.rule.target.action is Action.UNKNOWN or (o.rewrites and not _elsewhere(o, backends, port))
                for o in w.outcomes
            )
            for w in before
        )
        if surely and not spoiled:
            hooks.append(walk_.hook)
    return tuple(dict.fromkeys(hooks))


def _elsewhere(outcome: Outcome, backends: set[tuple[IPAddress | None, int | None]], port: int) -> bool:
    """A rewrite, and not kube-proxy's own (iptables mode) DNAT to one of the service's endpoints, nor a DNAT
    of the port alone to the port the packet already has (which changes nothing)."""
    target = outcome.rule.target
    if target.action is Action.DNAT and target.address is None and target.port == port:
        return False
    return outcome.may_rewrite and (target.address, target.port) not in backends


def _hijack(
    key: VirtualKey, groups: Sequence[Sequence[Outcome]], names: Names, certain_hooks: tuple[str, ...]
) -> Finding:
    """One finding per virtual service; each rule that can take its traffic is a piece of evidence. Certain
    (critical) when its traffic is taken at some hook whatever the packet; possible (a warning) when that
    depends on something the rules and the view cannot tell."""
    certain = bool(certain_hooks)
    group = groups[0]
    evidence = _evidence(group)
    service = names.service(key)
    owner = names.owner(group[0])
    target = group[0].rule.target
    if service is not None:
        who = service
    else:
        who = "names unavailable" if names.cluster is None else "no Service of the cluster state claims it"
    verb = "takes" if certain else "may take"
    title = (
        f"{key.protocol.value} {key} ({who}): a port-forwarding rule {verb} its traffic to "
        f"{target.destination()}"
    )
    fix = (
        f"Remove the hostPort {key.port}/{key.protocol.value} of {_owner_text(owner, names)} or give it a "
        "hostIP (the node's own address), so the rule stops matching every local address; if no pod owns the "
        "rule, delete the stale chain"
        + (" (`iptables -t nat -F/-X` of that chain)" if "iptables" in group[0].table.backend else "")
        + ". Until then clients on this node reach that pod instead of the Service."
    )
    return Finding(
        kind=Kind.HIJACK,
        severity=Severity.CRITICAL if certain else Severity.WARNING,
        title=title,
        affected=f"connections to {key} " + _affected(evidence.hooks),
        fix=fix,
        evidence=tuple(_evidence(g) for g in groups),
        protocol=key.protocol.value,
        port=key.port,
        address=format_endpoint(key.address, key.port) if key.address else None,
        service=service,
        owner=owner,
        destination=target.destination(),
        extra={"certainty": "certain" if certain else "possible", "certainHooks": list(certain_hooks)},
    )


def _candidate_ports(tables: Sequence[Table]) -> set[tuple[int, str, int]]:
    """(family, protocol, port) below 1024 that some DNAT or REDIRECT rule names."""
    found: set[tuple[int, str, int]] = set()
    for table in tables:
        for chain in table.chains.values():
            for rule in chain.rules:
                if rule.target.action not in (Action.DNAT, Action.REDIRECT):
                    continue
                protocols = {"tcp", "udp", "sctp"}
                for match in rule.matches:
                    if isinstance(match, ProtocolMatch) and not match.negate:
                        protocols &= match.protocols
                for match in rule.matches:
                    if isinstance(match, PortMatch) and not match.negate:
                        for port in match.ports():
                            if port < WELL_KNOWN_BELOW:
                                found.update((f, p, port) for f in table.families() for p in protocols)
    return found


def well_known_ports(tables: Sequence[Table], names: Names) -> list[Finding]:
    """The node answers on a port below 1024 on its own addresses because a rule forwards it to a pod."""
    findings = []
    for family, protocol, port in sorted(_candidate_ports(tables)):
        packet = Packet(family, protocol, port, None)
        groups = _group(o for o in walk(tables, packet) if o.rewrites)
        if groups:
            group = groups[0]
            evidence = _evidence(group)
            owner = names.owner(group[0])
            target = group[0].rule.target
            only = [
                c for c in evidence.conditions if c.lstrip("! ").startswith(("-d", "ip daddr", "ip6 daddr"))
            ]
            where = f"on {', '.join(only)}" if only else "on every address of the node"
            findings.append(
                Finding(
                    kind=Kind.WELL_KNOWN_PORT,
                    severity=Severity.WARNING,
                    title=f"the node answers on {protocol.upper()} port {port} {where}: forwarded to "
                    f"{target.destination()} ({_owner_text(owner, names)})",
                    affected=f"anyone who can reach this node on {protocol.upper()}/{port} "
                    + _affected(evidence.hooks),
                    fix="If this is not meant to be public on every node, drop the hostPort (use a Service "
                    "of type NodePort or LoadBalancer) or restrict it with hostIP and a firewall.",
                    evidence=tuple(_evidence(g) for g in groups),
                    protocol=protocol.upper(),
                    port=port,
                    owner=owner,
                    destination=target.destination(),
                )
            )
    return findings
