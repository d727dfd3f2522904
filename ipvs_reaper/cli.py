"""`ipvs-reaper scan` and `ipvs-reaper reap --once`: read, plan, and report or apply, once."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ipvs_reaper.actor import apply_plan
from ipvs_reaper.agent.options import add_run_arguments, options_from_args
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.sources import load_cluster_api, load_cluster_file
from ipvs_reaper.config import Config, ConfigError, load_config
from ipvs_reaper.errors import InputError, RuntimeFailure
from ipvs_reaper.ipvs.backend import IpvsBackend, IpvsError
from ipvs_reaper.ipvs.kernel import KernelIpvs
from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs
from ipvs_reaper.kernel.exposure import exposure_verdict
from ipvs_reaper.kernel.facts import KernelFacts, facts_from_input, parse_sysctl_text, read_live_facts
from ipvs_reaper.kernel.sysctl import ProcSysctls, SysctlError, Sysctls
from ipvs_reaper.planner import Plan, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.report import results_json, results_table, scan_json, scan_table
from ipvs_reaper.values import IpvsTable


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster-state",
        metavar="FILE|-",
        help="output of `kubectl get services,endpointslices,nodes -A -o json` (default: the API)",
    )
    parser.add_argument(
        "--ipvs-table", metavar="FILE", help="text of /proc/net/ip_vs (default: the live table)"
    )
    parser.add_argument(
        "--node-name", help="the node whose table this is (default: $NODE_NAME, then the hostname)"
    )
    parser.add_argument("--config", metavar="FILE", type=Path, help="grace policy and safety settings (YAML)")
    parser.add_argument(
        "--policy", choices=[p.value for p in PolicyChoice], default=PolicyChoice.DEFAULT.value
    )
    parser.add_argument("--all", action="store_true", help="list every real server, not only weight-0 ones")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig for the API (default: in-cluster, then ~/.kube)"
    )
    parser.add_argument(
        "--kernel-release",
        metavar="UNAME_R",
        help="with --ipvs-table: the node's `uname -r`, for the exposure verdict",
    )
    parser.add_argument(
        "--kernel-version",
        metavar="UNAME_V",
        help="with --ipvs-table: the node's `uname -v` (Debian puts its real version there)",
    )
    parser.add_argument(
        "--sysctls", metavar="FILE", help="with --ipvs-table: the node's `sysctl net.ipv4.vs` output"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipvs-reaper", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    scan = commands.add_parser("scan", help="report which weight-0 real servers are stale, and why")
    _add_inputs(scan)
    reap = commands.add_parser("reap", help="delete stale weight-0 real servers from the live table")
    _add_inputs(reap)
    reap.add_argument("--once", action="store_true", required=True, help="one sweep, then exit")
    reap.add_argument("--dry-run", action="store_true", help="decide and re-check everything, delete nothing")
    run = commands.add_parser("run", help="the node agent: watch the cluster, reap continuously (DaemonSet)")
    add_run_arguments(run)
    return parser


@dataclass(frozen=True, slots=True)
class NodeAccess:
    """What a live run touches on the node; tests hand in fakes."""

    backend: IpvsBackend
    sysctls: Sysctls
    proc_kernel: Path = Path("/proc/sys/kernel")


@dataclass(frozen=True, slots=True)
class Gathered:
    node: str
    table: IpvsTable
    cluster: ClusterState
    facts: KernelFacts
    config: Config


def _read_input_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None


def _gather(args: argparse.Namespace, node_access: NodeAccess) -> Gathered:
    node = args.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    config = load_config(args.config) if args.config else Config()
    if args.ipvs_table:
        table = parse_proc_ip_vs(_read_input_file(args.ipvs_table), source=args.ipvs_table)
        sysctl_values = (
            parse_sysctl_text(_read_input_file(args.sysctls), args.sysctls) if args.sysctls else {}
        )
        facts = facts_from_input(args.kernel_release, args.kernel_version, sysctl_values)
    else:
        if args.kernel_release or args.kernel_version or args.sysctls:
            raise InputError(
                "--kernel-release, --kernel-version and --sysctls describe an --ipvs-table file; "
                "the live table's kernel is read directly"
            )
        table = node_access.backend.read_table()
        facts = read_live_facts(node_access.sysctls, node_access.proc_kernel)
    if args.cluster_state:
        cluster = load_cluster_file(args.cluster_state)
    else:
        cluster = load_cluster_api(node, args.kubeconfig)
    return Gathered(node=node, table=table, cluster=cluster, facts=facts, config=config)


def _plan(gathered: Gathered, policy: str, show_all: bool) -> Plan:
    return plan_sweep(
        SweepInputs(
            table=gathered.table,
            cluster=gathered.cluster,
            node_name=gathered.node,
            config=gathered.config,
            expire_nodest_conn=gathered.facts.expire_nodest_conn,
            now=datetime.now(UTC),
            first_seen={},
            policy=PolicyChoice(policy),
            # Only --all lists weight > 0 real servers; without it their lookups would be wasted.
            describe_weighted=show_all,
        )
    )


def run_agent_command(args: argparse.Namespace, node_access: NodeAccess) -> int:
    # kopf and aiohttp load only for the agent: `scan` stays quick to start.
    from ipvs_reaper.agent.main import run_agent

    options = options_from_args(args)
    asyncio.run(run_agent(options, node_access.backend, node_access.sysctls))
    return 0


def run(args: argparse.Namespace, node_access: NodeAccess) -> int:
    if args.command == "run":
        return run_agent_command(args, node_access)
    if args.command == "reap" and args.ipvs_table:
        raise InputError("reap acts on the live kernel table; --ipvs-table is for scan")
    gathered = _gather(args, node_access)
    plan = _plan(gathered, args.policy, args.all)
    verdict = exposure_verdict(gathered.facts)
    if args.command == "scan":
        if args.output == "json":
            print(json.dumps(scan_json(gathered.node, gathered.facts, verdict, plan, args.all), indent=2))
        else:
            print(scan_table(gathered.node, gathered.facts, verdict, plan, args.all))
        return 0
    result = apply_plan(
        plan, node_access.backend, node_access.sysctls, dry_run=args.dry_run, clock=lambda: datetime.now(UTC)
    )
    if args.output == "json":
        document = scan_json(gathered.node, gathered.facts, verdict, plan, args.all) | results_json(result)
        print(json.dumps(document, indent=2))
    else:
        print(scan_table(gathered.node, gathered.facts, verdict, plan, args.all))
        print()
        print(results_table(result))
    if plan.refusal:
        print(f"ipvs-reaper: refused: {plan.refusal}", file=sys.stderr)
    return 1 if result.failed or plan.refusal else 0


def main(argv: Sequence[str] | None = None, node_access: NodeAccess | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    kernel = None
    if node_access is None:
        kernel = KernelIpvs()
        node_access = NodeAccess(backend=kernel, sysctls=ProcSysctls())
    try:
        return run(args, node_access)
    except (InputError, ConfigError, TableParseError) as error:
        print(f"ipvs-reaper: error: {error}", file=sys.stderr)
        return 2
    except (RuntimeFailure, IpvsError, SysctlError) as error:
        print(f"ipvs-reaper: failed: {error}", file=sys.stderr)
        return 1
    finally:
        if kernel is not None:
            kernel.close()
