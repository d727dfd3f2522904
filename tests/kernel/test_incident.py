"""The incident, end to end on a real kernel, through the installed `ipvs-reaper` command: a rolling update
leaves a dead pod's real server at weight 0, clients reusing source ports are refused, and `reap --once`
ends it: on the pre-fix IPVS under kube-proxy's own settings, as nodes had it, and on Debian's IPVS under
the one setting that still exposes it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import builders
from tests.ipvsadm_text import parse_restore_format
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.lab import Lab, incident_sysctls
from tests.kernel.pods import Client, Outcome
from tests.vm.variant import Variant

REAPER = Path(sys.executable).with_name("ipvs-reaper")


@dataclass(frozen=True)
class Rollout:
    vip: str
    port: int
    dead: str
    live: str
    reused: Client  # its entry to the dead pod is in TIME_WAIT and has never been touched since
    control: Client  # same history, probed before the reaper runs to show the incident is real
    fresh: Client
    cluster_state: Path


def roll_out(lab: Lab, ports: Iterator[int], tmp_path: Path, vip: str, kind: int) -> Rollout:
    """The old pod served both clients; a new one came up; kube-proxy set the old to weight 0; it died."""
    protocol, flag = ("TCP", "-t") if kind == socket.SOCK_STREAM else ("UDP", "-u")
    port = 80 if kind == socket.SOCK_STREAM else 53
    lab.cluster_ips(vip)
    old, new = lab.pod("old", "10.244.4.2"), lab.pod("new", "10.244.4.3")
    old_server = lab.serve(old, port, kind)
    lab.serve(new, port, kind)
    lab.ipvsadm("-A", flag, f"{vip}:{port}", "-s", "rr")
    lab.ipvsadm("-a", flag, f"{vip}:{port}", "-r", f"{old.address}:{port}", "-m", "-w", "1")
    reused, control = lab.client(next(ports)), lab.client(next(ports))
    for client in (reused, control):
        reply = client.tcp(vip, port) if kind == socket.SOCK_STREAM else client.udp(vip, port)
        assert reply.pod == "old", reply
    lab.ipvsadm("-a", flag, f"{vip}:{port}", "-r", f"{new.address}:{port}", "-m", "-w", "1")
    lab.ipvsadm("-e", flag, f"{vip}:{port}", "-r", f"{old.address}:{port}", "-m", "-w", "0")
    old_server.kill()
    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("shop", "web", [vip], [builders.port(port, protocol=protocol)]),
        builders.endpoint_slice(
            "shop",
            "web-1",
            "web",
            [builders.port(port, protocol=protocol)],
            [builders.endpoint(new.address)],
        ),
    )
    return Rollout(vip, port, "old", "new", reused, control, lab.client(next(ports)), state)


def unrelated_service(lab: Lab) -> set[tuple[str, str, str, int, str]]:
    """Another IPVS user's virtual service, with a weight-0 real server the cluster knows nothing about."""
    lab.restore(["-A -t 10.96.4.99:8080 -s rr", "-a -t 10.96.4.99:8080 -r 10.244.4.99:8080 -m -w 0"])
    return {row for row in parse_restore_format(lab.ipvsadm("-Sn")) if row[1] == "10.96.4.99:8080"}


def reap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REAPER), "reap", "--once", "--node-name", NODE, *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.kernels("6.1", "pre-fix")
def test_reap_once_ends_the_incident(
    lab: Lab, source_ports: Iterator[int], tmp_path: Path, variant: Variant
) -> None:
    lab.sysctls(incident_sysctls(variant))
    rollout = roll_out(lab, source_ports, tmp_path, "10.96.4.10", socket.SOCK_STREAM)
    unrelated = unrelated_service(lab)
    assert rollout.control.tcp(rollout.vip, rollout.port).outcome is Outcome.REFUSED, (
        "incident not reproduced"
    )

    done = reap("--cluster-state", str(rollout.cluster_state))
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout

    assert rollout.reused.tcp(rollout.vip, rollout.port).pod == rollout.live
    assert rollout.fresh.tcp(rollout.vip, rollout.port).pod == rollout.live
    table = parse_restore_format(lab.ipvsadm("-Sn"))
    assert {row[2] for row in table if row[1] == f"{rollout.vip}:{rollout.port}"} == {"10.244.4.3:80"}
    assert ("TCP", f"{rollout.vip}:{rollout.port}", "10.244.4.3:80", 1, "Masq") in table
    assert unrelated <= table
    assert lab.read_sysctl("expire_nodest_conn") == 1


def test_report_only_refuses_and_says_why(lab: Lab, source_ports: Iterator[int], tmp_path: Path) -> None:
    lab.sysctl("conn_reuse_mode", 0)
    lab.sysctl("expire_nodest_conn", 0)
    rollout = roll_out(lab, source_ports, tmp_path, "10.96.4.11", socket.SOCK_STREAM)
    before = parse_restore_format(lab.ipvsadm("-Sn"))
    config = tmp_path / "config.yaml"
    config.write_text("expireNodestConn: report-only\n")

    done = reap("--cluster-state", str(rollout.cluster_state), "--config", str(config))

    assert done.returncode == 1
    assert (
        "refused: not deleting 1 real server(s): expire_nodest_conn=0 and expireNodestConn is report-only"
        in (done.stderr)
    )
    assert parse_restore_format(lab.ipvsadm("-Sn")) == before
    assert lab.read_sysctl("expire_nodest_conn") == 0
    assert rollout.reused.tcp(rollout.vip, rollout.port).outcome is Outcome.REFUSED


@pytest.mark.parametrize("reuse", [0, 1])
def test_udp_weight_zero_real_server_is_reaped(
    lab: Lab, source_ports: Iterator[int], tmp_path: Path, reuse: int
) -> None:
    # No kernel fix covers UDP, whatever conn_reuse_mode says: only deleting the real server moves the flow.
    lab.sysctl("conn_reuse_mode", reuse)
    lab.sysctl("expire_nodest_conn", 0)
    rollout = roll_out(lab, source_ports, tmp_path, f"10.96.4.{20 + reuse}", socket.SOCK_DGRAM)
    assert rollout.control.udp(rollout.vip, rollout.port).outcome is Outcome.REFUSED, (
        "UDP flow must hit the dead pod"
    )

    done = reap("--cluster-state", str(rollout.cluster_state))
    assert done.returncode == 0, done.stderr

    assert rollout.reused.udp(rollout.vip, rollout.port).pod == rollout.live
    assert rollout.fresh.udp(rollout.vip, rollout.port).pod == rollout.live
    table = parse_restore_format(lab.ipvsadm("-Sn"))
    assert {row[2] for row in table if row[1] == f"{rollout.vip}:53"} == {"10.244.4.3:53"}
