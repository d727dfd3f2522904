"""The chart's way to set `expire_nodest_conn` without `privileged: true`, on a real kernel.

A container runtime mounts `/proc/sys` read-only; kubelet bind-mounts a hostPath of `/proc/sys/net/ipv4`
(taken from the host's writable `/proc`; the directory, since `vs/` exists only while ip_vs is loaded) into a
directory outside `/proc`, and the agent writes in its `vs/` (`--sysctl-write-dir`) while it reads from the
read-only `/proc/sys`. This reproduces that in a new mount namespace and runs the real `reap --once` in it:
through `/proc/sys` the write is refused and nothing is deleted; through the bind mount the host's value
changes and the stale real server goes, and the agent writes no other sysctl.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import builders
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.lab import Lab

REAPER = Path(sys.executable).with_name("ipvs-reaper")
MOUNTED = "/run/host-ipv4-sysctl"  # the chart's sysctlMountPath (outside /proc: runtimes refuse mounts there)
SYSCTLS = "/proc/sys/net/ipv4/vs"


def in_container_mounts(command: str) -> subprocess.CompletedProcess[str]:
    """`command` in a new mount namespace laid out as a container runtime lays it out for the chart's pod."""
    script = f"""
set -eu
mkdir -p {MOUNTED}
mount --bind /proc/sys/net/ipv4 {MOUNTED}
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
{command}
"""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_write_goes_through_the_bind_mount_and_not_through_a_read_only_proc_sys(
    lab: Lab, tmp_path: Path
) -> None:
    lab.sysctl("expire_nodest_conn", 0)
    lab.sysctl("conn_reuse_mode", 0)
    lab.restore(["-A -t 10.96.7.1:80 -s rr", "-a -t 10.96.7.1:80 -r 10.244.7.1:8080 -m -w 0"])
    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("shop", "web", ["10.96.7.1"], [builders.port(80, "http")]),
        builders.endpoint_slice("shop", "web-1", "web", [builders.port(8080, "http")], []),
    )
    reap = f"{REAPER} reap --once --cluster-state {state} --node-name {NODE}"

    direct = in_container_mounts(f"if echo 1 > {SYSCTLS}/expire_nodest_conn; then exit 9; fi\n{reap}")
    assert direct.returncode == 1, direct.stdout + direct.stderr
    assert "Read-only file system" in direct.stdout + direct.stderr
    assert lab.read_sysctl("expire_nodest_conn") == 0
    assert "10.244.7.1:8080" in lab.ipvsadm("-Ln")  # refused: deleting now would drop, not reschedule

    # Through /proc/sys nothing is writable still; the agent writes expire_nodest_conn and nothing else.
    mounted = in_container_mounts(
        f"if echo 1 > {SYSCTLS}/conn_reuse_mode; then exit 9; fi\n{reap} --sysctl-write-dir {MOUNTED}/vs"
    )
    assert mounted.returncode == 0, mounted.stdout + mounted.stderr
    assert lab.read_sysctl("expire_nodest_conn") == 1  # the host's own value, seen from outside
    assert lab.read_sysctl("conn_reuse_mode") == 0
    assert "10.244.7.1:8080" not in lab.ipvsadm("-Ln")
