"""One arm of the rollout lab, in one node namespace: `python -m bench.rollout.arm NODE_NETNS SPEC_JSON OUT`.

A Service (`rr`, masquerade) over 3 pods, loaded by two clients at once (direct to the ClusterIP, and through
nginx), rolled pod by pod as a Deployment with maxSurge 1 and maxUnavailable 0 does: the new pod is ready,
the EndpointSlice gains it and marks the old one terminating (still serving), the old pod gets SIGTERM; one
readiness period later it is no longer serving; when it exits (or is killed at its grace period) its
address goes (CNI DEL) and it leaves the slice. Then the clients go on for the window. Who programs IPVS is
the arm: kube-proxy's stand-in alone, kube-proxy with the reaper (`ipvs-reaper run`, the installed command,
its cluster kmock's emulator following the same slice) under one of three policies, or kube-router's
stand-in alone."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from bench.rollout.proxies import KubeProxy, KubeRouter, VirtualService
from bench.rollout.scene import Node, enter, read_sysctl, wait_exit, write_sysctl
from tests import builders
from tests.agent.harness import NODES, SERVICES, SLICES, Cluster, free_port, kubeconfig

ARMS = ("kube-proxy", "reaper-immediate", "reaper-default", "reaper-idle", "kube-router")
VIP, PORT = "10.96.0.10", 80
CLIENT, PROXY, PROXY_LOADER = "10.244.9.9", "10.244.9.10", "10.244.9.11"
NODE_NAME, NODE_IP = "node-a", "192.168.49.2"
FIRST_PORT = 40000
REAPER = Path(sys.executable).with_name("ipvs-reaper")
# The reaper's configs: none for the default policy.
CONFIGS = {
    "reaper-immediate": "policy:\n  gone: {reap: always}\n  terminating: {reap: always}\n",
    # The default before this lab: `gone` too waited for ActiveConn 0, at most 300 s.
    "reaper-idle": "policy:\n  gone: {reap: idle, maxWaitSeconds: 300}\n"
    "  terminating: {reap: idle, maxWaitSeconds: 300}\n",
}
VS_SYSCTLS = ("conn_reuse_mode", "expire_nodest_conn", "conntrack", "expire_quiescent_template")


@dataclass(frozen=True)
class Timing:
    warmup: float = 20.0  # load before the rollout: every source port has an entry to some old pod
    window: float = 150.0  # load after the last old pod is gone: longer than IPVS's TIME_WAIT (120 s)
    grace: float = 10.0  # terminationGracePeriodSeconds (Kubernetes' default 30, scaled)
    probe: float = 2.0  # a stopping pod fails its readiness probe this long after SIGTERM
    slow: float = 5.0  # seconds `/slow` works: in flight when its pod is told to stop
    rate: float = 25.0  # requests a second at most, per client
    concurrency: int = 10
    ports: int = 64  # the clients' ip_local_port_range width


@dataclass(frozen=True)
class ArmSpec:
    arm: str
    setting: str  # "kube-proxy" for kube-proxy's own sysctls, else "<conn_reuse_mode>,<expire_nodest_conn>"
    sysctls: dict[str, int]
    timing: Timing = field(default_factory=Timing)
    nginx: str | None = None  # Debian's nginx binary; None runs the direct client alone


@dataclass
class Pod:
    name: str
    address: str
    netns: str
    process: subprocess.Popen[bytes]

    @property
    def real(self) -> str:
        return f"{self.address}:{PORT}"


ENDPOINT = {
    "ready": {"ready": True},
    "terminating": {"ready": False, "serving": True, "terminating": True},
    "stopped": {"ready": False, "serving": False, "terminating": True},
}
_versions = itertools.count(100)


def _versioned(body: dict[str, Any]) -> dict[str, Any]:
    # A real API server bumps resourceVersion on every write; the emulator does not.
    body["metadata"]["resourceVersion"] = str(next(_versions))
    return body


class Rollout:
    def __init__(self, spec: ArmSpec, node: Node, scratch: Path) -> None:
        self.spec = spec
        self.node = node
        self.scratch = scratch
        self.started = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self.samples: list[tuple[float, dict[str, list[int]]]] = []
        self.service = VirtualService(VIP, PORT)
        self.programmer: KubeProxy | KubeRouter = (
            KubeRouter(self.service, self.log, spec.timing.grace)
            if spec.arm == "kube-router"
            else KubeProxy(self.service, self.log)
        )
        self.endpoints: dict[str, str] = {}  # address -> ENDPOINT key
        self.cluster: Cluster | None = None
        self._publishing = asyncio.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def log(self, text: str) -> None:
        self.events.append((self.now(), text))
        print(f"[{self.node.name} {self.now():7.1f}] {text}", flush=True)

    # --- pods and the slice -------------------------------------------------------------------------------

    async def start_pod(self, generation: int, index: int) -> Pod:
        name = f"web-{generation}-{index}"
        address = f"10.244.{generation}.{10 + index}"
        netns = self.node.netns(name, address)
        process = self.node.python(
            netns,
            "bench.rollout.pod",
            name,
            str(PORT),
            str(self.spec.timing.slow),
            log=self.scratch / "pods.log",
        )
        pod = Pod(name, address, netns, process)
        await wait_answering(address, PORT, 120)
        return pod

    def slice_body(self) -> dict[str, Any]:
        endpoints = [{"addresses": [a], "conditions": ENDPOINT[s]} for a, s in sorted(self.endpoints.items())]
        return builders.endpoint_slice("shop", "web-1", "web", [builders.port(PORT)], endpoints)

    async def publish(self) -> None:
        """One EndpointSlice change, seen by the programmer (at once) and by the reaper (through the API)."""
        async with self._publishing:
            ready = {f"{a}:{PORT}" for a, s in self.endpoints.items() if s == "ready"}
            await self.programmer.sync(ready)
            if self.cluster is not None:
                await self.cluster.patch(SLICES, _versioned(self.slice_body()))

    # --- background work ----------------------------------------------------------------------------------

    async def sample(self) -> None:
        while True:
            reals = await self.service.reals()
            self.samples.append((self.now(), {r: [c.weight, c.active, c.inactive] for r, c in reals.items()}))
            await asyncio.sleep(1.0)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.programmer.period)
            # One at a time with a sync, as in kube-proxy (its graceful list is behind a lock): a delete
            # between a sync's read and its write would make that write fail.
            async with self._publishing:
                await self.programmer.tick()

    # --- the rollout ---------------------------------------------------------------------------------------

    async def replace(self, old: Pod, index: int) -> asyncio.Task[None]:
        new = await self.start_pod(2, index)
        self.endpoints[new.address] = "ready"
        self.endpoints[old.address] = "terminating"
        await self.publish()
        self.log(f"{new.name} ready; {old.name} terminating, SIGTERM")
        old.process.send_signal(signal.SIGTERM)
        return asyncio.create_task(self.finish(old))

    async def finish(self, old: Pod) -> None:
        timing = self.spec.timing
        await asyncio.sleep(timing.probe)
        self.endpoints[old.address] = "stopped"
        await self.publish()
        self.log(f"{old.name} not serving")
        exited = await wait_exit(old.process, timing.grace - timing.probe)
        self.node.remove_netns(old.netns)
        del self.endpoints[old.address]
        await self.publish()
        self.log(f"{old.name} gone ({'exited' if exited else 'killed at its grace period'}), address removed")


async def wait_answering(address: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 2)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0]:
                return
        except (OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{address}:{port} did not answer within {seconds} s")
        await asyncio.sleep(0.2)


NGINX_CONF = """\
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {listen}:8080;
        location / {{
            proxy_pass http://{vip}:{port};
            proxy_connect_timeout 5s;
            proxy_read_timeout 15s;
            proxy_next_upstream off;
        }}
    }}
}}
"""
NGINX_REASON = re.compile(r"\(\d+: [^)]*\)|upstream prematurely closed connection|upstream timed out")


def nginx_reasons(log: Path) -> dict[str, int]:
    if not log.exists():
        return {}
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        found = NGINX_REASON.findall(line)
        if found:
            counts[" ".join(found)] += 1
    return dict(counts)


def read_records(path: Path, started: float) -> list[list[Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    for record in records:
        record[0] = round(record[0] - started, 3)
        record[1] = None if record[1] is None else round(record[1], 4)
        record[2] = round(record[2], 4)
    return records


def agent_records(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        with contextlib.suppress(ValueError):
            fields = json.loads(line)
            if isinstance(fields, dict) and "outcome" in fields and "real" in fields:
                found.append(
                    {k: fields.get(k) for k in ("time", "real", "endpointState", "outcome", "detail")}
                )
    return found


async def run_arm(spec: ArmSpec, node: Node, scratch: Path) -> dict[str, Any]:
    timing = spec.timing
    lab = Rollout(spec, node, scratch)
    node.prepare(VIP)
    for name, value in spec.sysctls.items():
        write_sysctl(None, f"net.ipv4.vs.{name}", str(value))
    await lab.service.create()
    old = list(await asyncio.gather(*(lab.start_pod(1, i) for i in range(3))))
    for pod in old:
        lab.endpoints[pod.address] = "ready"
    await lab.publish()
    lab.log("3 pods ready")

    async with contextlib.AsyncExitStack() as stack:
        agent_log = scratch / "agent.log"
        if spec.arm.startswith("reaper-"):
            api = await stack.enter_async_context(kmock.KubernetesEmulator())
            api.resources.load_bundled()
            server = await stack.enter_async_context(kmock.Server(api))
            lab.cluster = await stack.enter_async_context(Cluster(str(server.url)))
            await lab.cluster.create(
                SERVICES, _versioned(builders.service("shop", "web", [VIP], [builders.port(PORT)]))
            )
            await lab.cluster.create(SLICES, _versioned(lab.slice_body()))
            await lab.cluster.create(NODES, _versioned(builders.node(NODE_NAME, NODE_IP)))
            arguments = [
                "run",
                "--node-name",
                NODE_NAME,
                "--kubeconfig",
                kubeconfig(scratch, str(server.url)),
            ]
            listen = free_port()
            arguments += ["--listen", f"127.0.0.1:{listen}", "--log-format", "json"]
            if spec.arm in CONFIGS:
                (scratch / "config.yaml").write_text(CONFIGS[spec.arm])
                arguments += ["--config", str(scratch / "config.yaml")]
            with agent_log.open("wb") as sink:
                agent = subprocess.Popen([str(REAPER), *arguments], stdout=sink, stderr=subprocess.STDOUT)
            stack.callback(stop_process, agent)
            await wait_ready(listen, agent, agent_log)
            lab.log("reaper ready")

        clients = {"direct": (node.netns("client", CLIENT), VIP, PORT)}
        if spec.nginx:
            proxy = node.netns("proxy", PROXY)
            nginx_dir = scratch / "nginx"
            nginx_dir.mkdir()
            conf = nginx_dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=nginx_dir, listen=PROXY, vip=VIP, port=PORT))
            node.start(proxy, spec.nginx, "-e", str(nginx_dir / "nginx-error.log"), "-c", str(conf),
                       "-p", str(nginx_dir), log=scratch / "nginx.log")  # fmt: skip
            await wait_answering(PROXY, 8080, 60)
            clients["nginx"] = (node.netns("nginx-client", PROXY_LOADER), PROXY, 8080)
            narrowed = [clients["direct"][0], proxy]
        else:
            narrowed = [clients["direct"][0]]
        port_range = f"{FIRST_PORT} {FIRST_PORT + timing.ports - 1}"
        for netns in narrowed:
            write_sysctl(netns, "net.ipv4.ip_local_port_range", port_range)

        background = [asyncio.create_task(lab.sample()), asyncio.create_task(lab.tick())]
        loaders = {
            kind: node.python(
                netns,
                "bench.rollout.load",
                address,
                str(port),
                str(scratch / f"{kind}.jsonl"),
                "--rate",
                str(timing.rate),
                "--concurrency",
                str(timing.concurrency),
                log=scratch / f"{kind}.log",
            )
            for kind, (netns, address, port) in clients.items()
        }
        lab.log("load started")
        await asyncio.sleep(timing.warmup)
        rollout_started = lab.now()
        finishing = [await lab.replace(pod, index) for index, pod in enumerate(old)]
        await asyncio.gather(*finishing)
        rollout_ended = lab.now()
        lab.log("rollout done")
        await asyncio.sleep(timing.window)
        for loader in loaders.values():
            loader.send_signal(signal.SIGTERM)
        for loader in loaders.values():
            await asyncio.to_thread(loader.wait, 120)
        lab.log("load stopped")
        for task in background:
            task.cancel()
        final = await lab.service.reals()

    return {
        "spec": asdict(spec),
        "kernel": subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip(),
        "sysctls": {name: read_sysctl(f"net.ipv4.vs.{name}") for name in VS_SYSCTLS},
        "rollout": {"started": rollout_started, "ended": rollout_ended},
        "events": lab.events,
        "samples": lab.samples,
        "final": {real: [c.weight, c.active, c.inactive] for real, c in final.items()},
        "clients": {kind: read_records(scratch / f"{kind}.jsonl", lab.started) for kind in clients},
        "nginx_errors": nginx_reasons(scratch / "nginx" / "nginx-error.log"),
        "agent_records": agent_records(agent_log),
    }


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(port: int, agent: subprocess.Popen[bytes], log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited ({agent.returncode}):\n{log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the agent was not ready within {seconds} s:\n{log.read_text()}")


def main() -> None:
    node_netns, spec_json, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    enter(node_netns)  # first: before asyncio or any thread exists
    fields = json.loads(spec_json)
    spec = ArmSpec(**{**fields, "timing": Timing(**fields.get("timing", {}))})
    scratch = out.with_suffix(".scratch")
    scratch.mkdir(parents=True, exist_ok=True)
    node = Node(node_netns)
    try:
        result = asyncio.run(run_arm(spec, node, scratch))
    finally:
        problems = node.close()
        if problems:
            print("teardown:", "; ".join(problems), file=sys.stderr)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
