"""The kernel-behaviour matrix: where a reused source port goes once its real server is at weight 0 and its
pod is dead, for each (conn_reuse_mode, expire_nodest_conn) pair and for kube-proxy's own settings, before
and after the real server is deleted, on Debian's IPVS and on the pre-fix one; and whether the exposure
verdict we print agrees with what was observed."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvs_reaper.cli import main
from tests import builders
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.expected import DEAD, FIXED, KUBE_PROXY_SETTINGS, LIVE, MATRIX, kernel_before_5_9
from tests.kernel.lab import Lab, kube_proxy_sysctls, sh
from tests.kernel.pods import Outcome, Reply
from tests.vm.variant import Variant


def where(reply: Reply, dead: str, live: str) -> str:
    if reply.pod == live:
        return LIVE
    if reply.pod == dead or reply.outcome is Outcome.REFUSED:
        # A refusal comes from the dead pod's address: nothing listens there any more.
        return DEAD
    assert reply.outcome is not None, f"an answer from an unknown pod: {reply}"
    return reply.outcome


def reused_port(
    lab: Lab, ports: Iterator[int], tmp_path: Path, vip: str, capsys: pytest.CaptureFixture[str]
) -> tuple[tuple[str, str], dict[str, object]]:
    """One pod's real server to weight 0 and the pod killed, then deleted: where the same source port went
    each time, and the `kernel` part of `scan -o json` at those sysctls."""
    lab.cluster_ips(vip)
    pods = {pod.name: pod for pod in (lab.pod("pod-a", "10.244.1.2"), lab.pod("pod-b", "10.244.1.3"))}
    servers = {name: lab.serve(pod, 80) for name, pod in pods.items()}
    lab.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
    for pod in pods.values():
        lab.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{pod.address}:80", "-m", "-w", "1")
    client = lab.client(next(ports))

    first = client.tcp(vip, 80)
    assert first.pod in pods, f"the first connection must reach a pod, got {first}"
    dead = pods[first.pod]
    live = next(name for name in pods if name != dead.name)
    # kube-proxy's reaction to the endpoint going away, then the pod's process exits.
    lab.ipvsadm("-e", "-t", f"{vip}:80", "-r", f"{dead.address}:80", "-m", "-w", "0")
    servers[dead.name].kill()

    before = where(client.tcp(vip, 80), dead.name, live)
    lab.ipvsadm("-d", "-t", f"{vip}:80", "-r", f"{dead.address}:80")
    after = where(client.tcp(vip, 80), dead.name, live)

    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("shop", "web", [vip], [builders.port(80)]),
        builders.endpoint_slice(
            "shop", "web-1", "web", [builders.port(80)], [builders.endpoint(pods[live].address)]
        ),
    )
    capsys.readouterr()
    assert main(["scan", "-o", "json", "--cluster-state", str(state), "--node-name", NODE]) == 0
    kernel: dict[str, object] = json.loads(capsys.readouterr().out)["kernel"]
    return (before, after), kernel


def assert_verdict(kernel: dict[str, object], variant: Variant, observed_exposed: bool) -> None:
    """The verdict says what was seen, except where only the kernel's version could tell: the pre-fix
    module is built outside the tree, and a version cannot speak for it."""
    observed = "exposed" if observed_exposed else "not-exposed"
    version_decides = kernel["connReuseMode"] == 0 and kernel["expireNodestConn"] == 1
    if variant is Variant.PREFIX and version_decides:
        assert kernel["exposure"] == "unknown", kernel["exposureReason"]
        assert "outside the kernel tree" in str(kernel["exposureReason"])
    else:
        assert kernel["exposure"] == observed, kernel["exposureReason"]


@pytest.mark.kernels(*Variant)
@pytest.mark.parametrize(("reuse", "nodest"), sorted(FIXED))
def test_reused_port_after_weight_zero(
    lab: Lab,
    source_ports: Iterator[int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    variant: Variant,
    reuse: int,
    nodest: int,
) -> None:
    lab.sysctl("conn_reuse_mode", reuse)
    lab.sysctl("expire_nodest_conn", nodest)
    seen, kernel = reused_port(lab, source_ports, tmp_path, f"10.96.1.{10 + 2 * reuse + nodest}", capsys)
    assert seen == MATRIX[variant][reuse, nodest]
    assert (kernel["connReuseMode"], kernel["expireNodestConn"]) == (reuse, nodest)
    assert_verdict(kernel, variant, seen[0] == DEAD)


@pytest.mark.kernels(*Variant)
def test_kube_proxys_own_settings(
    lab: Lab,
    source_ports: Iterator[int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    variant: Variant,
) -> None:
    settings = kube_proxy_sysctls(kernel_before_5_9(variant))
    for name, value in settings.items():
        lab.sysctl(name, value)
    seen, kernel = reused_port(lab, source_ports, tmp_path, "10.96.1.20", capsys)
    assert seen == KUBE_PROXY_SETTINGS[variant]
    assert (kernel["connReuseMode"], kernel["expireNodestConn"]) == (
        settings["conn_reuse_mode"],
        settings["expire_nodest_conn"],
    )
    assert_verdict(kernel, variant, seen[0] == DEAD)


def syn_retransmits(netns: str) -> int:
    """The namespace's count of retransmitted SYNs (TcpExt TCPSynRetrans), which a dropped SYN moves."""
    text = sh("ip", "netns", "exec", netns, "cat", "/proc/net/netstat")
    lines = [line.split() for line in text.splitlines()]
    header, values = next((h, v) for h, v in itertools.pairwise(lines) if h[0] == "TcpExt:" == v[0])
    return int(values[header.index("TCPSynRetrans")])


@pytest.mark.kernels("6.1", "pre-fix")
def test_without_f0a5_a_reused_port_waits_for_its_retransmit(
    lab: Lab, source_ports: Iterator[int], variant: Variant
) -> None:
    """kube-proxy's settings from 5.9 on (conn_reuse_mode=1, IPVS's conntrack support on) on a node whose
    connections are tracked: before f0a5e4d7a594, IPVS drops the first SYN of every reused source port and the
    client waits for its retransmit, 1 s: why kube-proxy sets conn_reuse_mode=0 before 5.9, where the
    weight-0 incident then waits. Nothing is at weight 0 here. The drop is counted, not timed: the client's
    kernel counts each SYN it had to send again."""
    lab.sysctls(kube_proxy_sysctls(kernel_before_5_9=False))
    lab.masquerade_like_kube_proxy()
    vip = "10.96.1.30"
    lab.cluster_ips(vip)
    for name, address in (("pod-a", "10.244.1.2"), ("pod-b", "10.244.1.3")):
        lab.serve(lab.pod(name, address), 80)
    lab.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
    for address in ("10.244.1.2", "10.244.1.3"):
        lab.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{address}:80", "-m", "-w", "1")
    reused = lab.client(next(source_ports))
    assert reused.tcp(vip, 80).pod is not None  # its entry now waits in TIME_WAIT
    start = syn_retransmits("client")
    assert lab.client(next(source_ports)).tcp(vip, 80).pod is not None
    fresh = syn_retransmits("client") - start

    started = time.monotonic()
    again = reused.tcp(vip, 80)
    seconds = time.monotonic() - started
    retransmitted = syn_retransmits("client") - start - fresh

    print(f"{variant.title}: the reused port's SYN was sent again {retransmitted} time(s), {seconds:.3f} s")
    assert again.pod is not None, again
    assert fresh == 0
    assert (retransmitted > 0) is variant.prefix_ipvs
