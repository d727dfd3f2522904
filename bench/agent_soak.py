"""Soak of `ipvs-reaper run` against kmock's emulator: EndpointSlice churn at a steady rate for a long time,
with the agent's RSS, threads, open files and asyncio tasks sampled every 10 s, every reap accounted for,
and every warning or error the agent logs counted.

    .venv/bin/python -m bench.agent_soak [--services 10000] [--rate 50] [--seconds 1800]

Each change is a PATCH of one Service's slice that alternately removes and restores its fifth endpoint; in
the agent's process a stand-in for kube-proxy sets that real server to weight 0 when its endpoint goes and
back to 1 when it returns, so every removal must end in one deletion. Loopback only, bounded, and it stops
by itself. tests/agent/test_soak.py runs a short one in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from bench.agent_cluster import ENDPOINTS, pod_ip, slice_body
from bench.agent_kmock import seed
from tests.agent.harness import free_port, kubeconfig


@dataclass
class Seen:
    stats: list[dict[str, Any]] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)  # "-> address:port" -> deletions
    deleted_at: dict[str, list[float]] = field(default_factory=dict)
    heard_at: dict[str, list[float]] = field(default_factory=dict)  # slice name -> the agent's handler times
    complaints: list[str] = field(default_factory=list)  # warnings, errors, tracebacks the agent logged
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _stdout(stream: asyncio.StreamReader, seen: Seen) -> None:
    while line := await stream.readline():
        if not line.startswith(b"{"):
            continue
        fields = json.loads(line)
        if "ready" in fields:
            seen.ready.set()
        elif "event" in fields:
            seen.heard_at.setdefault(fields["event"], []).append(fields["at"])
        elif "stats" in fields:
            seen.stats.append(fields)
        elif "deleted" in fields:
            name = fields["deleted"]
            key = name[name.find("->") :]
            seen.deleted[key] = seen.deleted.get(key, 0) + 1
            seen.deleted_at.setdefault(key, []).append(fields["at"])


async def _stderr(stream: asyncio.StreamReader, seen: Seen) -> None:
    # logging.basicConfig's format: LEVEL:logger:message. The agent says nothing at INFO here (WARNING up).
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        # Before ready it says it is not ready yet, which is no complaint.
        if seen.ready.is_set() and text.startswith(
            ("WARNING:ipvs_reaper", "ERROR:", "CRITICAL:", "Traceback")
        ):
            seen.complaints.append(text)


async def _subscribed(api: kmock.KubernetesEmulator, plural: str) -> None:
    """Until the emulator has a watch of `plural` subscribed to its changes.

    kmock streams a new watch's whole snapshot first and subscribes the watch to later changes only after it
    (`_serve_watch`): a change made while 10,000 objects are being streamed reaches no watcher. An API server
    resumes a watch from the listed version and loses nothing, so the churn waits for the subscription
    rather than count the emulator's gap as missed reaps."""
    while not any(resource.plural == plural and bus.consumer_count for resource, bus in api._buses.items()):
        await asyncio.sleep(0.05)


def _trend(stats: list[dict[str, Any]], name: str) -> dict[str, float]:
    values = [s[name] for s in stats if name in s]
    if not values:
        return {}
    half = len(values) // 2
    first, second = values[: max(half, 1)], values[half:] or values
    return {
        "first": values[0],
        "last": values[-1],
        "max": max(values),
        # Flat means the second half of the run is not above the first: growth shows as a positive difference.
        "second_half_mean_minus_first": round(sum(second) / len(second) - sum(first) / len(first), 2),
    }


async def soak(
    services: int, rate: float, seconds: float, settle: float = 70.0, watch_timeout: float = 300.0
) -> dict[str, Any]:
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        seed(api, services)
        url = str(server.url).rstrip("/")
        with tempfile.TemporaryDirectory() as scratch:
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), BENCH_SOAK="1")
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.agent_child",
                kubeconfig(Path(scratch), url),
                str(services),
                "0",  # no real server starts at weight 0: the churn makes every one
                str(free_port()),
                str(watch_timeout),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            assert child.stdout is not None and child.stderr is not None
            seen = Seen()
            readers = [
                asyncio.create_task(_stdout(child.stdout, seen)),
                asyncio.create_task(_stderr(child.stderr, seen)),
            ]
            try:
                await asyncio.wait_for(seen.ready.wait(), 300)
                await asyncio.wait_for(_subscribed(api, "endpointslices"), 300)
                removed: dict[str, int] = {}
                slice_of: dict[str, str] = {}
                removed_at: dict[str, list[float]] = {}
                changes = 0
                started = time.monotonic()
                # Each PATCH on its own task: one answer takes tens of milliseconds on loopback (the emulator
                # and TCP's delayed acknowledgement), so waiting for each would set the rate, not --rate.
                in_flight: set[asyncio.Task[None]] = set()

                async def patch(session: aiohttp.ClientSession, target: str, body: dict[str, Any]) -> None:
                    async with session.patch(target, json=body) as response:
                        assert response.status < 300, await response.text()

                async with aiohttp.ClientSession(
                    headers={"Content-Type": "application/merge-patch+json"}
                ) as session:
                    while (now := time.monotonic()) < started + seconds:
                        i = changes % services
                        remove = (changes // services) % 2 == 0
                        body = slice_body(
                            i, endpoints=ENDPOINTS - 1 if remove else ENDPOINTS, version=changes + 1
                        )
                        meta = body["metadata"]
                        path = f"{url}/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices"
                        task = asyncio.create_task(patch(session, f"{path}/{meta['name']}", body))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        if remove:
                            key = f"-> {pod_ip(i, ENDPOINTS - 1)}:8080"
                            slice_of[key] = meta["name"]
                            removed[key] = removed.get(key, 0) + 1
                            removed_at.setdefault(key, []).append(time.monotonic())
                        changes += 1
                        if changes % 100 == 0:
                            # kmock keeps every request and matches each new one against all of them:
                            # its cost per request grows with the run (95 ms per PATCH after 400). The
                            # soak asserts nothing about requests, so the log is emptied as it goes.
                            api._requests.clear()
                        await asyncio.sleep(max(0.0, started + changes / rate - time.monotonic()))
                    elapsed = now - started
                    await asyncio.gather(*in_flight)
                deadline = time.monotonic() + settle
                while time.monotonic() < deadline and any(
                    seen.deleted.get(k, 0) < n for k, n in removed.items()
                ):
                    await asyncio.sleep(0.2)
                missed = {
                    k: n - seen.deleted.get(k, 0) for k, n in removed.items() if seen.deleted.get(k, 0) < n
                }
                # Each removal's wait for its deletion (the n-th deletion of a key answers its n-th removal).
                waits = sorted(
                    done - at
                    for key, times in removed_at.items()
                    for at, done in zip(times, seen.deleted_at.get(key, []), strict=False)
                )
                # The agent's own part: from its handler taking the slice event to the deletion (the last
                # event of that slice before it), without the emulator's queue.
                in_agent = sorted(
                    done - max(heard)
                    for key, times in seen.deleted_at.items()
                    for done in times
                    if (heard := [at for at in seen.heard_at.get(slice_of.get(key, ""), []) if at <= done])
                )
                return {
                    "services": services,
                    "rate_per_s": round(changes / elapsed, 1),
                    "seconds": round(elapsed, 1),
                    "changes": changes,
                    "removals": sum(removed.values()),
                    "deletions": sum(seen.deleted.values()),
                    "missed_reaps": sum(missed.values()),
                    "missed_examples": [
                        (key, [round(at - started, 1) for at in removed_at[key]]) for key in list(missed)[:10]
                    ],
                    "removal_to_deletion_p50_p99_max_ms": [
                        round(1000 * waits[int(q * (len(waits) - 1))], 1) for q in (0.5, 0.99, 1.0)
                    ]
                    if waits
                    else [],
                    "handler_to_deletion_p50_p99_max_ms": [
                        round(1000 * in_agent[int(q * (len(in_agent) - 1))], 1) for q in (0.5, 0.99, 1.0)
                    ]
                    if in_agent
                    else [],
                    "complaints": seen.complaints[:20],
                    "rss_mib": _trend(seen.stats, "rss_mib"),
                    "threads": _trend(seen.stats, "threads"),
                    "open_files": _trend(seen.stats, "fds"),
                    "tasks": _trend(seen.stats, "tasks"),
                    "samples": len(seen.stats),
                    # (seconds since ready, MiB) once a minute: the shape, not only the ends.
                    "rss_series": [
                        (round(s["stats"] - seen.stats[0]["stats"]), s["rss_mib"]) for s in seen.stats[::6]
                    ],
                    # Beside RSS: Python's allocated blocks, glibc's bytes in use and kept free. RSS growing
                    # while these do not is the allocators' fragmentation, not a leak.
                    "python_blocks": _trend(seen.stats, "python_blocks"),
                    "malloc_in_use_mib": _trend(seen.stats, "malloc_in_use_mib"),
                    "heap_series": [
                        (
                            round(s["stats"] - seen.stats[0]["stats"]),
                            s["python_blocks"],
                            s.get("malloc_in_use_mib"),
                            s.get("malloc_free_mib"),
                        )
                        for s in seen.stats[::6]
                    ],
                }
            finally:
                child.terminate()
                await child.wait()
                for reader in readers:
                    reader.cancel()


def main() -> None:
    class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--services", type=int, default=10_000, help="Services, one slice each")
    parser.add_argument("--rate", type=float, default=50.0, help="slice changes per second")
    parser.add_argument("--seconds", type=float, default=1800.0, help="how long the churn runs")
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=300.0,
        help="the agent's; kmock cannot resume a watch and re-sends every object at each reconnect",
    )
    args = parser.parse_args()
    result = soak(args.services, args.rate, args.seconds, watch_timeout=args.watch_timeout)
    print(json.dumps(asyncio.run(result), indent=2))


if __name__ == "__main__":
    main()
