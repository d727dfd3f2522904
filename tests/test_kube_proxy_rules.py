"""One regression test per class of virtual service or endpoint that the reaper once read otherwise than
kube-proxy does (docs/kube-proxy-fidelity.md names the test of each rule)."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config, parse_config
from ipvs_reaper.doctor.hostports import CLUSTER_IP_SET, LOAD_BALANCER_SET, Names
from ipvs_reaper.kernel.addresses import parse_node_addresses
from ipvs_reaper.mapping import EndpointState
from ipvs_reaper.netfilter.rules import Truth
from ipvs_reaper.planner import Action, Decision, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests.builders import endpoint, endpoint_slice, node, port, service

NODE_IP, NODE_IP6 = "192.168.49.2", "fd00:49::2"
POD = "10.244.1.5"
# Another IPVS user's direct-routing real server, at weight 0 and idle: what each rule must never reap.
OTHER = "192.0.2.10"


def decide(
    items: list[dict[str, Any]],
    virtual: str,
    real: str,
    *,
    protocol: str = "TCP",
    local: tuple[str, ...] = (),
    config: Config | None = None,
    hostname_i: bool = False,
) -> Decision:
    """The decision under `immediate` for one weight-0 idle real server `real` ("addr:port" or "[v6]:port")
    of the virtual service `virtual`."""
    config = config or Config()
    vk = _key(Protocol(protocol), virtual)
    real_address, _, real_port = real.rpartition(":")
    rs = RealServer(
        RealKey(vk, ipaddress.ip_address(real_address.strip("[]")), int(real_port)), "Masq", 0, 0, 0
    )
    cluster = cluster_state_from_items(items).with_node_port_addresses(
        "node-a", tuple(ipaddress.ip_address(a) for a in local), config.node_port_networks, hostname_i
    )
    plan = plan_sweep(
        SweepInputs(
            table=IpvsTable((VirtualService(vk, "rr"),), (rs,)),
            cluster=cluster,
            node_name="node-a",
            config=config,
            expire_nodest_conn=1,
            now=datetime(2026, 12, 2, tzinfo=UTC),
            first_seen={},
            policy=PolicyChoice.IMMEDIATE,
        )
    )
    (decision,) = plan.decisions
    return decision


def _key(protocol: Protocol, text: str) -> VirtualKey:
    address, _, number = text.rpartition(":")
    return VirtualKey.inet(protocol, ipaddress.ip_address(address.strip("[]")), int(number))


def kept(decision: Decision, *words: str) -> None:
    assert decision.action is Action.KEEP, decision
    assert all(word in decision.reason for word in words), decision.reason


def reaped(decision: Decision) -> None:
    assert decision.action is Action.REAP, decision


def web_slice(*endpoints: dict[str, Any], namespace: str = "shop", name: str = "web") -> dict[str, Any]:
    return endpoint_slice(namespace, f"{name}-1", name, [port(8080)], list(endpoints))


NODE = node("node-a", NODE_IP)


def test_an_externalname_services_external_ip_is_not_claimed() -> None:
    db = service("shop", "db", [], [port(5432)], type_="ExternalName", external_ips=["203.0.113.7"])
    kept(decide([db, web_slice(), NODE], "203.0.113.7:5432", f"{OTHER}:5432"), "shop/db", "ExternalName")


def test_an_externalname_service_is_skipped_even_with_a_cluster_ip() -> None:
    db = service("shop", "db", ["10.96.0.9"], [port(5432)], type_="ExternalName")
    kept(decide([db, web_slice(), NODE], "10.96.0.9:5432", f"{OTHER}:5432"), "ExternalName")


def test_a_headless_services_external_ip_is_not_claimed() -> None:
    headless = service("shop", "web", ["None"], [port(80)], external_ips=["203.0.113.7"])
    kept(decide([headless, web_slice(), NODE], "203.0.113.7:80", f"{POD}:8080"), "headless")


@pytest.mark.parametrize(
    "label", ["service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"]
)
def test_a_service_with_an_excluding_label_is_not_claimed(label: str) -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)], labels={label: ""})
    kept(decide([web, web_slice(), NODE], "10.96.0.10:80", f"{POD}:8080"), "labelled", label)


@pytest.mark.parametrize(("mode", "claimed"), [(None, True), ("VIP", True), ("Proxy", False)])
def test_load_balancer_ingress_by_ip_mode(mode: str | None, claimed: bool) -> None:
    web = service(
        "shop",
        "web",
        ["10.96.0.10"],
        [port(80)],
        type_="LoadBalancer",
        lb_ips=["198.51.100.4"],
        ip_modes=[mode],
    )
    decision = decide([web, web_slice(), NODE], "198.51.100.4:80", f"{POD}:8080")
    if claimed:
        reaped(decision)
    else:
        kept(decision, "ipMode Proxy")


@pytest.mark.parametrize(
    "virtual",
    [
        "[2001:db8::7]:80",  # an IPv6 externalIP
        "[2001:db8:1::4]:80",  # an IPv6 load-balancer ingress IP
        f"[{NODE_IP6}]:30080",  # a NodePort on the node's IPv6 address
    ],
)
def test_ipv6_addresses_of_an_ipv4_only_service_are_not_claimed(virtual: str) -> None:
    web = service(
        "shop",
        "web",
        ["10.96.0.10"],
        [port(80, node_port=30080)],
        type_="LoadBalancer",
        external_ips=["2001:db8::7"],
        lb_ips=["2001:db8:1::4"],
    )
    items = [web, web_slice(), node("node-a", NODE_IP, NODE_IP6)]
    real = "[fd00:244::5]:8080"
    kept(decide(items, virtual, real, local=(NODE_IP, NODE_IP6)), "IPv6 address of a Service with no IPv6")


def test_a_dual_stack_service_claims_both_families_by_position() -> None:
    # ipFamilies [IPv6, IPv4]: clusterIPs[0] is the IPv6 one.
    web = service("shop", "web", ["fd00:96::10", "10.96.0.10"], [port(80)], external_ips=["2001:db8::7"])
    v6_slice = endpoint_slice("shop", "web-6", "web", [port(8080)], [], family="IPv6")
    items = [web, web_slice(), v6_slice, NODE]
    reaped(decide(items, "10.96.0.10:80", f"{POD}:8080"))
    reaped(decide(items, "[fd00:96::10]:80", "[fd00:244::5]:8080"))
    reaped(decide(items, "[2001:db8::7]:80", "[fd00:244::5]:8080"))


def test_without_ip_families_only_the_cluster_ips_own_family_is_proxied() -> None:
    web = service("shop", "web", ["10.96.0.10", "fd00:96::10"], [port(80)])
    del web["spec"]["ipFamilies"]
    items = [web, web_slice(), NODE]
    reaped(decide(items, "10.96.0.10:80", f"{POD}:8080"))
    kept(decide(items, "[fd00:96::10]:80", "[fd00:244::5]:8080"), "not the ClusterIP kube-proxy reads")


def test_a_terminating_endpoint_with_serving_absent_or_null_is_serving() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    for serving in ("absent", None):
        conditions: dict[str, Any] = {"ready": False, "terminating": True}
        if serving != "absent":
            conditions["serving"] = serving
        terminating = {"addresses": [POD], "conditions": conditions}
        decision = decide([web, web_slice(terminating), NODE], "10.96.0.10:80", f"{POD}:8080")
        kept(decision, "still serving")
        assert decision.endpoint.state is EndpointState.TERMINATING


def test_every_address_of_an_endpoint_counts() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    two = {"addresses": ["10.244.1.4", POD], "conditions": {"ready": True}}
    kept(decide([web, web_slice(two), NODE], "10.96.0.10:80", f"{POD}:8080"), "ready")


def test_a_slice_with_an_excluding_label_still_says_its_endpoints_are_wanted() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    labelled = web_slice(endpoint(POD))
    labelled["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = "other"
    kept(decide([web, labelled, NODE], "10.96.0.10:80", f"{POD}:8080"), "ready")


def test_a_service_with_a_selector_and_no_slice_has_unknown_endpoints() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)], selector={"app": "web"})
    other = endpoint_slice("kube-system", "dns-1", "dns", [port(53)], [])
    decision = decide([web, other, NODE], "10.96.0.10:80", f"{POD}:8080")
    kept(decision, "selector but no EndpointSlice")
    assert decision.endpoint.state is EndpointState.UNKNOWN
    # Without a selector its slices are written by hand, and none is an answer: every endpoint is gone.
    del web["spec"]["selector"]
    reaped(decide([web, other, NODE], "10.96.0.10:80", f"{POD}:8080"))


def test_exclude_cidrs_are_never_touched() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    config = parse_config({"excludeCIDRs": ["10.96.0.0/28", "fd00::/8"]})
    kept(
        decide([web, web_slice(), NODE], "10.96.0.10:80", f"{POD}:8080", config=config),
        "excludeCIDRs 10.96.0.0/28",
    )
    reaped(decide([web, web_slice(), NODE], "10.96.0.10:80", f"{POD}:8080"))


def test_node_ports_on_the_interfaces_not_on_the_node_objects_external_ip() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80, node_port=30080)], type_="NodePort")
    cloud = node("node-a", NODE_IP)
    cloud["status"]["addresses"].append({"type": "ExternalIP", "address": "198.18.0.1"})
    items = [web, web_slice(), cloud]
    kept(decide(items, "198.18.0.1:30080", f"{OTHER}:30080"), "maps to no Service")
    reaped(decide(items, f"{NODE_IP}:30080", f"{POD}:8080"))  # the InternalIP stands in for the interfaces
    # With the interfaces known, the Node object's addresses are not used at all.
    kept(decide(items, f"{NODE_IP}:30080", f"{POD}:8080", local=("10.0.0.5",)), "maps to no Service")
    reaped(decide(items, "10.0.0.5:30080", f"{POD}:8080", local=("10.0.0.5",)))


def test_no_node_ports_on_loopback_or_ipv6_link_local() -> None:
    web = service("shop", "web", ["10.96.0.10", "fd00:96::10"], [port(80, node_port=30080)], type_="NodePort")
    items = [web, web_slice(), NODE]
    local = ("127.0.0.1", "fe80::1", "169.254.3.3")
    kept(
        decide(items, "127.0.0.1:30080", f"{POD}:8080", local=local),
        "not one of the node's NodePort addresses",
    )
    kept(
        decide(items, "[fe80::1]:30080", "[fd00:244::5]:8080", local=local), "not one of the node's NodePort"
    )
    reaped(decide(items, "169.254.3.3:30080", f"{POD}:8080", local=local))  # IPv4 link-local is kept


def test_hostname_i_lists_cluster_ips_which_are_not_node_addresses() -> None:
    # On an IPVS node `hostname -I` also prints every address bound to kube-ipvs0; `ip -j addr` tells them.
    web = service("shop", "web", ["10.96.0.10"], [port(80, node_port=30080)], type_="NodePort")
    api = service("default", "kubernetes", ["10.96.0.1"], [port(30080, "https")])
    items = [web, api, web_slice(), NODE]
    plain = tuple(str(a) for a in parse_node_addresses(f"{NODE_IP} 10.96.0.10 10.96.0.1\n", "hostname"))
    # A ClusterIP is never taken for a node address: no NodePort is claimed on it.
    kept(decide(items, "10.96.0.10:30080", f"{POD}:8080", local=plain, hostname_i=True), "NodePort addresses")
    reaped(decide(items, f"{NODE_IP}:30080", f"{POD}:8080", local=plain, hostname_i=True))
    # Whether it is also on an interface (then 1.27's kube-proxy puts NodePorts there) the plain form cannot
    # tell: the kubernetes Service's ClusterIP at a NodePort's number is left alone; `ip -j addr` tells.
    kept(decide(items, "10.96.0.1:30080", "10.0.0.1:6443", local=plain, hostname_i=True), "several Service")
    ip_json = [
        {"ifname": "eth0", "addr_info": [{"local": NODE_IP}]},
        {"ifname": "kube-ipvs0", "addr_info": [{"local": "10.96.0.10"}, {"local": "10.96.0.1"}]},
    ]
    exact = tuple(str(a) for a in parse_node_addresses(json.dumps(ip_json), "addr.json"))
    reaped(decide(items, "10.96.0.1:30080", "10.0.0.1:6443", local=exact))


def test_ip_json_leaves_out_kube_ipvs0_but_not_an_address_also_on_an_interface() -> None:
    # GetAllLocalAddressesExcept(kube-ipvs0), kube-proxy 1.27 on: an externalIP that is the node's own counts.
    document = [
        {"ifname": "eth0", "addr_info": [{"local": NODE_IP}, {"local": "203.0.113.7"}]},
        {"ifname": "kube-ipvs0", "addr_info": [{"local": "10.96.0.10"}, {"local": "203.0.113.7"}]},
    ]
    addresses = parse_node_addresses(json.dumps(document), "addr.json")
    assert [str(a) for a in addresses] == [NODE_IP, "203.0.113.7"]


def test_an_address_several_service_ports_name_is_never_judged() -> None:
    # B's externalIP is the node's own address and A's NodePort is the same port: kube-proxy builds one
    # virtual service for both, with whichever's endpoints it synced last.
    a = service("shop", "a", ["10.96.0.10"], [port(80, node_port=30080)], type_="NodePort")
    b = service("shop", "b", ["10.96.0.11"], [port(30080)], external_ips=[NODE_IP])
    items = [
        a,
        b,
        web_slice(endpoint(POD), name="a"),
        endpoint_slice("shop", "b-1", "b", [port(8080)], []),
        NODE,
    ]
    decision = decide(items, f"{NODE_IP}:30080", f"{POD}:8080", local=(NODE_IP,))
    kept(decision, "several Service ports", "shop/a", "shop/b")
    # The same when the other one is built by another proxy (or another release): it still names the address.
    proxy = service("shop", "a", ["10.96.0.10"], [port(443)], lb_ips=["198.51.100.4"], ip_modes=["Proxy"])
    other = service("shop", "b", ["10.96.0.11"], [port(443)], external_ips=["198.51.100.4"])
    items = [
        proxy,
        other,
        web_slice(endpoint(POD), name="a"),
        endpoint_slice("shop", "b-1", "b", [port(8080)], []),
    ]
    kept(decide([*items, NODE], "198.51.100.4:443", f"{POD}:8080"), "several Service ports")


def test_node_port_addresses_of_one_family_leave_the_other_family_whole() -> None:
    # NewNodePortAddresses: a family without a CIDR matches every address of that family.
    web = service("shop", "web", ["10.96.0.10", "fd00:96::10"], [port(80, node_port=30080)], type_="NodePort")
    v6_slice = endpoint_slice("shop", "web-6", "web", [port(8080)], [], family="IPv6")
    config = parse_config({"nodePortAddresses": ["192.168.0.0/16"]})
    items = [web, web_slice(), v6_slice, NODE]
    local = (NODE_IP, NODE_IP6, "10.0.0.5")
    reaped(decide(items, f"[{NODE_IP6}]:30080", "[fd00:244::5]:8080", local=local, config=config))
    reaped(decide(items, f"{NODE_IP}:30080", f"{POD}:8080", local=local, config=config))
    kept(decide(items, "10.0.0.5:30080", f"{POD}:8080", local=local, config=config), "NodePort addresses")


def test_the_doctors_sets_hold_what_kube_proxy_builds() -> None:
    web = service("shop", "web", ["10.96.0.10"], [port(80)], lb_ips=["198.51.100.4"], ip_modes=["Proxy"])
    other = service(
        "shop", "mesh", ["10.96.0.11"], [port(80)], labels={"service.kubernetes.io/service-proxy-name": "x"}
    )
    names = Names(cluster_state_from_items([web, other, web_slice(), NODE]), "node-a")
    assert names.set_membership(_key(Protocol.TCP, "10.96.0.10:80"))[CLUSTER_IP_SET] is Truth.TRUE
    assert names.set_membership(_key(Protocol.TCP, "10.96.0.11:80"))[CLUSTER_IP_SET] is Truth.FALSE
    assert names.set_membership(_key(Protocol.TCP, "198.51.100.4:80"))[LOAD_BALANCER_SET] is Truth.FALSE


def test_an_ipv4_mapped_endpoint_address_is_the_ipv4_address() -> None:
    # The API's IPv4 validation took ParseIPSloppy(v).To4() != nil before strict IP validation, and kube-proxy
    # builds the real server from the IPv4 form.
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    mapped = {"addresses": [f"::ffff:{POD}"], "conditions": {"ready": True}}
    kept(decide([web, web_slice(mapped), NODE], "10.96.0.10:80", f"{POD}:8080"), "ready")


def test_cluster_ips_are_read_as_get_cluster_ip_by_family_reads_them() -> None:
    # Shapes the API does not write, where kube-proxy's reading and a naive one differ: never claim more.
    odd = service("shop", "web", ["10.96.0.10"], [port(80)])
    odd["spec"] |= {"clusterIPs": ["10.50.0.9"]}
    del odd["spec"]["ipFamilies"]  # without ipFamilies only the singular clusterIP is read
    items = [odd, web_slice(), NODE]
    reaped(decide(items, "10.96.0.10:80", f"{POD}:8080"))
    kept(decide(items, "10.50.0.9:80", f"{POD}:8080"), "not the ClusterIP kube-proxy reads")
    shorter = service("shop", "web", ["10.50.0.9"], [port(80)])
    del shorter["spec"]["clusterIPs"]  # with ipFamilies only clusterIPs is read: none, so nothing at all
    kept(decide([shorter, web_slice(), NODE], "10.50.0.9:80", f"{POD}:8080"))


def test_a_cluster_ip_that_cluster_ips_does_not_list_is_still_named() -> None:
    # A hand-made object another proxy serves: kube-proxy reads clusterIPs (ipFamilies is set), another reader
    # may take clusterIP. Either way 10.96.0.10:80 is not web's alone.
    other = service(
        "shop", "mesh", ["10.96.0.10"], [port(80)], labels={"service.kubernetes.io/service-proxy-name": "x"}
    )
    other["spec"]["clusterIPs"] = ["10.96.0.11"]
    web = service("shop", "web", ["10.96.0.10"], [port(80)])
    kept(decide([web, other, web_slice(), NODE], "10.96.0.10:80", f"{POD}:8080"), "several Service ports")
