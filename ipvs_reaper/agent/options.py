"""`ipvs-reaper run`'s settings: flags, with the DaemonSet's environment as defaults."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ipvs_reaper.errors import InputError
from ipvs_reaper.logs import FORMATS, LEVELS

# On the node's network (hostNetwork): a port no common node agent uses (charts/ipvs-reaper/values.yaml says
# which were checked). 9808, the earlier default, is the CSI livenessprobe sidecar's.
DEFAULT_PORT = 10373


@dataclass(frozen=True, slots=True)
class AgentOptions:
    node_name: str
    config_path: Path | None
    dry_run: bool
    kubeconfig: str | None
    listen_host: str
    listen_port: int
    # The whole-table sweep: IPVS has no change notifications, so weight changes kube-proxy makes after a
    # slice event, and grace periods ending, are found by looking.
    sweep_interval: float
    sweep_jitter: float  # a share of the interval, so that the nodes' sweeps do not line up
    # Periodic full listings besides those a 410 Gone needs (0: none): a watch resumed from its last version
    # misses nothing, and the API server answers 410 when it cannot resume it.
    relist_interval: float
    # A cheap request (this node's Node) that proves the API still answers between events.
    heartbeat_interval: float
    # With no word from the API for this long the view is stale: reaping pauses, readiness fails.
    max_silence: float
    # Watch requests end after this long and are resumed (the server's timeout; the client waits a bit more).
    watch_timeout: float
    # After an event, the virtual services whose endpoints went away are re-read this often until kube-proxy
    # has set their weight to 0 (it does so on its own schedule, after the same event).
    follow_up_delays: tuple[float, ...]
    post_events: bool
    event_interval: float  # at most one Event per Service this often; the rest are added to the next one
    first_seen_file: Path | None
    # The doctor's hostPort check (reading iptables and nftables): at start, then this often; 0: never.
    doctor_interval: float = 300.0
    # After a 410 Gone, list again at a random moment within this many seconds: an API server restart sends
    # 410 to every node's watches at once, and their listings should not arrive at once.
    relist_spread: float = 10.0
    # Pauses between failed listings or watch requests, the last repeated: an outage is waited out.
    retry_backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    # A real server waiting for ActiveConn 0 is read again this often, and all of them together at most this
    # many times a second (a rollout wave of many Services stretches the interval instead).
    recheck_interval: float = 2.0
    recheck_rate: float = 50.0
    # A gone endpoint's real server waits until the endpoint has been seen gone this long
    # (planner.SweepInputs.gone_settle says why); clients of a pod that is really gone fail that much longer.
    gone_settle: float = 5.0
    # After a failed delete (or a failed read), try again after these pauses, the last one repeated.
    reap_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0)
    log_level: str = "info"
    log_format: str = "text"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--node-name",
        default=env("NODE_NAME"),
        help="this node; must be a Node's name, or the agent never becomes ready "
        "(default: $NODE_NAME, then the hostname)",
    )
    parser.add_argument(
        "--config", metavar="FILE", type=Path, help="the mounted ConfigMap's file, re-read live"
    )
    parser.add_argument("--dry-run", action="store_true", help="decide, re-check and record; delete nothing")
    parser.add_argument("--kubeconfig", metavar="FILE", help="for development (default: in-cluster)")
    parser.add_argument(
        "--listen",
        default=f"0.0.0.0:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics",
    )
    parser.add_argument(
        "--doctor-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how often to look for hostPort rules that take Service traffic "
        "(ipvs_reaper_hostport_conflicts); 0: never",
    )
    parser.add_argument(
        "--sweep-interval", type=float, default=60.0, metavar="SECONDS", help="whole-table sweeps, ±10 %%"
    )
    parser.add_argument(
        "--recheck-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="read a real server that waits for its ActiveConn to reach 0 again this often, so the delete "
        "follows within seconds of its last connection",
    )
    parser.add_argument(
        "--recheck-rate",
        type=float,
        default=50.0,
        metavar="READS",
        help="at most this many such reads a second in all: with more virtual services waiting, each is read "
        "less often (ipvs_reaper_recheck_interval_seconds)",
    )
    parser.add_argument(
        "--relist-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="periodic full listings besides those a 410 Gone needs, ±10 %%; 0: none (a watch resumes from "
        "its last version, and the API server says when it cannot)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a read of this node's Node that proves the API answers",
    )
    parser.add_argument(
        "--max-silence",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="pause reaping when the API has not answered for this long",
    )
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="each watch request's server timeout",
    )
    parser.add_argument(
        "--post-events", action="store_true", help="post a Kubernetes Event on the Service for each reap"
    )
    parser.add_argument(
        "--event-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="at most one Event per Service this often",
    )
    parser.add_argument(
        "--first-seen-file",
        type=Path,
        metavar="FILE",
        help="keep grace clocks across restarts in this node-local file",
    )
    add_sysctl_write_dir_argument(parser)
    parser.add_argument(
        "--log-level", choices=LEVELS, default="info", help="info: one line per state change and per deletion"
    )
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="json: one object per line")


def add_sysctl_write_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sysctl-write-dir",
        type=Path,
        metavar="DIR",
        help="write expire_nodest_conn here instead of in /proc/sys/net/ipv4/vs, which is read-only in a "
        "container: the chart mounts the host's file there (reads still come from /proc/sys)",
    )


def _positive(value: float, flag: str) -> float:
    if not value > 0:
        raise InputError(f"{flag}: expected a number of seconds > 0, got {value:g}")
    return value


def _not_negative(value: float, flag: str) -> float:
    if not value >= 0 or value == float("inf"):
        raise InputError(f"{flag}: expected a number of seconds >= 0, got {value:g}")
    return value


def _rate(value: float, flag: str) -> float:
    if not value > 0 or value == float("inf"):
        raise InputError(f"{flag}: expected a number of reads a second > 0, got {value:g}")
    return value


def options_from_args(args: argparse.Namespace) -> AgentOptions:
    host, _, port_text = args.listen.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"--listen: expected HOST:PORT, got {args.listen!r}")
    heartbeat = _positive(args.heartbeat_interval, "--heartbeat-interval")
    max_silence = _positive(args.max_silence, "--max-silence")
    if max_silence <= heartbeat:
        raise InputError("--max-silence must be longer than --heartbeat-interval, or every pause is stale")
    return AgentOptions(
        node_name=args.node_name or socket.gethostname(),
        config_path=args.config,
        dry_run=args.dry_run,
        kubeconfig=args.kubeconfig,
        listen_host=host.strip("[]") or "0.0.0.0",
        listen_port=int(port_text),
        sweep_interval=_positive(args.sweep_interval, "--sweep-interval"),
        sweep_jitter=0.1,
        relist_interval=_not_negative(args.relist_interval, "--relist-interval"),
        heartbeat_interval=heartbeat,
        max_silence=max_silence,
        watch_timeout=_positive(args.watch_timeout, "--watch-timeout"),
        follow_up_delays=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        post_events=args.post_events,
        event_interval=_positive(args.event_interval, "--event-interval"),
        first_seen_file=args.first_seen_file,
        doctor_interval=_not_negative(args.doctor_interval, "--doctor-interval"),
        recheck_interval=_positive(args.recheck_interval, "--recheck-interval"),
        recheck_rate=_rate(args.recheck_rate, "--recheck-rate"),
        log_level=args.log_level,
        log_format=args.log_format,
    )
