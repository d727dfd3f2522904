"""Seed inputs for each target: real examples (the bundled captures and exports), so mutation starts from
the shapes the parsers are for."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _objects() -> list[bytes]:
    items = json.loads((ROOT / "examples" / "cluster.json").read_text())["items"]
    return [json.dumps(item).encode() for item in items]


def seeds(target: str) -> list[bytes]:
    examples, fixtures = ROOT / "examples", ROOT / "tests" / "fixtures"
    dumps = ROOT / "tests" / "netfilter" / "dumps"
    by_target = {
        "proc_ip_vs": [(examples / "ip_vs.txt").read_bytes(), (fixtures / "proc-net-ip_vs.txt").read_bytes()],
        "cluster_list": [(examples / "cluster.json").read_bytes()],
        "api_objects": _objects(),
        "config": [
            b"policy:\n  gone: {reap: idle, graceSeconds: 0, maxWaitSeconds: 300}\n"
            b"namespaces:\n  payments:\n    gone: {maxWaitSeconds: 1800}\n"
            b"expireNodestConn: enforce\nbreaker: {maxShare: 0.5, minDeletions: 10, maxPerSweep: 200}\n"
            b"nodePortAddresses: [192.168.0.0/16, fd00::/8]\n"
        ],
        "annotation": [b'{"gone": {"reap": "never"}}', b"notReady: {graceSeconds: 60, maxWaitSeconds: null}"],
        "sysctls": [(examples / "sysctl.txt").read_bytes()],
        "node_addresses": [
            b'[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.49.2"}]}]',
            b"192.168.49.2 10.244.0.1 fd00::2\n",
        ],
        "first_seen_file": [
            b'{"TCP 4 10.96.0.2 80 0 10.1.0.2 8080": "2026-11-22T12:00:00+00:00", '
            b'"TCP 4 10.96.0.2 80 0 10.1.0.3 8080": "2026-11-22T11:59:00+00:00"}',
        ],
        "iptables_save": [
            (dumps / name).read_bytes()
            for name in (
                "portmap.iptables-legacy-save",
                "portmap.iptables-nft-save",
                "kube-proxy-first.iptables-legacy-save",
                "docker.iptables-nft-save",
                "odd.iptables-legacy-save",
                "kube-proxy6.ip6tables-legacy-save",
                "edge-set-dst-src.iptables-legacy-save",
                "edge-comment-dash.iptables-legacy-save",
                "edge-v6-ranges.ip6tables-legacy-save",
                "edge-interfaces.iptables-nft-save",
            )
        ],
        "ip_vs_conn": [(fixtures / "proc-net-ip_vs_conn.txt").read_bytes()],
        "ipset_save": [
            (dumps / n).read_bytes() for n in ("kube-proxy.ipset-save", "kube-proxy-lagging.ipset-save")
        ],
        "nft_ruleset": [
            (dumps / n).read_bytes()
            for n in (
                "portmap.nft-ruleset.json",
                "iptables-nft.nft-ruleset.json",
                "maps.nft-ruleset.json",
                "inet.nft-ruleset.json",
                "edge-concat-negated.nft-ruleset.json",
                "edge-drop-first.nft-ruleset.json",
                "edge-stateless.nft-ruleset.json",
                "edge-ranges.nft-ruleset.json",
            )
        ],
    }
    return by_target[target]
