"""`doctor` on rule dumps made in the VM (tests/netfilter/dumps, made by tests/netfilter/capture.py): which
Services a hostPort rule takes traffic from, judged by the whole path to the rule."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from ipvs_reaper.cli import NodeAccess, main
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config
from ipvs_reaper.doctor.command import NodeView, diagnose
from ipvs_reaper.doctor.findings import Kind, Severity
from ipvs_reaper.doctor.report import DoctorReport, doctor_json, doctor_table, metrics_view
from ipvs_reaper.errors import InputError
from ipvs_reaper.ipvs.backend import IpvsError
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.facts import facts_from_input
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.netfilter.iptables_save import backend_of, parse_iptables_save
from ipvs_reaper.netfilter.nft_json import parse_nft_json
from ipvs_reaper.netfilter.rules import Action, PortMatch
from ipvs_reaper.netfilter.sources import RuleSources, read_rule_files
from ipvs_reaper.netfilter.walk import WalkTooLong
from ipvs_reaper.values import IpvsTable, Protocol, VirtualKey, VirtualService
from tests.netfilter.scene import DUMPS, HIJACKED, NODE, SERVICES, cluster_items, table

SAFE_FACTS = facts_from_input("6.1.0-56-amd64", None, {"conn_reuse_mode": 1, "expire_nodest_conn": 1})
OWNERS = {
    "db/mysql-b": "db/mysql-a-0",
    "web/frontend": "ingress/controller-x1",
    "kube-system/kube-dns": "kube-system/dns-cache-q",
    "web/web": "web/web-a-1",
}
DUMP_FILES = {
    "iptables-legacy": ("portmap.iptables-legacy-save",),
    "iptables-nft": ("portmap.iptables-nft-save",),
    "nftables": ("portmap.nft-ruleset.json",),
}


def rules_from(*names: str) -> RuleSources:
    files = [str(DUMPS / n) for n in names]
    return read_rule_files(
        [f for f in files if not f.endswith(".json")], [f for f in files if f.endswith(".json")]
    )


def doctor(rules: RuleSources, with_cluster: bool = True, with_pods: bool = True) -> DoctorReport:
    cluster = cluster_state_from_items(cluster_items(with_pods)) if with_cluster else None
    view = NodeView(NODE, table(), SAFE_FACTS, rules, (), Config())
    return diagnose(view, cluster, None if with_cluster else "no cluster state")


def hijacked(report: DoctorReport) -> dict[str, str | None]:
    return {f.service or f.address or "?": f.owner for f in report.findings if f.kind is Kind.HIJACK}


@pytest.mark.parametrize("backend", sorted(DUMP_FILES))
def test_each_backend_finds_exactly_the_hijacked_services_and_their_owners(backend: str) -> None:
    report = doctor(rules_from(*DUMP_FILES[backend]))
    assert hijacked(report) == OWNERS
    assert set(OWNERS) == set(HIJACKED)
    for finding in report.findings:
        if finding.kind is Kind.HIJACK:
            assert finding.severity is Severity.CRITICAL
            assert finding.evidence[0].hooks == ("prerouting", "output")
            assert "dnat" in finding.evidence[0].rule.lower()
    assert report.exit_code() == 3
    # The Service that web-a-1 takes is not also blamed on web-old-9, whose rule comes later.
    web = next(f for f in report.findings if f.service == "web/web")
    assert len(web.evidence) == 1 and web.destination == "10.244.1.11:80"


@pytest.mark.parametrize("backend", sorted(DUMP_FILES))
def test_rules_a_line_matcher_blames_are_not_reachable(backend: str) -> None:
    """The dumps hold a DNAT for every safe Service's port (hostIP on the rule, hostIP on the jump only, a
    chain nothing jumps to): a matcher that reads each DNAT line alone would report some of them."""
    rules = rules_from(*DUMP_FILES[backend])
    safe = {port for name, _, port, _, _ in SERVICES if name not in HIJACKED}
    dnat_ports: set[int] = set()
    naive: set[int] = set()
    for t in rules.tables:
        for chain in t.chains.values():
            for rule in chain.rules:
                if rule.target.action is not Action.DNAT:
                    continue
                ports = {p for m in rule.matches if isinstance(m, PortMatch) for p in m.ports()}
                dnat_ports |= ports
                if not any(m.text.lstrip("! ").startswith(("-d", "ip daddr")) for m in rule.matches):
                    naive |= ports
    assert safe <= dnat_ports
    assert {6379, 11211} <= naive & safe  # the orphan chain and the jump-restricted chain
    assert not {f.port for f in doctor(rules).findings if f.kind is Kind.HIJACK} & safe


def test_without_dst_type_local_the_rule_still_hijacks_and_with_its_negation_it_does_not() -> None:
    text = (DUMPS / "portmap.iptables-legacy-save").read_text()
    assert text.count("-m addrtype --dst-type LOCAL") == 2
    unrestricted = text.replace("-m addrtype --dst-type LOCAL ", "")
    negated = text.replace("--dst-type LOCAL", "! --dst-type LOCAL")
    for changed, expected in ((unrestricted, OWNERS), (negated, {})):
        rules = RuleSources(tuple(parse_iptables_save(changed, "edited")), (), True)
        assert hijacked(doctor(rules)) == expected


def test_kube_proxys_accept_first_protects_cluster_ips_in_its_own_table_only() -> None:
    legacy = "kube-proxy-first.iptables-legacy-save"
    assert hijacked(doctor(rules_from(legacy))) == {}
    # Another table at the same hook still rewrites: an ACCEPT ends only its own table's walk.
    assert hijacked(doctor(rules_from(legacy, "portmap.nft-ruleset.json"))) == OWNERS
    # Without the cluster state the set's members are unknown: a warning that says what it depends on.
    unnamed = doctor(rules_from(legacy), with_cluster=False)
    found = [f for f in unnamed.findings if f.kind is Kind.HIJACK]
    assert {f.severity for f in found} == {Severity.WARNING}
    assert all("KUBE-CLUSTER-IP" in " ".join(f.evidence[0].conditions) for f in found)


def test_nft_listing_of_iptables_nft_tables_gives_way_to_the_save_dump() -> None:
    alone = doctor(rules_from("iptables-nft.nft-ruleset.json"))
    assert set(hijacked(alone)) == set(OWNERS)
    assert {f.severity for f in alone.findings if f.kind is Kind.HIJACK} == {Severity.WARNING}  # xt: opaque
    # The metric keeps them apart: the critical alert reads `certain` only.
    assert {key[3] for key in metrics_view(alone.findings)} == {"possible"}
    both = doctor(rules_from("portmap.iptables-nft-save", "iptables-nft.nft-ruleset.json"))
    assert [t.source for t in both.tables] == [str(DUMPS / "portmap.iptables-nft-save")]
    assert hijacked(both) == OWNERS


def test_without_names_findings_are_by_address_and_say_so() -> None:
    report = doctor(rules_from("portmap.nft-ruleset.json"), with_cluster=False)
    assert set(hijacked(report)) == {
        f"{vip}:{port}" for _, vip, port, _, why in SERVICES if why.startswith("hij")
    }
    document = doctor_json(report)
    assert document["names"] is False and document["namesUnavailable"] == "no cluster state"
    assert "names unavailable" in doctor_table(report)


def test_owners_unavailable_without_pods_and_well_known_ports() -> None:
    report = doctor(rules_from("portmap.iptables-legacy-save"), with_pods=False)
    assert set(hijacked(report).values()) == {None}
    ports = {(f.protocol, f.port): f.owner for f in report.findings if f.kind is Kind.WELL_KNOWN_PORT}
    assert set(ports) == {("TCP", 80), ("TCP", 443), ("UDP", 53)}
    named = doctor(rules_from("portmap.iptables-legacy-save"))
    well_known = {(f.protocol, f.port): f.owner for f in named.findings if f.kind is Kind.WELL_KNOWN_PORT}
    assert well_known[("TCP", 443)] == "ingress/controller-x1"


def test_metrics_view_counts_hijacks_by_protocol_port_and_service() -> None:
    report = doctor(rules_from("portmap.iptables-legacy-save"))
    assert metrics_view(report.findings) == {
        ("TCP", 3306, "db/mysql-b", "certain"): 1,
        ("TCP", 80, "web/frontend", "certain"): 1,
        ("UDP", 53, "kube-system/kube-dns", "certain"): 1,
        ("TCP", 8080, "web/web", "certain"): 1,
    }


def test_headers_name_the_backend() -> None:
    assert backend_of((DUMPS / "portmap.iptables-legacy-save").read_text()) == ("iptables-legacy", "ip")
    assert backend_of((DUMPS / "portmap.iptables-nft-save").read_text()) == ("iptables-nft", "ip")
    assert backend_of("# Generated by ip6tables-save v1.8.9 (nf_tables) on x\n") == ("iptables-nft", "ip6")
    assert backend_of("*nat\nCOMMIT\n") == ("iptables", "ip")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*nat\n-A PREROUTING -j X\nCOMMIT\n", "line 2: chain PREROUTING is not declared"),
        ("*nat\n:X - [0:0]\n", "table nat has no COMMIT"),
        ("*nat\n:X - [0:0]\n-I X -j ACCEPT\nCOMMIT\n", "line 3: expected `-A CHAIN ...`"),
        ("hello\n", "line 1: 'hello' outside a table"),
    ],
)
def test_bad_iptables_save_names_the_line(text: str, message: str) -> None:
    """A file that is not iptables-save output at all. (One rule it cannot read is not this: see
    test_doctor_constructs.py.)"""
    with pytest.raises(InputError, match="dump: " + message.replace("(", r"\(").split("'")[0]):
        parse_iptables_save(text, "dump")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "expected"),
        ("{", "not valid JSON"),
        (
            '{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": []}}]}',
            "no known chain",
        ),
    ],
)
def test_bad_nft_json_is_an_input_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_nft_json(text, "ruleset.json")


def _access(tmp_path: Path, nodest: int = 1) -> NodeAccess:
    sysctls = FakeSysctls(
        {"conn_reuse_mode": 1, "expire_nodest_conn": nodest, "expire_quiescent_template": 1}
    )
    (tmp_path / "osrelease").write_text("6.1.0-56-amd64\n")
    return NodeAccess(FakeIpvs(table()), sysctls, proc_kernel=tmp_path, local_addresses=lambda: ())


def _state(tmp_path: Path) -> str:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "items": cluster_items()}))
    return str(path)


def test_cli_reports_the_hijack_and_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["doctor", "--node-name", NODE, "--cluster-state", _state(tmp_path), "-o", "json"]
    argv += ["--iptables-save", str(DUMPS / "portmap.iptables-legacy-save")]
    assert main(argv, _access(tmp_path)) == 3
    document = json.loads(capsys.readouterr().out)
    assert document["schemaVersion"] == 1 and document["node"] == NODE
    found = {f["service"]: f for f in document["findings"] if f["kind"] == "hijack"}
    assert set(found) == set(OWNERS)
    mysql = found["db/mysql-b"]
    assert (mysql["protocol"], mysql["port"], mysql["address"]) == ("TCP", 3306, "10.96.0.20:3306")
    assert mysql["owner"] == "db/mysql-a-0" and mysql["severity"] == "critical"
    assert mysql["evidence"][0]["chainPath"].startswith("PREROUTING -> CNI-HOSTPORT-DNAT -> CNI-DN-")
    assert "--to-destination 10.244.1.5:3306" in mysql["evidence"][0]["rule"]
    assert mysql["fix"] and mysql["affected"]


def test_cli_is_clean_without_rules_that_matter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.save"
    empty.write_text("# Generated by iptables-save v1.8.9 on x\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    argv = ["doctor", "--node-name", NODE, "--cluster-state", _state(tmp_path), "--iptables-save", str(empty)]
    assert main(argv, _access(tmp_path)) == 0
    assert "No findings." in capsys.readouterr().out


def test_cli_without_cluster_access_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    argv = [
        "doctor",
        "--node-name",
        NODE,
        "-o",
        "json",
        "--nft-ruleset",
        str(DUMPS / "portmap.nft-ruleset.json"),
    ]
    assert main(argv, _access(tmp_path)) == 3
    document = json.loads(capsys.readouterr().out)
    assert document["names"] is False and "no Kubernetes credentials" in document["namesUnavailable"]
    assert {f["address"] for f in document["findings"] if f["kind"] == "hijack"} == {
        f"{vip}:{port}" for vip_name, vip in HIJACKED.items() for _, v, port, _, _ in SERVICES if v == vip
    }


def test_cli_bad_rules_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.save"
    bad.write_text("*nat\n:X - [0:0]\n-A Y -p tcp --dport 80 -j ACCEPT\nCOMMIT\n")
    argv = ["doctor", "--node-name", NODE, "--cluster-state", _state(tmp_path), "--iptables-save", str(bad)]
    assert main(argv, _access(tmp_path)) == 2
    assert f"{bad}: line 3:" in capsys.readouterr().err


def test_cli_sysctl_mismatch_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"nftables": []}')
    argv = ["doctor", "--node-name", NODE, "--cluster-state", _state(tmp_path), "--nft-ruleset", str(empty)]
    assert main([*argv, "-o", "json"], _access(tmp_path, nodest=0)) == 3
    kinds = {f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert kinds == {"sysctl-mismatch"}


def test_a_jump_loop_is_refused_by_both_readers() -> None:
    with pytest.raises(InputError, match=r"chain A jumps back to itself \(A -> B -> A\)"):
        parse_iptables_save("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -g A\nCOMMIT\n", "dump")
    chains = [{"chain": {"family": "ip", "table": "t", "name": n}} for n in ("a", "b")]
    rules = [
        {"rule": {"family": "ip", "table": "t", "chain": c, "expr": [{"jump": {"target": t}}]}}
        for c, t in (("a", "b"), ("b", "a"))
    ]
    with pytest.raises(InputError, match="chain a jumps back to itself"):
        parse_nft_json(json.dumps({"nftables": chains + rules}), "ruleset.json")


def test_rules_that_branch_without_end_are_refused_not_walked_for_ever() -> None:
    """Each chain jumps twice to the next on a match that cannot be judged: 2^30 paths (found by fuzzing)."""
    depth = 30
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", *(f":C{i} - [0:0]" for i in range(depth))]
    lines += ["-A PREROUTING -j C0"]
    for i in range(depth - 1):
        lines += [f"-A C{i} -i eth{i} -j C{i + 1}"] * 2
    lines += [f"-A C{depth - 1} -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80", "COMMIT"]
    rules = RuleSources(tuple(parse_iptables_save("\n".join(lines) + "\n", "tangled")), (), True)
    with pytest.raises(WalkTooLong, match="tangled: following one packet"):
        doctor(rules)


class _NoIpvs(FakeIpvs):
    def read_table(self) -> IpvsTable:
        raise IpvsError("/proc/net/ip_vs does not exist: is the ip_vs module loaded?")


def test_a_node_without_a_readable_table_still_gets_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = _access(tmp_path)
    broken = NodeAccess(_NoIpvs(), access.sysctls, proc_kernel=tmp_path, local_addresses=lambda: ())
    argv = ["doctor", "--node-name", NODE, "--cluster-state", _state(tmp_path), "-o", "json"]
    argv += ["--iptables-save", str(DUMPS / "portmap.iptables-legacy-save")]
    assert main(argv, broken) == 3
    kinds = {f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert kinds == {"ipvs-unreadable", "well-known-port"}


def test_ipv6_rules_take_ipv6_cluster_ips_only() -> None:
    """IPv6 dumps made in the VM: the hostPort takes the dual-stack Service's IPv6 ClusterIP, the one with a
    hostIP does not, and IPv4 virtual services are not judged by IPv6 rules."""
    mysql6 = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("fd00:96::20"), 3306)
    postgres6 = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("fd00:96::40"), 5432)
    scene = table()
    both = IpvsTable(
        (*scene.services, VirtualService(mysql6, "rr"), VirtualService(postgres6, "rr")), scene.real_servers
    )
    for dump in ("portmap6.ip6tables-legacy-save", "portmap6.nft-ruleset.json"):
        rules = rules_from(dump)
        assert {t.family for t in rules.tables} == {"ip6"}
        view = NodeView(NODE, both, SAFE_FACTS, rules, (), Config())
        found = [f for f in diagnose(view, None, "offline").findings if f.kind is Kind.HIJACK]
        assert [(f.address, f.destination, f.severity) for f in found] == [
            ("[fd00:96::20]:3306", "[fd00:10:244:1::5]:3306", Severity.CRITICAL)
        ], dump


def test_a_jump_that_may_not_happen_does_not_hide_what_follows() -> None:
    """A jump on a match that cannot be judged (an interface) may or may not happen: the DNAT behind it may
    apply, and so may the one after it, which is reported with what it depends on."""
    text = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:FROM-ETH1 - [0:0]\n"
        "-A PREROUTING -i eth1 -j FROM-ETH1\n"
        "-A PREROUTING -p tcp --dport 3306 -j DNAT --to-destination 10.244.1.5:3306\n"
        "-A FROM-ETH1 -p tcp --dport 3306 -j DNAT --to-destination 10.244.7.7:3306\n"
        "COMMIT\n"
    )
    rules = RuleSources(tuple(parse_iptables_save(text, "dump")), (), True)
    (mysql,) = [f for f in doctor(rules).findings if f.service == "db/mysql-b"]
    assert [e.rule.split(" [")[0].split()[-1] for e in mysql.evidence] == [
        "10.244.7.7:3306",
        "10.244.1.5:3306",
    ]
    assert mysql.evidence[0].conditions == ("-i eth1",)
    assert mysql.evidence[1].conditions == ("unless -i eth1 (dnat at line 6)",)
    assert mysql.severity is Severity.CRITICAL  # one of the two applies, whichever it is


def test_each_block_of_a_save_file_has_the_family_of_the_tool_that_printed_it() -> None:
    """`iptables-save; ip6tables-save > rules` gives one file with a header per block. Read with the first
    header's family for both, the IPv6 portmap rules "hijacked" IPv4 ClusterIPs and the IPv6 hijack was
    lost."""
    text = (DUMPS / "portmap.iptables-legacy-save").read_text() + (
        DUMPS / "portmap6.ip6tables-legacy-save"
    ).read_text()
    tables = parse_iptables_save(text, "both")
    assert [(t.backend, t.family) for t in tables] == [("iptables-legacy", "ip"), ("iptables-legacy", "ip6")]
    mysql6 = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("fd00:96::20"), 3306)
    scene = table()
    both = IpvsTable((*scene.services, VirtualService(mysql6, "rr")), scene.real_servers)
    view = NodeView(NODE, both, SAFE_FACTS, RuleSources(tuple(tables), (), True), (), Config())
    found = [f for f in diagnose(view, None, "offline").findings if f.kind is Kind.HIJACK]
    alone = doctor(rules_from("portmap.iptables-legacy-save"))
    v4 = {(f.address, f.destination) for f in alone.findings if f.kind is Kind.HIJACK}
    assert {(f.address, f.destination) for f in found} == v4 | {
        ("[fd00:96::20]:3306", "[fd00:10:244:1::5]:3306")
    }


def test_a_dnat_of_the_port_alone_is_read_and_judged_and_the_rest_of_the_file_too() -> None:
    """`--to-destination :6380` (valid, and printed so by both iptables backends) keeps the packet's address
    and changes its port: the redis Service's traffic goes to another port. Before, the reader refused the
    whole file, and with it every other hijack on the node. A DNAT of the port alone to the same port changes
    nothing."""
    text = (
        (DUMPS / "portmap.iptables-legacy-save")
        .read_text()
        .replace(
            "COMMIT",
            "-A PREROUTING -d 10.96.0.70/32 -p tcp --dport 6379 -j DNAT --to-destination :6380\n"
            "-A PREROUTING -d 10.96.0.40/32 -p tcp --dport 5432 -j DNAT --to-destination :5432\n"
            "COMMIT",
            1,
        )
    )
    (nat,) = parse_iptables_save(text, "edited")
    report = doctor(RuleSources((nat,), (), True))
    found = {f.service: f for f in report.findings if f.kind is Kind.HIJACK}
    assert set(found) == set(OWNERS) | {"cache/redis"}  # the others still found; postgres's no-op is not one
    assert found["cache/redis"].destination == "the same address, port 6380"
    assert found["cache/redis"].severity is Severity.CRITICAL


def test_a_cluster_ip_missing_from_the_view_is_unknown_to_kube_proxys_sets_not_outside() -> None:
    """kube-proxy's ACCEPT for KUBE-CLUSTER-IP members comes first in this dump. A ClusterIP the cluster state
    does not hold (its Service made after the export, or not yet in the agent's cache) may well be in that
    set: the hijack behind the ACCEPT is possible, saying so, never certain (a critical alert at night)."""
    items = [
        item
        for item in cluster_items()
        if item["metadata"].get("name") not in ("mysql-b", "mysql-b-1")
        or item["metadata"].get("namespace") != "db"
    ]
    view = NodeView(
        NODE, table(), SAFE_FACTS, rules_from("kube-proxy-first.iptables-legacy-save"), (), Config()
    )
    report = diagnose(view, cluster_state_from_items(items), None)
    (mysql,) = [f for f in report.findings if f.kind is Kind.HIJACK and f.address == "10.96.0.20:3306"]
    assert mysql.severity is Severity.WARNING
    assert "KUBE-CLUSTER-IP" in " ".join(mysql.evidence[0].conditions)
    # The Services the view holds are still judged as before: none hijacked behind the ACCEPT.
    assert [f.address for f in report.findings if f.kind is Kind.HIJACK] == ["10.96.0.20:3306"]
