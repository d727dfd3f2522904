"""`doctor` on the constructs real nodes carry beyond portmap's chains (tests/netfilter/constructs.py), read
from what the tools printed after the VM's kernel loaded them: nft maps, verdict maps and named sets, `inet`
tables, Docker's interface matches, kube-proxy's IPv6 set, RETURN on a match that cannot be judged, a target
the doctor does not model, a DNAT of the port alone; and rules no tool would print, which must cost only what
they could affect."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.cli import main
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config
from ipvs_reaper.doctor.command import NodeView, diagnose
from ipvs_reaper.doctor.findings import Finding, Kind, Severity
from ipvs_reaper.doctor.hostports import Names
from ipvs_reaper.doctor.hostports import hijacks as hijacks_of
from ipvs_reaper.doctor.report import DoctorReport, metrics_view
from ipvs_reaper.errors import InputError
from ipvs_reaper.netfilter.ipsets import parse_ipset_save
from ipvs_reaper.netfilter.iptables_save import parse_iptables_save
from ipvs_reaper.netfilter.nft_json import parse_nft_json
from ipvs_reaper.netfilter.rules import Truth
from ipvs_reaper.netfilter.sources import RuleSources, read_live_ipsets
from ipvs_reaper.values import IpvsTable, Protocol, VirtualKey, VirtualService
from tests import builders
from tests.netfilter.constructs import MYSQL_B6, POSTGRES6
from tests.netfilter.scene import DUMPS, NODE, cluster_items, table
from tests.test_doctor import SAFE_FACTS, _access, doctor, rules_from


def hijacks(report: DoctorReport) -> dict[str, Finding]:
    return {f.address or "?": f for f in report.findings if f.kind is Kind.HIJACK}


def summary(report: DoctorReport) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """address -> (certainty, hooks where certain, hooks of the evidence)."""
    return {
        address: (
            f.extra["certainty"],
            tuple(f.extra["certainHooks"]),
            tuple(dict.fromkeys(h for e in f.evidence for h in e.hooks)),
        )
        for address, f in hijacks(report).items()
    }


BOTH = ("prerouting", "output")


def test_nft_maps_verdict_maps_and_named_sets_are_looked_up_in_the_ruleset() -> None:
    """A `dnat to tcp dport map {...}` translates only the ports of its elements: before, it was taken as an
    unconditional DNAT of every virtual service of the node (a critical alert for each). A verdict map's jump
    is followed (before, never), a named set's and map's elements come from the ruleset itself."""
    report = doctor(rules_from("maps.nft-ruleset.json"))
    assert summary(report) == {
        "10.96.0.20:3306": ("certain", BOTH, BOTH),  # vmap { 3306 : jump mysql-a }
        "10.96.0.40:5432": ("certain", BOTH, BOTH),  # the map's one element a Service has
        "10.96.0.10:53": ("certain", BOTH, BOTH),  # vmap @udp-ports
        "10.96.0.60:8080": ("certain", BOTH, BOTH),  # tcp dport @web-ports
        # iifname "eth1": no packet of the node's own has it (OUTPUT), one from outside may (PREROUTING)
        "10.96.0.70:6379": ("possible", (), ("prerouting",)),
        # iifname != "docker0": every packet of the node's own (certain at OUTPUT), some from outside
        "10.96.0.80:11211": ("certain", ("output",), BOTH),
    }
    found = hijacks(report)
    assert found["10.96.0.40:5432"].destination == "10.244.1.8:5432"
    assert found["10.96.0.20:3306"].destination == "10.244.1.5:3306"
    assert found["10.96.0.20:3306"].evidence[0].chain_path.endswith("hostports -> mysql-a")
    # The map's rule is evidence for postgres alone; web/frontend (in @guarded, accepted first) and the
    # node-exporter (`ip daddr != 10.96.0.50`) are not taken.
    assert [a for a, f in found.items() if any("map" in e.rule for e in f.evidence)] == ["10.96.0.40:5432"]


def _dual_stack(*extra: VirtualService) -> IpvsTable:
    scene = table()
    return IpvsTable((*scene.services, *extra), scene.real_servers)


def _v6(address: str, port: int) -> VirtualService:
    return VirtualService(VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(address), port), "rr")


def _dual_stack_items(drop: str = "") -> list[dict[str, Any]]:
    """scene's cluster with db/mysql-b and db/postgres dual-stack (their IPv6 ClusterIPs in the view)."""
    items = []
    for item in cluster_items():
        name = item["metadata"].get("name")
        if item["kind"] == "Service" and name in ("mysql-b", "postgres") and name != drop:
            six = MYSQL_B6 if name == "mysql-b" else POSTGRES6
            item = builders.service("db", name, [item["spec"]["clusterIP"], six], item["spec"]["ports"])
        if name == drop:
            continue
        items.append(item)
    return items


def _diagnose(tables: RuleSources, ipvs: IpvsTable, items: list[dict[str, Any]] | None) -> DoctorReport:
    view = NodeView(NODE, ipvs, SAFE_FACTS, tables, (), Config())
    cluster = cluster_state_from_items(items) if items is not None else None
    return diagnose(view, cluster, None if items is not None else "offline")


def test_an_inet_tables_dnat_ip_acts_on_ipv4_and_dnat_ip6_on_ipv6() -> None:
    ipvs = _dual_stack(_v6(MYSQL_B6, 3306), _v6(POSTGRES6, 5432))
    report = _diagnose(rules_from("inet.nft-ruleset.json"), ipvs, _dual_stack_items())
    assert summary(report) == {
        "10.96.0.20:3306": ("certain", BOTH, BOTH),
        f"[{POSTGRES6}]:5432": ("certain", BOTH, BOTH),
    }


def test_dockers_not_from_docker0_is_certain_for_the_nodes_own_packets_only() -> None:
    """`! -i docker0`: a packet the node itself sends has no input interface, so at OUTPUT it always holds
    (and Docker's `-i docker0 -j RETURN` never does); at PREROUTING the interface is unknown."""
    report = doctor(rules_from("docker.iptables-nft-save"))
    assert summary(report) == {"10.96.0.70:6379": ("certain", ("output",), BOTH)}
    (redis,) = hijacks(report).values()
    assert (redis.severity, redis.destination) == (Severity.CRITICAL, "172.17.0.2:6379")


def test_return_on_an_unjudgeable_match_makes_what_follows_possible_and_an_unknown_target_too() -> None:
    """A RETURN for pod sources (which source a packet has is not known) before mysql's DNAT: the DNAT may be
    skipped, so it is possible, not certain. NETMAP (not modelled) may rewrite postgres's traffic:
    possible, naming it. The DNAT of the port alone and the plain hostPort after them are still found."""
    report = doctor(rules_from("odd.iptables-legacy-save"))
    assert summary(report) == {
        "10.96.0.20:3306": ("possible", (), BOTH),
        "10.96.0.40:5432": ("possible", (), BOTH),
        "10.96.0.70:6379": ("certain", ("prerouting",), ("prerouting",)),
        "10.96.0.30:80": ("certain", ("prerouting",), ("prerouting",)),
    }
    found = hijacks(report)
    assert found["10.96.0.20:3306"].evidence[0].conditions == ("unless -s 10.244.0.0/16 (return at line 14)",)
    assert "NETMAP" in found["10.96.0.40:5432"].destination
    assert found["10.96.0.20:3306"].severity is Severity.WARNING
    assert found["10.96.0.70:6379"].destination == "the same address, port 6380"


def test_kube_proxys_ipv6_set_is_kube_6_cluster_ip() -> None:
    """kube-proxy names its IPv6 sets KUBE-6-* (pkg/proxy/ipvs/ipset.go, newIPSet). With the IPv6 ClusterIP
    in the view, its ACCEPT protects it; without (a Service the view lacks), the hijack is possible."""
    rules = rules_from("kube-proxy6.ip6tables-legacy-save")
    ipvs = _dual_stack(_v6(MYSQL_B6, 3306))
    assert summary(_diagnose(rules, ipvs, _dual_stack_items())) == {}
    unknown = _diagnose(rules, ipvs, _dual_stack_items(drop="mysql-b"))
    assert summary(unknown) == {f"[{MYSQL_B6}]:3306": ("possible", (), BOTH)}
    (found,) = hijacks(unknown).values()
    assert "KUBE-6-CLUSTER-IP" in " ".join(found.evidence[0].conditions)


def test_kube_proxys_sets_for_external_and_load_balancer_ips() -> None:
    """ClusterIP, externalIP and load-balancer IP sets (both families) from the cluster state; which of
    KUBE-EXTERNAL-IP and -LOCAL holds an externalIP depends on its traffic policy, which the view does not
    keep: unknown, never a guess; the load balancer's narrower sets are known to miss what it lacks."""
    svc = builders.service(
        "web",
        "shop",
        ["10.96.5.5"],
        [builders.port(443)],
        external_ips=["192.0.2.7"],
        lb_ips=["198.51.100.9"],
    )
    endpoints = builders.endpoint_slice(
        "web", "shop-1", "shop", [builders.port(443)], [builders.endpoint("10.244.2.9")]
    )
    names = Names(cluster_state_from_items([builders.node(NODE, "192.168.49.2"), svc, endpoints]), NODE)

    def sets(address: str) -> dict[str, Truth]:
        return names.set_membership(VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(address), 443))

    f, m, t = Truth.FALSE, Truth.MAYBE, Truth.TRUE
    assert sets("10.96.5.5") == {
        "KUBE-CLUSTER-IP": t,
        "KUBE-EXTERNAL-IP": f,
        "KUBE-EXTERNAL-IP-LOCAL": f,
        "KUBE-LOAD-BALANCER": f,
        "KUBE-LOAD-BALANCER-": f,
    }
    assert sets("192.0.2.7")["KUBE-EXTERNAL-IP"] is m and sets("192.0.2.7")["KUBE-CLUSTER-IP"] is f
    balanced = sets("198.51.100.9")
    assert balanced["KUBE-LOAD-BALANCER"] is t and "KUBE-LOAD-BALANCER-" not in balanced
    assert sets("10.96.9.9") == {}  # no Service front: unknown, every set


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("-A HP -p tcp --dport 70000 -j DNAT --to-destination 10.244.1.5:3306", "not understood"),
        ("-A HP -p tcp --dport 3306 -j DNAT", "DNAT without --to-destination"),
        ("-A HP -d nonsense -p tcp --dport 3306 -j DNAT --to-destination 10.244.1.5:3306", "not understood"),
        ("-A HP -p tcp --dport 3306 -j DNAT --to-destination nonsense", "not an address"),
        ('-A HP -p tcp --dport 3306 -m comment --comment "open -j DNAT --to 1.2.3.4', "No closing quotation"),
        ("-A HP -p tcp --dport 3306 -j SOMETHING-NEW --flag", "target SOMETHING-NEW"),
    ],
)
def test_one_unreadable_iptables_rule_makes_only_what_reaches_it_possible(rule: str, why: str) -> None:
    """Before, one rule the reader did not understand made it refuse the file: every hijack on the node was
    lost (in the agent, that tool's whole table was dropped). Now the rule may do anything to what reaches
    it, named in the finding, and everything else is judged as before."""
    text = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:HP - [0:0]\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j HP\n"
        f"{rule}\n"
        "-A HP -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.6:8080\n"
        "COMMIT\n"
    )
    report = doctor(RuleSources(tuple(parse_iptables_save(text, "edited")), (), True))
    found = summary(report)
    assert found["10.96.0.30:80"] == ("certain", ("prerouting",), ("prerouting",))
    if "--dport 3306" in rule and "comment" not in rule:
        # The rule's readable matches still say whom it can touch.
        assert set(found) == {"10.96.0.30:80", "10.96.0.20:3306"}
    assert found["10.96.0.20:3306"] == ("possible", (), ("prerouting",))
    evidence = hijacks(report)["10.96.0.20:3306"].evidence[0]
    assert (
        why in evidence.rule + " ".join(evidence.conditions) + hijacks(report)["10.96.0.20:3306"].destination
    )
    assert "line 6" in evidence.rule


BAD_SPORT = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": {}}}


@pytest.mark.parametrize(
    "expressions",
    [
        [{"jump": {"target": "no-such-chain"}}],
        [BAD_SPORT, {"dnat": {"addr": "10.244.1.5", "port": 3306}}],  # a match it cannot read: may match
        [{"dnat": {"addr": {"weird": 1}}}],
        [{"tproxy": {"port": 15001}}],
        [{"mangle": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "value": "10.244.1.9"}}],
        [{"dnat": {"addr": {"map": {"key": {"meta": {"key": "mark"}}, "data": "@missing"}}}}],
        [{"vmap": {"key": {"meta": {"key": "mark"}}, "data": "@missing"}}],
    ],
)
def test_one_unreadable_nft_rule_makes_only_what_reaches_it_possible(
    expressions: list[dict[str, Any]],
) -> None:
    chain = {"family": "ip", "table": "t", "name": "pre", "type": "nat", "hook": "prerouting", "prio": -100}

    def rule(*expr: dict[str, Any]) -> dict[str, Any]:
        return {"rule": {"family": "ip", "table": "t", "chain": "pre", "expr": list(expr)}}

    tcp3306 = {
        "match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 3306}
    }
    tcp80 = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}
    document = {
        "nftables": [
            {"table": {"family": "ip", "name": "t"}},
            {"chain": chain},
            rule(tcp3306, *expressions),
            rule(tcp80, {"dnat": {"addr": "10.244.1.6", "port": 8080}}),
        ]
    }
    tables = parse_nft_json(json.dumps(document), "ruleset.json")
    found = summary(doctor(RuleSources(tuple(tables), (), True)))
    assert found["10.96.0.30:80"] == ("certain", ("prerouting",), ("prerouting",))
    assert found["10.96.0.20:3306"] == ("possible", (), ("prerouting",))
    assert set(found) <= {"10.96.0.30:80", "10.96.0.20:3306"}


def test_certainty_in_the_json_and_the_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certainty` and `certainHooks` for each hijack; the metric's `certainty` label, which the critical
    alert reads, follows it."""
    state = tmp_path / "cluster.json"
    state.write_text(json.dumps({"kind": "List", "items": cluster_items()}))
    argv = ["doctor", "--node-name", NODE, "--cluster-state", str(state), "-o", "json"]
    argv += ["--nft-ruleset", str(DUMPS / "maps.nft-ruleset.json")]
    assert main(argv, _access(tmp_path)) == 3
    found = {
        f["address"]: f for f in json.loads(capsys.readouterr().out)["findings"] if f["kind"] == "hijack"
    }
    assert (found["10.96.0.70:6379"]["certainty"], found["10.96.0.70:6379"]["severity"]) == (
        "possible",
        "warning",
    )
    assert found["10.96.0.80:11211"]["certainHooks"] == ["output"]
    assert found["10.96.0.80:11211"]["severity"] == "critical"
    view = metrics_view(doctor(rules_from("maps.nft-ruleset.json")).findings)
    assert {port: certainty for _, port, _, certainty in view} == {
        3306: "certain",
        5432: "certain",
        53: "certain",
        8080: "certain",
        6379: "possible",
        11211: "certain",
    }


def test_a_map_element_to_the_services_own_backend_is_not_a_hijack() -> None:
    """kube-proxy's own (iptables or nftables mode) DNAT to an endpoint of the service is not a hijack, also
    when the endpoint comes out of a map."""
    text = (DUMPS / "maps.nft-ruleset.json").read_text().replace("10.244.1.8", "10.244.2.4")  # postgres's
    report = doctor(RuleSources(tuple(parse_nft_json(text, "edited")), (), True))
    assert "10.96.0.40:5432" not in hijacks(report)
    assert "10.96.0.20:3306" in hijacks(report)


def _edge(
    name: str, *services: str, release: str | None = "6.1.0-56-amd64"
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The dump of constructs.EDGE_CASES[name] judged for these virtual services (`tcp:10.96.0.1:80`,
    `tcp:[fd00::1]:80`), with no cluster state: address -> (certainty, hooks where certain)."""
    (path,) = DUMPS.glob(f"edge-{name}.*")
    text = path.read_text()
    tables = (
        parse_nft_json(text, path.name) if path.suffix == ".json" else parse_iptables_save(text, path.name)
    )
    keys = []
    for service in services:
        protocol, rest = service.split(":", 1)
        address, port = rest[1:].split("]:") if rest.startswith("[") else rest.rsplit(":", 1)
        keys.append(
            VirtualService(
                VirtualKey.inet(Protocol(protocol.upper()), ipaddress.ip_address(address), int(port)), "rr"
            )
        )
    found = hijacks_of(tables, IpvsTable(tuple(keys), ()), Names(None, NODE, "offline"), release)
    return {f.address or "?": (f.extra["certainty"], tuple(f.extra["certainHooks"])) for f in found}


def test_an_ip_match_never_holds_for_an_ipv6_packet_even_negated_even_against_an_empty_set() -> None:
    """nft checks the family before `ip daddr` (an implicit dependency), so `ip daddr != @excl` never matches
    IPv6; a set listed without elements (empty, or `nft -j -t`) is unknown, so IPv4 is possible."""
    assert _edge("empty-set", "tcp:[fd00::1]:80", "tcp:10.96.0.1:80") == {"10.96.0.1:80": ("possible", ())}


def test_a_negated_concatenation_keeps_its_protocol_and_family_outside_the_negation() -> None:
    found = _edge("concat-negated", "udp:10.96.0.10:53", "tcp:[fd00::1]:80", "tcp:10.96.0.1:80")
    assert found == {"10.96.0.1:80": ("certain", ("output",))}


@pytest.mark.parametrize("name", ["drop-first", "noop-first"])
def test_an_earlier_nat_chain_that_may_drop_or_translate_first_makes_a_later_capture_possible(
    name: str,
) -> None:
    """netfilter runs a hook's nat chains by priority and stops at the first drop or translation
    (nf_nat_inet_fn): a no-op DNAT first leaves the packet to IPVS."""
    assert _edge(name, "tcp:10.96.0.1:80") == {"10.96.0.1:80": ("possible", ())}


def test_a_stateless_rewrite_outside_the_nat_table_is_a_possible_capture() -> None:
    assert _edge("stateless", "udp:10.96.0.10:53") == {"10.96.0.10:53": ("possible", ())}


def test_dnat_to_ranges_is_read_in_both_tools() -> None:
    assert _edge("ranges", "tcp:10.96.0.1:80", "tcp:10.96.0.1:81") == {
        "10.96.0.1:80": ("certain", ("output",)),
        "10.96.0.1:81": ("certain", ("output",)),
    }
    assert _edge("v6-ranges", "tcp:[fd00::1]:80", "tcp:[fd00::1]:81") == {
        "[fd00::1]:80": ("certain", ("output",)),
        "[fd00::1]:81": ("certain", ("output",)),
    }


def test_a_set_looked_up_by_source_port_is_not_kube_proxys_cluster_ip_lookup() -> None:
    """`--match-set KUBE-CLUSTER-IP dst,src` compares the source port: the view's membership says nothing."""
    assert _edge("set-dst-src", "tcp:10.96.0.1:80") == {"10.96.0.1:80": ("possible", ())}


def test_an_option_value_that_looks_like_an_option_is_a_value() -> None:
    """iptables-save prints `--comment -p` unquoted: the `-p` is the comment."""
    assert _edge("comment-dash", "tcp:10.96.0.1:80") == {"10.96.0.1:80": ("certain", ("output",))}


@pytest.mark.parametrize(
    ("release", "negated"),
    [
        ("6.1.0-56-amd64", ("certain", ("output",))),
        ("4.19.0-27-amd64", ("possible", ())),
        (None, ("possible", ())),
    ],
)
def test_nf_tables_interface_matches_at_output_depend_on_the_kernel(
    release: str | None, negated: tuple[str, tuple[str, ...]]
) -> None:
    """A packet the node sends has no input interface: `-i eth1` never matches it; `! -i docker0` always does
    on kernels from 5.3, where nf_tables compares the missing name as "" (before, the rule never matched)."""
    assert _edge("interfaces", "tcp:10.96.0.1:80", "tcp:10.96.0.1:82", release=release) == {
        "10.96.0.1:82": negated
    }


def test_a_save_dump_without_its_header_takes_its_family_from_its_addresses() -> None:
    """`grep -v '^#'` drops the header that names the tool: an ip6tables dump is still IPv6 by its addresses,
    and one with no address at all may be either, never certain."""
    v6 = "\n".join(
        line
        for line in (DUMPS / "edge-v6-ranges.ip6tables-legacy-save").read_text().splitlines()
        if not line.startswith("#")
    )
    (table6,) = parse_iptables_save(v6, "v6")
    assert table6.family == "ip6" and not table6.family_guessed
    bare = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n"
    (either,) = parse_iptables_save(bare, "bare")
    assert either.family_guessed
    services = (
        VirtualService(VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(a), 80), "rr")
        for a in ("10.96.0.1", "fd00::1")
    )
    found = hijacks_of([either], IpvsTable(tuple(services), ()), Names(None, NODE, "offline"), None)
    assert {f.address: f.extra["certainty"] for f in found} == {
        "10.96.0.1:80": "possible",
        "[fd00::1]:80": "possible",
    }


def test_the_nodes_own_ip_sets_decide_kube_proxys_guard_not_the_cluster_state() -> None:
    """kube-proxy's ACCEPT for KUBE-CLUSTER-IP members protects only what the set holds now. The cluster state
    says what kube-proxy means to put there; a set that lags it (kube-proxy not synced yet, or not running)
    leaves db/mysql-b's ClusterIP to the hostPort, and the kernel sends it there. `ipset save` is the truth:
    read on the node, or given as --ipset-save."""
    tables = rules_from("kube-proxy-first.iptables-legacy-save").tables
    for dump, expected in (
        ("kube-proxy.ipset-save", {}),
        ("kube-proxy-lagging.ipset-save", {"10.96.0.20:3306": ("certain", BOTH, BOTH)}),
    ):
        ipsets = parse_ipset_save((DUMPS / dump).read_text(), dump)
        assert summary(doctor(RuleSources(tables, (), True, ipsets))) == expected, dump
    # Without the node's sets, the cluster state's model: protected.
    assert summary(doctor(RuleSources(tables, (), True))) == {}


def test_ipset_save_is_read_and_bad_lines_are_named() -> None:
    ipsets = parse_ipset_save((DUMPS / "kube-proxy.ipset-save").read_text(), "sets")
    cluster = ipsets["KUBE-CLUSTER-IP"]
    assert (cluster.kind, cluster.family, len(cluster.members)) == ("hash:ip,port", 4, 8)
    assert (ipaddress.ip_address("10.96.0.10"), "udp", 53) in cluster.members
    with pytest.raises(InputError, match="sets: line 2: 'x' is not address,protocol:port"):
        parse_ipset_save("create S hash:ip,port family inet\nadd S x\n", "sets")
    with pytest.raises(InputError, match="sets: line 1: expected `create` or `add`"):
        parse_ipset_save("hello\n", "sets")


def test_live_ip_sets_are_read_only_when_the_module_is_loaded(tmp_path: Path) -> None:
    """Asking ipset would load ip_set on a node that has none: without the module there is no set at all."""
    (tmp_path / "module").mkdir()
    assert read_live_ipsets(tmp_path / "module" / "ip_set") == ({}, None)
    ipsets, why = read_live_ipsets(tmp_path / "no-sysfs" / "ip_set")
    assert ipsets is None and why is not None and "cluster" in why


def test_cli_reads_ipset_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "cluster.json"
    state.write_text(json.dumps({"kind": "List", "items": cluster_items()}))
    argv = ["doctor", "--node-name", NODE, "--cluster-state", str(state), "-o", "json"]
    argv += ["--iptables-save", str(DUMPS / "kube-proxy-first.iptables-legacy-save")]

    def hijacked(ipsets: str) -> list[tuple[str, str]]:
        main([*argv, "--ipset-save", str(DUMPS / ipsets)], _access(tmp_path))
        found = json.loads(capsys.readouterr().out)["findings"]
        return [(f["address"], f["certainty"]) for f in found if f["kind"] == "hijack"]

    assert hijacked("kube-proxy.ipset-save") == []
    assert hijacked("kube-proxy-lagging.ipset-save") == [("10.96.0.20:3306", "certain")]
