"""An independent, deliberately plain model of what kube-proxy in IPVS mode programs on one node.

This is a test oracle. It was written from kube-proxy's own source (kubernetes/kubernetes, read through
the search tools; see tests/kube_proxy_oracle.notes.md for which files, versions and lines) and NOT from
this project's code: it imports nothing from ``ipvs_reaper`` and uses the standard library only.

Every rule below names the kube-proxy code it stands for. Where kube-proxy's behaviour depends on things
an oracle cannot see (map iteration order, kernel timing, feature gates of an unknown version), the model
picks the reading that keeps MORE virtual services / endpoints alive, and says so in a comment marked
``UNCERTAIN``.

Inputs are plain dicts in the Kubernetes API's JSON shape (camelCase), as a list of Service, EndpointSlice
and Node objects, each with "kind". Objects are assumed to be as the API server stores them (validated and
defaulted); where the API server would default a field (a port's protocol, a Service's type) the model
applies the same default, because kube-proxy only ever sees defaulted objects.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Virtual = tuple[str, str, int]

# cmd/kube-proxy/app/server.go builds ONE informer factory for Services and EndpointSlices with the label
# selector `noProxyName, noHeadlessEndpoints`:
#   labels.NewRequirement(apis.LabelServiceProxyName, selection.DoesNotExist, nil)
#   labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
# pkg/proxy/apis/well_known_labels.go: LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
# k8s.io/api/core/v1 well_known_labels.go: IsHeadlessService = "service.kubernetes.io/headless"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
# discovery.LabelServiceName, read by endpointSliceCacheKeys() in pkg/proxy/endpointslicecache.go
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
# v1.LabelTopologyZone, read by CategorizeEndpoints() in pkg/proxy/topology.go
LABEL_TOPOLOGY_ZONE = "topology.kubernetes.io/zone"

# UNCERTAIN: the PreferSameTrafficDistribution feature gate decides whether endpoint hints.forNodes are read
# (endpointslicecache.go addEndpoints, topology.go topologyModeFromHints). It is on by default in recent
# releases (beta); the oracle models it on.
PREFER_SAME_TRAFFIC_DISTRIBUTION = True


@dataclass(frozen=True)
class NodeSetup:
    name: str
    families: frozenset[int]  # IP families kube-proxy runs on this node: {4}, {6} or {4, 6}
    local_addresses: tuple[str, ...]  # addresses on the node's interfaces, NOT counting kube-ipvs0
    node_port_cidrs: tuple[str, ...] = ()  # kube-proxy's nodePortAddresses; () = all
    exclude_cidrs: tuple[str, ...] = ()  # kube-proxy's ipvs.excludeCIDRs


# ----------------------------------------------------------------------------------------------------------
# Address parsing, the way Go and k8s.io/utils/net do it
# ----------------------------------------------------------------------------------------------------------


def _parse_ipv4_sloppy(text: str) -> ipaddress.IPv4Address | None:
    # netutils.ParseIPSloppy keeps Go's pre-1.17 parser: IPv4 fields are decimal and MAY have leading
    # zeros ("010.0.0.1" is 10.0.0.1). Python's ipaddress refuses leading zeros, so parse by hand.
    parts = text.split(".")
    if len(parts) != 4:
        return None
    values = []
    for part in parts:
        if not part or not part.isascii() or not part.isdigit():
            return None
        value = int(part)
        if value > 255:
            return None
        values.append(value)
    return ipaddress.IPv4Address(".".join(str(v) for v in values))


def parse_ip_sloppy(text: object) -> IP | None:
    """netutils.ParseIPSloppy, then Go's view of the result: an IPv4-mapped IPv6 address ("::ffff:a.b.c.d")
    has To4() != nil, so Go calls it IPv4 (netutils.IsIPv6 is `ip.To4() == nil`) and prints it dotted."""
    if not isinstance(text, str) or not text or "%" in text:  # Go's ParseIP rejects zones ("fe80::1%eth0")
        return None
    if ":" not in text:
        return _parse_ipv4_sloppy(text)
    try:
        ip6 = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if ip6.ipv4_mapped is not None:
        return ip6.ipv4_mapped
    return ip6


def _family(ip: IP | Net) -> int:
    return ip.version


def _parse_cidr(text: str) -> Net | None:
    # netutils.ParseCIDRSloppy: like net.ParseCIDR, host bits allowed ("10.0.0.1/8" is 10.0.0.0/8).
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _parse_local_address(text: str) -> IP | None:
    # NodeSetup.local_addresses may be written "10.0.0.1" or "10.0.0.1/24" (what `ip addr` shows).
    return parse_ip_sloppy(text.split("/", 1)[0].strip())


def _norm_virtual(virtual: Virtual) -> Virtual | None:
    protocol, address, port = virtual
    ip = parse_ip_sloppy(address)
    if ip is None:
        return None
    return (protocol, str(ip), int(port))


# ----------------------------------------------------------------------------------------------------------
# Which objects kube-proxy sees at all
# ----------------------------------------------------------------------------------------------------------


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _seen_by_informer(obj: dict) -> bool:
    """server.go's label selector: both labels must NOT EXIST (any value, even "", excludes the object).
    It applies to Services and EndpointSlices alike (same informer factory). Nodes come from a second
    factory selecting only metadata.name == this node (no label selector)."""
    labels = _labels(obj)
    return LABEL_SERVICE_PROXY_NAME not in labels and LABEL_HEADLESS not in labels


def _of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if isinstance(o, dict) and o.get("kind") == kind]


# ----------------------------------------------------------------------------------------------------------
# Services -> service ports of one IP family (servicechangetracker.go + service.go)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ServicePort:
    """proxy.BaseServicePortInfo for one (Service, port, IP family), keyed like proxy.ServicePortName
    {NamespacedName, Port: servicePort.Name, Protocol: servicePort.Protocol}."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    port: int
    node_port: int
    family: int
    cluster_ip: IP
    external_ips: tuple[IP, ...]
    load_balancer_vips: tuple[IP, ...]
    external_policy_local: bool
    internal_policy_local: bool

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"

    def externally_accessible(self) -> bool:
        # service.go: nodePort != 0 || len(loadBalancerVIPs) != 0 || len(externalIPs) != 0
        # (these are the lists ALREADY filtered to this IP family)
        return self.node_port != 0 or bool(self.load_balancer_vips) or bool(self.external_ips)

    def uses_cluster_endpoints(self) -> bool:
        # service.go: !internalPolicyLocal || ExternallyAccessible()
        return not self.internal_policy_local or self.externally_accessible()

    def uses_local_endpoints(self) -> bool:
        # service.go: internalPolicyLocal || (externalPolicyLocal && ExternallyAccessible())
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible())


def _should_skip_service(spec: dict) -> bool:
    """pkg/proxy/util/utils.go ShouldSkipService:
    `if !helper.IsServiceIPSet(service)` (ClusterIP "None" or "") -> skip; `Type == ExternalName` -> skip.
    It reads the singular spec.clusterIP only."""
    cluster_ip = spec.get("clusterIP") or ""
    if cluster_ip in ("", "None"):
        return True
    return spec.get("type") == "ExternalName"


def _cluster_ip_by_family(spec: dict, family: int) -> str:
    """pkg/proxy/util/utils.go GetClusterIPByFamily."""
    ip_families = spec.get("ipFamilies") or []
    if not ip_families:
        # "allowing skew": no ipFamilies, so the family is the one of spec.clusterIP
        cluster_ip = spec.get("clusterIP") or ""
        if cluster_ip in ("", "None"):
            return ""
        ip = parse_ip_sloppy(cluster_ip)
        # netutils.IsIPv6String(x) is false for an unparsable x, so an unparsable clusterIP "belongs" to
        # IPv4; it then fails the ipset validation in syncProxyRules (see _service_ports).
        is_v6 = ip is not None and ip.version == 6
        return cluster_ip if is_v6 == (family == 6) else ""
    cluster_ips = spec.get("clusterIPs") or []
    wanted = "IPv6" if family == 6 else "IPv4"
    for idx, fam in enumerate(ip_families):
        if fam == wanted and idx < len(cluster_ips):
            return cluster_ips[idx]
    return ""


def _is_vip_mode(ingress: dict) -> bool:
    """pkg/proxy/util/utils.go IsVIPMode: `if ing.IPMode == nil { return true }`,
    `return *ing.IPMode == v1.LoadBalancerIPModeVIP`. (Until LoadBalancerIPMode went GA the function first
    returned true when the feature gate was off; the oracle models the current code.)"""
    mode = ingress.get("ipMode")
    if mode is None:
        return True
    return mode == "VIP"


def _externally_accessible_service(spec: dict) -> bool:
    """pkg/api/v1/service/util.go ExternallyAccessible: LoadBalancer, NodePort, or ClusterIP with
    len(spec.externalIPs) > 0 (the raw list, not the family-filtered one)."""
    svc_type = spec.get("type") or "ClusterIP"  # API default
    return svc_type in ("LoadBalancer", "NodePort") or (
        svc_type == "ClusterIP" and len(spec.get("externalIPs") or []) > 0
    )


def _service_ports(service: dict, family: int) -> list[_ServicePort]:
    """servicechangetracker.go serviceToServiceMap for the proxier of `family`, then newBaseServiceInfo."""
    if not _seen_by_informer(service):
        return []
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    status = service.get("status") or {}
    if _should_skip_service(spec):
        return []
    # serviceToServiceMap: `clusterIP := GetClusterIPByFamily(sct.ipFamily, service); if clusterIP == ""
    # { return nil }` -- a Service with no clusterIP of this family gets NOTHING in this family: no ClusterIP,
    # no externalIPs, no load-balancer IPs, no NodePorts.
    cluster_ip_text = _cluster_ip_by_family(spec, family)
    if cluster_ip_text == "":
        return []
    cluster_ip = parse_ip_sloppy(cluster_ip_text)
    # syncProxyRules validates the ClusterIP ipset entry first and `continue`s past the WHOLE service port
    # (externalIPs, LB, NodePort included) when it is invalid; an unparsable clusterIP is "<nil>" there.
    # A clusterIP of the wrong family cannot pass API validation; the oracle drops it too.
    if cluster_ip is None or cluster_ip.version != family:
        return []

    # service.go: `ipFamilyMap := proxyutil.MapIPsByIPFamily(service.Spec.ExternalIPs)`,
    # `info.externalIPs = ipFamilyMap[ipFamily]` (unparsable entries are skipped with a log line)
    external_ips: list[IP] = []
    for text in spec.get("externalIPs") or []:
        ip = parse_ip_sloppy(text)
        if ip is not None and ip.version == family:
            external_ips.append(ip)

    # service.go: `if ing.IP == "" || !proxyutil.IsVIPMode(ing) { continue }`, then keep it only if
    # `GetIPFamilyFromIP(ip) == ipFamily`. The Service's type is NOT checked.
    lb_vips: list[IP] = []
    for ingress in (status.get("loadBalancer") or {}).get("ingress") or []:
        text = ingress.get("ip") or ""
        if text == "" or not _is_vip_mode(ingress):
            continue
        ip = parse_ip_sloppy(text)
        if ip is not None and ip.version == family:
            lb_vips.append(ip)

    external_policy_local = (
        _externally_accessible_service(spec) and spec.get("externalTrafficPolicy") == "Local"
    )
    internal_policy_local = spec.get("internalTrafficPolicy") == "Local"

    out = []
    for port in spec.get("ports") or []:
        out.append(
            _ServicePort(
                namespace=meta.get("namespace") or "",
                name=meta.get("name") or "",
                port_name=port.get("name") or "",
                protocol=port.get("protocol") or "TCP",  # API default
                port=int(port.get("port") or 0),
                # port.NodePort is used whatever the Service's type is (the API server only allocates one
                # for NodePort/LoadBalancer Services).
                node_port=int(port.get("nodePort") or 0),
                family=family,
                cluster_ip=cluster_ip,
                external_ips=tuple(external_ips),
                load_balancer_vips=tuple(lb_vips),
                external_policy_local=external_policy_local,
                internal_policy_local=internal_policy_local,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Node addresses (ipvs/netlink_linux.go, util/nodeport_addresses.go, ipvs/proxier.go syncProxyRules)
# ----------------------------------------------------------------------------------------------------------


def _valid_for_set(ip: IP, family: int) -> bool:
    """ipvs/netlink_linux.go isValidForSet: family must match; `if h.isIPv6 && ip.IsLinkLocalUnicast()`
    -> false; `if ip.IsLoopback()` -> false. (IPv4 link-local 169.254/16 is KEPT.)"""
    if ip.version != family:
        return False
    if family == 6 and ip.is_link_local:
        return False
    return not ip.is_loopback


def _node_address_set(node: NodeSetup, family: int) -> set[IP]:
    """GetAllLocalAddressesExcept(kube-ipvs0): every address on every interface but kube-ipvs0, through
    isValidForSet."""
    out = set()
    for text in node.local_addresses:
        ip = _parse_local_address(text)
        if ip is not None and _valid_for_set(ip, family):
            out.add(ip)
    return out


def _node_port_cidrs(node: NodeSetup, family: int) -> tuple[list[Net], bool]:
    """util/nodeport_addresses.go NewNodePortAddresses(family, cidrStrings): keep the CIDRs of this family;
    if none is left, use 0.0.0.0/0 or ::/0; a zero CIDR makes it match-all. Returns (cidrs, match_all)."""
    cidrs = []
    for text in node.node_port_cidrs:
        net = _parse_cidr(text)
        if net is not None and net.version == family:
            cidrs.append(net)
    if not cidrs:
        return [], True
    # UNCERTAIN (version): older code tested the literal strings "0.0.0.0/0" / "::/0"; newer code tests a
    # zero prefix length. The oracle uses the prefix length.
    if any(net.prefixlen == 0 for net in cidrs):
        return [], True
    return cidrs, False


def _node_port_ips(node: NodeSetup, family: int, node_address_set: set[IP], bound: set[IP]) -> set[IP]:
    """syncProxyRules:
        if proxier.nodePortAddresses.MatchAll() { nodeIPs = nodeAddressSet }
        else { for ip in nodePortAddresses.GetNodeIPs(networkInterfacer) { if !ip.IsLoopback() {...} } }
    GetNodeIPs walks net.InterfaceAddrs(), i.e. EVERY interface INCLUDING kube-ipvs0, keeps the addresses
    inside one of the family's CIDRs, and syncProxyRules then drops only loopback: link-local addresses of
    both families are kept on this path."""
    cidrs, match_all = _node_port_cidrs(node, family)
    if match_all:
        return set(node_address_set)
    candidates: set[IP] = set(bound)
    for text in node.local_addresses:
        ip = _parse_local_address(text)
        if ip is not None:
            candidates.add(ip)
    return {ip for ip in candidates if any(ip in net for net in cidrs) and not ip.is_loopback}


# ----------------------------------------------------------------------------------------------------------
# Virtual services (ipvs/proxier.go syncProxyRules)
# ----------------------------------------------------------------------------------------------------------

# what built a virtual service: "clusterIP" | "externalIP" | "loadBalancer" | "nodePort"
_Builder = tuple[_ServicePort, str]


def _build(objects: list[dict], node: NodeSetup) -> dict[Virtual, list[_Builder]]:
    built: dict[Virtual, list[_Builder]] = {}

    def add(sp: _ServicePort, kind: str, address: IP, port: int) -> None:
        key = (sp.protocol, str(address), port)
        built.setdefault(key, []).append((sp, kind))

    services = _of_kind(objects, "Service")
    # NewDualStackProxier runs one single-stack proxier per family (metaproxier); each sees every Service
    # through its own ServiceChangeTracker(ipFamily).
    for family in sorted(node.families):
        ports = [sp for svc in services for sp in _service_ports(svc, family)]
        node_address_set = _node_address_set(node, family)
        # Addresses bound to kube-ipvs0 once this sync is done (activeBindAddrs): every ClusterIP, and the
        # externalIPs / LB IPs "if it [does not] exist on another interface" (shouldBind :=
        # !nodeAddressSet.Has(...)). In a steady state these are what GetNodeIPs sees on kube-ipvs0.
        bound: set[IP] = set()
        for sp in ports:
            # "Capture the clusterIP." -- always, whatever the type (bindAddr true)
            add(sp, "clusterIP", sp.cluster_ip, sp.port)
            bound.add(sp.cluster_ip)
            # "Capture externalIPs." -- whatever the type (ExternalName is already skipped)
            for ip in sp.external_ips:
                add(sp, "externalIP", ip, sp.port)
                if ip not in node_address_set:
                    bound.add(ip)
            # "Capture load-balancer ingress." -- svcInfo.LoadBalancerVIPs(): VIP-mode ingress IPs only
            for ip in sp.load_balancer_vips:
                add(sp, "loadBalancer", ip, sp.port)
                if ip not in node_address_set:
                    bound.add(ip)
        # nodeIPs are computed once per sync, only `if hasNodePort`; then
        # `if svcInfo.NodePort() != 0 { if len(nodeIPs) == 0 { continue } ... for nodeIP in nodeIPs {...} }`
        if not any(sp.node_port != 0 for sp in ports):
            continue
        # UNCERTAIN (timing): GetNodeIPs reads kube-ipvs0 as the PREVIOUS sync left it; the oracle models
        # the steady state (bound = this sync's activeBindAddrs), which also keeps more services.
        node_ips = _node_port_ips(node, family, node_address_set, bound)
        for sp in ports:
            if sp.node_port == 0:
                continue
            for ip in node_ips:
                add(sp, "nodePort", ip, sp.node_port)
    return built


def virtual_services(
    objects: list[dict], node: NodeSetup
) -> dict[tuple[str, str, int], set[tuple[str, str]]]:
    """Every virtual service kube-proxy builds on this node, keyed (protocol 'TCP'|'UDP'|'SCTP', address
    as ipaddress-normalised string, port) -> the set of (service namespace/name, service port name) that
    build it.

    ipvs.excludeCIDRs does NOT remove anything here: kube-proxy reads it only in cleanLegacyService, to leave
    alone virtual servers it did not build (see kube_proxy_cleans_up)."""
    out: dict[Virtual, set[tuple[str, str]]] = {}
    for key, builders in _build(objects, node).items():
        out[key] = {(sp.service, sp.port_name) for sp, _kind in builders}
    return out


def kube_proxy_cleans_up(node: NodeSetup, virtual: tuple[str, str, int]) -> bool:
    """Would kube-proxy itself delete this virtual service if it did not build it? ipvs/proxier.go
    cleanLegacyService: `if proxier.isIPInExcludeCIDRs(svc.Address) { continue }`,
    `if getIPFamily(svc.Address) != proxier.ipFamily { continue }` (no proxier of a family = never cleaned).
    Each family's proxier gets filterCIDRs(wantIPv6, excludeCIDRs)."""
    norm = _norm_virtual(virtual)
    if norm is None:
        return False
    ip = parse_ip_sloppy(norm[1])
    assert ip is not None
    if ip.version not in node.families:
        return False
    for text in node.exclude_cidrs:
        net = _parse_cidr(text)
        if net is not None and net.version == ip.version and ip in net:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------
# Endpoints (endpointschangetracker.go, endpointslicecache.go)
# ----------------------------------------------------------------------------------------------------------

_STATE_RANK = {"ready": 2, "serving": 1, "not-serving": 0}


@dataclass(frozen=True)
class _Endpoint:
    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool
    zone_hints: frozenset[str]
    node_hints: frozenset[str]

    @property
    def state(self) -> str:
        if self.ready:
            return "ready"
        if self.serving:
            return "serving"
        return "not-serving"


def _conditions(endpoint: dict) -> tuple[bool, bool, bool]:
    """endpointslicecache.go addEndpoints, verbatim:
        ready := endpoint.Conditions.Ready == nil || *endpoint.Conditions.Ready
        serving := endpoint.Conditions.Serving == nil || *endpoint.Conditions.Serving
        terminating := endpoint.Conditions.Terminating != nil && *endpoint.Conditions.Terminating
    JSON null and an absent key are both Go nil."""
    cond = endpoint.get("conditions") or {}
    ready = cond.get("ready")
    serving = cond.get("serving")
    terminating = cond.get("terminating")
    return (
        ready is None or bool(ready),
        serving is None or bool(serving),
        terminating is not None and bool(terminating),
    )


def _better(a: _Endpoint, b: _Endpoint) -> _Endpoint:
    """Which of two Endpoints with the same ip:port endpointslicecache.go keeps:
        if _, exists := endpointSet[endpointInfo.String()]; !exists || !terminating { endpointSet[...] = ... }
    A non-terminating one always replaces; between two non-terminating (or two terminating) ones the order of
    the slices decides, and slices come from a Go map. UNCERTAIN: the oracle then keeps the more serving one
    (ready > serving > not-serving), and a local one over a remote one."""
    if a.terminating != b.terminating:
        return b if a.terminating else a
    key_a = (_STATE_RANK[a.state], a.is_local)
    key_b = (_STATE_RANK[b.state], b.is_local)
    return b if key_b > key_a else a


def _endpoints(objects: list[dict], node: NodeSetup, sp: _ServicePort) -> dict[tuple[str, int], _Endpoint]:
    """proxier.endpointsMap[svcPortName] for one service port of one family."""
    # endpointschangetracker.go: NewEndpointsChangeTracker(ipFamily,...) tracks AddressTypeIPv4 or IPv6;
    # EndpointSliceUpdate: `if endpointSlice.AddressType != ect.addressType { ... return false }` (FQDN and
    # the other family's slices are ignored).
    address_type = "IPv6" if sp.family == 6 else "IPv4"
    chosen: dict[tuple[str, int], _Endpoint] = {}
    for eps in _of_kind(objects, "EndpointSlice"):
        if not _seen_by_informer(eps):
            continue
        if eps.get("addressType") != address_type:
            continue
        meta = eps.get("metadata") or {}
        # endpointSliceCacheKeys: the Service is {slice namespace, label kubernetes.io/service-name}; a slice
        # without the label, or without a namespace or name, is ignored (error).
        service_name = _labels(eps).get(LABEL_SERVICE_NAME) or ""
        if service_name == "" or not meta.get("namespace") or not meta.get("name"):
            continue
        if meta.get("namespace") != sp.namespace or service_name != sp.name:
            continue
        for port in eps.get("ports") or []:
            # endpointInfoByServicePort: `if port.Name == nil` -> ignored; `if port.Port == nil ||
            # *port.Port == 0` -> ignored; key ServicePortName{serviceNN, *port.Name, *port.Protocol}, so the
            # slice port must match the Service port by name AND protocol. (Protocol defaults to TCP in the
            # API server, so a nil one never reaches kube-proxy.)
            if port.get("name") is None:
                continue
            port_number = port.get("port")
            if port_number is None or int(port_number) == 0:
                continue
            if port["name"] != sp.port_name or (port.get("protocol") or "TCP") != sp.protocol:
                continue
            for endpoint in eps.get("endpoints") or []:
                addresses = endpoint.get("addresses") or []
                # addEndpoints: `if len(endpoint.Addresses) == 0` -> ignored; otherwise ONLY
                # endpoint.Addresses[0] is used: `endpointIP := utilnet.ParseIPSloppy(endpoint.Addresses[0])`
                if not addresses:
                    continue
                ip = parse_ip_sloppy(addresses[0])
                # An unparsable address becomes "<nil>:port" and can never be added as a real server; an
                # address of the other family cannot pass API validation of the slice (older kube-proxy also
                # dropped it explicitly). Both are left out.
                if ip is None or ip.version != sp.family:
                    continue
                ready, serving, terminating = _conditions(endpoint)
                node_name = endpoint.get("nodeName")
                # `isLocal := endpoint.NodeName != nil && cache.isLocal(*endpoint.NodeName)`,
                # isLocal(n) = len(cache.nodeName) > 0 && n == cache.nodeName
                is_local = node_name is not None and node.name != "" and node_name == node.name
                hints = endpoint.get("hints") or {}
                zone_hints = frozenset(z.get("name") or "" for z in hints.get("forZones") or [])
                node_hints = frozenset(n.get("name") or "" for n in hints.get("forNodes") or [])
                if not PREFER_SAME_TRAFFIC_DISTRIBUTION:
                    node_hints = frozenset()
                candidate = _Endpoint(
                    ip=str(ip),
                    port=int(port_number),
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    is_local=is_local,
                    zone_hints=zone_hints,
                    node_hints=node_hints,
                )
                key = (candidate.ip, candidate.port)
                chosen[key] = _better(chosen[key], candidate) if key in chosen else candidate
    return chosen


def known_endpoints(
    objects: list[dict], node: NodeSetup, virtual: tuple[str, str, int]
) -> dict[tuple[str, int], str]:
    """Every endpoint (address, port) of the Service port behind `virtual` in the slices, with its state:
    'ready', 'serving' (not ready but serving), or 'not-serving'. Absent = gone.

    If several service ports build the same virtual service, their endpoints are merged; if they disagree
    about one endpoint's state the more serving state is reported (conservative)."""
    norm = _norm_virtual(virtual)
    if norm is None:
        return {}
    out: dict[tuple[str, int], str] = {}
    for sp, _kind in _build(objects, node).get(norm, []):
        for key, endpoint in _endpoints(objects, node, sp).items():
            if key not in out or _STATE_RANK[endpoint.state] > _STATE_RANK[out[key]]:
                out[key] = endpoint.state
    return out


def wanted_real_servers(
    objects: list[dict], node: NodeSetup, virtual: tuple[str, str, int]
) -> set[tuple[str, int]]:
    """The (address, port) real servers kube-proxy wants at weight > 0 OR still counts as serving for that
    virtual service: endpoints that are ready, or serving (a terminating endpoint still serving), read the way
    endpointslicecache.go reads conditions (Ready nil -> true, Serving nil -> true, Terminating nil -> false).

    This is deliberately wider than what kube-proxy programs at weight 1 (programmed_real_servers): traffic
    policies and topology hints narrow THAT set, and kube-proxy uses serving-terminating endpoints only when
    no ready one is usable; none of that makes a ready or serving endpoint gone."""
    return {key for key, state in known_endpoints(objects, node, virtual).items() if state != "not-serving"}


# ----------------------------------------------------------------------------------------------------------
# What kube-proxy actually programs at weight 1 (topology.go CategorizeEndpoints + proxier.go syncEndpoint)
# ----------------------------------------------------------------------------------------------------------


def _topology_mode(endpoints: list[_Endpoint], node_name: str, zone: str) -> str:
    """topology.go topologyModeFromHints (only READY endpoints are looked at)."""
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return ""
    if PREFER_SAME_TRAFFIC_DISTRIBUTION:
        all_node_hints = all(len(e.node_hints) > 0 for e in ready)
        for_node = any(len(e.node_hints) > 0 and node_name in e.node_hints for e in ready)
        if all_node_hints and for_node:
            return "PreferSameNode"
    all_zone_hints = all(len(e.zone_hints) > 0 for e in ready)
    for_zone = any(len(e.zone_hints) > 0 and zone in e.zone_hints for e in ready)
    if all_zone_hints and for_zone:
        return "PreferSameZone"
    return ""


def _available_for_topology(e: _Endpoint, mode: str, node_name: str, zone: str) -> bool:
    if mode == "":
        return True
    if mode == "PreferSameNode":
        return node_name in e.node_hints
    if mode == "PreferSameZone":
        return zone in e.zone_hints
    return False


def _categorize(
    endpoints: list[_Endpoint], sp: _ServicePort, node_name: str, zone: str
) -> tuple[list[_Endpoint] | None, list[_Endpoint] | None]:
    """topology.go CategorizeEndpoints -> (clusterEndpoints, localEndpoints); None stands for Go's nil."""
    if not endpoints:
        return None, None
    cluster: list[_Endpoint] | None = None
    if sp.uses_cluster_endpoints():
        mode = _topology_mode(endpoints, node_name, zone)
        cluster = [e for e in endpoints if e.ready and _available_for_topology(e, mode, node_name, zone)]
        if not cluster:
            # "try again using terminating endpoints": IsServing() && IsTerminating()
            cluster = [e for e in endpoints if e.serving and e.terminating]
    if not sp.uses_local_endpoints():
        return cluster, None
    has_local_ready = False
    has_local_serving_terminating = False
    for e in endpoints:
        if e.ready:
            has_local_ready = has_local_ready or e.is_local
        elif e.serving and e.terminating:
            has_local_serving_terminating = has_local_serving_terminating or e.is_local
    local: list[_Endpoint] | None = None
    if has_local_ready:
        local = [e for e in endpoints if e.is_local and e.ready]
    elif has_local_serving_terminating:
        local = [e for e in endpoints if e.is_local and e.serving and e.terminating]
    return cluster, local


def _node_zone(objects: list[dict], node: NodeSetup) -> str:
    # The Node informer selects metadata.name == nodeName; OnNodeAdd/Update ignore other nodes.
    for obj in _of_kind(objects, "Node"):
        if (obj.get("metadata") or {}).get("name") == node.name:
            return _labels(obj).get(LABEL_TOPOLOGY_ZONE) or ""
    return ""


def programmed_real_servers(
    objects: list[dict], node: NodeSetup, virtual: tuple[str, str, int]
) -> set[tuple[str, int]]:
    """The real servers kube-proxy's syncEndpoint puts at weight 1 for `virtual` (a subset of
    wanted_real_servers). onlyNodeLocalEndpoints is svcInfo.InternalPolicyLocal() for the ClusterIP virtual
    service and svcInfo.ExternalPolicyLocal() for externalIP, load-balancer and NodePort ones; then
        if onlyNodeLocalEndpoints { if len(localEndpoints) > 0 { localEndpoints } else { clusterEndpoints } }
        else { clusterEndpoints }
    UNCERTAIN: when several service ports build one virtual service, each syncEndpoint call replaces the
    others' real servers in Go-map order; the oracle returns the union."""
    norm = _norm_virtual(virtual)
    if norm is None:
        return set()
    zone = _node_zone(objects, node)
    out: set[tuple[str, int]] = set()
    for sp, kind in _build(objects, node).get(norm, []):
        endpoints = sorted(_endpoints(objects, node, sp).values(), key=lambda e: (e.ip, e.port))
        cluster, local = _categorize(endpoints, sp, node.name, zone)
        only_local = sp.internal_policy_local if kind == "clusterIP" else sp.external_policy_local
        selected = cluster or []
        if only_local and local:
            selected = local
        out.update((e.ip, e.port) for e in selected)
    return out
