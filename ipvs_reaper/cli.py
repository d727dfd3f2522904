"""ipvs-reaper: find and delete the stale weight-0 IPVS real servers kube-proxy leaves behind.

`scan` reports, `reap --once` deletes once, `run` is the node agent (the DaemonSet's process), `doctor` finds
what else exposes a node (hostPort rules that take Service traffic, the kernel, the sysctls), `health` asks
the running agent whether it is ready."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ipvs_reaper import package_version
from ipvs_reaper.actor import apply_plan
from ipvs_reaper.agent.options import add_run_arguments, add_sysctl_write_dir_argument, options_from_args
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.sources import load_cluster_api, load_cluster_file
from ipvs_reaper.config import Config, ConfigError, load_config
from ipvs_reaper.doctor.command import NodeView, cluster_for_doctor, diagnose
from ipvs_reaper.doctor.probe import exposed_at, probe_kernel
from ipvs_reaper.doctor.report import (
    EXIT_CLEAN,
    EXIT_FINDINGS,
    doctor_json,
    doctor_table,
    probe_json,
    probe_table,
)
from ipvs_reaper.errors import InputError, RuntimeFailure
from ipvs_reaper.health_client import add_health_arguments, health
from ipvs_reaper.input_text import STDIN, read_input_text, source_name
from ipvs_reaper.ipvs.backend import IpvsBackend, IpvsError
from ipvs_reaper.ipvs.kernel import KernelIpvs
from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs
from ipvs_reaper.kernel.addresses import (
    AddressError,
    lists_service_addresses,
    parse_node_addresses,
    read_local_addresses,
)
from ipvs_reaper.kernel.exposure import exposure_verdict
from ipvs_reaper.kernel.facts import KernelFacts, facts_from_input, parse_sysctl_text, read_live_facts
from ipvs_reaper.kernel.sysctl import ProcSysctls, SysctlError, Sysctls
from ipvs_reaper.logs import configure_logging
from ipvs_reaper.mapping import services_without_slices
from ipvs_reaper.netfilter.ipsets import parse_ipset_save
from ipvs_reaper.netfilter.sources import RuleSources, read_live_rules, read_rule_files
from ipvs_reaper.planner import Plan, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.report import ScanReport, results_json, results_table, scan_json, scan_table
from ipvs_reaper.values import IPAddress, IpvsTable

log = logging.getLogger(__name__)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _add_node_inputs(parser: argparse.ArgumentParser) -> None:
    """The inputs `scan`, `reap` and `doctor` share: the cluster, the table, the node and its kernel."""
    parser.add_argument(
        "--cluster-state",
        metavar="FILE|-",
        help="output of `kubectl get services,endpointslices,nodes -A -o json` or -o yaml "
        "(default: listed from the API)",
    )
    parser.add_argument(
        "--ipvs-table",
        metavar="FILE|-",
        help="a copy of the node's /proc/net/ip_vs (default: the live table)",
    )
    parser.add_argument(
        "--node-name", help="the node whose table this is (default: $NODE_NAME, then the hostname)"
    )
    parser.add_argument(
        "--node-addresses",
        metavar="FILE|-",
        help="with --ipvs-table: the node's `ip -j addr` output (or `hostname -I`), the addresses kube-proxy "
        "puts NodePorts on (default: the live node's, or only the Node object's with a table file)",
    )
    parser.add_argument("--config", metavar="FILE", type=Path, help="grace policy and safety settings (YAML)")
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig for the API (default: in-cluster, then ~/.kube/config)",
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
        "--sysctls", metavar="FILE|-", help="with --ipvs-table: the node's `sysctl net.ipv4.vs` output"
    )


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    _add_node_inputs(parser)
    parser.add_argument(
        "--policy",
        choices=[p.value for p in PolicyChoice],
        default=PolicyChoice.DEFAULT.value,
        help="`immediate` ignores grace and connections, as home-made reapers do",
    )
    parser.add_argument("--all", action="store_true", help="list every real server, not only weight-0 ones")
    parser.add_argument(
        "-o",
        "--output",
        choices=["table", "wide", "json"],
        default="table",
        help="table fits the terminal; wide adds columns and cuts nothing",
    )
    parser.add_argument("--no-headers", action="store_true", help="table: only the rows")


def _add_doctor_inputs(parser: argparse.ArgumentParser) -> None:
    _add_node_inputs(parser)
    parser.add_argument(
        "--iptables-save",
        metavar="FILE|-",
        action="append",
        default=[],
        help="the node's `iptables-save` (or ip6tables-save; legacy or nft-based) output; repeatable "
        "(default: run the save tools of both backends on this node)",
    )
    parser.add_argument(
        "--nft-ruleset",
        metavar="FILE|-",
        action="append",
        default=[],
        help="the node's `nft -j list ruleset` output; repeatable (default: run nft on this node)",
    )
    parser.add_argument(
        "--ipset-save",
        metavar="FILE|-",
        help="the node's `ipset save` output: the members of kube-proxy's sets as the kernel has them "
        "(default: run ipset on this node; with rule files and without this, the sets are judged from the "
        "cluster state)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table for people, json for scripts",
    )
    parser.add_argument(
        "--probe-kernel",
        action="store_true",
        help="as root, on the node: measure what this kernel does with a reused source port for each "
        "conn_reuse_mode and expire_nodest_conn, in scratch network namespaces that vanish with the process",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipvs-reaper", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{scan,reap,run,doctor,health}")
    scan = commands.add_parser(
        "scan",
        help="report which weight-0 real servers are stale, and why",
        description="Report which weight-0 real servers are stale, and why (reads only).",
        formatter_class=_HelpFormatter,
    )
    _add_inputs(scan)
    reap = commands.add_parser(
        "reap",
        help="delete stale weight-0 real servers from the live table",
        description="Delete stale weight-0 real servers from this node's live table, once.",
        formatter_class=_HelpFormatter,
    )
    _add_inputs(reap)
    reap.add_argument("--once", action="store_true", required=True, help="one sweep, then exit")
    reap.add_argument("--dry-run", action="store_true", help="decide and re-check everything, delete nothing")
    add_sysctl_write_dir_argument(reap)
    run = commands.add_parser(
        "run",
        help="the node agent: watch the cluster, reap continuously (DaemonSet)",
        description="The node agent a DaemonSet runs: watch the cluster, reap this node's table for ever.",
        formatter_class=_HelpFormatter,
    )
    add_run_arguments(run)
    doctor = commands.add_parser(
        "doctor",
        help="find hostPort rules that hijack Service traffic, and every other way this node is exposed",
        description="Find port-forwarding (hostPort) rules that take Service traffic before IPVS sees it, "
        "ports the node answers on because of them, the kernel's exposure, the sysctls and stale real "
        "servers (reads only). Exit codes: 0 clean, 3 findings at warning or above, 2 bad input, 1 failure.",
        formatter_class=_HelpFormatter,
    )
    _add_doctor_inputs(doctor)
    health_parser = commands.add_parser(
        "health",
        help="ask the agent running on this node whether it is ready, and why not",
        description="Print the running agent's /readyz (why it is or is not ready), /healthz or /metrics. "
        "Exit codes: 0 when it answered 200, 1 otherwise or when nothing answered, 2 bad input.",
        formatter_class=_HelpFormatter,
    )
    add_health_arguments(health_parser)
    return parser


@dataclass(frozen=True, slots=True)
class NodeAccess:
    """What a live run touches on the node; tests hand in fakes."""

    backend: IpvsBackend
    sysctls: Sysctls
    proc_kernel: Path = Path("/proc/sys/kernel")
    local_addresses: Callable[[], tuple[IPAddress, ...]] = read_local_addresses


@dataclass(frozen=True, slots=True)
class Gathered:
    node: str
    table: IpvsTable
    cluster: ClusterState
    facts: KernelFacts
    config: Config
    warnings: tuple[str, ...]


def _check_stdin(args: argparse.Namespace) -> None:
    named = [
        flag
        for flag, value in (
            ("--cluster-state", args.cluster_state),
            ("--ipvs-table", args.ipvs_table),
            ("--sysctls", args.sysctls),
            ("--node-addresses", args.node_addresses),
            *(("--iptables-save", path) for path in getattr(args, "iptables_save", ())),
            *(("--nft-ruleset", path) for path in getattr(args, "nft_ruleset", ())),
            *((("--ipset-save", args.ipset_save),) if getattr(args, "ipset_save", None) else ()),
        )
        if value == STDIN
    ]
    if len(named) > 1:
        raise InputError(f"only one input can be read from standard input, not {' and '.join(named)}")


def _view_warnings(cluster: ClusterState) -> list[str]:
    missing = services_without_slices(cluster) if cluster.usable else ()
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return [
        f"{len(missing)} Service(s) with a selector have no EndpointSlice in the cluster state, so their "
        f"endpoints are unknown and their real servers kept (an export of some namespaces' slices?): {shown}"
    ]


def _node_warnings(node: str, cluster: ClusterState, local: tuple[IPAddress, ...]) -> list[str]:
    if not cluster.usable or cluster.node(node) is not None:
        return []
    where = (
        "they map only to its interface addresses"
        if local
        else "NodePort virtual services map to no Service and are kept"
    )
    return [f"no Node named {node!r} in the cluster state ({where}): is --node-name right?"]


@dataclass(frozen=True, slots=True)
class NodeInputs:
    table: IpvsTable
    facts: KernelFacts
    local: tuple[IPAddress, ...]
    address_warning: str | None
    # `--node-addresses` in the plain form: kube-ipvs0's addresses may be among `local`.
    local_lists_service_addresses: bool = False


def _node_inputs(args: argparse.Namespace, node_access: NodeAccess) -> NodeInputs:
    """The IPVS table, kernel facts and interface addresses: from files with --ipvs-table, else live."""
    address_warning: str | None = None
    if args.ipvs_table:
        source = source_name(args.ipvs_table)
        table = parse_proc_ip_vs(read_input_text(args.ipvs_table), source=source)
        sysctl_values = (
            parse_sysctl_text(read_input_text(args.sysctls), source_name(args.sysctls))
            if args.sysctls
            else {}
        )
        facts = facts_from_input(args.kernel_release, args.kernel_version, sysctl_values)
        text = read_input_text(args.node_addresses) if args.node_addresses else ""
        local = parse_node_addresses(text, source_name(args.node_addresses)) if args.node_addresses else ()
        plain = bool(args.node_addresses) and lists_service_addresses(text)
    else:
        if args.kernel_release or args.kernel_version or args.sysctls or args.node_addresses:
            raise InputError(
                "--kernel-release, --kernel-version, --sysctls and --node-addresses describe an --ipvs-table "
                "file; the live node's are read directly"
            )
        table = node_access.backend.read_table()
        facts = read_live_facts(node_access.sysctls, node_access.proc_kernel)
        try:
            local = node_access.local_addresses()
        except AddressError as error:
            # Fewer addresses only leave NodePorts on them unmapped, and unmapped is kept: go on, and say so.
            local, address_warning = (), f"{error}: NodePorts map only to the Node object's addresses"
        plain = False
    return NodeInputs(table, facts, local, address_warning, plain)


def _node_name(args: argparse.Namespace) -> str:
    return str(args.node_name or os.environ.get("NODE_NAME") or socket.gethostname())


def _gather(args: argparse.Namespace, node_access: NodeAccess) -> Gathered:
    _check_stdin(args)
    node = _node_name(args)
    config = load_config(args.config) if args.config else Config()
    inputs = _node_inputs(args, node_access)
    table, facts, local, address_warning = inputs.table, inputs.facts, inputs.local, inputs.address_warning
    if args.cluster_state:
        cluster = load_cluster_file(args.cluster_state)
    else:
        cluster = load_cluster_api(node, args.kubeconfig)
    warnings = [*_node_warnings(node, cluster, local), *_view_warnings(cluster), *cluster.broken.values()]
    if address_warning is not None:
        warnings.insert(0, address_warning)
    return Gathered(
        node=node,
        table=table,
        cluster=cluster.with_node_port_addresses(
            node, local, config.node_port_networks, inputs.local_lists_service_addresses
        ),
        facts=facts,
        config=config,
        warnings=tuple(warnings),
    )


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


def without_the_official_client() -> None:
    """kopf imports the official Kubernetes client when it is installed, for isinstance checks on objects the
    agent never hands it: ~20 MiB of generated models in every node's agent. The agent's process does
    without it (its requests go through kopf's client); marked absent before kopf loads, unless something
    in this process has loaded it already."""
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]


def run_agent_command(args: argparse.Namespace, node_access: NodeAccess) -> int:
    without_the_official_client()
    # kopf and aiohttp load only for the agent: `scan` stays quick to start.
    from ipvs_reaper.agent.main import run_agent

    options = options_from_args(args)
    configure_logging(options.log_level, options.log_format)
    return asyncio.run(
        run_agent(options, node_access.backend, node_access.sysctls, node_access.local_addresses)
    )


class _Output:
    """stdout that a closed pipe (`scan | head -1`) does not turn into a traceback: the rest is dropped, and
    the command's own outcome (a reap has already happened) still decides the exit code."""

    def __init__(self) -> None:
        self.closed = False

    def print(self, text: str) -> None:
        if self.closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            self.closed = True
            # Python flushes stdout again at exit and would complain there: point it at nothing.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def _terminal_width() -> int | None:
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None  # a pipe or a file: whole lines


def _doctor_view(args: argparse.Namespace, node_access: NodeAccess) -> NodeView:
    _check_stdin(args)
    table_error: str | None = None
    try:
        inputs = _node_inputs(args, node_access)
    except IpvsError as error:
        # A broken node is what the doctor is for: report the rest, and say what could not be judged.
        table_error = str(error)
        facts = read_live_facts(node_access.sysctls, node_access.proc_kernel)
        inputs = NodeInputs(IpvsTable((), ()), facts, (), None)
    if args.iptables_save or args.nft_ruleset:
        rules = read_rule_files(args.iptables_save, args.nft_ruleset, args.ipset_save)
    elif args.ipvs_table:
        rules = RuleSources((), ("no --iptables-save or --nft-ruleset given with --ipvs-table",), False)
    else:
        rules = read_live_rules()
        if args.ipset_save:
            rules = replace(rules, ipsets=parse_ipset_save(read_input_text(args.ipset_save), args.ipset_save))
    config = load_config(args.config) if args.config else Config()
    return NodeView(
        _node_name(args),
        inputs.table,
        inputs.facts,
        rules,
        inputs.local,
        config,
        table_error,
        inputs.local_lists_service_addresses,
    )


def run_doctor(args: argparse.Namespace, node_access: NodeAccess, out: _Output) -> int:
    if args.probe_kernel:
        if args.ipvs_table or args.iptables_save or args.nft_ruleset or args.cluster_state:
            raise InputError("--probe-kernel measures the live kernel: it takes no input files")
        rows = probe_kernel()
        facts = read_live_facts(node_access.sysctls, node_access.proc_kernel)
        exposed = exposed_at(rows, facts.conn_reuse_mode, facts.expire_nodest_conn)
        if args.output == "json":
            out.print(json.dumps(probe_json(rows, facts, exposed), indent=2))
        else:
            out.print(probe_table(rows, facts, exposed))
        return EXIT_FINDINGS if exposed else EXIT_CLEAN
    view = _doctor_view(args, node_access)
    cluster, unavailable, notes = cluster_for_doctor(args, view.node)
    report = diagnose(view, cluster, unavailable, notes)
    if args.output == "json":
        out.print(json.dumps(doctor_json(report), indent=2))
    else:
        out.print(doctor_table(report, _terminal_width()))
    return report.exit_code()


def run(args: argparse.Namespace, node_access: NodeAccess) -> int:
    if args.command == "run":
        return run_agent_command(args, node_access)
    if args.command == "doctor":
        return run_doctor(args, node_access, _Output())
    if args.command == "reap" and args.ipvs_table:
        raise InputError("reap acts on the live kernel table; --ipvs-table is for scan")
    gathered = _gather(args, node_access)
    for warning in gathered.warnings:
        log.warning("warning: %s", warning)
    plan = _plan(gathered, args.policy, args.all)
    verdict = exposure_verdict(gathered.facts)
    out = _Output()
    report = ScanReport(gathered.node, gathered.facts, verdict, plan, args.all, gathered.warnings)

    def table() -> str:
        return scan_table(
            report, width=_terminal_width(), wide=args.output == "wide", headers=not args.no_headers
        )

    document = scan_json(report)
    if args.command == "scan":
        out.print(json.dumps(document, indent=2) if args.output == "json" else table())
        if not gathered.cluster.usable:
            # The report is printed, but it judged nothing: a script must not take it for a clean bill.
            print(f"ipvs-reaper: cannot judge: {plan.refusal}", file=sys.stderr)
            return 1
        return 0
    result = apply_plan(
        plan, node_access.backend, node_access.sysctls, dry_run=args.dry_run, clock=lambda: datetime.now(UTC)
    )
    if args.output == "json":
        out.print(json.dumps(document | results_json(result), indent=2))
    else:
        out.print(table())
        if not args.no_headers:
            out.print("")
            out.print(results_table(result))
    if plan.refusal:
        print(f"ipvs-reaper: refused: {plan.refusal}", file=sys.stderr)
    return 1 if result.failed or plan.refusal else 0


def main(argv: Sequence[str] | None = None, node_access: NodeAccess | None = None) -> int:
    configure_logging("info", "text", plain=True)
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return health(args)  # talks HTTP only: no netlink socket, no node access
    kernel = None
    if node_access is None:
        kernel = KernelIpvs()
        write_dir = getattr(args, "sysctl_write_dir", None)  # `reap` and `run` only
        node_access = NodeAccess(backend=kernel, sysctls=ProcSysctls(write_dir=write_dir))
    try:
        return run(args, node_access)
    except (InputError, ConfigError, TableParseError) as error:
        print(f"ipvs-reaper: error: {error}", file=sys.stderr)
        return 2
    except (RuntimeFailure, IpvsError, SysctlError) as error:
        print(f"ipvs-reaper: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ipvs-reaper: interrupted", file=sys.stderr)
        return 130
    finally:
        if kernel is not None:
            kernel.close()
