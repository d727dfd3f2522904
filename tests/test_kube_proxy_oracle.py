"""Hand-written checks of tests/kube_proxy_oracle.py against rules quoted from kube-proxy's source.

Each test quotes the kube-proxy code it checks (file names relative to kubernetes/kubernetes).
"""

from __future__ import annotations

from tests.kube_proxy_oracle import (
    NodeSetup,
    known_endpoints,
    kube_proxy_cleans_up,
    parse_ip_sloppy,
    programmed_real_servers,
    virtual_services,
    wanted_real_servers,
)

NODE_V4 = NodeSetup(
    name="node-a",
    families=frozenset({4}),
    local_addresses=("10.0.0.5/24", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "2001:db8::5"),
)
NODE_DUAL = NodeSetup(
    name="node-a",
    families=frozenset({4, 6}),
    local_addresses=("10.0.0.5", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "2001:db8::5"),
)


def svc(
    name: str = "web",
    *,
    namespace: str = "default",
    type_: str = "ClusterIP",
    cluster_ips: tuple[str, ...] = ("10.96.0.10",),
    families: tuple[str, ...] | None = ("IPv4",),
    ports: list[dict] | None = None,
    labels: dict | None = None,
    external_ips: list[str] | None = None,
    ingress: list[dict] | None = None,
    etp: str | None = None,
    itp: str | None = None,
) -> dict:
    spec: dict = {
        "type": type_,
        "clusterIP": cluster_ips[0] if cluster_ips else "",
        "ports": ports if ports is not None else [{"name": "http", "port": 80, "protocol": "TCP"}],
    }
    if cluster_ips:
        spec["clusterIPs"] = list(cluster_ips)
    if families is not None:
        spec["ipFamilies"] = list(families)
    if external_ips is not None:
        spec["externalIPs"] = external_ips
    if etp is not None:
        spec["externalTrafficPolicy"] = etp
    if itp is not None:
        spec["internalTrafficPolicy"] = itp
    obj: dict = {
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }
    if ingress is not None:
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def eps(
    endpoints: list[dict],
    *,
    service: str = "web",
    namespace: str = "default",
    name: str | None = None,
    address_type: str = "IPv4",
    ports: list[dict] | None = None,
    labels: dict | None = None,
) -> dict:
    all_labels = {"kubernetes.io/service-name": service}
    all_labels.update(labels or {})
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service}-abc", "namespace": namespace, "labels": all_labels},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def ep(address: str, node: str | None = None, **conditions: object) -> dict:
    out: dict = {"addresses": [address], "conditions": dict(conditions)}
    if node is not None:
        out["nodeName"] = node
    return out


CIP = ("TCP", "10.96.0.10", 80)


# --- which Services are proxied -----------------------------------------------------------------------------


def test_cluster_ip_service_builds_its_cluster_ip() -> None:
    # proxier.go: "Capture the clusterIP." serv := VirtualServer{Address: svcInfo.ClusterIP(), Port: Port()}
    assert virtual_services([svc()], NODE_V4) == {CIP: {("default/web", "http")}}


def test_skipped_services() -> None:
    # utils.go ShouldSkipService: `!helper.IsServiceIPSet(service)` (None or "") and `Type == ExternalName`
    assert virtual_services([svc(cluster_ips=("None",))], NODE_V4) == {}
    assert virtual_services([svc(cluster_ips=())], NODE_V4) == {}
    assert virtual_services([svc(type_="ExternalName")], NODE_V4) == {}


def test_informer_label_selector_excludes_services() -> None:
    # server.go: labels.NewRequirement(apis.LabelServiceProxyName, selection.DoesNotExist, nil) and
    # labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil): the key's presence excludes.
    other_proxy = svc(labels={"service.kubernetes.io/service-proxy-name": "cilium"})
    headless = svc(labels={"service.kubernetes.io/headless": ""})
    assert virtual_services([other_proxy], NODE_V4) == {}
    assert virtual_services([headless], NODE_V4) == {}


def test_no_cluster_ip_of_a_family_means_nothing_in_that_family() -> None:
    # servicechangetracker.go: `clusterIP := GetClusterIPByFamily(sct.ipFamily, service); if clusterIP == ""
    # { return nil }` -- so the IPv4-only Service's IPv6 externalIP and its NodePort get no IPv6 service.
    single = svc(type_="NodePort", external_ips=["192.0.2.7", "2001:db8::7"])
    single["spec"]["ports"][0]["nodePort"] = 30080
    got = virtual_services([single], NODE_DUAL)
    assert all(parse_ip_sloppy(addr).version == 4 for _p, addr, _port in got)
    assert ("TCP", "192.0.2.7", 80) in got
    assert ("TCP", "2001:db8::7", 80) not in got


def test_dual_stack_service_and_legacy_single_cluster_ip() -> None:
    # GetClusterIPByFamily: ipFamilies[idx] == family -> clusterIPs[idx]; with no ipFamilies, "allowing skew",
    # spec.clusterIP counts for the family it is in.
    dual = svc(cluster_ips=("fd00::10", "10.96.0.10"), families=("IPv6", "IPv4"))
    got = virtual_services([dual], NODE_DUAL)
    assert set(got) == {CIP, ("TCP", "fd00::10", 80)}
    legacy_v6 = svc(cluster_ips=("fd00::10",), families=None)
    assert set(virtual_services([legacy_v6], NODE_DUAL)) == {("TCP", "fd00::10", 80)}
    assert virtual_services([legacy_v6], NODE_V4) == {}


# --- externalIPs and load-balancer ingress ------------------------------------------------------------------


def test_external_ips_of_both_families_are_normalised() -> None:
    # service.go: MapIPsByIPFamily(service.Spec.ExternalIPs)[ipFamily]; netutils.ParseIPSloppy accepts
    # leading zeros in IPv4.
    dual = svc(
        cluster_ips=("10.96.0.10", "fd00::10"),
        families=("IPv4", "IPv6"),
        external_ips=["010.0.0.7", "2001:DB8:0::7", "not-an-ip", ""],
    )
    got = virtual_services([dual], NODE_DUAL)
    assert ("TCP", "10.0.0.7", 80) in got
    assert ("TCP", "2001:db8::7", 80) in got
    assert len(got) == 4  # two ClusterIPs, two externalIPs


def test_load_balancer_ingress_ip_modes() -> None:
    # service.go: `if ing.IP == "" || !proxyutil.IsVIPMode(ing) { continue }`;
    # utils.go IsVIPMode: IPMode nil -> true; otherwise `*ing.IPMode == v1.LoadBalancerIPModeVIP`.
    lb = svc(
        type_="LoadBalancer",
        ingress=[
            {"ip": "203.0.113.1"},
            {"ip": "203.0.113.2", "ipMode": "VIP"},
            {"ip": "203.0.113.3", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "2001:db8::99"},
        ],
    )
    got = virtual_services([lb], NODE_DUAL)
    assert ("TCP", "203.0.113.1", 80) in got
    assert ("TCP", "203.0.113.2", 80) in got
    assert ("TCP", "203.0.113.3", 80) not in got
    assert ("TCP", "2001:db8::99", 80) not in got  # the Service has no IPv6 clusterIP


def test_one_virtual_service_shared_by_two_services() -> None:
    a = svc("a", cluster_ips=("10.96.0.1",), external_ips=["192.0.2.7"])
    b = svc("b", cluster_ips=("10.96.0.2",), external_ips=["192.0.2.7"])
    assert virtual_services([a, b], NODE_V4)[("TCP", "192.0.2.7", 80)] == {
        ("default/a", "http"),
        ("default/b", "http"),
    }


# --- NodePorts ----------------------------------------------------------------------------------------------


def node_port_svc(**kw: object) -> dict:
    s = svc(type_="NodePort", **kw)  # type: ignore[arg-type]
    s["spec"]["ports"][0]["nodePort"] = 30080
    return s


def nodeport_addresses(objects: list[dict], node: NodeSetup) -> set[str]:
    return {addr for proto, addr, port in virtual_services(objects, node) if port == 30080}


def test_node_ports_on_all_addresses_skip_loopback_and_ipv6_link_local() -> None:
    # netlink_linux.go isValidForSet: family must match; `if h.isIPv6 && ip.IsLinkLocalUnicast()` -> false;
    # `if ip.IsLoopback()` -> false. IPv4 link-local is kept.
    assert nodeport_addresses([node_port_svc()], NODE_V4) == {"10.0.0.5", "169.254.1.1"}
    dual = node_port_svc(cluster_ips=("10.96.0.10", "fd00::10"), families=("IPv4", "IPv6"))
    assert nodeport_addresses([dual], NODE_DUAL) == {"10.0.0.5", "169.254.1.1", "2001:db8::5"}


def test_node_port_addresses_filter_and_zero_cidr() -> None:
    # nodeport_addresses.go: CIDRs are filtered to the family; none left -> 0.0.0.0/0 or ::/0 (match all).
    node = NodeSetup("node-a", frozenset({4, 6}), NODE_DUAL.local_addresses, node_port_cidrs=("10.0.0.0/24",))
    dual = node_port_svc(cluster_ips=("10.96.0.10", "fd00::10"), families=("IPv4", "IPv6"))
    assert nodeport_addresses([dual], node) == {"10.0.0.5", "2001:db8::5"}
    everything = NodeSetup("node-a", frozenset({4}), NODE_V4.local_addresses, ("10.0.0.0/24", "0.0.0.0/0"))
    assert nodeport_addresses([node_port_svc()], everything) == {"10.0.0.5", "169.254.1.1"}


def test_node_port_cidr_path_drops_only_loopback() -> None:
    # proxier.go: GetNodeIPs(...) then `if !ip.IsLoopback() { nodeIPs = append(nodeIPs, ip) }`
    node = NodeSetup("node-a", frozenset({4}), NODE_V4.local_addresses, ("127.0.0.0/8", "169.254.0.0/16"))
    assert nodeport_addresses([node_port_svc()], node) == {"169.254.1.1"}
    v6 = NodeSetup("node-a", frozenset({6}), NODE_V4.local_addresses, ("fe80::/10",))
    s = node_port_svc(cluster_ips=("fd00::10",), families=("IPv6",))
    assert nodeport_addresses([s], v6) == {"fe80::1"}


def test_node_port_cidr_path_sees_kube_ipvs0() -> None:
    # GetNodeIPs walks net.InterfaceAddrs(), kube-ipvs0 included, where every ClusterIP is bound.
    node = NodeSetup("node-a", frozenset({4}), NODE_V4.local_addresses, ("10.96.0.0/12",))
    assert nodeport_addresses([node_port_svc()], node) == {"10.96.0.10"}


def test_no_node_port_no_node_port_service() -> None:
    assert nodeport_addresses([svc(type_="NodePort")], NODE_V4) == set()


# --- excludeCIDRs -------------------------------------------------------------------------------------------


def test_exclude_cidrs_only_stop_cleanup() -> None:
    # proxier.go: excludeCIDRs is read only in cleanLegacyService (`if proxier.isIPInExcludeCIDRs(svc.Address)
    # { continue }`); syncProxyRules still builds services there.
    node = NodeSetup("node-a", frozenset({4}), ("10.0.0.5",), exclude_cidrs=("10.96.0.0/12", "fd00::/8"))
    assert CIP in virtual_services([svc()], node)
    assert kube_proxy_cleans_up(node, CIP) is False
    assert kube_proxy_cleans_up(node, ("TCP", "192.0.2.1", 80)) is True
    # `if getIPFamily(svc.Address) != proxier.ipFamily { continue }`: no IPv6 proxier, no IPv6 cleanup
    assert kube_proxy_cleans_up(node, ("TCP", "2001:db8::1", 80)) is False


# --- endpoints ----------------------------------------------------------------------------------------------


def test_condition_defaults() -> None:
    # endpointslicecache.go: ready := Ready == nil || *Ready; serving := Serving == nil || *Serving;
    # terminating := Terminating != nil && *Terminating
    slice_ = eps(
        [
            ep("10.1.0.1"),  # all absent
            ep("10.1.0.2", ready=None, serving=None, terminating=None),
            ep("10.1.0.3", ready=False),  # serving absent -> true
            ep("10.1.0.4", ready=False, serving=False),
            ep("10.1.0.5", ready=False, serving=True, terminating=True),
            ep("10.1.0.6", ready=False, serving=None, terminating=False),
            ep("10.1.0.7", ready=True, serving=False, terminating=True),
        ]
    )
    got = known_endpoints([svc(), slice_], NODE_V4, CIP)
    assert got == {
        ("10.1.0.1", 8080): "ready",
        ("10.1.0.2", 8080): "ready",
        ("10.1.0.3", 8080): "serving",
        ("10.1.0.4", 8080): "not-serving",
        ("10.1.0.5", 8080): "serving",
        ("10.1.0.6", 8080): "serving",
        ("10.1.0.7", 8080): "ready",
    }
    assert wanted_real_servers([svc(), slice_], NODE_V4, CIP) == {
        (f"10.1.0.{i}", 8080) for i in (1, 2, 3, 5, 6, 7)
    }


def test_only_the_first_address_counts() -> None:
    # addEndpoints: `if len(endpoint.Addresses) == 0` -> ignored; ParseIPSloppy(endpoint.Addresses[0])
    slice_ = eps([{"addresses": ["10.1.0.1", "10.1.0.2"]}, {"addresses": []}])
    assert known_endpoints([svc(), slice_], NODE_V4, CIP) == {("10.1.0.1", 8080): "ready"}


def test_slice_matching() -> None:
    # endpointSliceCacheKeys: {slice namespace, label kubernetes.io/service-name};
    # EndpointSliceUpdate: AddressType must be this proxier's; ServicePortName{nn, *port.Name, *port.Protocol}
    one = [ep("10.1.0.1")]
    cases = [
        eps(one, service="other"),
        eps(one, namespace="other"),
        eps(one, address_type="FQDN"),
        eps([ep("fd00:1::1")], address_type="IPv6"),
        eps(one, ports=[{"name": "metrics", "port": 8080, "protocol": "TCP"}]),
        eps(one, ports=[{"name": "http", "port": 8080, "protocol": "UDP"}]),
        eps(one, ports=[{"port": 8080, "protocol": "TCP"}]),  # nil name is ignored
        eps(one, ports=[{"name": "http", "port": 0, "protocol": "TCP"}]),
        eps(one, labels={"service.kubernetes.io/headless": ""}),
        eps(one, labels={"service.kubernetes.io/service-proxy-name": "x"}),
    ]
    for case in cases:
        assert known_endpoints([svc(), case], NODE_V4, CIP) == {}, case
    no_label = eps(one)
    del no_label["metadata"]["labels"]["kubernetes.io/service-name"]
    assert known_endpoints([svc(), no_label], NODE_V4, CIP) == {}
    # a protocol left out is the API default, TCP
    assert known_endpoints([svc(), eps(one, ports=[{"name": "http", "port": 8080}])], NODE_V4, CIP) == {
        ("10.1.0.1", 8080): "ready"
    }


def test_unnamed_port_matches_unnamed_service_port() -> None:
    s = svc(ports=[{"port": 53, "protocol": "UDP"}])
    slice_ = eps([ep("10.1.0.1")], ports=[{"name": "", "port": 5353, "protocol": "UDP"}])
    vs = ("UDP", "10.96.0.10", 53)
    assert virtual_services([s], NODE_V4) == {vs: {("default/web", "")}}
    assert known_endpoints([s, slice_], NODE_V4, vs) == {("10.1.0.1", 5353): "ready"}


def test_duplicate_endpoint_prefers_the_non_terminating_one() -> None:
    # addEndpoints: `if _, exists := endpointSet[...]; !exists || !terminating { endpointSet[...] = ... }`
    old = eps([ep("10.1.0.1", ready=False, serving=False, terminating=True)], name="web-1")
    new = eps([ep("10.1.0.1", ready=True)], name="web-2")
    assert known_endpoints([svc(), old, new], NODE_V4, CIP) == {("10.1.0.1", 8080): "ready"}
    assert known_endpoints([svc(), new, old], NODE_V4, CIP) == {("10.1.0.1", 8080): "ready"}


def test_endpoints_of_a_virtual_service_not_built_are_empty() -> None:
    assert known_endpoints([svc(), eps([ep("10.1.0.1")])], NODE_V4, ("TCP", "10.96.0.99", 80)) == {}


# --- what kube-proxy programs at weight 1 -------------------------------------------------------------------


def test_programmed_prefers_ready_then_serving_terminating() -> None:
    # topology.go CategorizeEndpoints: Ready endpoints, or if none, `ep.IsServing() && ep.IsTerminating()`
    slice_ = eps([ep("10.1.0.1"), ep("10.1.0.2", ready=False, serving=True, terminating=True)])
    assert programmed_real_servers([svc(), slice_], NODE_V4, CIP) == {("10.1.0.1", 8080)}
    draining = eps([ep("10.1.0.2", ready=False, serving=True, terminating=True), ep("10.1.0.3", ready=False)])
    # 10.1.0.3 is serving but not terminating: known and wanted, never programmed
    assert programmed_real_servers([svc(), draining], NODE_V4, CIP) == {("10.1.0.2", 8080)}
    assert wanted_real_servers([svc(), draining], NODE_V4, CIP) == {("10.1.0.2", 8080), ("10.1.0.3", 8080)}


def test_external_traffic_policy_local_on_node_ports_only() -> None:
    # syncEndpoint(svcPortName, svcInfo.ExternalPolicyLocal(), serv) for NodePort/externalIP/LB services;
    # for the ClusterIP one onlyNodeLocalEndpoints is svcInfo.InternalPolicyLocal().
    s = node_port_svc(etp="Local")
    slice_ = eps([ep("10.1.0.1", node="node-a"), ep("10.1.0.2", node="node-b")])
    assert programmed_real_servers([s, slice_], NODE_V4, ("TCP", "10.0.0.5", 30080)) == {("10.1.0.1", 8080)}
    assert programmed_real_servers([s, slice_], NODE_V4, CIP) == {("10.1.0.1", 8080), ("10.1.0.2", 8080)}
    # no local endpoint: "Allow access from local PODs even if no local endpoints exist" -> clusterEndpoints
    remote_only = eps([ep("10.1.0.2", node="node-b")])
    assert programmed_real_servers([s, remote_only], NODE_V4, ("TCP", "10.0.0.5", 30080)) == {
        ("10.1.0.2", 8080)
    }


def test_zone_hints() -> None:
    # topologyModeFromHints: every ready endpoint has a zone hint and one is for this node's zone
    node_obj = {
        "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
    }
    a = ep("10.1.0.1")
    a["hints"] = {"forZones": [{"name": "z1"}]}
    b = ep("10.1.0.2")
    b["hints"] = {"forZones": [{"name": "z2"}]}
    objects = [svc(), eps([a, b]), node_obj]
    assert programmed_real_servers(objects, NODE_V4, CIP) == {("10.1.0.1", 8080)}
    assert wanted_real_servers(objects, NODE_V4, CIP) == {("10.1.0.1", 8080), ("10.1.0.2", 8080)}
