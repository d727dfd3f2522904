"""The kernel-behaviour matrix: where a reused source port goes once its real server is at weight 0 and its
pod is dead, for each (conn_reuse_mode, expire_nodest_conn) pair, before and after the real server is
deleted; and whether the exposure verdict we print agrees with what was observed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvs_reaper.cli import main
from tests import builders
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.lab import Lab
from tests.kernel.pods import Outcome, Reply

LIVE = "live pod"
DEAD = "dead pod"

# What the Debian 6.1 kernel (which carries c95c07836fa4) does; kernel-ipvs-facts.md, "Seen on Debian 6.1".
EXPECTED = {
    (0, 0): (DEAD, Outcome.TIMEOUT),
    (0, 1): (LIVE, LIVE),
    (1, 0): (LIVE, LIVE),
    (1, 1): (LIVE, LIVE),
}


def where(reply: Reply, dead: str, live: str) -> str:
    if reply.pod == live:
        return LIVE
    if reply.pod == dead or reply.outcome is Outcome.REFUSED:
        # A refusal comes from the dead pod's address: nothing listens there any more.
        return DEAD
    assert reply.outcome is not None, f"an answer from an unknown pod: {reply}"
    return reply.outcome


@pytest.mark.parametrize(("reuse", "nodest"), sorted(EXPECTED))
def test_reused_port_after_weight_zero(
    lab: Lab,
    source_ports: Iterator[int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reuse: int,
    nodest: int,
) -> None:
    vip = f"10.96.1.{10 + 2 * reuse + nodest}"
    lab.sysctl("conn_reuse_mode", reuse)
    lab.sysctl("expire_nodest_conn", nodest)
    lab.cluster_ips(vip)
    pods = {pod.name: pod for pod in (lab.pod("pod-a", "10.244.1.2"), lab.pod("pod-b", "10.244.1.3"))}
    servers = {name: lab.serve(pod, 80) for name, pod in pods.items()}
    lab.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
    for pod in pods.values():
        lab.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{pod.address}:80", "-m", "-w", "1")
    client = lab.client(next(source_ports))

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

    assert (before, after) == EXPECTED[reuse, nodest]

    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("shop", "web", [vip], [builders.port(80)]),
        builders.endpoint_slice(
            "shop", "web-1", "web", [builders.port(80)], [builders.endpoint(pods[live].address)]
        ),
    )
    capsys.readouterr()
    assert main(["scan", "-o", "json", "--cluster-state", str(state), "--node-name", NODE]) == 0
    kernel = json.loads(capsys.readouterr().out)["kernel"]
    assert (kernel["connReuseMode"], kernel["expireNodestConn"]) == (reuse, nodest)
    observed = "exposed" if before == DEAD else "not-exposed"
    assert kernel["exposure"] == observed, kernel["exposureReason"]
