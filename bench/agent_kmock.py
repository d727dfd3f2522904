"""Benchmark of `ipvs-reaper run` against kmock's Kubernetes emulator (real HTTP list and watch) with a fake
IPVS table: time to ready, RSS at ready, steady idle CPU, and slice-event -> real-server-deleted latency.

    .venv/bin/python -m bench.agent_kmock [--services 10000] [--events 1000] [--idle 60]

The agent runs in a child process (its RSS and CPU are its own; the emulator's are not counted). Latency is
from just before the PATCH that removes endpoint 5 of a Service's slice to the delete in the fake table, both
read on CLOCK_MONOTONIC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from bench.agent_cluster import ENDPOINTS, event_targets, node_body, pod_ip, service_body, slice_body
from tests.agent.harness import free_port, kubeconfig

SERVICES = kmock.resource("", "v1", "services")
SLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
NODES = kmock.resource("", "v1", "nodes")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(name: str, samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        f"{name}_p50_ms": round(1000 * statistics.median(ordered), 1),
        f"{name}_p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1),
        f"{name}_max_ms": round(1000 * ordered[-1], 1),
    }


@dataclass
class Stalls:
    """What the child reported about its event loop: late timers (loop lag) and long garbage collections."""

    lags: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds late)
    collections: list[tuple[float, int, float]] = field(default_factory=list)  # (at, generation, seconds)

    def summary(self, since: float) -> dict[str, Any]:
        lags = [late for at, late in self.lags if at >= since]
        gcs = [(gen, took) for at, gen, took in self.collections if at >= since]
        return {
            "loop_lags_over_20ms": len(lags),
            "loop_lag_max_ms": round(1000 * max(lags, default=0.0), 1),
            "collections_over_5ms": len(gcs),
            "collection_max_ms": round(1000 * max((t for _, t in gcs), default=0.0), 1),
            "collections_by_generation": {g: sum(1 for gen, _ in gcs if gen == g) for g in (0, 1, 2)},
        }


async def _lines(stream: asyncio.StreamReader, queue: asyncio.Queue[dict[str, Any]], stalls: Stalls) -> None:
    while line := await stream.readline():
        if line.startswith(b"{"):
            fields = json.loads(line)
            if "lag" in fields:
                stalls.lags.append((fields["at"], fields["lag"]))
            elif "gc" in fields:
                stalls.collections.append((fields["at"], fields["gc"], fields["took"]))
            else:
                await queue.put(fields)


def _request_kind(request: Any) -> str:
    """ "list EndpointSlice", "watch Service", "get Node", "discovery", ... for one emulator request."""
    path, query = request.url.path, request.url.query
    kinds = {"services": "Service", "endpointslices": "EndpointSlice", "nodes": "Node", "events": "Event"}
    parts = [p for p in path.split("/") if p]
    for plural, kind in kinds.items():
        if plural in parts:
            named = parts.index(plural) < len(parts) - 1
            verb = request.method.value.lower()
            if verb == "get":
                verb = "watch" if query.get("watch") == "true" else "get" if named else "list"
            return f"{verb} {kind}"
    return "discovery"


def _count_requests(api: Any, agent: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in api:
        if agent not in request.headers.get("User-Agent", ""):
            continue
        key = _request_kind(request)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def seed(api: Any, services: int) -> None:
    """The benchmark's cluster into kmock's emulator (kmock stays out of the agent's process)."""
    api.resources.load_bundled()
    for i in range(services):
        api.objects[SERVICES, f"ns-{i % 50}", f"svc-{i}"] = service_body(i)
        api.objects[SLICES, f"ns-{i % 50}", f"svc-{i}-abcde"] = slice_body(i)
    api.objects[NODES, None, "node-a"] = node_body()


async def bench(services: int, events: int, idle: float, watch_timeout: float) -> dict[str, Any]:
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        seed(api, services)
        url = str(server.url)
        with tempfile.TemporaryDirectory() as scratch:
            config = kubeconfig(Path(scratch), url)
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
            spawned = time.monotonic()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.agent_child",
                config,
                str(services),
                str(events),
                str(free_port()),
                str(watch_timeout),
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            assert child.stdout is not None
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            stalls = Stalls()
            reader = asyncio.create_task(_lines(child.stdout, queue, stalls))
            try:
                ready = await asyncio.wait_for(queue.get(), 120)
                result: dict[str, Any] = {
                    "services": services,
                    "slices": services,
                    "endpoints_per_slice": ENDPOINTS,
                    "ready_s": round(ready["ready"] - spawned, 2),
                    "rss_at_ready_mib": ready["rss_mib"],
                    "requests_before_ready": _count_requests(api, "kopf/"),
                    "listing_bytes": {
                        "Service": len(json.dumps([service_body(i) for i in range(services)])),
                        "EndpointSlice": len(json.dumps([slice_body(i) for i in range(services)])),
                    },
                }
                # Let kopf's own initial listing (it lists again for its watches) finish before idling.
                previous = _cpu_seconds(child.pid)
                while True:
                    await asyncio.sleep(2)
                    now = _cpu_seconds(child.pid)
                    if now - previous < 0.1:
                        break
                    previous = now
                start_cpu, start = _cpu_seconds(child.pid), time.monotonic()
                await asyncio.sleep(idle)
                result["idle_cpu_percent"] = round(
                    100 * (_cpu_seconds(child.pid) - start_cpu) / (time.monotonic() - start), 2
                )
                result["idle_window_s"] = idle
                status = Path(f"/proc/{child.pid}/status").read_text()
                result["rss_after_idle_mib"] = round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)
                events_from = time.monotonic()
                child.send_signal(signal.SIGUSR1)  # the loop-lag probe, from now on
                latencies: list[float] = []
                in_agent: list[float] = []  # from kopf handing the event to the agent
                # Events kopf did not hand over as MODIFIED: when its watch reconnects, kmock (unlike an API
                # server) cannot resume from a resourceVersion, so kopf re-lists and the change comes with it.
                missed_events: list[str] = []
                async with aiohttp.ClientSession(
                    headers={"Content-Type": "application/merge-patch+json"}
                ) as s:
                    arrived: dict[str, float] = {}  # deleted real server (or slice event) -> time
                    for i in event_targets(services, events):
                        body = slice_body(i, endpoints=ENDPOINTS - 1, version=1)
                        meta = body["metadata"]
                        target = f"{url.rstrip('/')}/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}"
                        async with s.patch(f"{target}/endpointslices/{meta['name']}", json=body) as response:
                            assert response.status < 300
                            # The emulator has put the watch event on its bus before it answers.
                            emitted = time.monotonic()
                        wanted = f"-> {pod_ip(i, ENDPOINTS - 1)}:8080"
                        deadline = emitted + 90  # past a sweep interval: a missed event is found by a sweep
                        while wanted not in arrived and time.monotonic() < deadline:
                            line = await asyncio.wait_for(queue.get(), deadline - time.monotonic())
                            name = line.get("deleted") or line.get("event")
                            arrived[f"{name}"[name.find("->") :] if "deleted" in line else name] = line["at"]
                        latencies.append(arrived[wanted] - emitted)
                        if meta["name"] in arrived:
                            in_agent.append(arrived[wanted] - arrived[meta["name"]])
                        else:
                            missed_events.append(meta["name"])
                result["events"] = events
                result["slice_events_not_handed_over_as_modified"] = missed_events
                result.update(_percentiles("event_to_delete", latencies))
                result.update(_percentiles("handler_to_delete", in_agent))
                result["stalls_during_events"] = stalls.summary(events_from)
                result["requests_whole_run"] = _count_requests(api, "kopf/")
                status = Path(f"/proc/{child.pid}/status").read_text()
                result["rss_after_events_mib"] = round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)
                return result
            finally:
                child.terminate()
                await child.wait()
                reader.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of steady idle to measure CPU over")
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=300.0,
        help="the agent's --watch-timeout; kmock cannot resume a watch: each reconnect re-lists everything",
    )
    args = parser.parse_args()
    result = asyncio.run(bench(args.services, args.events, args.idle, args.watch_timeout))
    print(json.dumps({"watch_timeout_s": args.watch_timeout, **result}, indent=2))


if __name__ == "__main__":
    main()
