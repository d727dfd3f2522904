"""The node's own addresses, on which kube-proxy builds NodePort virtual services.

kube-proxy in IPVS mode (without --nodeport-addresses) puts a NodePort on every address of every interface
except `kube-ipvs0` (where the Service addresses live), leaving out loopback and IPv6 link-local addresses
(`GetAllLocalAddressesExcept` in pkg/proxy/ipvs). The Node object lists only some of them (InternalIP,
ExternalIP), so a NodePort on cni0, docker0 or a second NIC would map to no Service and be kept for ever.
Read here from netlink on a live node, or offline from `ip -j addr` (or plain addresses, as `hostname -I`
prints them).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ipvs_reaper.errors import InputError
from ipvs_reaper.values import IPAddress, usable_for_node_ports

SERVICE_DEVICE = "kube-ipvs0"


class AddressError(Exception):
    """The node's addresses could not be read."""


def _unique(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys(a for a in addresses if usable_for_node_ports(a)))


def read_local_addresses() -> tuple[IPAddress, ...]:
    """This network namespace's addresses, as kube-proxy takes them. Raises AddressError."""
    try:
        with IPRoute() as route:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in route.get_links()}
            found = [
                (
                    names.get(message["index"]),
                    message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS"),
                )
                for message in route.get_addr()
            ]
    except (NetlinkError, OSError) as error:
        raise AddressError(f"reading the node's addresses over netlink: {error}") from None
    addresses = []
    for device, text in found:
        # GetAllLocalAddressesExcept(kube-ipvs0): an address also on another interface (an externalIP that is
        # the node's own) is taken from that interface and carries NodePorts, as since kube-proxy 1.27.
        if device == SERVICE_DEVICE or not text:
            continue
        try:
            addresses.append(ipaddress.ip_address(text.partition("%")[0]))
        except ValueError:
            continue  # not an IP address family kube-proxy uses
    return _unique(addresses)


def _from_ip_json(document: Any, source: str) -> list[IPAddress]:
    if not isinstance(document, list):
        raise InputError(f"{source}: expected the JSON list `ip -j addr` prints")
    addresses = []
    for i, link in enumerate(document):
        if not isinstance(link, dict) or not isinstance(link.get("addr_info", []), list):
            raise InputError(f"{source}: [{i}]: expected an interface with addr_info")
        if link.get("ifname") == SERVICE_DEVICE:
            continue
        for j, info in enumerate(link.get("addr_info", [])):
            if info == {}:
                continue  # `ip` prints an empty object for an address it cannot show
            local = info.get("local") if isinstance(info, dict) else None
            try:
                if not isinstance(local, str):
                    raise ValueError(local)
                addresses.append(ipaddress.ip_address(local))
            except ValueError:
                raise InputError(
                    f"{source}: [{i}].addr_info[{j}].local: {local!r} is not an IP address"
                ) from None
    return addresses


def lists_service_addresses(text: str) -> bool:
    """Whether `--node-addresses` text is the plain form (`hostname -I`), which on an IPVS node also lists
    every address bound to kube-ipvs0 and cannot tell them from the interfaces'."""
    return not text.lstrip().startswith("[")


def parse_node_addresses(text: str, source: str) -> tuple[IPAddress, ...]:
    """`ip -j addr` output, or addresses separated by white space (`hostname -I`)."""
    if not lists_service_addresses(text):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{source}: not valid JSON: line {error.lineno}: {error.msg}") from None
        except RecursionError:
            raise InputError(f"{source}: nested too deeply to be `ip -j addr` output") from None
        return _unique(_from_ip_json(document, source))
    addresses = []
    for number, line in enumerate(text.splitlines(), start=1):
        for word in line.split():
            try:
                addresses.append(ipaddress.ip_address(word.partition("/")[0]))
            except ValueError:
                raise InputError(
                    f"{source}: line {number}: {word!r} is not an IP address "
                    "(expected `ip -j addr` output, or addresses separated by spaces)"
                ) from None
    if not addresses:
        raise InputError(f"{source}: no addresses (expected `ip -j addr` output)")
    return _unique(addresses)
