"""The list-and-watch cache: readiness, re-list, staleness, broken objects, and equivalence with a listing."""

from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs_reaper.cluster.cache import ENDPOINT_SLICE, NODE, NOTHING, SERVICE, ClusterCache
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config
from ipvs_reaper.mapping import ClusterIndex
from ipvs_reaper.planner import Action, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests.builders import endpoint, endpoint_slice, node, port, service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def listed_cache(clock: Clock | None = None, **kinds: list[dict[str, Any]]) -> ClusterCache:
    cache = ClusterCache("node-a", clock or Clock(), max_silence=60)
    cache.replace(SERVICE, kinds.get("services", [service("a", "web", ["10.96.0.2"], [port(80)])]))
    cache.replace(
        ENDPOINT_SLICE, kinds.get("slices", [endpoint_slice("a", "web-1", "web", [port(8080)], [])])
    )
    cache.replace(NODE, kinds.get("nodes", [node("node-a", "192.168.49.2"), node("node-b", "192.168.49.3")]))
    return cache


def test_not_usable_until_every_kind_is_listed() -> None:
    cache = ClusterCache("node-a", Clock(), max_silence=60)
    cache.replace(SERVICE, [service("a", "web", ["10.96.0.2"], [port(80)])])
    cache.replace(ENDPOINT_SLICE, [endpoint_slice("a", "web-1", "web", [port(8080)], [])])
    assert not cache.ready
    assert cache.snapshot().problems == ("not listed yet: Node",)
    cache.replace(NODE, [node("node-a", "192.168.49.2")])
    assert cache.ready and cache.snapshot().usable


def test_a_relist_drops_what_vanished_while_the_watch_was_down() -> None:
    cache = listed_cache()
    cache.upsert(SERVICE, service("a", "gone", ["10.96.0.9"], [port(80)]))
    assert {s.name for s in cache.snapshot().services} == {"web", "gone"}
    cache.replace(SERVICE, [service("a", "web", ["10.96.0.2"], [port(80)])])
    assert {s.name for s in cache.snapshot().services} == {"web"}


def test_a_watch_that_missed_events_makes_the_view_unusable_until_its_kind_is_listed() -> None:
    cache = listed_cache()
    cache.lost(ENDPOINT_SLICE, "the EndpointSlice watch fell behind (410 Gone); listing again")
    assert cache.snapshot().problems == ("the EndpointSlice watch fell behind (410 Gone); listing again",)
    cache.replace(SERVICE, [service("a", "web", ["10.96.0.2"], [port(80)])])
    assert not cache.snapshot().usable  # another kind's listing does not make up for it
    cache.replace(ENDPOINT_SLICE, [endpoint_slice("a", "web-1", "web", [port(8080)], [])])
    assert cache.snapshot().usable


def test_what_events_touched_is_remembered_only_while_a_listing_is_open() -> None:
    """Between listings (which now follow only a 410) nothing may accumulate per deleted object."""
    cache = listed_cache()
    for i in range(50):
        body = service("a", f"s-{i}", [f"10.96.1.{i}"], [port(80)])
        cache.upsert(SERVICE, body)
        cache.remove(SERVICE, body)
    assert cache._touched == {}
    since = cache.begin_listing()
    cache.remove(SERVICE, service("a", "web", ["10.96.0.2"], [port(80)]))
    cache.end_listing(since)  # the listing failed
    assert cache._touched == {}


def test_events_update_and_remove_by_key_and_only_this_node_is_kept() -> None:
    cache = listed_cache()
    cache.upsert(SERVICE, service("a", "web", ["10.96.0.3"], [port(80)]))
    assert [str(ip) for s in cache.snapshot().services for ip in s.cluster_ips] == ["10.96.0.3"]
    cache.remove(SERVICE, service("a", "web", [], []))
    assert cache.snapshot().services == ()
    assert [n.name for n in cache.snapshot().nodes] == ["node-a"]


def test_a_silent_watch_makes_the_view_unusable_until_heard_from_again() -> None:
    clock = Clock()
    cache = listed_cache(clock)
    clock.now += 61
    problems = cache.snapshot().problems
    assert len(problems) == 3 and all("no word from the API" in p for p in problems)
    for kind in (SERVICE, ENDPOINT_SLICE, NODE):
        cache.heard_from(kind)  # a bookmark
    assert cache.snapshot().usable


def test_an_unreadable_service_makes_the_view_unusable() -> None:
    broken = service("a", "odd", ["10.96.0.999"], [port(80)])
    cache = listed_cache(services=[service("a", "web", ["10.96.0.2"], [port(80)]), broken])
    (problem,) = cache.snapshot().problems
    assert "Service a/odd cannot be read (spec.clusterIPs[0]: '10.96.0.999' is not an IP address)" in problem
    cache.upsert(SERVICE, service("a", "odd", ["10.96.0.9"], [port(80)]))
    assert cache.snapshot().usable


def test_an_object_without_a_name_waits_for_the_next_listing() -> None:
    cache = listed_cache()
    nameless = endpoint_slice("a", "x", "web", [], [])
    del nameless["metadata"]["name"]
    cache.upsert(ENDPOINT_SLICE, nameless)
    assert "1 EndpointSlice object(s) without a readable name" in cache.snapshot().problems[0]
    cache.replace(ENDPOINT_SLICE, [endpoint_slice("a", "web-1", "web", [port(8080)], [])])
    assert cache.snapshot().usable


VIP = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.2"), 80)
OTHER_VIP = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.4"), 80)


def _reaped(cache: ClusterCache) -> set[str]:
    table = IpvsTable(
        (VirtualService(VIP, "rr"), VirtualService(OTHER_VIP, "rr")),
        tuple(
            RealServer(RealKey(vip, ipaddress.ip_address(address), 8080), "Masq", 0, 0, 0)
            for vip, address in ((VIP, "10.1.0.9"), (OTHER_VIP, "10.1.0.8"))
        ),
    )
    plan = plan_sweep(
        SweepInputs(
            table=table,
            cluster=cache.snapshot(),
            node_name="node-a",
            config=Config(),
            expire_nodest_conn=1,
            now=datetime(2026, 1, 1, tzinfo=UTC),
            first_seen={},
        )
    )
    return {str(d.real_server.key.virtual) for d in plan.decisions if d.action is Action.REAP}


def test_a_broken_slice_keeps_its_service_and_only_its_service() -> None:
    services = [
        service("a", "web", ["10.96.0.2"], [port(80)]),
        service("a", "api", ["10.96.0.4"], [port(80)]),
    ]
    good = [
        endpoint_slice("a", "web-1", "web", [port(8080)], []),
        endpoint_slice("a", "api-1", "api", [port(8080)], []),
    ]
    cache = listed_cache(services=services, slices=good)
    assert _reaped(cache) == {"10.96.0.2:80", "10.96.0.4:80"}
    # The slice that would show 10.1.0.9 as ready cannot be read: web's real servers must not be judged.
    cache.upsert(
        ENDPOINT_SLICE, endpoint_slice("a", "web-2", "web", [port(8080)], [endpoint("10.1.0.9", ready="yes")])
    )
    assert _reaped(cache) == {"10.96.0.4:80"}
    assert "EndpointSlice a/web-2 cannot be read" in cache.snapshot().broken["a/web"]
    # Not even its Service can be told: the whole namespace waits.
    unlabelled = endpoint_slice("a", "web-3", "web", [port(8080)], [endpoint("10.1.0.9", ready="yes")])
    unlabelled["metadata"]["labels"] = "garbage"
    cache.upsert(ENDPOINT_SLICE, unlabelled)
    assert _reaped(cache) == set()
    cache.remove(ENDPOINT_SLICE, unlabelled)
    cache.remove(ENDPOINT_SLICE, endpoint_slice("a", "web-2", "web", [], []))
    assert _reaped(cache) == {"10.96.0.2:80", "10.96.0.4:80"}


# --- equivalence with a listing, over random event sequences ----------------------------------------------

_objects = st.sampled_from(
    [
        (SERVICE, service(ns, name, [ip], [port(80)]))
        for ns in ("a", "b")
        for name, ip in (("web", "10.96.0.2"), ("api", "10.96.0.3"))
    ]
    + [
        (ENDPOINT_SLICE, endpoint_slice(ns, f"web-{i}", "web", [port(8080)], [endpoint(f"10.1.{i}.{j}")]))
        for ns in ("a", "b")
        for i in range(2)
        for j in range(2)
    ]
    + [
        (NODE, node(name, address))
        for name, address in (("node-a", "192.168.49.2"), ("node-a", "192.168.49.4"))
    ]
)
_ops = st.lists(st.tuples(st.sampled_from(["upsert", "remove", "relist"]), _objects), max_size=30)


@settings(max_examples=300)
@given(_ops)
def test_any_event_sequence_equals_a_fresh_listing_of_the_result(ops: list[tuple[str, Any]]) -> None:
    truth: dict[tuple[str, str, str], dict[str, Any]] = {}
    cache = ClusterCache("node-a", Clock(), max_silence=60)
    for op, (kind, body) in ops:
        body = copy.deepcopy(body)
        key = (kind, body["metadata"].get("namespace", ""), body["metadata"]["name"])
        if op == "upsert":
            truth[key] = body
            cache.upsert(kind, body)
        elif op == "remove":
            truth.pop(key, None)
            cache.remove(kind, body)
        else:
            # A re-list shows the truth of that kind, whatever events were missed.
            cache.replace(kind, [b for k, b in truth.items() if k[0] == kind])
    for kind in (SERVICE, ENDPOINT_SLICE, NODE):
        cache.replace(kind, [b for k, b in truth.items() if k[0] == kind])
    expected = cluster_state_from_items(list(truth.values()))
    got = cache.snapshot()
    assert sorted(map(repr, got.services)) == sorted(map(repr, expected.services))
    assert sorted(map(repr, got.slices)) == sorted(map(repr, expected.slices))
    assert got.nodes == expected.nodes
    # The cache knows whose node it is: without that Node (readable or not) it is not usable.
    has_node = expected.node("node-a") is not None or "node/node-a" in expected.broken
    assert got.usable == (expected.usable and has_node)


def test_node_port_addresses_follow_the_interfaces_and_the_configs_networks() -> None:
    cache = listed_cache(services=[service("a", "web", ["10.96.0.2"], [port(80, node_port=30080)])])
    cni = ipaddress.ip_address("10.244.0.1")
    nodeport_on_cni = VirtualKey.inet(Protocol.TCP, cni, 30080)
    assert cache.set_local_addresses((cni,)).everything
    assert [s.name for s in cache.view_for({nodeport_on_cni}).services] == ["web"]
    assert cache.set_local_addresses((cni,)) == NOTHING  # the same addresses again: nothing moves
    assert cache.set_node_port_networks((ipaddress.ip_network("192.168.0.0/16"),)).everything
    # Still named there (a NodePort another reading could put there), no longer built there.
    assert ClusterIndex(cache.view_for({nodeport_on_cni}), "node-a").target(nodeport_on_cni) is None
    (node_view,) = cache.snapshot().nodes
    assert cni not in node_view.addresses
    assert cni in node_view.left_out
