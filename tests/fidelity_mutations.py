"""Mutation check of the kube-proxy rules: drop each rule from a copy of the tree and run the properties; each
must fail. About 30 minutes on 2 cores, so not part of the suite (docs/kube-proxy-fidelity.md has the result).

    .venv/bin/python -m tests.fidelity_mutations [RULE ...]

Prints one line per rule: KILLED (a property failed, named) or SURVIVED; for a survivor, which regression
tests still fail. Exits 1 if a rule survived the properties or a mutation no longer applies to the code.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = [
    "tests/test_kube_proxy_fidelity.py",
    "tests/test_safety_properties.py",
    "tests/test_cluster_cache_events.py",
]
REGRESSIONS = ["tests/test_kube_proxy_rules.py", "tests/test_cluster.py"]


@dataclass(frozen=True)
class Mutation:
    rule: str
    path: str
    old: str  # must occur exactly once
    new: str


MAPPING, PARSE, VALUES = "ipvs_reaper/mapping.py", "ipvs_reaper/cluster/parse.py", "ipvs_reaper/values.py"
CACHE, MODEL, PLANNER = (
    "ipvs_reaper/cluster/cache.py",
    "ipvs_reaper/cluster/model.py",
    "ipvs_reaper/planner.py",
)
MUTATIONS = [
    Mutation("excluding labels", MAPPING, "    if service.excluding_label is not None:", "    if False:"),
    Mutation("ExternalName", MAPPING, '    if service.type == "ExternalName":', "    if False:"),
    Mutation(
        "headless (the singular clusterIP None or empty)",
        PARSE,
        '    cluster_ips = () if cluster_ip in ("", "None") else _ips(cluster_ip_texts, "spec.clusterIPs")',
        '    cluster_ips = _ips([t for t in cluster_ip_texts if t not in ("", "None")], "spec.clusterIPs")',
    ),
    Mutation(
        "a family only with a ClusterIP of it",
        MAPPING,
        "        skipped = whole or (None if cluster_ip is not None else no_cluster_ip)",
        "        skipped = whole",
    ),
    Mutation(
        "GetClusterIPByFamily pairs by position",
        MAPPING,
        "        if named == family and index < len(service.cluster_ips):",
        "        if index < len(service.cluster_ips):",
    ),
    Mutation(
        "GetClusterIPByFamily: the singular clusterIP without ipFamilies",
        PARSE,
        "        cluster_ip_texts = [cluster_ip, *(text for text in cluster_ip_texts if text != cluster_ip)]",
        "        cluster_ip_texts = cluster_ip_texts or [cluster_ip]",
    ),
    Mutation(
        "externalIPs of the family",
        MAPPING,
        "            for address in service.external_ips:\n                if address.version == family:",
        "            for address in service.external_ips:\n                if True:",
    ),
    Mutation(
        "ingress IPs of the family",
        MAPPING,
        "                if ingress.ip.version == family:",
        "                if True:",
    ),
    Mutation("ingress ipMode", MAPPING, '    if mode is None or mode == "VIP":', "    if True:"),
    Mutation(
        "NodePorts of the family",
        MAPPING,
        "                for address in node_addresses:\n                    if address.version == family:",
        "                for address in node_addresses:\n                    if True:",
    ),
    Mutation(
        "serving defaults to true",
        PARSE,
        'serving=_condition(conditions, "serving", "conditions", True)',
        'serving=_condition(conditions, "serving", "conditions", False)',
    ),
    Mutation(
        "ready defaults to true",
        PARSE,
        'ready=_condition(conditions, "ready", "conditions", True)',
        'ready=_condition(conditions, "ready", "conditions", False)',
    ),
    Mutation(
        "IPv4-mapped addresses are IPv4",
        PARSE,
        "    return mapped if mapped is not None else address",
        "    return address",
    ),
    Mutation("excludeCIDRs", PLANNER, "    if excluded is not None:", "    if False:"),
    Mutation(
        "a selector Service without slices is unknown",
        MAPPING,
        "        return target.service.has_selector and not self._slices.get(target.service.ref)",
        "        return False",
    ),
    Mutation(
        "no NodePort on loopback or IPv6 link-local",
        VALUES,
        "    return not address.is_loopback and not (address.version == 6 and address.is_link_local)",
        "    return True",
    ),
    Mutation(
        "a Node's ExternalIP never stands in",
        PARSE,
        '        if entry.get("type") == "InternalIP":',
        '        if entry.get("type") in ("InternalIP", "ExternalIP"):',
    ),
    Mutation(
        "hostname -I: Service addresses are not node addresses",
        MODEL,
        "tuple(a for a in candidates if a not in service_addresses)",
        "tuple(candidates)",
    ),
    Mutation(
        "nodePortAddresses narrows",
        VALUES,
        "    return not own or any(n.prefixlen == 0 or address in n for n in own)",
        "    return True",
    ),
    Mutation(
        "nodePortAddresses: a family without CIDRs matches all",
        VALUES,
        "    return not own or any(n.prefixlen == 0 or address in n for n in own)",
        "    return bool(own) and any(n.prefixlen == 0 or address in n for n in own) or not networks",
    ),
    Mutation(
        "every Service port on an address:port counts, built or not",
        MAPPING,
        "                named[front.key].add((service.ref, front.port.name))",
        "                named[front.key].add((service.ref, front.port.name)) if not front.skipped else 0",
    ),
    Mutation(
        "NodePorts on left-out addresses count",
        MAPPING,
        "                for address in left_out:",
        "                for address in ():",
    ),
    Mutation(
        "NodePorts on kube-ipvs0's addresses inside nodePortAddresses count",
        MAPPING,
        "            if key.address in bound:",
        "            if False:",
    ),
    Mutation(
        "agent view: NodePort users inside nodePortAddresses",
        CACHE,
        "        if self._node_port_networks:\n            # Inside",
        "        if False:\n            # Inside",
    ),
    Mutation(
        "agent events: a NodePort Service inside nodePortAddresses",
        CACHE,
        "            if service is not None and self._node_port_networks and _node_ports(service):",
        "            if False:",
    ),
    Mutation(
        "a clusterIP that clusterIPs does not list is named",
        PARSE,
        "    unlisted = (",
        "    unlisted = None and (",
    ),
]


def _pytest(tree: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    # The copy's package must be the one imported, not the editable install's.
    check = f"import ipvs_reaper, sys; assert ipvs_reaper.__file__.startswith({str(tree)!r})"
    code = (
        f"{check}; import pytest; sys.exit(pytest.main(['-x', '-q', '-p', 'no:cacheprovider', *{files!r}]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(tree),
            "HYPOTHESIS_STORAGE_DIRECTORY": str(tree / ".hyp"),
        },
    )


def run(mutation: Mutation, scratch: Path) -> tuple[bool, str]:
    tree = scratch / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(
        ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*cache*")
    )
    target = tree / mutation.path
    text = target.read_text()
    if text.count(mutation.old) != 1:
        return False, f"NOT APPLIED: {text.count(mutation.old)} matches in {mutation.path}"
    target.write_text(text.replace(mutation.old, mutation.new))
    done = _pytest(tree, PROPERTIES)
    failed = [line.removeprefix("FAILED ") for line in done.stdout.splitlines() if line.startswith("FAILED")]
    if done.returncode == 1 and failed:
        return True, f"KILLED by {failed[0].split(' - ')[0]}"
    if done.returncode != 0:
        return False, f"ERROR (pytest exit {done.returncode}): {done.stdout[-300:]}{done.stderr[-300:]}"
    regressions = _pytest(tree, REGRESSIONS)
    caught = [line.split(" - ")[0] for line in regressions.stdout.splitlines() if line.startswith("FAILED")]
    return False, f"SURVIVED the properties; regression tests failing: {caught or 'none'}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rules", nargs="*", help="only these rules (default: every one)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.rules or m.rule in args.rules]
    survivors = 0
    with tempfile.TemporaryDirectory(prefix="fidelity-mutations-") as scratch:
        for mutation in chosen:
            killed, verdict = run(mutation, Path(scratch))
            survivors += not killed
            print(f"{mutation.rule}: {verdict}", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
