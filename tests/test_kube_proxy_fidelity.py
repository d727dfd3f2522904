"""The reaper claims only what kube-proxy builds, checked against an independent oracle.

`tests/kube_proxy_oracle.py` was written from kube-proxy's source by someone who had not read `mapping` or
`cluster/parse`, and imports neither. The scenarios below cover every Service type, family setting, excluding
label, ingress ipMode, externalIPs and NodePorts of both families, every endpoint condition reading, and
another IPVS user's virtual services (direct-routing real servers at weight 0) on every address:port in
sight. Two invariants:
- safety: nothing is reaped in a virtual service kube-proxy would not build, in excludeCIDRs, or whose
  endpoint kube-proxy reads as ready or serving;
- completeness: under `immediate`, a weight-0 real server in a virtual service kube-proxy builds for one
  Service port, whose endpoint is gone or not serving, is reaped, except where docs/kube-proxy-fidelity.md
  says the reaper deliberately keeps more (each exception is named in `_kept_on_purpose`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Breaker, Config, SysctlMode
from ipvs_reaper.mapping import EndpointState, EndpointStatus
from ipvs_reaper.planner import Action, Decision, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests import kube_proxy_oracle as oracle

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CLUSTER_V4, CLUSTER_V6 = ["10.96.0.1", "10.96.0.2"], ["fd00:96::1", "fd00:96::2"]
# The last: an externalIP that is the node's own address (bound to kube-ipvs0 and on its NIC).
EXTERNAL = ["203.0.113.1", "2001:db8::1", "192.168.0.1"]
INGRESS = ["198.51.100.1", "2001:db8:1::1"]
# The node's interfaces: a NIC in both families, IPv4 and IPv6 link-local, loopback.
NODE_IP, NODE_IP6 = "192.168.0.1", "fd00:49::1"
LOCAL = [NODE_IP, NODE_IP6, "169.254.1.1", "fe80::1", "127.0.0.1", "10.244.0.1"]
POD_IPS = ["10.1.0.1", "10.1.0.2", "fd00:1::1", "fd00:1::2"]
# Another IPVS user's direct-routing real servers (keepalived, kube-vip, another proxy).
OTHER_REALS = ["192.0.2.10", "2001:db8:2::10"]
# A Service port may be a number in the NodePort range too: then it meets NodePorts on the same address.
SERVICE_PORTS, NODE_PORTS, TARGET_PORTS = [80, 443, 30001], [30001, 30002], [8080, 8443]
PROTOCOLS = ["TCP", "TCP", "UDP"]
NAMES = [("ns1", "a"), ("ns1", "b"), ("ns2", "a")]
EXCLUDING = [
    ("service.kubernetes.io/service-proxy-name", "other-proxy"),
    ("service.kubernetes.io/headless", ""),
]
CONDITION = st.sampled_from([True, False, None, "absent"])


@st.composite
def services(draw: st.DrawFn, namespace: str, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]))
    families = draw(st.sampled_from([["IPv4"], ["IPv6"], ["IPv4", "IPv6"], ["IPv6", "IPv4"]]))
    policy = (
        "SingleStack"
        if len(families) == 1
        else draw(st.sampled_from(["PreferDualStack", "RequireDualStack"]))
    )
    pools = {"IPv4": CLUSTER_V4, "IPv6": CLUSTER_V6}
    cluster_ips = [draw(st.sampled_from(pools[family])) for family in families]
    spec: dict[str, Any] = {"type": kind, "ports": []}
    headless = draw(st.integers(0, 9)) == 0
    if kind == "ExternalName":
        spec["externalName"] = "db.example"
        if draw(st.booleans()):
            # The API refuses it; kube-proxy still skips it "even if ClusterIP is set" (ShouldSkipService).
            spec.update(clusterIP=cluster_ips[0], clusterIPs=cluster_ips, ipFamilies=families)
    elif headless:
        spec.update(clusterIP="None", clusterIPs=["None"], ipFamilies=families, ipFamilyPolicy=policy)
    else:
        spec.update(
            clusterIP=cluster_ips[0], clusterIPs=cluster_ips, ipFamilies=families, ipFamilyPolicy=policy
        )
        skew = draw(st.integers(0, 9))
        if skew in (0, 2):
            del spec["ipFamilies"]  # an object from before dual-stack: kube-proxy reads the singular field
        if skew in (1, 2):
            # Hand-made or skewed: the two fields disagree (GetClusterIPByFamily reads one of them).
            spec["clusterIPs"] = [draw(st.sampled_from(pools[family])) for family in reversed(families)]
    # As the API allows: one port may be unnamed, several must have names and differ in port or protocol.
    count = draw(st.integers(1, 2))
    names = [draw(st.sampled_from(["", "a"]))] if count == 1 else ["a", "b"]
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(SERVICE_PORTS), st.sampled_from(PROTOCOLS)),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    for port_name, (number, protocol) in zip(names, pairs, strict=True):
        entry: dict[str, Any] = {"name": port_name, "port": number, "protocol": protocol}
        if kind in ("NodePort", "LoadBalancer") or draw(st.integers(0, 9)) == 0:
            entry["nodePort"] = draw(st.sampled_from(NODE_PORTS))
        spec["ports"].append(entry)
    external = draw(st.lists(st.sampled_from(EXTERNAL), max_size=2, unique=True))
    if external:
        spec["externalIPs"] = external
    if draw(st.booleans()):
        spec["selector"] = {"app": name}
    ingress = [
        {"ip": ip} if mode is None else {"ip": ip, "ipMode": mode}
        for ip in draw(st.lists(st.sampled_from(INGRESS), max_size=2, unique=True))
        for mode in [draw(st.sampled_from([None, "VIP", "Proxy"]))]
    ]
    metadata: dict[str, Any] = {"namespace": namespace, "name": name}
    if draw(st.integers(0, 5)) == 0:
        label, value = draw(st.sampled_from(EXCLUDING))
        metadata["labels"] = {label: value}
    return {
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress} if ingress else {}},
    }


def _condition_map(draw: st.DrawFn) -> dict[str, Any]:
    conditions = {}
    for key in ("ready", "serving", "terminating"):
        value = draw(CONDITION)
        if value != "absent":
            conditions[key] = value
    return conditions


@st.composite
def slices(draw: st.DrawFn, service: dict[str, Any], index: int) -> dict[str, Any]:
    meta = service["metadata"]
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    addresses = [a for a in POD_IPS if (":" in a) == (family == "IPv6")]
    endpoints = [
        {
            # Mostly one address, as the API allows today; sometimes several.
            "addresses": draw(st.lists(st.sampled_from(addresses), min_size=1, max_size=2, unique=True)),
            "conditions": _condition_map(draw),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    for endpoint in endpoints:
        if family == "IPv4" and draw(st.integers(0, 2)) == 0:
            # The API's IPv4 check took "::ffff:10.1.0.1" before its strict validation.
            endpoint["addresses"] = [f"::ffff:{a}" for a in endpoint["addresses"]]
    ports = [
        {"name": p["name"], "port": draw(st.sampled_from(TARGET_PORTS)), "protocol": p["protocol"]}
        for p in service["spec"]["ports"]
        if draw(st.integers(0, 4)) > 0
    ]
    # The EndpointSlice controller copies the Service's labels.
    labels = {**meta.get("labels", {}), "kubernetes.io/service-name": meta["name"]}
    return {
        "kind": "EndpointSlice",
        "addressType": family,
        "metadata": {"namespace": meta["namespace"], "name": f"{meta['name']}-{index}", "labels": labels},
        "ports": ports,
        "endpoints": endpoints,
    }


@dataclass(frozen=True)
class World:
    items: list[dict[str, Any]]
    node: oracle.NodeSetup
    table: IpvsTable
    # The node's addresses handed to the reaper: the interfaces', kube-ipvs0's too (`hostname -I`), or () when
    # unknown (offline without --node-addresses: the Node object's InternalIP stands in).
    local_given: tuple[str, ...]
    hostname_i: bool = False


def _sight(items: list[dict[str, Any]]) -> list[VirtualKey]:
    """Every address:port a Service names, with its ports, and its NodePorts on every address in sight,
    whether kube-proxy builds it or not: where another IPVS user's virtual service could be taken for one of
    kube-proxy's."""
    services = [i for i in items if i["kind"] == "Service"]
    everywhere = {*LOCAL, "198.18.0.1", *(a for s in services for a in _named(s))}
    found = set()
    for service in services:
        for p in service["spec"]["ports"]:
            found |= {(p["protocol"], a, p["port"]) for a in _named(service)}
            if "nodePort" in p:
                found |= {(p["protocol"], a, p["nodePort"]) for a in everywhere}
    return [
        VirtualKey.inet(Protocol(protocol), ipaddress.ip_address(a), port)
        for protocol, a, port in sorted(found)
    ]


def _oracle_key(key: VirtualKey) -> tuple[str, str, int]:
    return (key.protocol.value, str(key.address), key.port)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    items: list[dict[str, Any]] = [draw(services(ns, name)) for ns, name in names]
    for service in list(items):
        for index in range(draw(st.sampled_from([0, 1, 1, 2]))):
            items.append(draw(slices(service, index)))
    if not any(i["kind"] == "EndpointSlice" for i in items):
        # Every real cluster has the `kubernetes` Service's slice; without one the view is unusable.
        items.append(draw(slices(items[0], 9)))
    items.append(
        {
            "kind": "Node",
            "metadata": {"name": "node-a"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "ExternalIP", "address": "198.18.0.1"},  # a cloud NAT address: no interface
                    {"type": "Hostname", "address": "node-a"},
                ]
            },
        }
    )
    local = tuple(draw(st.lists(st.sampled_from(LOCAL), min_size=1, max_size=4, unique=True)))
    local = (NODE_IP, *(a for a in local if a != NODE_IP))  # the InternalIP is an interface's address
    node = oracle.NodeSetup(
        name="node-a",
        families=frozenset({4, 6}),
        local_addresses=local,
        node_port_cidrs=draw(
            st.sampled_from([(), (), (), ("192.168.0.0/16",), ("192.168.0.0/16", "fd00::/8")])
        ),
        exclude_cidrs=draw(st.sampled_from([(), (), ("203.0.113.0/24",), ("fd00:96::/64",)])),
    )
    built = oracle.virtual_services(items, node)
    built_keys = [
        VirtualKey.inet(Protocol(protocol), ipaddress.ip_address(address), port)
        for protocol, address, port in sorted(built)
    ]
    sight = _sight(items)
    keys = draw(st.lists(st.sampled_from(built_keys), max_size=5, unique=True)) if built_keys else []
    keys += draw(st.lists(st.sampled_from(sight), max_size=4, unique=True)) if sight else []
    reals: dict[RealKey, RealServer] = {}
    services_table: dict[VirtualKey, VirtualService] = {}
    # The slices' endpoints, so that real servers meet every condition reading often.
    in_slices = sorted(
        {
            (str(oracle.parse_ip_sloppy(address)), p["port"])
            for i in items
            if i["kind"] == "EndpointSlice"
            for e in i["endpoints"]
            for address in e["addresses"]
            for p in i["ports"]
        }
    )
    for key in keys:
        services_table[key] = VirtualService(key, "rr")
        family_pods = [a for a in POD_IPS if ipaddress.ip_address(a).version == key.family]
        family_others = [a for a in OTHER_REALS if ipaddress.ip_address(a).version == key.family]
        family_endpoints = [(a, p) for a, p in in_slices if ipaddress.ip_address(a).version == key.family]
        for _ in range(draw(st.integers(1, 3))):
            choice = draw(st.integers(0, 5))
            if choice == 0:
                # Another IPVS user's real server: direct routing, same port, weight 0 and idle.
                address, port, forward = draw(st.sampled_from(family_others)), key.port, "Route"
            elif choice < 4 and family_endpoints:
                (address, port), forward = draw(st.sampled_from(family_endpoints)), "Masq"
            else:
                address = draw(st.sampled_from(family_pods))
                port, forward = draw(st.sampled_from(TARGET_PORTS)), "Masq"
            real_key = RealKey(key, ipaddress.ip_address(address), port)
            reals[real_key] = RealServer(real_key, forward, draw(st.sampled_from([0, 0, 0, 1])), 0, 0)
    # `hostname -I` on an IPVS node also lists every address bound to kube-ipvs0.
    hostname_i = tuple(
        dict.fromkeys([*local, *(a for i in items if i["kind"] == "Service" for a in _named(i))])
    )
    given = draw(st.sampled_from(["interfaces", "interfaces", "unknown", "hostname -I"]))
    local_given = {"interfaces": local, "unknown": (), "hostname -I": hostname_i}[given]
    table = IpvsTable(tuple(services_table.values()), tuple(reals.values()))
    return World(items, node, table, local_given, given == "hostname -I")


def _named(service: dict[str, Any]) -> list[str]:
    """Every address a Service names (not its NodePorts')."""
    spec = service["spec"]
    cluster_ips = [spec.get("clusterIP", ""), *spec.get("clusterIPs", [])]
    addresses = [a for a in dict.fromkeys(cluster_ips) if a not in ("", "None")] + spec.get("externalIPs", [])
    return addresses + [i["ip"] for i in service["status"]["loadBalancer"].get("ingress", [])]


def _plan(world: World, policy: PolicyChoice) -> tuple[Decision, ...]:
    config = Config(
        expire_nodest_conn=SysctlMode.ENFORCE,
        breaker=Breaker(max_share=1.0, min_deletions=0, max_per_sweep=1_000_000),
        node_port_networks=tuple(ipaddress.ip_network(n) for n in world.node.node_port_cidrs),
        exclude_networks=tuple(ipaddress.ip_network(n) for n in world.node.exclude_cidrs),
    )
    cluster = cluster_state_from_items(world.items).with_node_port_addresses(
        "node-a",
        tuple(ipaddress.ip_address(a) for a in world.local_given),
        config.node_port_networks,
        world.hostname_i,
    )
    plan = plan_sweep(
        SweepInputs(
            table=world.table,
            cluster=cluster,
            node_name="node-a",
            config=config,
            expire_nodest_conn=1,
            now=NOW,
            first_seen={},
            policy=policy,
        )
    )
    assert plan.refusal is None, plan.refusal
    return plan.decisions


def _excluded(world: World, key: VirtualKey) -> bool:
    return any(
        key.address is not None and key.address.version == n.version and key.address in n
        for n in (ipaddress.ip_network(c) for c in world.node.exclude_cidrs)
    )


def _slices_of(world: World, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        i
        for i in world.items
        if i["kind"] == "EndpointSlice"
        and i["metadata"]["namespace"] == namespace
        and i["metadata"]["labels"]["kubernetes.io/service-name"] == name
    ]


def check_safe(world: World, decisions: tuple[Decision, ...]) -> None:
    built = oracle.virtual_services(world.items, world.node)
    for decision in decisions:
        if decision.action is not Action.REAP:
            continue
        rs = decision.real_server
        for ref, _ in built.get(_oracle_key(rs.key.virtual), ()):
            namespace, _, name = ref.partition("/")
            # Not kube-proxy's rule but the view's: the EndpointSlice controller always writes a slice.
            selector = _service(world, (namespace, name))["spec"].get("selector")
            assert not selector or _slices_of(world, namespace, name), (
                f"reaped with no slice in view: {decision}"
            )
        virtual = _oracle_key(rs.key.virtual)
        assert virtual in built, f"reaped in a virtual service kube-proxy does not build: {decision}"
        assert not _excluded(world, rs.key.virtual), f"reaped in excludeCIDRs: {decision}"
        wanted = oracle.wanted_real_servers(world.items, world.node, virtual)
        assert (str(rs.key.address), rs.key.port) not in wanted, f"reaped a wanted real server: {decision}"
        assert rs.weight == 0
        # Not the oracle's (it models one release and no other proxy): an address:port several Service ports
        # name, whether this kube-proxy builds it for them or not, is never judged.
        assert len(_naming(world, rs.key.virtual)) == 1, f"reaped on an address:port several name: {decision}"


def _service(world: World, ref: tuple[str, str]) -> dict[str, Any]:
    return next(
        i
        for i in world.items
        if i["kind"] == "Service" and (i["metadata"]["namespace"], i["metadata"]["name"]) == ref
    )


def _kept_on_purpose(
    world: World, rs: RealServer, service_ref: tuple[str, str], port_name: str
) -> str | None:
    """Where docs/kube-proxy-fidelity.md says the reaper keeps more than kube-proxy would."""
    service = _service(world, service_ref)
    own_slices = _slices_of(world, *service_ref)
    if service["spec"].get("selector") and not own_slices:
        return "a Service with a selector and no slice: endpoints unknown"
    protocol = rs.key.virtual.protocol.value
    for endpoint_slice in own_slices:
        for p in endpoint_slice["ports"]:
            if (p["name"], p["protocol"], p["port"]) != (port_name, protocol, rs.key.port):
                continue
            for endpoint in endpoint_slice["endpoints"]:
                conditions = endpoint["conditions"]
                # Every address counts and a missing serving is true (kube-proxy reads only the first).
                addresses = {str(oracle.parse_ip_sloppy(a)) for a in endpoint["addresses"]}
                if str(rs.key.address) in addresses and (
                    conditions.get("ready") is not False or conditions.get("serving") is not False
                ):
                    return "an endpoint the API calls ready or serving, at any of its addresses"
    if len(_naming(world, rs.key.virtual)) > 1:
        return "several Service ports name this address:port, built here or not: never judged"
    node_port = any(p.get("nodePort") == rs.key.virtual.port for p in service["spec"]["ports"])
    if node_port and set(world.local_given) != set(world.node.local_addresses):
        return "NodePorts with the interfaces unknown or mixed with kube-ipvs0's: only surely the node's"
    address = rs.key.virtual.address
    named = {a for s in world.items if s["kind"] == "Service" for a in _named(s)}
    if node_port and world.node.node_port_cidrs and (str(address) in named or address.is_link_local):
        return "NodePorts inside nodePortAddresses on kube-ipvs0's or link-local addresses: not claimed"
    return None


def _naming(world: World, key: VirtualKey) -> set[tuple[str, str]]:
    """The (Service, port name) pairs whose addresses or NodePorts (on any address of the node) are `key`."""
    node_addresses = {*world.node.local_addresses, *world.local_given, NODE_IP}
    # With nodePortAddresses kube-proxy walks kube-ipvs0 too: a NodePort on any Service address inside them.
    cidrs = [ipaddress.ip_network(c) for c in world.node.node_port_cidrs]
    services = [i for i in world.items if i["kind"] == "Service"]
    node_addresses |= {
        a
        for s in services
        for a in _named(s)
        if any(ipaddress.ip_address(a).version == n.version and ipaddress.ip_address(a) in n for n in cidrs)
    }
    found = set()
    for service in (i for i in world.items if i["kind"] == "Service"):
        ref = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
        for p in service["spec"]["ports"]:
            if p["protocol"] != key.protocol.value:
                continue
            named = p["port"] == key.port and str(key.address) in _named(service)
            node_port = p.get("nodePort") == key.port and str(key.address) in node_addresses
            if named or node_port:
                found.add((ref, p["name"]))
    return found


def check_complete(world: World, decisions: tuple[Decision, ...]) -> int:
    """Returns how many real servers it required to be reaped."""
    required = 0
    built = oracle.virtual_services(world.items, world.node)
    for decision in decisions:
        rs = decision.real_server
        builders = built.get(_oracle_key(rs.key.virtual), set())
        if rs.weight > 0 or len(builders) != 1 or _excluded(world, rs.key.virtual):
            continue
        ref, port_name = next(iter(builders))
        namespace, _, name = ref.partition("/")
        known = oracle.known_endpoints(world.items, world.node, _oracle_key(rs.key.virtual))
        if known.get((str(rs.key.address), rs.key.port)) in ("ready", "serving"):
            continue
        if _kept_on_purpose(world, rs, (namespace, name), port_name) is not None:
            continue
        assert decision.action is Action.REAP, f"kube-proxy's and no longer wanted, yet kept: {decision}"
        required += 1
    return required


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_nothing_kube_proxy_would_not_build_or_still_wants_is_reaped(world: World) -> None:
    check_safe(world, _plan(world, PolicyChoice.IMMEDIATE))
    check_safe(world, _plan(world, PolicyChoice.DEFAULT))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_what_kube_proxy_builds_and_no_longer_wants_is_reaped_under_immediate(world: World) -> None:
    check_complete(world, _plan(world, PolicyChoice.IMMEDIATE))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_another_ipvs_users_real_servers_are_never_reaped_outside_kube_proxys_services(world: World) -> None:
    built = oracle.virtual_services(world.items, world.node)
    for decision in _plan(world, PolicyChoice.IMMEDIATE):
        if decision.real_server.weight > 0:
            continue
        if _oracle_key(decision.real_server.key.virtual) not in built:
            assert decision.action is Action.KEEP
            assert "not kube-proxy's" in decision.reason or "excludeCIDRs" in decision.reason, decision


def test_the_scenarios_reach_every_case() -> None:
    """The generator is only as good as what it reaches: reaps, keeps of foreign virtual services, and each
    deliberate exception, in a fixed sample."""
    seen: set[str] = set()
    required = []

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(worlds())
    def sample(world: World) -> None:
        decisions = _plan(world, PolicyChoice.IMMEDIATE)
        required.append(check_complete(world, decisions))
        for decision in decisions:
            seen.add(decision.action.value)
            for needle in (
                "ExternalName",
                "ipMode Proxy",
                "ClusterIP",
                "labelled",
                "excludeCIDRs",
                "headless",
            ):
                if needle in decision.reason:
                    seen.add(needle)

    sample()
    # The completeness invariant is not emptied by its exceptions: it requires reaps in many scenarios.
    assert sum(1 for n in required if n) > 50, sum(required)
    assert {"reap", "keep", "ExternalName", "ipMode Proxy", "labelled", "excludeCIDRs", "headless"} <= seen, (
        seen
    )


def test_an_oracle_check_can_fail() -> None:
    """The invariants are not vacuous: a reap in an ExternalName Service's externalIP fails them."""
    service = {
        "kind": "Service",
        "metadata": {"namespace": "ns1", "name": "db"},
        "spec": {
            "type": "ExternalName",
            "externalName": "db.example",
            "externalIPs": ["203.0.113.1"],
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
        },
        "status": {},
    }
    key = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("203.0.113.1"), 80)
    real = RealServer(RealKey(key, ipaddress.ip_address("192.0.2.10"), 80), "Route", 0, 0, 0)
    world = World(
        [service], oracle.NodeSetup("node-a", frozenset({4, 6}), (NODE_IP,)), IpvsTable((), (real,)), ()
    )
    wrong = Decision(real, "ns1/db", EndpointStatus(EndpointState.GONE), Action.REAP, "pretend")
    try:
        check_safe(world, (wrong,))
    except AssertionError:
        return
    raise AssertionError("check_safe passed a reap in a virtual service kube-proxy does not build")
