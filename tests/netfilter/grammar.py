"""Random node NAT rule sets for the doctor's differential test (tests/kernel/test_doctor_differential.py).

`generate(seed)` draws, with a plain `random.Random(seed)`, one small node: the virtual services IPVS serves
(ClusterIPs on kube-ipvs0, IPv4 and IPv6, TCP and some UDP), the pods the rules DNAT to, kube-proxy's IP sets,
and the rules, as `iptables-restore` text for iptables-legacy and iptables-nft (both families, `*nat` only)
and `nft -f` scripts. The constructs are those real nodes carry: the CNI portmap plugin's chains (iptables
and nftables backends, hostIP-restricted ones included), kube-proxy's IPVS-mode ACCEPT for its ClusterIP set,
Docker's and Calico's chains, RETURN, goto, port-only DNAT, REDIRECT, and native nftables with anonymous and
named sets, maps, verdict maps, `fib daddr type local`, `inet` tables and several priorities. Many rules are
near misses of a virtual service: a port off by one, the other protocol, a hostIP, a guard before the DNAT,
a map without the port. The kernel then says where each virtual service's traffic really goes."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

PORTS = (53, 80, 443, 3306, 5432, 6379, 8080, 9100)
SPARE_PORTS = (8443, 9000, 15001, 15006)  # where port-only DNAT and REDIRECT send traffic
NODE_IP = "192.168.49.2"
NODE_IP6 = "fd00:49::2"
CLIENT_POD = ("client", "10.244.9.9", "fd00:10:244:9::9")
SERVICE_CIDR = {4: "10.96.0.0/12", 6: "fd00:96::/108"}
CLUSTER_IP_SET = {4: "KUBE-CLUSTER-IP", 6: "KUBE-6-CLUSTER-IP"}
NFT_PRIORITIES = ("-110", "-100", "-90", "0", "100")


@dataclass(frozen=True)
class Service:
    """One IPVS virtual service; its real server is `backend` (a pod) at the same port."""

    name: str
    address: str
    protocol: str  # tcp | udp
    port: int
    backend: str
    in_set: bool = True  # in kube-proxy's ClusterIP set on the node (False: kube-proxy has not synced yet)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def endpoint(self) -> str:
        """As the doctor writes a finding's address."""
        return f"[{self.address}]:{self.port}" if self.family == 6 else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Pod:
    """A pod with an IPv4 and an IPv6 address, answering on every (protocol, port) with its name."""

    name: str
    ipv4: str
    ipv6: str
    ports: frozenset[tuple[str, int]]

    def address(self, family: int) -> str:
        return self.ipv6 if family == 6 else self.ipv4


@dataclass(frozen=True)
class Load:
    """One tool run: `iptables-legacy-restore --noflush` (and the like) or `nft -f -`, with its input."""

    tool: str
    text: str


@dataclass(frozen=True)
class IpSet:
    name: str
    family: int
    members: tuple[str, ...]  # "10.96.0.10,tcp:80"

    def restore_text(self) -> str:
        family = "inet6" if self.family == 6 else "inet"
        lines = [f"create {self.name} hash:ip,port family {family}"]
        lines += [f"add {self.name} {member}" for member in self.members]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RuleSet:
    seed: int
    services: tuple[Service, ...]
    pods: tuple[Pod, ...]  # backends and the pods rules DNAT to
    ipsets: tuple[IpSet, ...]
    loads: tuple[Load, ...]
    node_ports: frozenset[tuple[str, int]]  # the node's own listeners (REDIRECT, port-only DNAT)
    constructs: tuple[str, ...]  # what was drawn, one line each

    def describe(self) -> str:
        lines = [f"seed {self.seed}:"]
        lines += [f"  construct: {c}" for c in self.constructs]
        for s in self.services:
            note = "" if s.in_set else " (not in kube-proxy's set)"
            lines.append(f"  service {s.name} {s.protocol} {s.endpoint} -> {s.backend}{note}")
        for pod in self.pods:
            ports = ", ".join(f"{p}/{n}" for p, n in sorted(pod.ports))
            lines.append(f"  pod {pod.name} {pod.ipv4} {pod.ipv6}: {ports}")
        for ipset in self.ipsets:
            lines.append(f"  ipset {ipset.name}: {', '.join(ipset.members)}")
        for load in self.loads:
            lines.append(f"  --- {load.tool}")
            lines += [f"  {line}" for line in load.text.rstrip("\n").splitlines()]
        return "\n".join(lines)


# --- building blocks --------------------------------------------------------------------------------------


class NatTable:
    """One iptables nat table (a backend and a family) as `iptables-restore` text."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {"PREROUTING": [], "OUTPUT": [], "POSTROUTING": []}

    def chain(self, name: str) -> list[str]:
        return self.chains.setdefault(name, [])

    def render(self) -> str:
        lines = ["*nat"]
        lines += [f":{name} ACCEPT [0:0]" for name in ("PREROUTING", "OUTPUT", "POSTROUTING")]
        lines += [
            f":{name} - [0:0]" for name in self.chains if name not in ("PREROUTING", "OUTPUT", "POSTROUTING")
        ]
        for name, rules in self.chains.items():
            lines += [f"-A {name} {rule}" for rule in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _host(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


@dataclass
class Draw:
    """The state of one draw: what the constructs have added so far."""

    rng: random.Random
    seed: int
    services: list[Service]
    pods: dict[str, Pod] = field(default_factory=dict)
    iptables: dict[tuple[str, int], NatTable] = field(default_factory=dict)  # (legacy|nft, family)
    nft: list[str] = field(default_factory=list)  # table blocks
    node_ports: set[tuple[str, int]] = field(default_factory=set)
    constructs: list[str] = field(default_factory=list)
    tables_made: int = 0

    def families(self) -> list[int]:
        return sorted({s.family for s in self.services})

    def pod(self, protocol: str, port: int, name: str | None = None) -> Pod:
        """A hostPort-style pod listening on (protocol, port): a new one, or one drawn before."""
        existing = [p for p in self.pods.values() if p.name.startswith("hp-")]
        if name is None:
            if existing and self.rng.random() < 0.3:
                name = self.rng.choice(existing).name
            else:
                name = f"hp-{len(existing)}"
        index = int(name.split("-")[1]) + 1
        old = self.pods.get(name) or Pod(name, f"10.244.1.{index}", f"fd00:10:244:1::{index:x}", frozenset())
        pod = Pod(old.name, old.ipv4, old.ipv6, old.ports | {(protocol, port)})
        self.pods[name] = pod
        return pod

    def aim(self, family: int) -> tuple[str, int, str]:
        """(protocol, port, how) of a rule: mostly a virtual service's own, often a near miss."""
        service = self.rng.choice([s for s in self.services if s.family == family])
        roll = self.rng.random()
        if roll < 0.55:
            return service.protocol, service.port, f"= {service.name}"
        if roll < 0.75:
            step = self.rng.choice((-1, 1))
            return service.protocol, service.port + step, f"{service.name}{step:+d}"
        if roll < 0.85:
            other = "udp" if service.protocol == "tcp" else "tcp"
            return other, service.port, f"{service.name} other protocol"
        return service.protocol, self.rng.choice(PORTS), "any port"

    def target_port(self, port: int) -> int:
        """A container port: the host port, or another."""
        return port if self.rng.random() < 0.6 else self.rng.choice((*PORTS, *SPARE_PORTS))

    def table(self, family: int) -> tuple[str, NatTable]:
        backend = self.rng.choice(("legacy", "nft"))
        return backend, self.iptables.setdefault((backend, family), NatTable())

    def table_name(self) -> str:
        self.tables_made += 1
        return f"t{self.tables_made}"

    def note(self, text: str) -> None:
        self.constructs.append(text)


def _family_word(family: int) -> str:
    return "ip6" if family == 6 else "ip"


# --- iptables constructs ----------------------------------------------------------------------------------


def portmap(draw: Draw) -> None:
    """The CNI portmap plugin's iptables chains: CNI-HOSTPORT-DNAT from PREROUTING and OUTPUT for LOCAL
    destinations, one CNI-DN-xxx chain per container; sometimes with a hostIP."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    if "CNI-HOSTPORT-DNAT" not in table.chains:
        # Sometimes only one hook jumps (a half-applied or hand-made setup).
        roll = draw.rng.random()
        hooks = ("PREROUTING",) if roll < 0.1 else ("OUTPUT",) if roll < 0.2 else ("PREROUTING", "OUTPUT")
        if len(hooks) == 1:
            draw.note(f"CNI-HOSTPORT-DNAT jumped from {hooks[0]} only")
        for hook in hooks:
            table.chain(hook).append("-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT")
        table.chain("CNI-HOSTPORT-SETMARK").append(
            '-m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000'
        )
        table.chain("CNI-HOSTPORT-MASQ").append("-m mark --mark 0x2000/0x2000 -j MASQUERADE")
        table.chain("POSTROUTING").append(
            '-m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'
        )
    protocol, port, how = draw.aim(family)
    container = draw.target_port(port)
    pod = draw.pod(protocol, container)
    digest = hashlib.sha512(f"{draw.seed}{pod.name}{port}".encode()).hexdigest()
    chain = f"CNI-DN-{digest[:21]}"
    comment = f'dnat name: \\"k8s-pod-network\\" id: \\"{digest[:64]}\\"'
    table.chain("CNI-HOSTPORT-DNAT").append(
        f'-p {protocol} -m comment --comment "{comment}" -m multiport --destination-ports {port} -j {chain}'
    )
    base = f"-p {protocol} -m {protocol} --dport {port}"
    host_ip = draw.rng.random() < 0.2
    if host_ip:
        base = f"-d {_host(NODE_IP6 if family == 6 else NODE_IP)} {base}"
    address = pod.address(family)
    rules = table.chain(chain)
    rules.append(f"-s {_host(address)} {base} -j CNI-HOSTPORT-SETMARK")
    if family == 4:
        rules.append(f"-s 127.0.0.1/32 {base} -j CNI-HOSTPORT-SETMARK")
    rules.append(f"{base} -j DNAT --to-destination {_endpoint(address, container)}")
    draw.note(
        f"portmap iptables-{backend} v{family}: {protocol} {port} ({how}) -> {pod.name}:{container}"
        + (" hostIP" if host_ip else "")
    )


def kube_proxy_guard(draw: Draw) -> None:
    """kube-proxy (IPVS mode): KUBE-SERVICES jumped to first from PREROUTING and OUTPUT, ACCEPTing its
    ClusterIP set; or, sometimes, jumped to last."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    if "KUBE-SERVICES" in table.chains:
        return
    set_name = CLUSTER_IP_SET[family]
    table.chain("KUBE-MARK-MASQ").append("-j MARK --set-xmark 0x4000/0x4000")
    table.chain("KUBE-POSTROUTING").append("-m mark --mark 0x4000/0x4000 -j MASQUERADE")
    table.chain("POSTROUTING").append(
        '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    )
    services = table.chain("KUBE-SERVICES")
    services.append(
        f"! -s {'fd00:10:244::/56' if family == 6 else '10.244.0.0/16'} -m comment --comment "
        f'"Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set {set_name} '
        "dst,dst -j KUBE-MARK-MASQ"
    )
    services.append(f"-m set --match-set {set_name} dst,dst -j ACCEPT")
    first = draw.rng.random() < 0.7
    for hook in ("PREROUTING", "OUTPUT"):
        rule = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
        if first:
            table.chain(hook).insert(0, rule)
        else:
            table.chain(hook).append(rule)
    draw.note(f"kube-proxy guard iptables-{backend} v{family} ({'first' if first else 'last'})")


def docker(draw: Draw) -> None:
    """Docker's DOCKER chain: LOCAL destinations, docker0's own traffic returned, published ports DNATed."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    if "DOCKER" not in table.chains:
        loopback = "::1/128" if family == 6 else "127.0.0.0/8"
        table.chain("PREROUTING").append("-m addrtype --dst-type LOCAL -j DOCKER")
        table.chain("OUTPUT").append(f"! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER")
        table.chain("DOCKER").append("-i docker0 -j RETURN")
    protocol, port, how = draw.aim(family)
    container = draw.target_port(port)
    pod = draw.pod(protocol, container)
    published = ""
    if draw.rng.random() < 0.2:
        published = f"-d {_host(NODE_IP6 if family == 6 else NODE_IP)} "
    table.chain("DOCKER").append(
        f"{published}! -i docker0 -p {protocol} -m {protocol} --dport {port} "
        f"-j DNAT --to-destination {_endpoint(pod.address(family), container)}"
    )
    draw.note(
        f"docker iptables-{backend} v{family}: {protocol} {port} ({how}) -> {pod.name}:{container}"
        + (" on the node IP" if published else "")
    )


def calico(draw: Draw) -> None:
    """Calico-like jump chains (cali-PREROUTING / cali-OUTPUT -> cali-fip-dnat), by jump or goto, ending in
    a DNAT of a floating IP: a ClusterIP, the node's IP, or any LOCAL address."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    verb = draw.rng.choice(("-j", "-g"))
    if "cali-fip-dnat" not in table.chains:
        table.chain("PREROUTING").append('-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING')
        table.chain("OUTPUT").append('-m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT')
        table.chain("cali-PREROUTING").append(
            f'-m comment --comment "cali:r6XmIziWUJsdOK6Z" {verb} cali-fip-dnat'
        )
        table.chain("cali-OUTPUT").append(
            f'-m comment --comment "cali:GBTAv2p5CwevEyJm" {verb} cali-fip-dnat'
        )
    protocol, port, how = draw.aim(family)
    container = draw.target_port(port)
    pod = draw.pod(protocol, container)
    roll = draw.rng.random()
    same_family = [s for s in draw.services if s.family == family]
    if roll < 0.4:
        where = f"-d {_host(draw.rng.choice(same_family).address)}"
    elif roll < 0.6:
        where = f"-d {_host(NODE_IP6 if family == 6 else NODE_IP)}"
    elif roll < 0.8:
        where = f"-d {SERVICE_CIDR[family]}"
    else:
        where = "-m addrtype --dst-type LOCAL"
    table.chain("cali-fip-dnat").append(
        f"{where} -p {protocol} -m {protocol} --dport {port} -j DNAT "
        f"--to-destination {_endpoint(pod.address(family), container)}"
    )
    draw.note(
        f"calico iptables-{backend} v{family} ({verb}): {where} {protocol} {port} ({how}) -> "
        f"{pod.name}:{container}"
    )


def port_only_or_redirect(draw: Draw) -> None:
    """A port-only DNAT (`--to-destination :443`) or a REDIRECT, in a chain of its own."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    protocol, port, how = draw.aim(family)
    to_port = draw.rng.choice((*SPARE_PORTS, *PORTS))
    draw.node_ports.add((protocol, to_port))
    chain = draw.rng.choice(("HOST-FWD", "ISTIO-REDIR", "KUBE-HOSTPORTS"))
    if chain not in table.chains:
        for hook in ("PREROUTING", "OUTPUT"):
            table.chain(hook).append(f"-j {chain}")
    if draw.rng.random() < 0.5:
        target = f"DNAT --to-destination :{to_port}"
    else:
        target = f"REDIRECT --to-ports {to_port}"
    local = "-m addrtype --dst-type LOCAL " if draw.rng.random() < 0.7 else ""
    table.chain(chain).append(f"-p {protocol} -m {protocol} --dport {port} {local}-j {target}")
    draw.note(
        f"{target.split()[0]} iptables-{backend} v{family} {chain}: {protocol} {port} ({how}) -> :{to_port}"
    )


def goto_chain(draw: Draw) -> None:
    """A goto whose chain falls off its end: the rest of the calling chain is skipped, so a DNAT after the
    goto never applies to packets the goto took."""
    family = draw.rng.choice(draw.families())
    backend, table = draw.table(family)
    protocol, port, how = draw.aim(family)
    container = draw.target_port(port)
    pod = draw.pod(protocol, container)
    entry, inner = "HP-ENTRY", "HP-INNER"
    if entry not in table.chains:
        for hook in ("PREROUTING", "OUTPUT"):
            table.chain(hook).append(f"-m addrtype --dst-type LOCAL -j {entry}")
    near = port + draw.rng.choice((0, 1))
    guard = draw.rng.choice((f"-p {protocol} -m {protocol} --dport {port}", f"-p {protocol}", ""))
    table.chain(inner).append(
        f"-p {protocol} -m {protocol} --dport {near} -j DNAT "
        f"--to-destination {_endpoint(pod.address(family), container)}"
    )
    table.chain(entry).append(f"{guard} -g {inner}".strip())
    other = draw.pod(protocol, container)
    table.chain(entry).append(
        f"-p {protocol} -m {protocol} --dport {port} -j DNAT "
        f"--to-destination {_endpoint(other.address(family), container)}"
    )
    draw.note(
        f"goto iptables-{backend} v{family}: [{guard}] -g {inner} (DNAT {near} -> {pod.name}:{container}), "
        f"then DNAT {port} ({how}) -> {other.name}:{container}"
    )


def returns(draw: Draw) -> None:
    """A RETURN or ACCEPT put somewhere into a chain already drawn: before or after the DNAT it guards."""
    # Into a chain of the portmap, Docker, Calico... constructs, or (less often) into one hook's own chain:
    # then one hook skips what the other takes.
    hooks = draw.rng.random() < 0.3
    candidates = [
        (key, name)
        for key, table in draw.iptables.items()
        for name in table.chains
        if (
            name in ("PREROUTING", "OUTPUT") if hooks else name not in ("PREROUTING", "OUTPUT", "POSTROUTING")
        )
        and name != "KUBE-SERVICES"
        and table.chains[name]
        and not name.endswith(("MASQ", "SETMARK"))
    ]
    if not candidates:
        return
    (backend, family), name = draw.rng.choice(candidates)
    rules = draw.iptables[(backend, family)].chain(name)
    same_family = [s for s in draw.services if s.family == family]
    service = draw.rng.choice(same_family)
    client = CLIENT_POD[2] if family == 6 else CLIENT_POD[1]
    match = draw.rng.choice(
        (
            f"-d {_host(service.address)}",
            f"-s {_host(client)}",
            f"-p {service.protocol} -m {service.protocol} --dport {service.port}",
            f"-m set --match-set {CLUSTER_IP_SET[family]} dst,dst",
            f"-d {SERVICE_CIDR[family]}",
            f"! -d {SERVICE_CIDR[family]}",
        )
    )
    verdict = draw.rng.choice(("RETURN", "RETURN", "ACCEPT"))
    position = draw.rng.randint(0, len(rules))
    rules.insert(position, f"{match} -j {verdict}")
    draw.note(f"{verdict} in {name} (iptables-{backend} v{family}) at {position}: {match}")


# --- nftables constructs ----------------------------------------------------------------------------------


def _nft_base(
    draw: Draw, family_word: str, body: list[str], hooks: tuple[str, ...] = ("prerouting", "output")
) -> str:
    """A table of base nat chains at each hook (each with its own drawn priority) running `body`, and the
    extra chains and sets the body names."""
    lines = []
    for hook in hooks:
        priority = draw.rng.choice(NFT_PRIORITIES)
        lines += [
            f"  chain {hook} {{",
            f"    type nat hook {hook} priority {priority}; policy accept;",
            *[f"    {rule}" for rule in body],
            "  }",
        ]
    return "\n".join(lines)


def _nft_l4(draw: Draw, protocol: str, ports: list[int]) -> str:
    if len(ports) == 1 and draw.rng.random() < 0.6:
        return f"{protocol} dport {ports[0]}"
    return f"{protocol} dport {{ {', '.join(str(p) for p in sorted(set(ports)))} }}"


def nft_rules(draw: Draw) -> None:
    """One native nftables table (ip, ip6 or inet) with one of the shapes nodes carry."""
    family = draw.rng.choice(draw.families())
    table_family = draw.rng.choice((_family_word(family), "inet"))
    name = draw.table_name()
    fw = _family_word(family)
    # In an inet table the address family of a DNAT must be said, and only packets of it may reach it.
    dnat = f"dnat {fw} to" if table_family == "inet" else "dnat to"
    only = f"meta nfproto {'ipv6' if family == 6 else 'ipv4'} " if table_family == "inet" else ""
    local = draw.rng.choice(("fib daddr type local ", "fib daddr type local ", ""))
    protocol, port, how = draw.aim(family)
    container = draw.target_port(port)
    pod = draw.pod(protocol, container)
    to = _endpoint(pod.address(family), container)
    shape = draw.rng.choice(
        ("portmap", "anonymous set", "named set", "address set", "map", "vmap", "named vmap", "redirect")
    )
    extra: list[str] = []
    body: list[str]
    ports = [port] + [draw.rng.choice(PORTS) for _ in range(draw.rng.randint(0, 2))]
    if shape == "portmap":
        host_ip = draw.rng.random() < 0.25
        chain = "hostip_hostports" if host_ip else "hostports"
        match = f"{fw} daddr {NODE_IP6 if family == 6 else NODE_IP} " if host_ip else ""
        extra = [
            "  chain hostports {",
            f"    {only}{match}{protocol} dport {port} {dnat} {to}" if not host_ip else "",
            "  }",
            "  chain hostip_hostports {",
            f"    {only}{match}{protocol} dport {port} {dnat} {to}" if host_ip else "",
            "  }",
            "  chain hostports_all {",
            "    jump hostip_hostports",
            "    jump hostports",
            "  }",
        ]
        body = ["fib daddr type local jump hostports_all"]
        how += f" in {chain}"
    elif shape == "anonymous set":
        body = [f"{only}{local}{_nft_l4(draw, protocol, ports)} {dnat} {to}"]
    elif shape == "named set":
        elements = ", ".join(str(p) for p in sorted(set(ports)))
        extra = [f"  set hp_ports {{ type inet_service; elements = {{ {elements} }} }}"]
        body = [f"{only}{local}{protocol} dport @hp_ports {dnat} {to}"]
    elif shape == "address set":
        same_family = [s for s in draw.services if s.family == family]
        addresses = {draw.rng.choice(same_family).address for _ in range(2)}
        if draw.rng.random() < 0.3:
            addresses = {NODE_IP6 if family == 6 else NODE_IP}
        kind = "ipv6_addr" if family == 6 else "ipv4_addr"
        extra = [f"  set addrs {{ type {kind}; elements = {{ {', '.join(sorted(addresses))} }} }}"]
        body = [f"{fw} daddr @addrs {protocol} dport {port} {dnat} {to}"]
        how += f" to {', '.join(sorted(addresses))}"
    elif shape == "map":
        # `dnat to tcp dport map`: the port stays, the address comes from the map; a port the map lacks is
        # not translated. The pod listens on every port of the map.
        keys = sorted({p for p in ports if draw.rng.random() < 0.8} or {port + 1})
        for key in keys:
            draw.pod(protocol, key, pod.name)
        pairs = ", ".join(f"{key} : {pod.address(family)}" for key in keys)
        body = [f"{only}{local}{dnat} {protocol} dport map {{ {pairs} }}"]
        how += f", map keys {keys}"
        to = f"{pod.name} at the same port"
    elif shape in ("vmap", "named vmap"):
        verb = draw.rng.choice(("jump", "goto"))
        extra = ["  chain hp {", f"    {only}meta l4proto {protocol} {dnat} {to}", "  }"]
        keys = sorted(set(ports))
        pairs = ", ".join(f"{key} : {verb} hp" for key in keys)
        if shape == "vmap":
            body = [f"{local}{protocol} dport vmap {{ {pairs} }}"]
        else:
            extra.append(f"  map hp_verdicts {{ type inet_service : verdict; elements = {{ {pairs} }} }}")
            body = [f"{local}{protocol} dport vmap @hp_verdicts"]
        how += f", {verb} for {keys}"
    else:
        to_port = draw.rng.choice((*SPARE_PORTS, *PORTS))
        draw.node_ports.add((protocol, to_port))
        body = [f"{only}{local}{_nft_l4(draw, protocol, ports)} redirect to :{to_port}"]
        to = f"the node :{to_port}"
    if draw.rng.random() < 0.2:
        # A guard before: kube-proxy-like ACCEPT of the service range, or a RETURN of one ClusterIP.
        same_family = [s for s in draw.services if s.family == family]
        guard = draw.rng.choice(
            (
                f"{fw} daddr {SERVICE_CIDR[family]} accept",
                f"{fw} daddr {draw.rng.choice(same_family).address} return",
            )
        )
        body.insert(0, guard)
        how += f", guard [{guard}]"
    text = f"table {table_family} {name} {{\n" + "\n".join(line for line in extra if line)
    text += "\n" + _nft_base(draw, table_family, body) + "\n}\n"
    draw.nft.append(text)
    draw.note(f"nft {table_family} {name} {shape}: {protocol} {port} ({how}) -> {to}")


CONSTRUCTS: tuple[tuple[Callable[[Draw], None], float], ...] = (
    (portmap, 3.0),
    (kube_proxy_guard, 1.5),
    (docker, 1.0),
    (calico, 1.0),
    (port_only_or_redirect, 1.0),
    (goto_chain, 0.7),
    (returns, 1.0),
    (nft_rules, 3.0),
)


def generate(seed: int, *, udp: bool = True) -> RuleSet:
    rng = random.Random(seed)
    v6 = rng.random() < 0.35
    count = rng.randint(3, 8)
    services: list[Service] = []
    vips: list[str] = []
    taken: set[tuple[str, str, int]] = set()
    for index in range(count):
        family = 6 if v6 and index >= count - rng.randint(1, 3) else 4
        same = [v for v in vips if (":" in v) == (family == 6)]
        if same and rng.random() < 0.3:
            vip = rng.choice(same)
        else:
            vip = f"fd00:96::{len(vips) + 10:x}" if family == 6 else f"10.96.0.{len(vips) + 10}"
            vips.append(vip)
        protocol = "udp" if udp and rng.random() < 0.15 else "tcp"
        port = rng.choice(PORTS)
        if (vip, protocol, port) in taken:
            continue
        taken.add((vip, protocol, port))
        backend = f"be-{vips.index(vip)}"
        services.append(Service(f"svc-{len(services)}", vip, protocol, port, backend))
    if rng.random() < 0.05:
        lagging = rng.randrange(len(services))
        s = services[lagging]
        services[lagging] = Service(s.name, s.address, s.protocol, s.port, s.backend, in_set=False)
    draw = Draw(rng, seed, services)
    if not all(s.in_set for s in services):
        kube_proxy_guard(draw)
    for s in services:
        index = int(s.backend.split("-")[1]) + 1
        old = draw.pods.get(s.backend) or Pod(
            s.backend, f"10.244.2.{index}", f"fd00:10:244:2::{index:x}", frozenset()
        )
        draw.pods[s.backend] = Pod(old.name, old.ipv4, old.ipv6, old.ports | {(s.protocol, s.port)})
    functions = [f for f, _ in CONSTRUCTS]
    weights = [w for _, w in CONSTRUCTS]
    for construct in rng.choices(functions, weights, k=rng.randint(2, 6)):
        construct(draw)
    loads: list[Load] = []
    for (backend, family), table in sorted(draw.iptables.items()):
        tool = f"{'ip6' if family == 6 else 'ip'}tables-{backend}-restore"
        loads.append(Load(tool, table.render()))
    if draw.nft:
        loads.append(Load("nft", "".join(draw.nft)))
    ipsets = []
    for family in (4, 6):
        members = tuple(
            f"{s.address},{s.protocol}:{s.port}" for s in services if s.family == family and s.in_set
        )
        if any(f"set {CLUSTER_IP_SET[family]} " in load.text for load in loads):
            ipsets.append(IpSet(CLUSTER_IP_SET[family], family, members))
    return RuleSet(
        seed=seed,
        services=tuple(services),
        pods=tuple(draw.pods.values()),
        ipsets=tuple(ipsets),
        loads=tuple(loads),
        node_ports=frozenset(draw.node_ports),
        constructs=tuple(draw.constructs),
    )
