"""One node's kernel state, built the way kube-proxy and a CNI build it, and torn down between tests.

ClusterIPs live on a dummy `kube-ipvs0`; pods are network namespaces reached through a veth with a /32
route and proxy ARP on the host side (as Calico does); IPVS rules are added with `ipvsadm` (test setup
only: the product never shells out). The node forwards between pods, so a client pod's packets meet IPVS on
the way in."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tests.kernel.pods import Client, PodServer
from tests.vm.variant import Variant

VS_SYSCTLS = Path("/proc/sys/net/ipv4/vs")
# The kernel's own defaults, which every test starts from.
DEFAULT_SYSCTLS = {
    "conn_reuse_mode": 1,
    "expire_nodest_conn": 0,
    "conntrack": 0,
    "expire_quiescent_template": 0,
}


def kube_proxy_sysctls(kernel_before_5_9: bool) -> dict[str, int]:
    """What kube-proxy in IPVS mode sets at start (pkg/proxy/ipvs/proxier.go, NewProxier / the backend's
    sysctl setup): conntrack, expire_nodest_conn and expire_quiescent_template to 1 on every kernel, and
    conn_reuse_mode to 0 only on kernels older than 5.9 (IPVSConnReuseModeFixedKernelVersion); from 5.9 on it
    leaves conn_reuse_mode as it is (the kernel's 1)."""
    settings = {"conntrack": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1}
    settings["conn_reuse_mode"] = 0 if kernel_before_5_9 else DEFAULT_SYSCTLS["conn_reuse_mode"]
    return settings


def incident_sysctls(variant: Variant) -> dict[str, int]:
    """The settings the incident tests run under. On the pre-fix IPVS (a kernel before 5.9), kube-proxy's
    own: the incident as nodes had it. Debian's IPVS reschedules a reused port under those (the matrix's
    kube-proxy row shows it), so there only conn_reuse_mode=0 with expire_nodest_conn=0 reproduces it."""
    if variant is Variant.PREFIX:
        return kube_proxy_sysctls(kernel_before_5_9=True)
    return {"conn_reuse_mode": 0, "expire_nodest_conn": 0}


def run_steps(steps: Iterable[Callable[[], object]]) -> list[str]:
    """Every teardown step, whatever the others did: what failed, for one message."""
    failures = []
    for step in steps:
        try:
            step()
        except (AssertionError, OSError) as error:
            failures.append(str(error))
    return failures


def sh(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def set_proc(path: Path, value: int | str) -> None:
    path.write_text(f"{value}\n")


@dataclass(frozen=True)
class Pod:
    name: str
    address: str


class Lab:
    def __init__(self) -> None:
        self._pods: dict[str, Pod] = {}
        self._servers: list[PodServer] = []
        self._nat_rules: list[tuple[str, ...]] = []

    # --- topology -------------------------------------------------------------------------------------------

    def cluster_ips(self, *addresses: str) -> None:
        if not Path("/sys/class/net/kube-ipvs0").exists():
            sh("ip", "link", "add", "kube-ipvs0", "type", "dummy")
        for address in addresses:
            prefix = "128" if ":" in address else "32"
            sh("ip", "addr", "add", f"{address}/{prefix}", "dev", "kube-ipvs0")

    def pod(self, name: str, address: str) -> Pod:
        index = len(self._pods)
        host_side = f"veth{index}"
        commands = [
            f"netns add {name}",
            f"link add {host_side} type veth peer name eth0 netns {name}",
            f"link set {host_side} up",
            f"route add {address}/32 dev {host_side}",
            f"-n {name} link set lo up",
            f"-n {name} link set eth0 up",
            f"-n {name} addr add {address}/32 dev eth0",
            f"-n {name} route add default dev eth0",
        ]
        for command in commands:
            sh("ip", *command.split())
        set_proc(Path(f"/proc/sys/net/ipv4/conf/{host_side}/proxy_arp"), 1)
        pod = Pod(name, address)
        self._pods[name] = pod
        return pod

    def serve(self, pod: Pod, port: int, kind: int = socket.SOCK_STREAM) -> PodServer:
        server = PodServer(pod.name, pod.name, port, kind)
        self._servers.append(server)
        return server

    def client(self, source_port: int, timeout_seconds: float = 3.0) -> Client:
        pod = self._pods.get("client") or self.pod("client", "10.244.9.9")
        return Client(pod.name, source_port, timeout_seconds)

    def masquerade_like_kube_proxy(self) -> None:
        """kube-proxy's masquerade rule (KUBE-POSTROUTING's, in POSTROUTING directly). Any NAT rule makes the
        kernel track connections in this namespace; without one, IPVS's conntrack support has no conntrack
        entry to look at, and a real node always has one."""
        rule = ("POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE")
        sh("iptables", "-t", "nat", "-A", *rule)
        self._nat_rules.append(rule)

    # --- IPVS and its sysctls -------------------------------------------------------------------------------

    @staticmethod
    def ipvsadm(*args: str) -> str:
        return sh("ipvsadm", *args)

    @staticmethod
    def restore(rules: Iterable[str]) -> None:
        sh("ipvsadm", "-R", stdin="\n".join(rules) + "\n")

    @staticmethod
    def sysctl(name: str, value: int) -> None:
        set_proc(VS_SYSCTLS / name, value)

    def sysctls(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            self.sysctl(name, value)

    @staticmethod
    def read_sysctl(name: str) -> int:
        return int((VS_SYSCTLS / name).read_text())

    # --- teardown -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Back to an empty node, whatever state a failed test left: every step is tried, so one test's
        failure cannot cascade into the next test's setup."""
        steps: list[Callable[[], object]] = [server.kill for server in self._servers]
        steps.extend(partial(sh, "iptables", "-t", "nat", "-D", *rule) for rule in self._nat_rules)
        steps.append(partial(sh, "ipvsadm", "-C"))
        # A veth whose namespace is deleted goes only when the kernel's cleanup work gets to it, after
        # `ip netns del` returned; deleting the node's end takes the pair at once, before the next test looks.
        for index in range(len(self._pods)):
            if Path(f"/sys/class/net/veth{index}").exists():
                steps.append(partial(sh, "ip", "link", "del", f"veth{index}"))
        for listed in sh("ip", "netns", "list").splitlines():
            steps.append(partial(sh, "ip", "netns", "del", listed.split()[0]))
        if Path("/sys/class/net/kube-ipvs0").exists():
            steps.append(partial(sh, "ip", "link", "del", "kube-ipvs0"))
        steps.extend(partial(self.sysctl, name, value) for name, value in DEFAULT_SYSCTLS.items())
        failures = run_steps(steps)
        left = sorted(path.name for path in Path("/sys/class/net").iterdir() if path.name.startswith("veth"))
        if left:
            failures.append(f"interfaces still there: {', '.join(left)}")
        if failures:
            raise AssertionError("teardown left the node dirty: " + "; ".join(failures))


def prepare_node() -> None:
    """Once per VM: what a kube-proxy node has set."""
    set_proc(Path("/proc/sys/net/ipv4/ip_forward"), 1)
    set_proc(Path("/proc/sys/net/ipv6/conf/all/forwarding"), 1)
