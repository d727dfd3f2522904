"""The doctor against netfilter itself: one generated rule set (tests/netfilter/grammar.py) built on the live
node, a connection to every virtual service from the node and from a pod, and the doctor's findings compared
with where the kernel sent each one.

The node: ClusterIPs on a dummy kube-ipvs0 with IPVS virtual services (masquerading to a backend pod), kube-
proxy's IP sets, the rules loaded with the tools themselves. Pods are addresses in network namespaces behind
veths (as a CNI routes them): one namespace carries every pod's addresses (backends and the pods the rules
DNAT to), each address answering on its ports with its pod's name and the port, so a reply says which pod
took the connection; a second namespace is the client pod. The node answers too, as `node:PORT`, where a
REDIRECT or a port-only DNAT sends traffic to the node itself.

A connection from the client pod meets the nat PREROUTING hook; one from the node's own namespace meets
OUTPUT. The agreement rules:
- a capture (a reply from anything but the service's backend, or no reply at all where the backend answered
  before the rules were loaded) must be a hijack finding for that address whose evidence lists that hook,
  certain or possible;
- a connection the backend answered must never be a certain hijack at that hook."""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ipvs_reaper.cli import main as cli_main
from tests import builders
from tests.kernel.cluster import NODE, NODE_IP
from tests.kernel.lab import run_steps
from tests.kernel.pods import in_netns
from tests.netfilter.grammar import CLIENT_POD, RuleSet, Service

PODS_NS, CLIENT_NS = "diff-pods", "diff-client"
PODS_VETH, CLIENT_VETH = "dvpods", "dvclient"
# The client's veth on the node carries addresses, so a REDIRECT at PREROUTING has one to send to (a veth
# without an address makes the kernel drop what REDIRECT takes).
CLIENT_GATEWAY = ("169.254.1.1", "fd00:49::1")
HOOKS = ("prerouting", "output")
IPVS_SYSCTLS = {"conntrack": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1}
VS_SYSCTLS = Path("/proc/sys/net/ipv4/vs")


def sh(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shown = f"\n{stdin}" if stdin else ""
        raise AssertionError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}{shown}")
    return done.stdout


# --- who answers ------------------------------------------------------------------------------------------


class Answering:
    """Every listener of the node and its pods, served by one thread: TCP sends the name and closes, UDP
    answers each datagram with it (from the address it was sent to)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._names: dict[socket.socket, bytes] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._selector.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="diff-answering", daemon=True)
        self._started = False

    def listen(self, netns: str | None, specs: Iterable[tuple[str, str, int, str]]) -> None:
        """specs: (address, protocol, port, name)."""
        listed = list(specs)

        def make() -> list[tuple[socket.socket, str]]:
            made = []
            for address, protocol, port, name in listed:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(family, kind)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
                    sock.bind((address, port))
                    if kind == socket.SOCK_STREAM:
                        sock.listen(64)
                    sock.setblocking(False)
                except OSError as error:
                    sock.close()
                    raise OSError(
                        error.errno, f"listen on {address} {protocol}/{port}: {error.strerror}"
                    ) from None
                made.append((sock, f"{name}:{port}"))
            return made

        for sock, name in in_netns(netns, make):
            self._names[sock] = name.encode() + b"\n"
            self._selector.register(sock, selectors.EVENT_READ)
        if not self._started:
            self._started = True
            self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._stop_r:
                    return
                assert isinstance(sock, socket.socket)
                name = self._names[sock]
                try:
                    if sock.type == socket.SOCK_STREAM:
                        connection, _ = sock.accept()
                        with connection:
                            connection.setblocking(True)
                            connection.settimeout(2)
                            connection.sendall(name)
                    else:
                        _, peer = sock.recvfrom(512)
                        sock.sendto(name, peer)
                except OSError:
                    continue  # the client went away; the next connection is what matters

    def close(self) -> None:
        self._stop_w.send(b"x")
        if self._started:
            self._thread.join(timeout=10)
        for sock in self._names:
            sock.close()
        self._selector.close()
        self._stop_r.close()
        self._stop_w.close()


def connect(netns: str | None, service: Service, source_port: int, timeout: float) -> str:
    """Who answered a connection to the service from the namespace (None: the node's), or `failed: ...`."""
    family = socket.AF_INET6 if service.family == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if service.protocol == "tcp" else socket.SOCK_DGRAM
    sock = in_netns(netns, lambda: socket.socket(family, kind))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(timeout)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
            sock.connect((service.address, service.port))
            if kind == socket.SOCK_DGRAM:
                sock.send(b"who?\n")
                return sock.recv(512).decode().strip() or "failed: empty"
            received = b""
            while chunk := sock.recv(256):
                received += chunk
        except TimeoutError:
            return "failed: timeout"
        except OSError as error:
            return f"failed: {os.strerror(error.errno) if error.errno else error}"
    return received.decode().strip() or "failed: closed without a word"


# --- the node ---------------------------------------------------------------------------------------------


def _ip_batch(commands: Iterable[str], netns: str | None = None) -> None:
    prefix = ("-n", netns) if netns else ()
    sh("ip", *prefix, "-batch", "-", stdin="\n".join(commands) + "\n")


def _prefix(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


def clear_rules() -> None:
    """Every nat rule of both iptables backends, every nft table, every IP set."""
    for tool in ("iptables-legacy-restore", "ip6tables-legacy-restore"):
        sh(tool, stdin="*nat\nCOMMIT\n")  # without --noflush: the table replaced by an empty one
    sh("nft", "flush", "ruleset")
    sh("ipset", "destroy")


class Node:
    """One rule set built on the live node; `close()` takes everything away again."""

    def __init__(self, rule_set: RuleSet) -> None:
        self.rule_set = rule_set
        self.answering = Answering()
        self._built = False

    def build(self) -> None:
        self._built = True
        services, pods = self.rule_set.services, self.rule_set.pods
        for name, value in IPVS_SYSCTLS.items():
            (VS_SYSCTLS / name).write_text(f"{value}\n")
        vips = list(dict.fromkeys(s.address for s in services))
        root = ["link add kube-ipvs0 type dummy"]
        root += [f"addr add {_prefix(v)} dev kube-ipvs0" + (" nodad" if ":" in v else "") for v in vips]
        root += [f"netns add {PODS_NS}", f"netns add {CLIENT_NS}"]
        for veth, netns in ((PODS_VETH, PODS_NS), (CLIENT_VETH, CLIENT_NS)):
            root += [
                f"link add {veth} type veth peer name eth0 netns {netns}",
                f"link set {veth} up",
                f"addr add fe80::1/64 dev {veth} nodad",
            ]
        root += [f"addr add {CLIENT_GATEWAY[0]}/32 dev {CLIENT_VETH}"]
        root += [f"addr add {CLIENT_GATEWAY[1]}/128 dev {CLIENT_VETH} nodad"]
        for pod in pods:
            root += [
                f"route add {_prefix(pod.ipv4)} dev {PODS_VETH}",
                f"route add {_prefix(pod.ipv6)} dev {PODS_VETH}",
            ]
        root += [f"route add {_prefix(a)} dev {CLIENT_VETH}" for a in CLIENT_POD[1:]]
        _ip_batch(root)
        for veth in (PODS_VETH, CLIENT_VETH):
            Path(f"/proc/sys/net/ipv4/conf/{veth}/proxy_arp").write_text("1\n")
        inside = [
            "link set lo up",
            "link set eth0 up",
            "route add default dev eth0",
            "route add ::/0 via fe80::1 dev eth0",
        ]
        pod_addresses = [f"addr add {_prefix(p.ipv4)} dev eth0" for p in pods]
        pod_addresses += [f"addr add {_prefix(p.ipv6)} dev eth0 nodad" for p in pods]
        _ip_batch([*inside[:2], *pod_addresses, *inside[2:]], PODS_NS)
        client = [
            f"addr add {_prefix(CLIENT_POD[1])} dev eth0",
            f"addr add {_prefix(CLIENT_POD[2])} dev eth0 nodad",
        ]
        _ip_batch([*inside[:2], *client, *inside[2:]], CLIENT_NS)
        self.answering.listen(
            PODS_NS,
            [
                (address, protocol, port, pod.name)
                for pod in pods
                for protocol, port in sorted(pod.ports)
                for address in (pod.ipv4, pod.ipv6)
            ],
        )
        # The node: TCP on every address; UDP bound to each address a REDIRECT or port-only DNAT can send to,
        # so that a reply leaves from the address the datagram came to.
        node_addresses = ["127.0.0.1", "::1", *CLIENT_GATEWAY, *vips]
        self.answering.listen(
            None,
            [
                ("::", "tcp", port, "node")
                for protocol, port in sorted(self.rule_set.node_ports)
                if protocol == "tcp"
            ]
            + [
                (address, "udp", port, "node")
                for protocol, port in sorted(self.rule_set.node_ports)
                if protocol == "udp"
                for address in node_addresses
            ],
        )
        ipvs = []
        for s in services:
            flag = "-t" if s.protocol == "tcp" else "-u"
            backend = next(p for p in pods if p.name == s.backend).address(s.family)
            ipvs.append(f"-A {flag} {_endpoint(s.address, s.port)} -s rr")
            ipvs.append(f"-a {flag} {_endpoint(s.address, s.port)} -r {_endpoint(backend, s.port)} -m -w 1")
        sh("ipvsadm", "-R", stdin="\n".join(ipvs) + "\n")

    def load_rules(self) -> None:
        if self.rule_set.ipsets:
            sh("ipset", "restore", stdin="".join(i.restore_text() for i in self.rule_set.ipsets))
        for load in self.rule_set.loads:
            if load.tool == "nft":
                sh("nft", "-f", "-", stdin=load.text)
            else:
                sh(load.tool, "--noflush", stdin=load.text)

    def close(self) -> None:
        """Every step tried, so that one failure does not leave the next rule set a dirty node."""
        if not self._built:
            return
        steps: list[Callable[[], object]] = [
            self.answering.close,
            clear_rules,
            lambda: sh("ipvsadm", "-C"),
        ]
        for veth in (PODS_VETH, CLIENT_VETH):
            if Path(f"/sys/class/net/{veth}").exists():
                steps.append(partial(sh, "ip", "link", "del", veth))
        for netns in (PODS_NS, CLIENT_NS):
            if Path(f"/run/netns/{netns}").exists():
                steps.append(partial(sh, "ip", "netns", "del", netns))
        if Path("/sys/class/net/kube-ipvs0").exists():
            steps.append(lambda: sh("ip", "link", "del", "kube-ipvs0"))
        failures = run_steps(steps)
        if failures:
            raise AssertionError("teardown left the node dirty: " + "; ".join(failures))


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- the doctor -------------------------------------------------------------------------------------------


def cluster_state(rule_set: RuleSet, path: Path) -> Path:
    """The Services behind the virtual services (so the doctor knows kube-proxy's sets), as
    `kubectl get ... -o json` prints them; test_doctor_live.py writes the same shape."""
    items: list[dict[str, Any]] = [builders.node(NODE, NODE_IP)]
    by_vip: dict[str, list[Service]] = {}
    for s in rule_set.services:
        by_vip.setdefault(s.address, []).append(s)
    pods = {p.name: p for p in rule_set.pods}
    for index, (vip, services) in enumerate(by_vip.items()):
        name = f"svc-{index}"
        ports = [
            builders.port(s.port, name=f"p{s.port}{s.protocol}", protocol=s.protocol.upper())
            for s in services
        ]
        family = services[0].family
        backend = pods[services[0].backend].address(family)
        items.append(builders.service("default", name, [vip], ports))
        items.append(
            builders.endpoint_slice(
                "default", f"{name}-1", name, ports, [builders.endpoint(backend)], family=f"IPv{family}"
            )
        )
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def run_doctor(state: Path) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["doctor", "--node-name", NODE, "--cluster-state", str(state), "-o", "json"])
    return code, json.loads(out.getvalue())


def hooks_of(finding: dict[str, Any]) -> set[str]:
    return {hook for evidence in finding.get("evidence", []) for hook in evidence.get("hooks", [])}


def certain_hooks(finding: dict[str, Any]) -> set[str]:
    """Newer doctors say at which hooks a hijack is certain; before that, critical meant certain at every hook
    of its evidence."""
    if "certainHooks" in finding:
        return set(finding["certainHooks"])
    if "certainty" in finding:
        return hooks_of(finding) if finding["certainty"] == "certain" else set()
    return hooks_of(finding) if finding.get("severity") == "critical" else set()


# --- one rule set -----------------------------------------------------------------------------------------


@dataclass
class Disagreement:
    service: Service
    hook: str
    kernel: str
    doctor: str
    kind: str  # missed | false-certain

    def line(self) -> str:
        return (
            f"{self.kind}: {self.service.protocol} {self.service.endpoint} at {self.hook}: "
            f"kernel -> {self.kernel}; doctor: {self.doctor}"
        )


@dataclass
class Outcome:
    rule_set: RuleSet
    observed: dict[tuple[str, str], str] = field(default_factory=dict)  # (service name, hook) -> who answered
    report: dict[str, Any] = field(default_factory=dict)
    disagreements: list[Disagreement] = field(default_factory=list)
    harness: list[str] = field(default_factory=list)  # the setup itself failed: no verdict
    possible_not_taken: int = 0  # possible hijacks at a hook where the backend answered (allowed)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def packets(self) -> int:
        return len(self.observed)

    def text(self) -> str:
        lines = [self.rule_set.describe(), "  kernel:"]
        for s in self.rule_set.services:
            seen = ", ".join(f"{hook} -> {self.observed.get((s.name, hook), '?')}" for hook in HOOKS)
            lines.append(f"    {s.name} {s.protocol} {s.endpoint} (backend {s.backend}:{s.port}): {seen}")
        lines.append("  doctor:")
        for finding in self.report.get("findings", []):
            if finding.get("kind") == "hijack":
                lines.append(
                    f"    {finding['protocol']} {finding['address']} {finding['severity']} "
                    f"hooks={sorted(hooks_of(finding))} certain at {sorted(certain_hooks(finding))}: "
                    f"{finding['title']}"
                )
        lines += [f"  DISAGREE {d.line()}" for d in self.disagreements]
        lines += [f"  HARNESS {h}" for h in self.harness]
        lines.append("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.phases.items()))
        return "\n".join(lines)


def observe(rule_set: RuleSet, ports: Iterator[int], timeout: float) -> dict[tuple[str, str], str]:
    jobs = [
        (s, hook, CLIENT_NS if hook == "prerouting" else None, next(ports))
        for s in rule_set.services
        for hook in HOOKS
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: connect(job[2], job[0], job[3], timeout), jobs))
    return {(s.name, hook): answer for (s, hook, _, _), answer in zip(jobs, answers, strict=True)}


def compare(
    rule_set: RuleSet, observed: dict[tuple[str, str], str], report: dict[str, Any]
) -> tuple[list[Disagreement], int]:
    # One hijack finding per virtual service: its protocol and address (TCP and UDP may share an address).
    hijacks: dict[tuple[str, str], dict[str, Any]] = {}
    for finding in report.get("findings", []):
        if finding.get("kind") == "hijack" and finding.get("address"):
            hijacks[(str(finding.get("protocol")).lower(), finding["address"])] = finding
    disagreements, possible_not_taken = [], 0
    for s in rule_set.services:
        finding = hijacks.get((s.protocol, s.endpoint))
        said = (
            "nothing"
            if finding is None
            else (
                f"{finding['severity']} hooks={sorted(hooks_of(finding))} "
                f"certain at {sorted(certain_hooks(finding))}"
            )
        )
        for hook in HOOKS:
            answer = observed[(s.name, hook)]
            if answer != f"{s.backend}:{s.port}":
                if finding is None or hook not in hooks_of(finding):
                    disagreements.append(Disagreement(s, hook, answer, said, "missed"))
            elif finding is not None and hook in certain_hooks(finding):
                disagreements.append(Disagreement(s, hook, answer, said, "false-certain"))
            elif finding is not None and hook in hooks_of(finding):
                possible_not_taken += 1
    return disagreements, possible_not_taken


def run_rule_set(rule_set: RuleSet, ports: Iterator[int], workdir: Path, timeout: float = 2.0) -> Outcome:
    started = time.monotonic()
    outcome = Outcome(rule_set)
    node = Node(rule_set)
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        outcome.phases[name] = now - clock
        clock = now

    try:
        node.build()
        phase("build")
        baseline = observe(rule_set, ports, timeout)
        phase("baseline")
        wrong = {
            k: v
            for k, v in baseline.items()
            if v != f"{_service(rule_set, k[0]).backend}:{_service(rule_set, k[0]).port}"
        }
        if wrong:
            outcome.harness.append(f"before any rule, not every service answered from its backend: {wrong}")
            return outcome
        node.load_rules()
        phase("load")
        outcome.observed = observe(rule_set, ports, timeout)
        phase("observe")
        _, outcome.report = run_doctor(cluster_state(rule_set, workdir / f"cluster-{rule_set.seed}.json"))
        phase("doctor")
        outcome.disagreements, outcome.possible_not_taken = compare(
            rule_set, outcome.observed, outcome.report
        )
    except AssertionError as error:
        outcome.harness.append(str(error))
    finally:
        try:
            node.close()
        except AssertionError as error:
            outcome.harness.append(str(error))
        phase("close")
        outcome.seconds = time.monotonic() - started
    return outcome


def _service(rule_set: RuleSet, name: str) -> Service:
    return next(s for s in rule_set.services if s.name == name)
