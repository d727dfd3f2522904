"""The node's IP sets as `ipset save` prints them, for the sets whose members decide a nat rule: the
`hash:ip,port` sets kube-proxy's rules look up by destination address and port (`-m set --match-set
KUBE-CLUSTER-IP dst,dst`). The kernel's members are the truth; the cluster state only says what kube-proxy
means to put there, and a set lags it (kube-proxy not yet synced, or not running)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ipvs_reaper.errors import InputError
from ipvs_reaper.values import IPAddress

_FAMILIES = {"inet": 4, "inet6": 6}


@dataclass(frozen=True, slots=True)
class IpSet:
    name: str
    kind: str  # hash:ip,port, hash:ip, bitmap:port...
    family: int | None  # 4, 6; None when the type has none (bitmap:port)
    members: frozenset[tuple[IPAddress, str, int]]  # hash:ip,port: (address, protocol, port)


def parse_ipset_save(text: str, source: str) -> Mapping[str, IpSet]:
    """Every set of `ipset save` output with the members of its `hash:ip,port` sets (other types are kept
    by name only: their members are not judged). Raises InputError naming the line."""
    kinds: dict[str, tuple[str, int | None]] = {}
    members: dict[str, set[tuple[IPAddress, str, int]]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "create" and len(words) >= 3:
            family = words[words.index("family") + 1] if "family" in words[:-1] else "inet"
            kinds[words[1]] = (words[2], _FAMILIES.get(family) if words[2].startswith("hash:") else None)
            members[words[1]] = set()
        elif words[0] == "add" and len(words) >= 3 and words[1] in kinds:
            if kinds[words[1]][0] == "hash:ip,port":
                members[words[1]].add(_ip_port(words[2], source, number))
        else:
            raise InputError(f"{source}: line {number}: expected `create` or `add` (`ipset save` output)")
    return {
        name: IpSet(name, kind, family, frozenset(members[name])) for name, (kind, family) in kinds.items()
    }


def _ip_port(text: str, source: str, number: int) -> tuple[IPAddress, str, int]:
    """`10.96.0.10,udp:53`, `fd00::20,tcp:3306`."""
    address, _, rest = text.partition(",")
    protocol, _, port = rest.partition(":")
    try:
        return ipaddress.ip_address(address), protocol.lower(), int(port)
    except ValueError:
        raise InputError(f"{source}: line {number}: {text!r} is not address,protocol:port") from None
