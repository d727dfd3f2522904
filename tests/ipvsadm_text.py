"""Independent readings of `ipvsadm` output, to check our table readers against."""

from __future__ import annotations

import ipaddress
import re

from ipvs_reaper.values import IpvsTable

_FORWARD = {"-m": "Masq", "-g": "Route", "-i": "Tunnel"}
_PROTO = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP", "-f": "FWM"}


def _endpoint(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return ipaddress.ip_address(address.strip("[]")).compressed, int(port)


def parse_restore_format(text: str) -> set[tuple[str, str, str, int, str]]:
    """`ipvsadm -Sn` lines as (protocol, virtual, real, weight, forward), an independent reading."""
    rows = set()
    for line in text.splitlines():
        words = line.split()
        if words[0] != "-a":
            continue
        proto = _PROTO[words[1]]
        virtual = f"fwmark:{words[2]}" if proto == "FWM" else "{}:{}".format(*_endpoint(words[2]))
        real = _endpoint(words[words.index("-r") + 1])
        forward = next(_FORWARD[w] for w in words if w in _FORWARD)
        rows.add((proto, virtual, f"{real[0]}:{real[1]}", int(words[words.index("-w") + 1]), forward))
    return rows


def rows(table: IpvsTable) -> set[tuple[str, str, str, int, str]]:
    return {
        (
            rs.key.virtual.protocol.value,
            str(rs.key.virtual).replace("[", "").replace("]", ""),
            f"{rs.key.address.compressed}:{rs.key.port}",
            rs.weight,
            rs.forward,
        )
        for rs in table.real_servers
    }


def list_counters(text: str) -> list[tuple[int, int, int]]:
    """(weight, ActiveConn, InActConn) of every real server in `ipvsadm -Ln` output, sorted."""
    listed = re.findall(r"->\s+(\S+)\s+\w+\s+(\d+)\s+(\d+)\s+(\d+)", text)
    return sorted((int(w), int(a), int(i)) for _, w, a, i in listed)


def table_counters(table: IpvsTable) -> list[tuple[int, int, int]]:
    return sorted((rs.weight, rs.active_conns, rs.inactive_conns) for rs in table.real_servers)
