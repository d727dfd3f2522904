"""`python -m tests.vm -- python -m tests.netfilter.capture`: make the doctor's rule dumps on the VM's kernel.

Installs the portmap-shaped rules of tests/netfilter/portmap.py through each backend (iptables-legacy,
iptables-nft, native nftables), saves what the tools print, and clears them again. The dumps land in the VM's
results share (/run/ipvs-vm/dumps); copy them to tests/netfilter/dumps/. Every file is a tool's own output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.netfilter import constructs
from tests.netfilter.portmap import JUMP_RESTRICTED, ORPHAN, SCENE, SCENE6, iptables_restore, nft_script

OUT = Path(os.environ.get("CAPTURE_OUT", "/run/ipvs-vm/dumps"))
CLUSTER_IP_SET = (
    "10.96.0.20,tcp:3306", "10.96.0.30,tcp:80", "10.96.0.10,udp:53", "10.96.0.40,tcp:5432",
    "10.96.0.60,tcp:8080", "10.96.0.50,tcp:9100", "10.96.0.70,tcp:6379", "10.96.0.80,tcp:11211",
)  # fmt: skip


def sh(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def save(name: str, text: str) -> None:
    (OUT / name).write_text(text)
    print(f"wrote {name} ({len(text)} bytes)")


def clear() -> None:
    for tool in ("iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft"):
        sh(tool, "-t", "nat", "-F")
        sh(tool, "-t", "nat", "-X")
    sh("nft", "flush", "ruleset")


def capture_ipsets() -> None:
    """kube-proxy's KUBE-CLUSTER-IP as `ipset save` prints it: in step with the scene's Services, and lagging
    behind them (db/mysql-b's ClusterIP not yet in it: kube-proxy not synced, or not running)."""
    save("kube-proxy.ipset-save", sh("ipset", "save"))
    sh("ipset", "del", "KUBE-CLUSTER-IP", "10.96.0.20,tcp:3306")
    save("kube-proxy-lagging.ipset-save", sh("ipset", "save"))
    sh("ipset", "add", "KUBE-CLUSTER-IP", "10.96.0.20,tcp:3306")


def capture_constructs() -> None:
    """tests/netfilter/constructs.py's rule sets, each through the tool it is written for."""
    capture_ipsets()
    clear()
    sh("nft", "-f", "-", stdin=constructs.MAPS_NFT)
    save("maps.nft-ruleset.json", sh("nft", "-j", "list", "ruleset"))
    save("maps.nft-ruleset.txt", sh("nft", "list", "ruleset"))
    clear()
    sh("nft", "-f", "-", stdin=constructs.INET_NFT)
    save("inet.nft-ruleset.json", sh("nft", "-j", "list", "ruleset"))
    clear()
    sh("iptables-nft-restore", "--noflush", stdin=constructs.DOCKER_IPTABLES)
    save("docker.iptables-nft-save", sh("iptables-nft-save", "-t", "nat"))
    clear()
    sh("iptables-legacy-restore", "--noflush", stdin=constructs.ODD_IPTABLES)
    save("odd.iptables-legacy-save", sh("iptables-legacy-save", "-t", "nat"))
    clear()
    name, member = constructs.KUBE_PROXY6_SET
    sh("ipset", "create", name, "hash:ip,port", "family", "inet6")
    sh("ipset", "add", name, member)
    sh("ip6tables-legacy-restore", "--noflush", stdin=constructs.KUBE_PROXY6_IPTABLES)
    save("kube-proxy6.ip6tables-legacy-save", sh("ip6tables-legacy-save", "-t", "nat"))
    clear()
    for name, (tool, rules) in constructs.EDGE_CASES.items():
        if tool == "nft":
            sh("nft", "-f", "-", stdin=rules)
            printed = sh("nft", "-j", "list", "ruleset")
        else:
            sh(f"{tool}-restore", "--noflush", stdin=rules)
            printed = sh(f"{tool}-save", "-t", "nat")
        save(f"edge-{name}.{constructs.EDGE_SUFFIX[tool]}", printed)
        clear()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["--constructs"]:
        sh("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
        for member in CLUSTER_IP_SET:
            sh("ipset", "add", "KUBE-CLUSTER-IP", member)
        capture_constructs()
        return 0
    sh("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
    for member in CLUSTER_IP_SET:
        sh("ipset", "add", "KUBE-CLUSTER-IP", member)
    rules = iptables_restore(SCENE, orphan=ORPHAN, jump_restricted=JUMP_RESTRICTED)
    for backend in ("legacy", "nft"):
        clear()
        sh(f"iptables-{backend}-restore", "--noflush", stdin=rules)
        save(f"portmap.iptables-{backend}-save", sh(f"iptables-{backend}-save"))
        if backend == "nft":
            # How nft shows iptables-nft's tables (xt matches it cannot translate).
            save("iptables-nft.nft-ruleset.json", sh("nft", "-j", "list", "ruleset"))
    clear()
    kube_proxy_first = iptables_restore(SCENE, kube_proxy_first=True)
    sh("iptables-legacy-restore", "--noflush", stdin=kube_proxy_first)
    save("kube-proxy-first.iptables-legacy-save", sh("iptables-legacy-save"))
    clear()
    sh("nft", "-f", "-", stdin=nft_script(SCENE, jump_restricted=JUMP_RESTRICTED, orphan=ORPHAN))
    save("portmap.nft-ruleset.json", sh("nft", "-j", "list", "ruleset"))
    save("portmap.nft-ruleset.txt", sh("nft", "list", "ruleset"))
    clear()
    # IPv6: the same hazard for a dual-stack Service's IPv6 ClusterIP.
    sh("ip6tables-legacy-restore", "--noflush", stdin=iptables_restore(SCENE6))
    save("portmap6.ip6tables-legacy-save", sh("ip6tables-legacy-save"))
    clear()
    sh("nft", "-f", "-", stdin=nft_script(SCENE6, family="ip6"))
    save("portmap6.nft-ruleset.json", sh("nft", "-j", "list", "ruleset"))
    capture_constructs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
