from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvs_reaper.cluster.parse import ObjectError, _ip, cluster_state_from_items, parse_service
from ipvs_reaper.cluster.sources import load_cluster_file, parse_cluster_document
from ipvs_reaper.errors import InputError
from ipvs_reaper.mapping import ClusterIndex, EndpointState
from ipvs_reaper.values import Protocol, VirtualKey
from tests.builders import endpoint, endpoint_slice, node, port, service


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def index(*items: dict[str, Any], node_name: str = "node-a") -> ClusterIndex:
    return ClusterIndex(cluster_state_from_items(list(items)), node_name)


def vk(protocol: str, address: str, port_number: int) -> VirtualKey:
    return VirtualKey.inet(Protocol(protocol), ip(address), port_number)


WEB = service(
    "shop",
    "web",
    ["10.96.12.7", "fd00:10:96::7"],
    [port(443, "https", node_port=31234), port(80, "http")],
    type_="LoadBalancer",
    external_ips=["203.0.113.10"],
    lb_ips=["198.51.100.7"],
)
WEB_SLICE = endpoint_slice(
    "shop",
    "web-1",
    "web",
    [port(8443, "https"), port(8080, "http")],
    [endpoint("10.244.3.17"), endpoint("10.244.4.9", ready=False, serving=True, terminating=True)],
)
WEB_SLICE6 = endpoint_slice(
    "shop", "web-2", "web", [port(8443, "https")], [endpoint("fd00:244::9")], family="IPv6"
)
NODE = node("node-a", "192.168.49.2", "fd00:49::2")


@pytest.mark.parametrize(
    "virtual",
    [
        vk("TCP", "10.96.12.7", 443),  # ClusterIP
        vk("TCP", "fd00:10:96::7", 443),  # the dual-stack second ClusterIP
        vk("TCP", "192.168.49.2", 31234),  # NodePort on the node's addresses
        vk("TCP", "fd00:49::2", 31234),
        vk("TCP", "203.0.113.10", 443),  # externalIP
        vk("TCP", "198.51.100.7", 443),  # load-balancer ingress
    ],
)
def test_every_kind_of_virtual_service_maps_to_the_service(virtual: VirtualKey) -> None:
    target = index(WEB, WEB_SLICE, WEB_SLICE6, NODE).target(virtual)
    assert target is not None
    assert (target.service.ref, target.port.name) == ("shop/web", "https")


def test_what_does_not_map() -> None:
    idx = index(WEB, WEB_SLICE, NODE)
    assert idx.target(vk("UDP", "10.96.12.7", 443)) is None  # wrong protocol
    assert idx.target(vk("TCP", "10.96.12.7", 8443)) is None  # target port, not service port
    assert idx.target(vk("TCP", "172.17.0.1", 31234)) is None  # an address that is not the node's
    assert idx.target(VirtualKey.firewall_mark(42)) is None
    assert index(WEB, WEB_SLICE, node("node-b", "10.0.0.2")).target(vk("TCP", "192.168.49.2", 31234)) is None


def test_endpoint_states_by_named_port() -> None:
    idx = index(WEB, WEB_SLICE, WEB_SLICE6, NODE)
    target = idx.target(vk("TCP", "10.96.12.7", 443))
    assert idx.endpoint_status(target, ip("10.244.3.17"), 8443).state is EndpointState.READY
    terminating = idx.endpoint_status(target, ip("10.244.4.9"), 8443)
    assert (terminating.state, terminating.serving) == (EndpointState.TERMINATING, True)
    assert idx.endpoint_status(target, ip("10.244.3.17"), 8080).state is EndpointState.GONE  # the http port's
    assert idx.endpoint_status(target, ip("10.244.9.9"), 8443).state is EndpointState.GONE
    v6 = idx.target(vk("TCP", "fd00:10:96::7", 443))
    assert idx.endpoint_status(v6, ip("fd00:244::9"), 8443).state is EndpointState.READY
    assert idx.endpoint_status(None, ip("10.244.3.17"), 8443).state is EndpointState.UNMAPPED


def test_unnamed_port_udp_and_sctp() -> None:
    dns = service("kube-system", "dns", ["10.96.0.10"], [port(53, protocol="UDP")])
    dns_slice = endpoint_slice(
        "kube-system",
        "dns-1",
        "dns",
        [port(53, protocol="UDP")],
        [endpoint("10.244.0.5"), endpoint("10.244.1.6", ready=False)],
    )
    sctp = service("tel", "dia", ["10.96.40.2"], [port(3868, "d", "SCTP")])
    sctp_slice = endpoint_slice("tel", "dia-1", "dia", [port(3868, "d", "SCTP")], [endpoint("10.244.2.8")])
    idx = index(dns, dns_slice, sctp, sctp_slice)
    target = idx.target(vk("UDP", "10.96.0.10", 53))
    assert idx.endpoint_status(target, ip("10.244.1.6"), 53).state is EndpointState.NOT_READY
    assert idx.endpoint_status(idx.target(vk("SCTP", "10.96.40.2", 3868)), ip("10.244.2.8"), 3868).state is (
        EndpointState.READY
    )


def test_missing_conditions_read_as_kube_proxy_reads_them() -> None:
    svc = service("a", "b", ["10.96.0.2"], [port(80)])
    sl = endpoint_slice(
        "a", "b-1", "b", [port(8080)], [endpoint("10.1.0.1", ready=None, serving=None, terminating=None)]
    )
    idx = index(svc, sl)
    assert (
        idx.endpoint_status(idx.target(vk("TCP", "10.96.0.2", 80)), ip("10.1.0.1"), 8080).state
        is EndpointState.READY
    )


def test_the_most_wanted_reading_wins_across_slices() -> None:
    svc = service("a", "b", ["10.96.0.2"], [port(80)])
    stale = endpoint_slice("a", "b-1", "b", [port(8080)], [endpoint("10.1.0.1", ready=False)])
    fresh = endpoint_slice("a", "b-2", "b", [port(8080)], [endpoint("10.1.0.1")])
    idx = index(svc, stale, fresh)
    assert (
        idx.endpoint_status(idx.target(vk("TCP", "10.96.0.2", 80)), ip("10.1.0.1"), 8080).state
        is EndpointState.READY
    )


def test_headless_and_ambiguous_services_map_nothing() -> None:
    headless = service("a", "h", ["None"], [port(80)])
    one = service("a", "x", ["10.96.0.3"], [port(80)], external_ips=["203.0.113.5"])
    two = service("b", "y", ["10.96.0.4"], [port(80)], external_ips=["203.0.113.5"])
    idx = index(headless, one, two)
    assert idx.target(vk("TCP", "203.0.113.5", 80)) is None
    assert idx.ambiguous[vk("TCP", "203.0.113.5", 80)] == ("a/x", "b/y")
    assert idx.target(vk("TCP", "10.96.0.3", 80)) is not None


def test_two_ports_of_one_service_on_one_port_are_ambiguous() -> None:
    # The API rejects this, but a hand-made export may carry it: which slice port's endpoints the real
    # servers are cannot be told, so they are not mapped (found by the safety properties).
    twice = service("a", "x", ["10.96.0.3"], [port(443), port(443, "a")])
    idx = index(twice, endpoint_slice("a", "x-1", "x", [port(8080, "a")], [endpoint("10.1.0.1")]))
    assert idx.target(vk("TCP", "10.96.0.3", 443)) is None
    assert idx.ambiguous[vk("TCP", "10.96.0.3", 443)] == ("a/x port (unnamed)", "a/x port a")


def test_fqdn_and_unlabelled_slices_are_ignored() -> None:
    fqdn = endpoint_slice("a", "f", "b", [port(80)], [], family="FQDN")
    orphan = endpoint_slice("a", "o", "b", [port(80)], [endpoint("10.1.0.1")])
    del orphan["metadata"]["labels"]
    state = cluster_state_from_items([service("a", "b", ["10.96.0.2"], [port(80)]), fqdn, orphan])
    assert state.slices == ()


def test_a_view_without_services_or_slices_is_unusable() -> None:
    assert not cluster_state_from_items([service("a", "b", ["10.96.0.2"], [port(80)])]).usable
    assert not cluster_state_from_items([endpoint_slice("a", "b", "b", [port(80)], [])]).usable
    assert cluster_state_from_items(
        [service("a", "b", ["10.96.0.2"], [port(80)]), endpoint_slice("a", "b", "b", [], [])]
    ).usable


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s: s["endpoints"][0].update(addresses="10.1.0.1"),
            "endpoints[0].addresses: expected list",
        ),
        (
            lambda s: s["endpoints"][0]["addresses"].append("10.1.0.999"),
            "endpoints[0].addresses[1]: '10.1.0.999'",
        ),
        (lambda s: s["endpoints"][0]["conditions"].update(ready="yes"), "endpoints[0].conditions.ready"),
        (lambda s: s["endpoints"].append("10.1.0.2"), "endpoints[1]: expected an object"),
        (lambda s: s["endpoints"][0].update(conditions=[]), "endpoints[0].conditions: expected dict"),
        (lambda s: s["ports"][0].update(port=70000), "ports[0].port"),
        (lambda s: s["ports"][0].update(protocol="ICMP"), "ports[0].protocol"),
        (lambda s: s.update(addressType="IPv5"), "addressType"),
    ],
)
def test_a_garbage_slice_keeps_only_its_service_and_says_which_field(mutate: Any, message: str) -> None:
    sl = endpoint_slice("a", "b-1", "b", [port(8080)], [endpoint("10.1.0.1")])
    mutate(sl)
    other = endpoint_slice("c", "d-1", "d", [port(8080)], [endpoint("10.1.0.2")])
    items = [service("a", "b", ["10.96.0.2"], [port(80)]), sl, service("c", "d", ["10.96.0.3"], [port(80)])]
    items.append(other)
    state = parse_cluster_document(json.dumps({"kind": "List", "items": items}), "cluster.json")
    assert state.usable
    assert set(state.broken) == {"a/b"}
    assert message in state.broken["a/b"]
    assert state.broken["a/b"].startswith("items[1] (EndpointSlice a/b-1) cannot be read")
    assert [s.name for s in state.slices] == ["d-1"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s: s["spec"].update(clusterIPs=[s["spec"]["clusterIP"], "10.96.0.999"]),
            "spec.clusterIPs[1]: '10.96.0.999'",
        ),
        (lambda s: s["spec"].update(externalIPs=[7]), "spec.externalIPs[0]: expected an IP address string"),
        (lambda s: s["spec"]["ports"].append("80"), "spec.ports[1]: expected an object"),
        (lambda s: s["spec"]["ports"][0].update(port=0), "spec.ports[0].port: expected a port number"),
        (lambda s: s["spec"]["ports"][0].update(nodePort=70000), "spec.ports[0].nodePort"),
        (lambda s: s["spec"]["ports"][0].update(protocol="ICMP"), "spec.ports[0].protocol: unknown protocol"),
        (lambda s: s["spec"]["ports"][0].update(name=5), "spec.ports[0].name: expected str"),
        (
            lambda s: s["status"]["loadBalancer"].update(ingress=[{"ip": "x"}]),
            "status.loadBalancer.ingress[0].ip: 'x' is not an IP address",
        ),
    ],
)
def test_a_garbage_service_makes_the_view_unusable_and_says_which_field(mutate: Any, message: str) -> None:
    # It could claim any address, so nothing can be decided: the view is refused, with the reason.
    svc = service("a", "b", ["10.96.0.2"], [port(80)])
    mutate(svc)
    document = json.dumps({"kind": "List", "items": [svc, endpoint_slice("a", "b-1", "b", [port(8080)], [])]})
    state = parse_cluster_document(document, "cluster.json")
    assert not state.usable
    (problem,) = state.problems
    assert problem.startswith("items[0] (Service a/b) cannot be read (")
    assert message in problem


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{ not json", "c.json: not valid JSON: line 1: Expecting property name"),
        ('{\n  "items": [\n    1,\n  ]\n}', "c.json: not valid JSON: line 4:"),
        ("items:\n  - kind: Service\n   bad: indent\n", "c.json: not valid YAML: line 3:"),
        ('{"kind": "Service"}', "c.json: a single Service, not a List: export everything with `kubectl get"),
        ("[1, 2]", "c.json: expected a List with 'items'"),
        ("[" * 100_000, "c.json: nested too deeply"),
        ('{"items": ' + "[" * 100_000, "c.json: "),
    ],
)
def test_garbage_documents(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_cluster_document(text, "c.json")
    assert str(caught.value).startswith(message)


def test_unreadable_files_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"/nonexistent/cluster.json: No such file"):
        load_cluster_file("/nonexistent/cluster.json")
    binary = tmp_path / "cluster.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    with pytest.raises(InputError, match=r"cluster.bin: not text"):
        load_cluster_file(str(binary))


def test_an_export_of_legacy_endpoints_says_to_export_endpointslices() -> None:
    endpoints = {"kind": "Endpoints", "metadata": {"namespace": "a", "name": "b"}, "subsets": []}
    state = cluster_state_from_items([service("a", "b", ["10.96.0.2"], [port(80)]), endpoints])
    assert not state.usable
    assert "has legacy Endpoints instead; export `endpointslices`" in state.problems[0]


def test_an_item_that_is_not_an_object_makes_the_view_unusable() -> None:
    state = cluster_state_from_items(
        [service("a", "b", ["10.96.0.2"], [port(80)]), endpoint_slice("a", "b", "b", [], []), "junk"]
    )
    assert state.problems == ("items[2] is not an object: it could be anything",)


def test_a_non_string_policy_annotation_is_a_field_error() -> None:
    svc = service("a", "b", ["10.96.0.2"], [port(80)])
    svc["metadata"]["annotations"] = {"ipvs-reaper.io/policy": {"gone": {"reap": "always"}}}
    with pytest.raises(ObjectError, match=r"ipvs-reaper\.io/policy: expected a string"):
        parse_service(svc)


def test_yaml_export_reads_like_json(examples: Path) -> None:
    import yaml

    document = json.loads((examples / "cluster.json").read_text())
    assert parse_cluster_document(yaml.safe_dump(document), "c.yaml") == load_cluster_file(
        str(examples / "cluster.json")
    )


_ADDRESS_LIKE = st.one_of(
    st.ip_addresses().map(str),
    st.lists(
        st.sampled_from(["0", "1", "01", "10", "255", "256", "0x1", " ", "", "\x00", ":", "fe80", "%eth0"])
    ).map(".".join),
    st.text(alphabet="0123456789abcdefx.: %\x00\n", max_size=20),
)


def _sloppy(text: str) -> Any:
    """Go's ParseIPSloppy, as kube-proxy reads addresses: dotted decimal with leading zeros; IPv4-mapped IPv6
    is the IPv4 address."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 8 and int(p) <= 255 for p in parts):
        return ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))
    address = ipaddress.ip_address(text)
    return address.ipv4_mapped or address if address.version == 6 else address


@given(_ADDRESS_LIKE)
def test_address_parsing_accepts_what_kube_proxy_accepts(text: str) -> None:
    try:
        expected = _sloppy(text)
    except ValueError:
        with pytest.raises(ObjectError, match="is not an IP address"):
            _ip(text, "spec.clusterIP")
    else:
        assert _ip(text, "spec.clusterIP") == expected


def test_old_sloppy_and_mapped_addresses_read_as_kube_proxy_reads_them() -> None:
    assert str(_ip("010.096.000.001", "x")) == "10.96.0.1"
    assert str(_ip("::ffff:10.1.2.3", "x")) == "10.1.2.3"
    with pytest.raises(ObjectError):
        _ip("10.256.0.1", "x")
