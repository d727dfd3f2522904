"""Rule sets with the constructs real nodes carry beyond portmap's chains: nft maps, verdict maps and named
sets, `inet` tables, Docker's chains with their interface matches, kube-proxy's IPv6 sets, RETURN on a match
that cannot be judged, a target the doctor does not know, a DNAT of the port alone.

Each is loaded into the VM's kernel by `python -m tests.netfilter.capture`, and what the tools print back is
what the doctor's unit tests read (tests/netfilter/dumps). The comments say what each rule does to the
Services of tests/netfilter/scene.py; tests/test_doctor_constructs.py holds the doctor to it."""

from __future__ import annotations


def _nat(chains: tuple[str, ...] = (), rules: tuple[str, ...] = ()) -> str:
    """`iptables-restore` input for the nat table: the built-in chains, these chains, these rules."""
    declared = [f":{name} ACCEPT [0:0]" for name in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")]
    declared += [f":{name} - [0:0]" for name in chains]
    return "\n".join(["*nat", *declared, *rules, "COMMIT"]) + "\n"


# IPv6 ClusterIPs of dual-stack Services beside scene.py's IPv4 ones (db/mysql-b and db/postgres).
MYSQL_B6 = "fd00:96::20"
POSTGRES6 = "fd00:96::40"

MAPS_NFT = """
table ip hostports {
    set web-ports { type inet_service; elements = { 8080 } }
    set guarded { type ipv4_addr; elements = { 10.96.0.30 } }
    map udp-ports { type inet_service : verdict; elements = { 53 : jump dns-cache } }
    chain mysql-a {
        meta l4proto tcp dnat to 10.244.1.5:3306
    }
    chain dns-cache {
        meta l4proto udp dnat to 10.244.1.7:5353
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump hostports
    }
    chain output {
        type nat hook output priority -100; policy accept;
        jump hostports
    }
    chain hostports {
        # db/mysql-b: a verdict map sends 3306 to mysql-a's chain
        fib daddr type local tcp dport vmap { 3306 : jump mysql-a, 22 : accept }
        # db/postgres: the one port of the map that a Service has; 8443 and 9000 are nobody's
        fib daddr type local dnat to tcp dport map {
            8443 : 10.244.1.6 . 8443, 5432 : 10.244.1.8 . 5432, 9000 : 10.244.1.9 . 9000
        }
        # kube-dns: a named verdict map
        fib daddr type local udp dport vmap @udp-ports
        # web/frontend: its address is in a named set that is accepted before the DNAT
        ip daddr @guarded accept
        fib daddr type local tcp dport 80 dnat to 10.244.1.6:8080
        # web/web: a named set of ports
        fib daddr type local tcp dport @web-ports dnat to 10.244.1.11:80
        # cache/redis: only for packets that arrive on eth1 (never a packet of the node's own)
        iifname "eth1" tcp dport 6379 dnat to 10.244.1.20:6379
        # cache/memcached: every packet but those arriving on docker0 (so every packet of the node's own)
        iifname != "docker0" tcp dport 11211 dnat to 10.244.1.21:11211
        # mon/node-exporter: any address but its own
        ip daddr != 10.96.0.50 tcp dport 9100 dnat to 10.244.1.13:9100
    }
}
"""

# An `inet` table: `dnat ip to` acts on IPv4 packets, `dnat ip6 to` on IPv6 ones.
INET_NFT = """
table inet hostports {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        fib daddr type local tcp dport 3306 dnat ip to 10.244.1.5:3306
        fib daddr type local tcp dport 5432 dnat ip6 to [fd00:10:244:1::8]:5432
    }
    chain output {
        type nat hook output priority -100; policy accept;
        fib daddr type local tcp dport 3306 dnat ip to 10.244.1.5:3306
        fib daddr type local tcp dport 5432 dnat ip6 to [fd00:10:244:1::8]:5432
    }
}
"""

# Docker's published port (moby's iptables setup): not for packets from docker0, which has no say over a
# packet of the node's own.
DOCKER_IPTABLES = _nat(
    chains=("DOCKER",),
    rules=(
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A DOCKER -i docker0 -j RETURN",
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 6379 -j DNAT --to-destination 172.17.0.2:6379",
    ),
)

# Rules that are not portmap's: a RETURN on a source match before mysql's DNAT, a NETMAP (a target the
# doctor does not model) on postgres's port, a DNAT of the port alone for redis, and after them all a plain
# hostPort DNAT for web/frontend that must still be found.
ODD_IPTABLES = _nat(
    chains=("HOSTPORTS",),
    rules=(
        "-A PREROUTING -m addrtype --dst-type LOCAL -j HOSTPORTS",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j HOSTPORTS",
        "-A HOSTPORTS -s 10.244.0.0/16 -j RETURN",
        "-A HOSTPORTS -p tcp -m tcp --dport 3306 -j DNAT --to-destination 10.244.1.5:3306",
        "-A PREROUTING -p tcp -m tcp --dport 5432 -j NETMAP --to 10.244.3.0/24",
        "-A OUTPUT -p tcp -m tcp --dport 5432 -j NETMAP --to 10.244.3.0/24",
        "-A PREROUTING -d 10.96.0.70/32 -p tcp -m tcp --dport 6379 -j DNAT --to-destination :6380",
        "-A PREROUTING -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 80"
        " -j DNAT --to-destination 10.244.1.6:8080",
    ),
)

# kube-proxy (IPVS mode) in an IPv6 nat table: its set is KUBE-6-CLUSTER-IP, accepted before portmap's chain.
KUBE_PROXY6_IPTABLES = _nat(
    chains=(
        "KUBE-SERVICES",
        "CNI-HOSTPORT-DNAT",
    ),
    rules=(
        "-A PREROUTING -j KUBE-SERVICES",
        "-A OUTPUT -j KUBE-SERVICES",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT",
        "-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 3306 -j DNAT --to-destination [fd00:10:244:1::5]:3306",
    ),
)
KUBE_PROXY6_SET = ("KUBE-6-CLUSTER-IP", f"{MYSQL_B6},tcp:3306")

# Corner cases of netfilter's semantics (each proved against a kernel by a review): name -> (tool, rules).
# The tests say what each one must give; comments here say why.
EDGE_CASES: dict[str, tuple[str, str]] = {
    # `ip daddr != @set` in an inet table carries an implicit "IPv4 only": an IPv6 packet never matches.
    "empty-set": (
        "nft",
        """table inet t {
    set excl { type ipv4_addr; }
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr != @excl tcp dport 80 redirect to :8080
    }
}
""",
    ),
    # A negated concatenation keeps its dependencies (IPv4, TCP) outside the negation.
    "concat-negated": (
        "nft",
        """table inet t {
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr . tcp dport != { 10.0.0.1 . 80 } redirect to :8080
    }
}
""",
    ),
    # An earlier nat chain's DROP, or its no-op DNAT, ends the hook before the hostPort's DNAT.
    "drop-first": (
        "nft",
        """table ip guard {
    chain out {
        type nat hook output priority -150; policy accept;
        tcp dport 80 drop
    }
}
table ip hp {
    chain out {
        type nat hook output priority -100; policy accept;
        tcp dport 80 dnat to 10.244.1.1:8080
    }
}
""",
    ),
    "noop-first": (
        "nft",
        """table ip first {
    chain out {
        type nat hook output priority -150; policy accept;
        tcp dport 80 dnat to :80
    }
}
table ip hp {
    chain out {
        type nat hook output priority -100; policy accept;
        tcp dport 80 dnat to 10.244.1.1:8080
    }
}
""",
    ),
    # A stateless rewrite in a filter chain takes the datagram to another port before IPVS sees it.
    "stateless": (
        "nft",
        """table ip raw {
    chain out {
        type filter hook output priority -300; policy accept;
        udp dport 53 udp dport set 8080
    }
}
""",
    ),
    # Ranges in a DNAT: the kernel picks one of them; each is elsewhere.
    "ranges": (
        "nft",
        """table ip t {
    chain out {
        type nat hook output priority -100; policy accept;
        tcp dport 80 dnat to 10.244.1.1:8080-8081
        tcp dport 81 dnat to 10.244.1.1-10.244.1.2:8080
    }
}
""",
    ),
    # kube-proxy's set looked up by destination address and *source* port is not its ClusterIP lookup.
    "set-dst-src": (
        "iptables-legacy",
        _nat(
            chains=("HP",),
            rules=(
                "-A OUTPUT -j HP",
                "-A HP -p tcp -m set ! --match-set KUBE-CLUSTER-IP dst,src"
                " -j DNAT --to-destination 10.244.1.1:8080",
            ),
        ),
    ),
    # A comment that looks like an option (printed unquoted).
    "comment-dash": (
        "iptables-legacy",
        _nat(
            chains=("HP",),
            rules=(
                "-A OUTPUT -j HP",
                '-A HP -p tcp -m tcp --dport 80 -m comment --comment "-p"'
                " -j DNAT --to-destination 10.244.1.1:8080",
            ),
        ),
    ),
    # IPv6 ranges, with and without brackets.
    "v6-ranges": (
        "ip6tables-legacy",
        _nat(
            rules=(
                "-A OUTPUT -p tcp --dport 80 -j DNAT --to-destination [fd00::5-fd00::6]:8080",
                "-A OUTPUT -p tcp --dport 81 -j DNAT --to-destination fd00::5-fd00::6",
            )
        ),
    ),
    # Interface matches on OUTPUT through nf_tables (iptables-nft): certain only on a kernel that compares a
    # missing interface as "" (5.3 on).
    "interfaces": (
        "iptables-nft",
        _nat(
            chains=("X",),
            rules=(
                "-A OUTPUT -j X",
                "-A X -i eth1 -p tcp --dport 80 -j DNAT --to-destination 10.244.1.1:8080",
                "-A X ! -i docker0 -p tcp --dport 82 -j DNAT --to-destination 10.244.1.1:8080",
            ),
        ),
    ),
}
EDGE_SUFFIX = {
    "nft": "nft-ruleset.json",
    "iptables-legacy": "iptables-legacy-save",
    "ip6tables-legacy": "ip6tables-legacy-save",
    "iptables-nft": "iptables-nft-save",
}
