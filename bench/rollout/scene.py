"""The rollout lab's node: a network namespace of its own (its own IPVS table and `net.ipv4.vs` sysctls, so
arms can run side by side in one VM), built as the kernel tier builds a node: ClusterIPs on a dummy
`kube-ipvs0`, kube-proxy's masquerade rule, and pods as network namespaces behind a veth with a /32 route and
proxy ARP on the node's side (as Calico does). The process that builds it has joined the node's namespace
(`enter`), so every `ip` and `ipvsadm` it runs acts there."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
ROOT = Path(__file__).resolve().parents[2]


def enter(netns: str) -> None:
    """Join a named network namespace; call before any thread exists (setns moves only the calling thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns into {netns}: {os.strerror(code)}")
    finally:
        os.close(fd)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def write_sysctl(netns: str | None, name: str, value: str) -> None:
    """net.* sysctls are per network namespace: written from inside the one meant."""
    path = "/proc/sys/" + name.replace(".", "/")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, "sh", "-c", f"echo '{value}' > {path}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}={value} in {netns or 'the node'}: {done.stderr.strip()}")


def read_sysctl(name: str) -> int:
    return int(Path("/proc/sys/" + name.replace(".", "/")).read_text())


@dataclass
class Node:
    """Names of pod namespaces are global to the VM: each carries the node's name."""

    name: str
    _netns: list[str] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _veths: int = 0

    def prepare(self, vip: str) -> None:
        ip("link", "set", "lo", "up")
        write_sysctl(None, "net.ipv4.ip_forward", "1")
        ip("link", "add", "kube-ipvs0", "type", "dummy")
        ip("addr", "add", f"{vip}/32", "dev", "kube-ipvs0")
        # kube-proxy's KUBE-POSTROUTING rule: any NAT rule makes the kernel track connections, as on a node.
        # The nft-based iptables first; Debian 5.10's VM has only the legacy tables' modules it needs.
        rule = ["-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE"]
        errors = []
        for tool in ("iptables", "iptables-legacy"):
            done = subprocess.run([tool, *rule], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return
            errors.append(f"{tool}: {done.stderr.strip()}")
        raise RuntimeError("kube-proxy's masquerade rule could not be added: " + "; ".join(errors))

    def netns(self, role: str, address: str) -> str:
        """A pod's network namespace, reachable at `address` from the node."""
        name = f"{self.name}-{role}"
        host_side = f"veth{self._veths}"
        self._veths += 1
        ip("netns", "add", name)
        self._netns.append(name)
        ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("link", "set", host_side, "up")
        ip("route", "add", f"{address}/32", "dev", host_side)
        write_sysctl(None, f"net.ipv4.conf.{host_side}.proxy_arp", "1")
        for command in ("link set lo up", "link set eth0 up", f"addr add {address}/32 dev eth0",
                        "route add default dev eth0"):  # fmt: skip
            ip("-n", name, *command.split())
        return name

    def remove_netns(self, name: str) -> None:
        """CNI DEL: the pod's address is gone from the node (its veth and /32 route with it)."""
        ip("netns", "del", name)
        self._netns.remove(name)

    def start(self, netns: str, *command: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, *command], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
            )
        self._processes.append(process)
        return process

    def python(self, netns: str, module: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
        return self.start(netns, sys.executable, "-m", module, *args, log=log)

    def close(self) -> list[str]:
        problems = []
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        for name in list(self._netns):
            try:
                self.remove_netns(name)
            except RuntimeError as error:
                problems.append(str(error))
        return problems


async def wait_exit(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """True if it exited by itself within `seconds`; else it is killed (the kubelet at the grace period)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while process.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            return False
        await asyncio.sleep(0.2)
    return True
