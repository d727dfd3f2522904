"""NAT rules shaped as the CNI portmap plugin writes them (plugins/meta/portmap: portmap_iptables.go and
portmap_nftables.go) for hostPort pods, and kube-proxy's IPVS-mode nat rules that matter to them.

Used in the VM to make the rule dumps the doctor's unit tests read (`python -m tests.netfilter.capture`) and
to install live rules in the real-kernel tier. Nothing here runs in the product."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

MARK = "0x2000/0x2000"


@dataclass(frozen=True)
class HostPort:
    pod: str  # namespace/name
    pod_ip: str
    protocol: str  # tcp | udp
    host_port: int
    container_port: int
    host_ip: str = ""

    @property
    def v6(self) -> bool:
        return ":" in self.pod_ip

    @property
    def destination(self) -> str:
        """DNAT's target as both tools write it: `[v6]:port` or `v4:port`."""
        address = f"[{self.pod_ip}]" if self.v6 else self.pod_ip
        return f"{address}:{self.container_port}"

    @property
    def prefix(self) -> str:
        return "128" if self.v6 else "32"

    @property
    def container_id(self) -> str:
        return hashlib.sha256(self.pod.encode()).hexdigest()[:64]

    @property
    def dn_chain(self) -> str:
        # portmap: utils.MustFormatChainNameWithPrefix(netName, containerID, "DN-"), a hash cut to 28 chars.
        digest = hashlib.sha512(f"k8s-pod-network{self.container_id}".encode()).hexdigest()
        return f"CNI-DN-{digest[:21]}"


def iptables_restore(
    ports: Sequence[HostPort],
    *,
    kube_proxy_first: bool = False,
    orphan: HostPort | None = None,
    jump_restricted: HostPort | None = None,
) -> str:
    """`iptables-restore --noflush` input for the nat table.

    kube_proxy_first: kube-proxy's IPVS-mode KUBE-SERVICES (ACCEPT for the KUBE-CLUSTER-IP set) jumped to
    before the portmap chain. orphan: a DN chain no rule jumps to (left by a failed CNI DEL). jump_restricted:
    a chain whose jump carries the host IP and whose DNAT line does not, as a hand-made CNI writes it."""
    lines = ["*nat"]
    chains = ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"]
    chains += sorted({port.dn_chain for port in ports})
    if kube_proxy_first:
        chains.append("KUBE-SERVICES")
    if orphan is not None:
        chains.append(orphan.dn_chain)
    if jump_restricted is not None:
        chains.append("CUSTOM-HOSTIP")
    lines += [f":{chain} - [0:0]" for chain in chains]
    for hook in ("PREROUTING", "OUTPUT"):
        if kube_proxy_first:
            lines.append(f'-A {hook} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
        lines.append(f"-A {hook} -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT")
    lines.append(
        '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'
    )
    mark = "CNI portfwd masquerade mark"
    lines.append(f'-A CNI-HOSTPORT-SETMARK -m comment --comment "{mark}" -j MARK --set-xmark {MARK}')
    lines.append(f"-A CNI-HOSTPORT-MASQ -m mark --mark {MARK} -j MASQUERADE")
    if kube_proxy_first:
        lines.append("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT")
    by_pod: dict[str, list[HostPort]] = {}
    for port in ports:
        by_pod.setdefault(port.dn_chain, []).append(port)
    for chain, pod_ports in by_pod.items():
        comment = f'dnat name: \\"k8s-pod-network\\" id: \\"{pod_ports[0].container_id}\\"'
        for protocol in sorted({p.protocol for p in pod_ports}):
            listed = ",".join(str(p.host_port) for p in pod_ports if p.protocol == protocol)
            lines.append(
                f'-A CNI-HOSTPORT-DNAT -p {protocol} -m comment --comment "{comment}" '
                f"-m multiport --destination-ports {listed} -j {chain}"
            )
        for port in pod_ports:
            lines += _dn_rules(chain, port)
    if orphan is not None:
        lines += _dn_rules(orphan.dn_chain, orphan)
    if jump_restricted is not None:
        restricted = jump_restricted
        lines.append(f"-A CNI-HOSTPORT-DNAT -d {restricted.host_ip}/{restricted.prefix} -j CUSTOM-HOSTIP")
        lines.append(
            f"-A CUSTOM-HOSTIP -p {restricted.protocol} --dport {restricted.host_port} "
            f"-j DNAT --to-destination {restricted.destination}"
        )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _dn_rules(chain: str, port: HostPort) -> list[str]:
    base = f"-A {chain} -p {port.protocol} --dport {port.host_port}"
    if port.host_ip:
        base += f" -d {port.host_ip}"
    # portmap marks localhost traffic for masquerade in IPv4 only.
    localhost = [] if port.v6 else [f"{base} -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK"]
    return [
        f"{base} -s {port.pod_ip}/{port.prefix} -j CNI-HOSTPORT-SETMARK",
        *localhost,
        f"{base} -j DNAT --to-destination {port.destination}",
    ]


def nft_script(
    ports: Sequence[HostPort],
    *,
    jump_restricted: HostPort | None = None,
    orphan: HostPort | None = None,
    family: str = "ip",
) -> str:
    """`nft -f` input: the portmap plugin's nftables backend (table ip|ip6 cni_hostport)."""
    lines = [
        f"table {family} cni_hostport {{",
        '  comment "CNI portmap plugin"',
        "  chain hostports {",
        "  }",
        "  chain hostip_hostports {",
        "  }",
        "  chain hostports_all {",
        "    jump hostip_hostports",
        "    jump hostports",
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
        "    fib daddr type local jump hostports_all",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump hostports_all",
        "  }",
        "  chain masquerading {",
        "    type nat hook postrouting priority 100; policy accept;",
        "  }",
    ]
    if jump_restricted is not None:
        lines += ["  chain custom_hostip {", "  }"]
    if orphan is not None:
        lines += ["  chain orphan {", "  }"]
    lines.append("}")
    for port in ports:
        chain = "hostip_hostports" if port.host_ip else "hostports"
        match = f"{family} daddr {port.host_ip} " if port.host_ip else ""
        lines.append(
            f"add rule {family} cni_hostport {chain} {match}{port.protocol} dport {port.host_port} "
            f'dnat to {port.destination} comment "{port.container_id}"'
        )
        lines.append(
            f"add rule {family} cni_hostport masquerading {family} saddr {port.pod_ip} "
            f"{family} daddr {port.pod_ip} masquerade "
            f'comment "{port.container_id}"'
        )
    if jump_restricted is not None:
        restricted = jump_restricted
        lines.append(
            f"add rule {family} cni_hostport hostports_all {family} daddr {restricted.host_ip} "
            "jump custom_hostip"
        )
        lines.append(
            f"add rule {family} cni_hostport custom_hostip "
            f"{restricted.protocol} dport {restricted.host_port} dnat to {restricted.destination}"
        )
    if orphan is not None:
        lines.append(
            f"add rule {family} cni_hostport orphan {orphan.protocol} dport {orphan.host_port} "
            f"dnat to {orphan.destination}"
        )
    return "\n".join(lines) + "\n"


# The node the fixtures describe: what each hostPort does to the Services of tests/netfilter/scene.py.
NODE_IP = "192.168.49.2"
SECOND_NODE_IP = "192.168.49.3"
SCENE = (
    HostPort("db/mysql-a-0", "10.244.1.5", "tcp", 3306, 3306),
    HostPort("ingress/controller-x1", "10.244.1.6", "tcp", 80, 8080),
    HostPort("ingress/controller-x1", "10.244.1.6", "tcp", 443, 8443),
    HostPort("kube-system/dns-cache-q", "10.244.1.7", "udp", 53, 5353),
    HostPort("db/pg-local-0", "10.244.1.8", "tcp", 5432, 5432, host_ip=NODE_IP),
    HostPort("web/web-a-1", "10.244.1.11", "tcp", 8080, 80),
    HostPort("web/web-old-9", "10.244.1.12", "tcp", 8080, 80),
    HostPort("mon/exporter-a", "10.244.1.13", "tcp", 9100, 9100, host_ip=NODE_IP),
    HostPort("mon/exporter-b", "10.244.1.14", "tcp", 9100, 9100, host_ip=SECOND_NODE_IP),
)
ORPHAN = HostPort("cache/redis-gone", "10.244.1.20", "tcp", 6379, 6379)
JUMP_RESTRICTED = HostPort("cache/memcached-0", "10.244.1.21", "tcp", 11211, 11211, host_ip=NODE_IP)

# The same hazard in IPv6: a ClusterIP of a dual-stack Service, a hostPort pod's IPv6 address.
NODE_IP6 = "fd00:49::2"
SCENE6 = (
    HostPort("db/mysql-a-0", "fd00:10:244:1::5", "tcp", 3306, 3306),
    HostPort("db/pg-local-0", "fd00:10:244:1::8", "tcp", 5432, 5432, host_ip=NODE_IP6),
)
