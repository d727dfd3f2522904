"""What the agent's event-driven reconcile rests on: an event names every virtual service whose decision it
can change, and the part of the view for those virtual services decides exactly as the whole view does."""

from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipvs_reaper.cluster.cache import ENDPOINT_SLICE, NODE, SERVICE, ClusterCache
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.config import Breaker, Config
from ipvs_reaper.planner import Decision, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests.builders import endpoint, endpoint_slice, node, port, service
from tests.test_cluster_cache import Clock, listed_cache

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NODE_ADDRESSES = ("192.168.49.2", "192.168.49.4")
CLUSTER_IPS = ("10.96.0.2", "10.96.0.3")
POD_IPS = tuple(f"10.1.{i}.{j}" for i in range(2) for j in range(2))


def _vip(address: str, number: int) -> VirtualKey:
    return VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(address), number)


# Every virtual service the objects below can make: two ClusterIPs (claimed by one or two Services), a
# NodePort on either of the node's addresses, and a ClusterIP at the NodePort's number (where, inside
# nodePortAddresses, kube-proxy puts the NodePort too).
VIPS = (
    tuple(_vip(a, 80) for a in CLUSTER_IPS)
    + tuple(_vip(a, 30080) for a in NODE_ADDRESSES)
    + (_vip("10.96.0.4", 30080),)
)
TABLE = IpvsTable(
    tuple(VirtualService(v, "rr") for v in VIPS),
    tuple(
        RealServer(RealKey(v, ipaddress.ip_address(pod), 8080), "Masq", 0, active, 1)
        for v in VIPS
        for pod, active in zip(POD_IPS, (0, 0, 1, 0), strict=True)
    ),
)

_bodies = st.sampled_from(
    [
        (SERVICE, service(ns, name, [ip], [port(80, node_port=node_port)]))
        for ns in ("a", "b")
        for name, ip, node_port in (("web", "10.96.0.2", 30080), ("api", "10.96.0.3", None))
    ]
    + [
        (
            ENDPOINT_SLICE,
            endpoint_slice(
                ns, f"{svc}-{i}", svc, [port(8080)], [endpoint(pod, ready=ready, terminating=term)]
            ),
        )
        for ns in ("a", "b")
        for svc in ("web", "api")
        for i, pod in enumerate(POD_IPS[:2])
        for ready, term in ((True, False), (False, False), (False, True))
    ]
    + [(NODE, node("node-a", address)) for address in NODE_ADDRESSES]
    + [(NODE, node("node-b", NODE_ADDRESSES[0]))]
    # Services kube-proxy does not build on an address another one is built on: they make it ambiguous.
    + [
        (SERVICE, service("a", "db", [], [port(80)], type_="ExternalName", external_ips=["10.96.0.2"])),
        (SERVICE, service("b", "lb", ["10.96.0.9"], [port(80)], lb_ips=["10.96.0.3"], ip_modes=["Proxy"])),
        (SERVICE, service("b", "high", ["10.96.0.4"], [port(30080)])),
    ]
)
_events = st.lists(st.tuples(st.sampled_from(["upsert", "remove"]), _bodies), max_size=25)


NO_BREAKER = Config(breaker=Breaker(max_share=1.0))


def _decisions(cluster: ClusterState, keys: frozenset[VirtualKey] | None = None) -> dict[RealKey, Decision]:
    table = TABLE
    if keys is not None:
        table = IpvsTable(TABLE.services, tuple(rs for rs in TABLE.real_servers if rs.key.virtual in keys))
    plan = plan_sweep(
        SweepInputs(
            table=table,
            cluster=cluster,
            node_name="node-a",
            # Without the breaker: it judges a whole sweep's count of deletions (the agent feeds a part's
            # reconcile the node's total and its recent deletions), never one real server's decision, and a
            # part of the table deletes fewer than the whole.
            config=NO_BREAKER,
            expire_nodest_conn=1,
            now=NOW,
            first_seen={},
            node_real_servers=len(TABLE.real_servers),
        )
    )
    return {d.real_server.key: d for d in plan.decisions}


def _apply(cache: ClusterCache, op: str, kind: str, body: dict[str, Any]) -> Any:
    body = copy.deepcopy(body)
    return cache.upsert(kind, body) if op == "upsert" else cache.remove(kind, body)


_networks = st.sampled_from(
    [(), (ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("192.168.49.0/24"))]
)


# Found by hypothesis: three Services whose real servers are all gone make the whole table's sweep trip the
# breaker (12 of 20), which a part of it does not; the breaker is no per-real-server decision.
_BREAKER_EXAMPLE = [
    ("upsert", (SERVICE, service("a", "web", ["10.96.0.2"], [port(80, node_port=30080)]))),
    ("upsert", (SERVICE, service("a", "api", ["10.96.0.3"], [port(80)]))),
    ("upsert", (SERVICE, service("b", "high", ["10.96.0.4"], [port(30080)]))),
]


@settings(max_examples=400, deadline=None)
@given(_events, st.sets(st.sampled_from(VIPS), min_size=1), _networks)
@example(_BREAKER_EXAMPLE, {VIPS[0]}, ())
def test_the_view_for_some_virtual_services_decides_as_the_whole_view(
    events: list[tuple[str, tuple[str, dict[str, Any]]]], keys: set[VirtualKey], networks: Any
) -> None:
    cache = listed_cache(Clock())
    cache.set_node_port_networks(networks)
    for op, (kind, body) in events:
        _apply(cache, op, kind, body)
    whole = _decisions(cache.snapshot())
    part = _decisions(cache.view_for(keys), frozenset(keys))
    assert part == {key: d for key, d in whole.items() if key.virtual in keys}


@settings(max_examples=400, deadline=None)
@given(_events, _events, _networks)
def test_an_event_names_every_virtual_service_it_changes_the_decision_for(
    history: list[tuple[str, tuple[str, dict[str, Any]]]],
    events: list[tuple[str, tuple[str, dict[str, Any]]]],
    networks: Any,
) -> None:
    cache = listed_cache(Clock())
    cache.set_node_port_networks(networks)
    for op, (kind, body) in history:
        _apply(cache, op, kind, body)
    for op, (kind, body) in events:
        before = _decisions(cache.snapshot())
        affected = _apply(cache, op, kind, body)
        after = _decisions(cache.snapshot())
        changed = {key.virtual for key in before if before[key] != after[key]}
        if not affected.everything:
            assert changed <= affected.keys, (op, kind, body["metadata"])


def test_a_listing_does_not_undo_what_the_watch_delivered_while_it_ran() -> None:
    cache = listed_cache(Clock(), services=[service("a", "web", ["10.96.0.2"], [port(80)])])
    since = cache.begin_listing()
    # While the listing runs: the watch sees a new Service and a deletion the listing predates.
    cache.upsert(SERVICE, service("a", "new", ["10.96.0.5"], [port(80)]))
    cache.remove(SERVICE, service("a", "web", [], []))
    stale_listing = [
        service("a", "web", ["10.96.0.2"], [port(80)]),
        service("a", "old", ["10.96.0.6"], [port(80)]),
    ]
    cache.replace(SERVICE, stale_listing, since)
    assert {s.name for s in cache.snapshot().services} == {"new", "old"}
    # The next listing is the truth again for every key.
    cache.replace(SERVICE, stale_listing, cache.begin_listing())
    assert {s.name for s in cache.snapshot().services} == {"web", "old"}


def test_the_same_version_again_changes_nothing() -> None:
    cache = listed_cache(Clock())
    body = service("a", "web", ["10.96.0.2"], [port(80)])
    body["metadata"]["resourceVersion"] = "17"
    assert cache.upsert(SERVICE, body).keys == {_vip("10.96.0.2", 80)}
    assert not cache.upsert(SERVICE, copy.deepcopy(body)).keys
    body["metadata"]["resourceVersion"] = "18"
    body["spec"]["clusterIPs"] = ["10.96.0.3"]
    assert cache.upsert(SERVICE, body).keys == {_vip("10.96.0.2", 80), _vip("10.96.0.3", 80)}


def test_inside_node_port_addresses_a_node_port_on_any_service_address_is_in_view_and_events() -> None:
    # kube-proxy walks kube-ipvs0 too when nodePortAddresses is set: web's NodePort 30080 then stands on
    # high's ClusterIP as well, whose own port is 30080. Neither object names the other.
    cache = listed_cache(Clock())
    cache.set_node_port_networks((ipaddress.ip_network("10.96.0.0/16"),))
    cache.upsert(SERVICE, service("b", "high", ["10.96.0.4"], [port(30080)]))
    affected = cache.upsert(SERVICE, service("a", "web", ["10.96.0.2"], [port(80, node_port=30080)]))
    assert affected.everything
    key = _vip("10.96.0.4", 30080)
    assert {s.name for s in cache.view_for({key}).services} == {"high", "web"}
    decisions = _decisions(cache.view_for({key}), frozenset({key}))
    assert decisions and all("several Service ports" in d.reason for d in decisions.values())
