"""The safety rule, proven over generated tables and cluster states.

Which real servers the cluster still wants is decided by `tests/kube_proxy_oracle.py`, a model of kube-proxy
written from its source by someone who had not read the product's mapping code, so a mapping bug cannot hide
itself. The policy, breaker, sysctl and actor rules are checked here; kube-proxy's own corners in
`test_kube_proxy_fidelity.py`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs_reaper.actor import Outcome, apply_plan
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.cluster.sources import parse_cluster_document
from ipvs_reaper.config import Breaker, Config, ReapMode, Rule, StatePolicy, SysctlMode
from ipvs_reaper.errors import InputError
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.mapping import EndpointState
from ipvs_reaper.planner import Action, Plan, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests import kube_proxy_oracle as oracle

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POD_IPS = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "fd00::1", "fd00::2"]
VIPS = ["10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00:96::1", "192.168.0.1", "203.0.113.1"]
NODE_IP = "192.168.0.1"
# An address of the node's own interfaces (cni0) that no Node object lists: kube-proxy puts NodePorts there
# too.
LOCAL_IP = "10.244.0.1"
SERVICE_PORTS = [80, 443]
NODE_PORTS = [30001, 30002]
TARGET_PORTS = [8080, 8443]
# Weighted towards matches, so that mapped real servers with a matching endpoint come up often.
PORT_NAMES = ["", "", "a"]
PROTOCOLS = ["TCP", "TCP", "TCP", "UDP", "SCTP"]
SERVICE_NAMES = [("ns1", "s1"), ("ns1", "s2"), ("ns2", "s1")]
ANNOTATIONS = [None, "gone: {reap: never}", '{"notReady": {"reap": "always"}}', "gone: {reap: [", "42"]
maybe_bool = st.sampled_from([True, False, None])


@st.composite
def service_objects(draw: st.DrawFn) -> dict[str, Any]:
    namespace, name = draw(st.sampled_from(SERVICE_NAMES))
    ports = []
    for _ in range(draw(st.integers(1, 2))):
        entry: dict[str, Any] = {
            "name": draw(st.sampled_from(PORT_NAMES)),
            "port": draw(st.sampled_from(SERVICE_PORTS)),
            "protocol": draw(st.sampled_from(PROTOCOLS)),
        }
        if draw(st.booleans()):
            entry["nodePort"] = draw(st.sampled_from(NODE_PORTS))
        ports.append(entry)
    annotation = draw(st.sampled_from(ANNOTATIONS))
    metadata: dict[str, Any] = {"namespace": namespace, "name": name}
    if annotation is not None:
        metadata["annotations"] = {"ipvs-reaper.io/policy": annotation}
    spec: dict[str, Any] = {"externalIPs": draw(st.lists(st.sampled_from(VIPS), max_size=1)), "ports": ports}
    cluster_ips = draw(st.lists(st.sampled_from([*VIPS, "None"]), max_size=2, unique=True))
    if cluster_ips:
        # As the API writes them: clusterIP is the first, ipFamilies names each (a headless "None" the first).
        families = ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips if ip != "None"]
        spec.update(clusterIP=cluster_ips[0], clusterIPs=cluster_ips, ipFamilies=families or ["IPv4"])
    return {
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "loadBalancer": {
                "ingress": [{"ip": ip} for ip in draw(st.lists(st.sampled_from(VIPS), max_size=1))]
            }
        },
    }


@st.composite
def slice_objects(draw: st.DrawFn) -> dict[str, Any]:
    namespace, service_name = draw(st.sampled_from(SERVICE_NAMES))
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    addresses = [a for a in POD_IPS if (":" in a) == (family == "IPv6")]
    endpoints = []
    for _ in range(draw(st.integers(0, 4))):
        conditions = {key: draw(maybe_bool) for key in ("ready", "serving", "terminating")}
        endpoints.append(
            {
                "addresses": [draw(st.sampled_from(addresses))],
                "conditions": {k: v for k, v in conditions.items() if v is not None},
            }
        )
    ports = [
        {
            "name": draw(st.sampled_from(PORT_NAMES)),
            "port": draw(st.sampled_from(TARGET_PORTS)),
            "protocol": draw(st.sampled_from(PROTOCOLS)),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {
        "kind": "EndpointSlice",
        "addressType": family,
        "metadata": {
            "namespace": namespace,
            "name": f"{service_name}-{draw(st.integers(0, 99))}",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "ports": ports,
        "endpoints": endpoints,
    }


@st.composite
def cluster_items(draw: st.DrawFn) -> list[dict[str, Any]]:
    # Usually a usable view (both kinds present), sometimes not.
    usable = draw(st.integers(0, 9)) < 8
    items: list[dict[str, Any]] = draw(st.lists(service_objects(), min_size=int(usable), max_size=4))
    items += draw(st.lists(slice_objects(), min_size=int(usable), max_size=5))
    if draw(st.booleans()):
        items.append(
            {
                "kind": "Node",
                "metadata": {"name": "node-a"},
                "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
            }
        )
    return items


ServiceRef = tuple[str, str]


def _claimable_keys(items: list[dict[str, Any]]) -> dict[VirtualKey, set[ServiceRef]]:
    """Every virtual service a Service could claim on a node with both addresses (mapped or not)."""
    keys: dict[VirtualKey, set[ServiceRef]] = {}
    for item in items:
        if item["kind"] != "Service":
            continue
        ref = (item["metadata"]["namespace"], item["metadata"]["name"])
        fronts = [ip for ip in item["spec"].get("clusterIPs", []) if ip != "None"] + item["spec"][
            "externalIPs"
        ]
        fronts += [i["ip"] for i in item["status"]["loadBalancer"]["ingress"]]
        for p in item["spec"]["ports"]:
            protocol = Protocol(p["protocol"])
            found = [VirtualKey.inet(protocol, ipaddress.ip_address(ip), p["port"]) for ip in fronts]
            if "nodePort" in p:
                found += [
                    VirtualKey.inet(protocol, ipaddress.ip_address(ip), p["nodePort"])
                    for ip in (NODE_IP, LOCAL_IP)
                ]
            for key in found:
                keys.setdefault(key, set()).add(ref)
    return keys


def _endpoint_targets(items: list[dict[str, Any]]) -> dict[ServiceRef, list[tuple[str, int]]]:
    targets: dict[ServiceRef, list[tuple[str, int]]] = {}
    for item in items:
        if item["kind"] != "EndpointSlice":
            continue
        ref = (item["metadata"]["namespace"], item["metadata"]["labels"]["kubernetes.io/service-name"])
        for p in item["ports"]:
            for e in item["endpoints"]:
                targets.setdefault(ref, []).append((e["addresses"][0], p["port"]))
    return targets


@st.composite
def ipvs_tables(draw: st.DrawFn, items: list[dict[str, Any]]) -> IpvsTable:
    """Mostly built from the cluster's own Services and their endpoints, so that the interesting cases
    (mapped, matching endpoint, every condition) come up often; sometimes from anywhere."""
    claimable = _claimable_keys(items)
    targets = _endpoint_targets(items)
    services: dict[VirtualKey, VirtualService] = {}
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 9))
        if claimable and choice < 7:
            key = draw(st.sampled_from(sorted(claimable, key=VirtualKey.sort_key)))
        elif choice == 7:
            key = VirtualKey.firewall_mark(draw(st.integers(1, 3)))
        else:
            key = VirtualKey.inet(
                Protocol(draw(st.sampled_from(PROTOCOLS))),
                ipaddress.ip_address(draw(st.sampled_from(VIPS))),
                draw(st.sampled_from(SERVICE_PORTS + NODE_PORTS)),
            )
        services[key] = VirtualService(key, "rr")
    reals: dict[RealKey, RealServer] = {}
    for key in services:
        own = [t for ref in sorted(claimable.get(key, ())) for t in targets.get(ref, [])]
        for _ in range(draw(st.integers(0, 4))):
            if own and draw(st.integers(0, 9)) < 8:
                address_text, port = draw(st.sampled_from(own))
            else:
                address_text, port = draw(st.sampled_from(POD_IPS)), draw(st.sampled_from(TARGET_PORTS))
            real_key = RealKey(key, ipaddress.ip_address(address_text), port)
            reals[real_key] = RealServer(
                real_key,
                "Masq",
                draw(st.sampled_from([0, 0, 0, 1, 2])),
                draw(st.integers(0, 3)),
                draw(st.integers(0, 9)),
            )
    return IpvsTable(tuple(services.values()), tuple(reals.values()))


rules = st.builds(
    Rule,
    reap=st.sampled_from([ReapMode.ALWAYS, ReapMode.ALWAYS, ReapMode.IDLE, ReapMode.IDLE, ReapMode.NEVER]),
    grace_seconds=st.sampled_from([0, 0, 30]),
    max_wait_seconds=st.sampled_from([None, 30, 300]),
).filter(lambda r: r.max_wait_seconds is None or r.max_wait_seconds >= r.grace_seconds)
configs = st.builds(
    Config,
    policy=st.builds(StatePolicy, gone=rules, terminating=rules, not_ready=rules),
    expire_nodest_conn=st.sampled_from(
        [SysctlMode.ENFORCE, SysctlMode.ENFORCE, SysctlMode.REPORT_ONLY, SysctlMode.IGNORE]
    ),
    breaker=st.builds(
        Breaker,
        # Mostly permissive, so that sweeps do reap and the checks after the breaker are exercised.
        max_share=st.sampled_from([0.1, 0.5, 1.0, 1.0]),
        min_deletions=st.sampled_from([0, 3, 100, 100]),
        max_per_sweep=st.sampled_from([1, 3, 100]),
    ),
)


@dataclass(frozen=True)
class Scenario:
    items: list[dict[str, Any]]
    inputs: SweepInputs
    local: tuple[str, ...]  # the node's interface addresses handed to the view
    networks: tuple[str, ...]  # the config's nodePortAddresses


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    items = draw(cluster_items())
    table = draw(ipvs_tables(items))
    local = draw(st.sampled_from([(), (), (LOCAL_IP,), (LOCAL_IP, NODE_IP)]))
    networks = draw(
        st.sampled_from([(), (), (f"{NODE_IP}/32",), (f"{LOCAL_IP}/32",), ("10.0.0.0/8", "fd00::/8")])
    )
    config = draw(configs)
    config = replace(config, node_port_networks=tuple(ipaddress.ip_network(n) for n in networks))
    first_seen = {
        rs.key: NOW - timedelta(seconds=draw(st.sampled_from([0, 29, 30, 299, 300, 1000])))
        for rs in table.real_servers
        if draw(st.booleans())
    }
    gone_since = {
        rs.key: NOW - timedelta(seconds=draw(st.sampled_from([-60, 0, 1, 4, 5, 6, 300])))
        for rs in table.real_servers
        if draw(st.booleans())
    }
    inputs = SweepInputs(
        table=table,
        cluster=cluster_state_from_items(items).with_node_port_addresses(
            "node-a", tuple(ipaddress.ip_address(a) for a in local), config.node_port_networks
        ),
        node_name="node-a",
        config=config,
        expire_nodest_conn=draw(st.sampled_from([0, 1, 1, None])),
        now=NOW,
        first_seen=first_seen,
        policy=draw(st.sampled_from(list(PolicyChoice))),
        describe_weighted=draw(st.booleans()),
        gone_settle=timedelta(seconds=draw(st.sampled_from([0, 5]))),
        gone_since=gone_since,
    )
    return Scenario(items, inputs, local, networks)


def oracle_wanted(
    items: list[dict[str, Any]], rs: RealServer, local: tuple[str, ...] = (), networks: tuple[str, ...] = ()
) -> bool:
    """True when the cluster may still want this real server: kube-proxy did not build its virtual service,
    several Service ports build it, or kube-proxy reads its endpoint as ready or serving."""
    if rs.weight > 0:
        return True
    kinds = {item["kind"] for item in items}
    if "Service" not in kinds or "EndpointSlice" not in kinds or rs.key.virtual.address is None:
        return True
    # Without the interfaces, the Node's InternalIP is the one address surely the node's.
    node_ips = tuple(
        a["address"] for item in items if item["kind"] == "Node" for a in item["status"]["addresses"]
    )
    node = oracle.NodeSetup("node-a", frozenset({4, 6}), local or node_ips, node_port_cidrs=networks)
    virtual = (rs.key.virtual.protocol.value, str(rs.key.virtual.address), rs.key.virtual.port)
    builders = oracle.virtual_services(items, node).get(virtual, set())
    if len(builders) != 1:
        return True
    return (str(rs.key.address), rs.key.port) in oracle.wanted_real_servers(items, node, virtual)


def check_plan_invariants(scenario: Scenario, plan: Plan) -> None:
    inputs = scenario.inputs
    reaps = plan.reaps
    for decision in reaps:
        assert not oracle_wanted(scenario.items, decision.real_server, scenario.local, scenario.networks), (
            decision
        )
        assert decision.real_server.weight == 0
        assert decision.service is not None
        # A gone endpoint is reaped only once it has been seen gone for the settle time, whatever the policy
        # (immediate, a cap reached, an idle rule) and its connections.
        if decision.endpoint.state is EndpointState.GONE:
            seen = min(inputs.gone_since.get(decision.real_server.key, inputs.now), inputs.now)
            assert inputs.now >= seen + inputs.gone_settle, decision
    if not inputs.cluster.usable:
        assert reaps == ()
    breaker = inputs.config.breaker
    assert len(reaps) <= breaker.max_per_sweep
    if len(reaps) >= max(breaker.min_deletions, 1):
        assert len(reaps) <= breaker.max_share * len(inputs.table.real_servers)
    if reaps and inputs.expire_nodest_conn != 1:
        # Never delete without expire_nodest_conn=1 unless the operator opted out.
        assert inputs.config.expire_nodest_conn is not SysctlMode.REPORT_ONLY
        assert plan.needs_expire_nodest_conn or inputs.config.expire_nodest_conn is SysctlMode.IGNORE


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_planner_never_reaps_a_wanted_real_server(scenario: Scenario) -> None:
    check_plan_invariants(scenario, plan_sweep(scenario.inputs))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_describing_weighted_real_servers_changes_no_decision(scenario: Scenario) -> None:
    described = plan_sweep(replace(scenario.inputs, describe_weighted=True))
    bare = plan_sweep(replace(scenario.inputs, describe_weighted=False))
    assert [d for d in described.decisions if d.real_server.weight == 0] == list(bare.decisions)
    assert all(d.action is Action.KEEP for d in described.decisions if d.real_server.weight > 0)
    assert len(described.decisions) == len(scenario.inputs.table.real_servers)
    assert described.refusal == bare.refusal


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_actor_never_deletes_what_changed_before_its_re_read(scenario: Scenario, data: st.DataObject) -> None:
    plan = plan_sweep(scenario.inputs)
    fake = FakeIpvs(scenario.inputs.table)
    # kube-proxy's moves between our table read and the actor's re-read: a pod came back (weight 1), a
    # new connection arrived (ActiveConn 1), or it deleted the real server itself.
    raised: set[RealKey] = set()
    busy: set[RealKey] = set()
    deleted_by_kube_proxy: set[RealKey] = set()
    for decision in plan.reaps:
        key = decision.real_server.key
        move = data.draw(st.sampled_from(["none", "weight", "conn", "delete"]))
        if move == "weight":
            fake.set_weight(key, 1)
            raised.add(key)
        elif move == "conn":
            fake.real_servers[key] = replace(fake.real_servers[key], active_conns=1)
            busy.add(key)
        elif move == "delete":
            del fake.real_servers[key]
            deleted_by_kube_proxy.add(key)
    sysctls = FakeSysctls({"expire_nodest_conn": scenario.inputs.expire_nodest_conn or 0})
    dry_run = data.draw(st.booleans())
    result = apply_plan(plan, fake, sysctls, dry_run=dry_run, clock=lambda: NOW, recorder=lambda r: None)

    assert len(result.records) == len(plan.reaps)  # every decision leaves a record
    if dry_run:
        assert fake.deleted == []
        assert sysctls.writes == []
    assert not raised & set(fake.deleted)
    for key in fake.deleted:
        original = next(rs for rs in scenario.inputs.table.real_servers if rs.key == key)
        assert not oracle_wanted(scenario.items, original, scenario.local, scenario.networks)
    for record in result.records:
        key = record.decision.real_server.key
        if key in busy and record.decision.requires_idle:
            assert record.outcome is Outcome.SKIPPED
        if key in deleted_by_kube_proxy:
            assert record.outcome is Outcome.ALREADY_GONE
        assert record.outcome is not Outcome.FAILED
    if fake.deleted and scenario.inputs.config.expire_nodest_conn is not SysctlMode.IGNORE:
        assert sysctls.values["expire_nodest_conn"] == 1


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_items(), st.data())
def test_garbage_in_any_field_is_a_clear_error_or_harmless(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    if not items:
        return
    victim = data.draw(st.sampled_from(items))
    target = victim
    # Walk into a random nested mapping, then replace one of its keys with junk.
    for _ in range(data.draw(st.integers(0, 3))):
        children = [v for v in target.values() if isinstance(v, dict)] if isinstance(target, dict) else []
        if not children:
            break
        target = data.draw(st.sampled_from(children))
    if not target:
        return
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(json_junk)
    document = json.dumps({"kind": "List", "items": items})
    try:
        parse_cluster_document(document, "junk.json")
    except InputError as error:
        assert str(error).startswith("junk.json: ")
