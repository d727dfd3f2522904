"""`ipvs-reaper doctor`: gathers the node's rules, IPVS table, kernel facts and (when it can) the cluster's
names, then reports. Works with no cluster access at all: findings are then by address, port and protocol."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.cluster.sources import load_cluster_file
from ipvs_reaper.config import Config
from ipvs_reaper.doctor.findings import Finding, Kind, Severity
from ipvs_reaper.doctor.hostports import Names, hijacks, well_known_ports
from ipvs_reaper.doctor.node_checks import kernel_findings, stale_findings, sysctl_findings
from ipvs_reaper.doctor.report import DoctorReport
from ipvs_reaper.errors import ApiFailure, InputError, RuntimeFailure
from ipvs_reaper.kernel.exposure import exposure_verdict
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.netfilter.sources import RuleSources
from ipvs_reaper.planner import Plan, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IPAddress, IpvsTable


@dataclass(frozen=True, slots=True)
class NodeView:
    """Everything the doctor judges, gathered live or from files."""

    node: str
    table: IpvsTable
    facts: KernelFacts
    rules: RuleSources
    local: tuple[IPAddress, ...]
    config: Config
    table_error: str | None = None  # the live IPVS table could not be read
    local_lists_service_addresses: bool = False  # `local` in the plain form: kube-ipvs0's may be among them


def cluster_for_doctor(
    args: argparse.Namespace, node: str
) -> tuple[ClusterState | None, str | None, tuple[str, ...]]:
    """(cluster, why names are unavailable, notes). A file is read as given (bad input is an error); without
    one the API is tried, and a node that cannot reach it still gets its report."""
    if args.cluster_state:
        cluster = load_cluster_file(args.cluster_state)
        missing = (
            () if cluster.pods is not None else ("no Pods in the cluster state: rule owners unavailable",)
        )
        return cluster, None, missing
    # Imported here: the official client is ~20 MiB, which `run` (the agent) does without.
    from ipvs_reaper.cluster.api import ClusterApi, client_configuration

    try:
        api = ClusterApi(client_configuration(args.kubeconfig), request_timeout=10.0)
    except RuntimeFailure as error:
        return None, str(error), ()
    except InputError as error:
        if args.kubeconfig:
            raise
        return None, str(error), ()
    try:
        items = api.list_services() + api.list_endpoint_slices()
        found = api.read_node(node)
        if found is not None:
            items.append(found)
    except ApiFailure as error:
        api.close()
        return None, f"the API could not be read: {error}", ()
    notes: tuple[str, ...] = ()
    try:
        items += api.list_node_pods(node)
        pods_listed = True
    except ApiFailure as error:
        pods_listed, notes = False, (f"rule owners unavailable: listing this node's Pods: {error}",)
    finally:
        api.close()
    cluster = cluster_state_from_items(items)
    if pods_listed and cluster.pods is None:
        cluster = replace(cluster, pods=())  # listed, and none of this node's has a hostPort
    return cluster, None, notes


def _plan(view: NodeView, cluster: ClusterState | None) -> Plan | None:
    if cluster is None:
        return None
    return plan_sweep(
        SweepInputs(
            table=view.table,
            cluster=cluster.with_node_port_addresses(
                view.node, view.local, view.config.node_port_networks, view.local_lists_service_addresses
            ),
            node_name=view.node,
            config=view.config,
            expire_nodest_conn=view.facts.expire_nodest_conn,
            now=datetime.now(UTC),
            first_seen={},
            policy=PolicyChoice.DEFAULT,
            describe_weighted=False,
        )
    )


def diagnose(
    view: NodeView,
    cluster: ClusterState | None,
    names_unavailable: str | None,
    notes: tuple[str, ...] = (),
    probe_hint: bool = True,
) -> DoctorReport:
    """Every finding for one node: pure, given what was gathered."""
    indexed = (
        cluster.with_node_port_addresses(
            view.node, view.local, view.config.node_port_networks, view.local_lists_service_addresses
        )
        if cluster is not None
        else None
    )
    names = Names(indexed, view.node, names_unavailable)
    tables = view.rules.tables
    findings: list[Finding] = [
        *hijacks(tables, view.table, names, view.facts.release, view.rules.ipsets),
        *well_known_ports(tables, names),
    ]
    if not view.rules.read_any:
        findings.append(
            Finding(
                kind=Kind.RULES_UNREADABLE,
                severity=Severity.WARNING,
                title="the node's NAT rules could not be read: hostPort hijacks cannot be ruled out",
                affected="unknown",
                fix="Run where iptables-save and nft are installed (the image carries both), or give "
                "--iptables-save / --nft-ruleset files.",
                details=view.rules.notes,
            )
        )
    if view.table_error is not None:
        findings.append(
            Finding(
                kind=Kind.IPVS_UNREADABLE,
                severity=Severity.WARNING,
                title=f"the IPVS table could not be read: {view.table_error}",
                affected="unknown: which Services a rule takes traffic from cannot be judged",
                fix="Is ip_vs loaded, and is this kube-proxy's IPVS mode? Give a copy with --ipvs-table.",
            )
        )
    verdict = exposure_verdict(view.facts)
    findings += kernel_findings(view.facts, verdict, probe_hint)
    findings += sysctl_findings(view.facts, view.config)
    why_not = names_unavailable or (
        "; ".join(cluster.problems) if cluster is not None and not cluster.usable else None
    )
    findings += stale_findings(view.table, _plan(view, cluster), why_not)
    shown_notes = tuple(n for n in view.rules.notes if view.rules.read_any) + notes
    return DoctorReport(
        node=view.node,
        facts=view.facts,
        verdict=verdict,
        findings=tuple(findings),
        tables=tables,
        notes=shown_notes,
        names_unavailable=names_unavailable,
    )
