"""Every parser of outside input, as a fuzz target: bytes in, and the only exception allowed out is our own
input error (what the command line turns into exit 2 with a message). Anything else, or a hang, is a bug.

Used by atheris (`python -m tests.fuzz.run`, coverage-guided, the long runs) and by hypothesis
(`tests/test_fuzz.py`, in the suite)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ipvs_reaper.agent.first_seen import FirstSeen
from ipvs_reaper.cluster.cache import ENDPOINT_SLICE, KINDS, SERVICE, ClusterCache, parse_object
from ipvs_reaper.cluster.parse import POLICY_ANNOTATION, cluster_state_from_items
from ipvs_reaper.cluster.sources import parse_cluster_document
from ipvs_reaper.config import Config, ConfigError, parse_annotation, parse_config_text
from ipvs_reaper.errors import InputError
from ipvs_reaper.ipvs.connections import count_by_virtual, parse_ip_vs_conn
from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs
from ipvs_reaper.kernel.addresses import parse_node_addresses
from ipvs_reaper.kernel.facts import parse_sysctl_text
from ipvs_reaper.netfilter.ipsets import parse_ipset_save
from ipvs_reaper.netfilter.iptables_save import parse_iptables_save
from ipvs_reaper.netfilter.nft_json import parse_nft_json
from ipvs_reaper.netfilter.rules import Packet, Table, Truth
from ipvs_reaper.netfilter.walk import walk
from ipvs_reaper.planner import SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService

Target = Callable[[bytes], None]


def _text(data: bytes) -> str:
    # What our file reader hands the parsers: text that decoded; other bytes are refused before parsing.
    return data.decode("utf-8", "surrogateescape")


def proc_ip_vs(data: bytes) -> None:
    with contextlib.suppress(TableParseError):
        parse_proc_ip_vs(_text(data), "fuzz")


def cluster_list(data: bytes) -> None:
    """The cluster List, JSON or YAML, as `kubectl get ... -o json|yaml` prints it."""
    with contextlib.suppress(InputError):
        parse_cluster_document(_text(data), "fuzz")


def _json_body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def api_objects(data: bytes) -> None:
    """A Service or EndpointSlice body as the API sends it, through the agent's cache: whatever it is, the
    cache holds it or holds it as unreadable; nothing raises."""
    body = _json_body(data)
    if not isinstance(body, dict):
        return
    cache = ClusterCache("node-a", lambda: 0.0, 60.0)
    for kind in KINDS:
        parse_object(kind, body, "node-a")
        cache.replace(kind, [])
    for kind in (SERVICE, ENDPOINT_SLICE):
        cache.upsert(kind, body)
        cache.snapshot()
        cache.remove(kind, body)


def _plan_with(
    config: Config, annotation: str | None = None, first_seen: Mapping[RealKey, datetime] | None = None
) -> None:
    """A sweep planned with what was parsed: a value can parse and still break what uses it (a number of
    seconds too large for date arithmetic did, before it was bounded)."""
    items: list[dict[str, Any]] = [
        {"kind": "Service", "metadata": {"namespace": "a", "name": "web", "annotations": {}},
         "spec": {"clusterIPs": ["10.96.0.2"], "ports": [{"port": 80}]}},
        {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "a", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"port": 8080}],
         "endpoints": [{"addresses": ["10.1.0.3"], "conditions": {"ready": False, "terminating": True}},
                       {"addresses": ["10.1.0.4"], "conditions": {"ready": False}}]},
    ]  # fmt: skip
    if annotation is not None:
        items[0]["metadata"]["annotations"][POLICY_ANNOTATION] = annotation
    virtual = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.2"), 80)
    table = IpvsTable(
        (VirtualService(virtual, "rr"),),
        tuple(
            RealServer(RealKey(virtual, ipaddress.ip_address(f"10.1.0.{i}"), 8080), "Masq", 0, i % 2, 1)
            for i in range(1, 5)
        ),
    )
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    clocks = (
        [first_seen]
        if first_seen is not None
        else [{rs.key: since for rs in table.real_servers} for since in (now, now - timedelta(days=3650))]
    )
    for seen in clocks:
        plan_sweep(
            SweepInputs(
                table=table,
                cluster=cluster_state_from_items(items),
                node_name="node-a",
                config=config,
                expire_nodest_conn=1,
                now=now,
                first_seen=seen,
            )
        )


def config(data: bytes) -> None:
    try:
        parsed = parse_config_text(data, "fuzz")
    except ConfigError:
        return
    _plan_with(parsed)


def annotation(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_annotation(_text(data))
    _plan_with(Config(), _text(data))


def sysctls(data: bytes) -> None:
    with contextlib.suppress(InputError):
        parse_sysctl_text(_text(data), "fuzz")


def node_addresses(data: bytes) -> None:
    with contextlib.suppress(InputError):
        parse_node_addresses(_text(data), "fuzz")


def first_seen_file(data: bytes) -> None:
    """A corrupt grace-clock file restarts the clocks (later reaping), never the agent: loaded, then used to
    plan a sweep whose real servers it names (the seeds' keys)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "first-seen.json"
        path.write_bytes(data)
        _plan_with(Config(), first_seen=FirstSeen(path).all)


def _walk_all(tables: list[Table]) -> None:
    # A parsed table must also be walkable: the doctor sends packets through whatever was read.
    sets = {"KUBE-CLUSTER-IP": Truth.TRUE, "KUBE-6-LOAD-BALANCER-": Truth.FALSE}
    for protocol, port in (("tcp", 80), ("udp", 53), ("tcp", 3306)):
        list(walk(tables, Packet(4, protocol, port, ipaddress.ip_address("10.96.0.1"), sets)))
        list(walk(tables, Packet(4, protocol, port, None)))
        list(walk(tables, Packet(6, protocol, port, ipaddress.ip_address("fd00:96::20"), sets)))


def iptables_save(data: bytes) -> None:
    with contextlib.suppress(InputError):
        _walk_all(parse_iptables_save(_text(data), "fuzz"))


def ip_vs_conn(data: bytes) -> None:
    with contextlib.suppress(TableParseError):
        count_by_virtual(parse_ip_vs_conn(_text(data), "fuzz"))


def ipset_save(data: bytes) -> None:
    with contextlib.suppress(InputError):
        parse_ipset_save(_text(data), "fuzz")


def nft_ruleset(data: bytes) -> None:
    with contextlib.suppress(InputError):
        _walk_all(parse_nft_json(_text(data), "fuzz"))


TARGETS: dict[str, Target] = {
    "proc_ip_vs": proc_ip_vs,
    "cluster_list": cluster_list,
    "api_objects": api_objects,
    "config": config,
    "annotation": annotation,
    "sysctls": sysctls,
    "node_addresses": node_addresses,
    "first_seen_file": first_seen_file,
    "iptables_save": iptables_save,
    "nft_ruleset": nft_ruleset,
    "ipset_save": ipset_save,
    "ip_vs_conn": ip_vs_conn,
}
