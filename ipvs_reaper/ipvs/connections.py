"""Reads /proc/net/ip_vs_conn: IPVS's connection table, one entry per client connection (and per persistence
template), as the kernel's `ip_vs_conn_seq_show` prints it:

    Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
    TCP 0AF40909 C350 0A600014 0CEA 0AF40103 0CEA ESTABLISHED     899

IPv4 addresses and every port in hex, IPv6 addresses exploded (%pI6), the expiry in seconds, and, for a
connection of a persistence engine (SIP), its name and data. Kernels before 2.6.37 print no PEName/PEData
header words. This is live-traffic evidence: which virtual services carry connections now, from whom."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ipvs_reaper.ipvs.procfs import TableParseError, hex_number, kernel_ipv6
from ipvs_reaper.values import IPAddress

HEADER = "Pro FromIP"
_MAX_EXPIRES = 2**64 - 1  # an unsigned long


@dataclass(frozen=True, slots=True)
class IpvsConnection:
    protocol: str  # TCP, UDP, SCTP; IP for a firewall-mark service's template; IP_<n> for others
    client: IPAddress
    client_port: int
    virtual: IPAddress  # the address the client sent to (a virtual service's, or a fwmark packet's)
    virtual_port: int
    destination: IPAddress  # the real server
    destination_port: int
    state: str  # ESTABLISHED, TIME_WAIT, SYN_RECV, ...; UDP for UDP; a persistence template ASSURED (6.1)
    expires: int  # seconds until the entry goes
    engine: str = ""  # a persistence engine's name and data (`sip <call-id>`)

    @property
    def template(self) -> bool:
        """A persistence template (client port 0): it pins a client to a real server, carrying no traffic."""
        return self.client_port == 0


def _address(text: str) -> IPAddress:
    if ":" in text:
        return kernel_ipv6(text)
    return ipaddress.IPv4Address(hex_number(text, 8, "an IPv4 address"))


def _connection(words: list[str]) -> IpvsConnection:
    if len(words) < 9:
        raise ValueError(
            "a connection line is 'PRO FROMIP FPRT TOIP TPRT DESTIP DPRT STATE EXPIRES [PENAME PEDATA]'"
        )
    try:
        expires = int(words[8])
    except ValueError:
        raise ValueError(f"Expires: expected a whole number, got {words[8]!r}") from None
    if not 0 <= expires <= _MAX_EXPIRES:
        raise ValueError(f"Expires {expires} out of range")
    return IpvsConnection(
        protocol=words[0],
        client=_address(words[1]),
        client_port=hex_number(words[2], 4, "a port"),
        virtual=_address(words[3]),
        virtual_port=hex_number(words[4], 4, "a port"),
        destination=_address(words[5]),
        destination_port=hex_number(words[6], 4, "a port"),
        state=words[7],
        expires=expires,
        engine=" ".join(words[9:]),
    )


def parse_ip_vs_conn(text: str, source: str = "/proc/net/ip_vs_conn") -> tuple[IpvsConnection, ...]:
    """Every entry; raises TableParseError naming the line. The kernel's text always starts with its header
    line, so text without it (another file, `ipvsadm -Lnc` output) is refused."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or not lines[first].startswith(HEADER):
        number = 1 if first is None else first + 1
        hint = (
            " (this looks like `ipvsadm -Lnc` output: give `cat /proc/net/ip_vs_conn`)"
            if first is not None and lines[first].startswith("IPVS connection entries")
            else ""
        )
        expected = f"expected the header '{HEADER} ...' of /proc/net/ip_vs_conn{hint}"
        raise TableParseError(source, number, expected)
    connections = []
    for index in range(first + 1, len(lines)):
        words = lines[index].split()
        if not words:
            continue
        try:
            connections.append(_connection(words))
        except ValueError as error:
            raise TableParseError(source, index + 1, str(error)) from None
    return tuple(connections)


def count_by_virtual(
    connections: Iterable[IpvsConnection],
) -> Counter[tuple[str, IPAddress, int]]:
    """Connections (templates left out) per (protocol, address, port) the clients sent to."""
    return Counter((c.protocol, c.virtual, c.virtual_port) for c in connections if not c.template)
