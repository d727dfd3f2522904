"""Hypothesis strategies for IPVS tables."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService

ipv4 = st.integers(min_value=1, max_value=2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(min_value=1, max_value=2**128 - 1).map(ipaddress.IPv6Address)
ports = st.integers(min_value=0, max_value=65535)
counters = st.integers(min_value=0, max_value=10**6)


@st.composite
def virtual_keys(draw: st.DrawFn) -> VirtualKey:
    if draw(st.integers(0, 9)) == 0:
        return VirtualKey.firewall_mark(draw(st.integers(1, 2**32 - 1)), family=draw(st.sampled_from([4, 6])))
    protocol = draw(st.sampled_from([Protocol.TCP, Protocol.UDP, Protocol.SCTP]))
    return VirtualKey.inet(protocol, draw(st.one_of(ipv4, ipv6)), draw(ports))


@st.composite
def tables(draw: st.DrawFn, max_services: int = 8) -> IpvsTable:
    keys = draw(st.lists(virtual_keys(), max_size=max_services, unique=True))
    services, real_servers = [], []
    for key in keys:
        services.append(VirtualService(key, draw(st.sampled_from(["rr", "wlc", "sh"])), draw(st.booleans())))
        family = key.family
        addresses = ipv4 if family == 4 else ipv6
        reals = draw(st.lists(st.tuples(addresses, ports), max_size=5, unique=True))
        for address, port in reals:
            real_servers.append(
                RealServer(
                    RealKey(key, address, port),
                    draw(st.sampled_from(["Masq", "Route", "Tunnel"])),
                    draw(st.integers(0, 3)),
                    draw(counters),
                    draw(counters),
                )
            )
    return IpvsTable(tuple(services), tuple(real_servers))
