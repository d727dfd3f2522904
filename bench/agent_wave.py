"""Benchmark of the agent's rechecks during a rollout wave: `ipvs-reaper run` (a child process, as in
bench/agent_kmock.py) against kmock's emulator with N Services, and a wave of W Services whose old pod is
terminating (no longer serving) while it still has live connections (ActiveConn 3), so each waits for idle
under the default policy.

    .venv/bin/python -m bench.agent_wave [--services 10000] [--wave 1000] [--wait 40] [--recheck-rate 50]

Measured: reads of one virtual service per second (a netlink request each on a node) and whole-table reads,
at idle and while the wave waits; the agent's CPU over each window; then every connection ends at once and
each delete's delay after that (the recheck cadence is what bounds it).
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
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from bench.agent_cluster import ENDPOINTS, event_targets, pod_ip, slice_body
from bench.agent_kmock import Stalls, _cpu_seconds, _lines, _percentiles, seed
from tests.agent.harness import free_port, kubeconfig


async def _window(queue: asyncio.Queue[dict[str, Any]], pid: int, seconds: float) -> dict[str, Any]:
    """Reads per second (the child prints a count each second) and CPU over `seconds`."""
    cpu, start = _cpu_seconds(pid), time.monotonic()
    per_second: list[int] = []
    tables = 0
    while (left := start + seconds - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            break
        if "reads" in line:
            per_second.append(line["reads"])
            tables += line["table_reads"]
    took = time.monotonic() - start
    return {
        "seconds": round(took, 1),
        "service_reads_per_s_mean": round(sum(per_second) / max(len(per_second), 1), 1),
        "service_reads_per_s_max": max(per_second, default=0),
        "table_reads": tables,
        "cpu_percent": round(100 * (_cpu_seconds(pid) - cpu) / took, 1),
    }


async def bench(services: int, wave: int, wait: float, interval: float, rate: float) -> dict[str, Any]:
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        seed(api, services)
        url = str(server.url)
        with tempfile.TemporaryDirectory() as scratch:
            env = dict(
                os.environ,
                PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                BENCH_WAVE="1",
                BENCH_RECHECK_INTERVAL=str(interval),
                BENCH_RECHECK_RATE=str(rate),
                BENCH_DOCTOR_INTERVAL="0",
            )
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.agent_child", kubeconfig(Path(scratch), url), str(services),
                str(wave), str(free_port()), "3600", stdout=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert child.stdout is not None
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            reader = asyncio.create_task(_lines(child.stdout, queue, Stalls()))
            try:
                while "ready" not in await asyncio.wait_for(queue.get(), 120):
                    pass
                await asyncio.sleep(5)  # the start's sweeps
                result: dict[str, Any] = {"services": services, "wave": wave, "recheck_interval_s": interval}
                result["recheck_rate"] = rate
                result["idle"] = await _window(queue, child.pid, 10)
                started = time.monotonic()
                async with aiohttp.ClientSession(
                    headers={"Content-Type": "application/merge-patch+json"}
                ) as session:
                    for i in event_targets(services, wave):
                        body = slice_body(i, version=1)
                        # Terminating, not serving: the default waits for idle there (gone goes at once).
                        body["endpoints"][-1]["conditions"] = {
                            "ready": False,
                            "serving": False,
                            "terminating": True,
                        }
                        meta = body["metadata"]
                        path = f"apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices"
                        async with session.patch(f"{url.rstrip('/')}/{path}/{meta['name']}", json=body) as r:
                            assert r.status < 300
                result["wave_sent_s"] = round(time.monotonic() - started, 1)
                result["waiting"] = await _window(queue, child.pid, wait)
                child.send_signal(signal.SIGUSR2)
                wanted = {f"-> {pod_ip(i, ENDPOINTS - 1)}:8080" for i in event_targets(services, wave)}
                idle_at: float | None = None
                delays: list[float] = []
                deadline = time.monotonic() + 120
                while wanted and time.monotonic() < deadline:
                    line = await asyncio.wait_for(queue.get(), deadline - time.monotonic())
                    if "idle" in line:
                        idle_at = line["idle"]
                    elif "deleted" in line and idle_at is not None:
                        name = line["deleted"]
                        wanted.discard(name[name.find("->") :])
                        delays.append(line["at"] - idle_at)
                result["deleted_after_idle"] = len(delays)
                result["not_deleted"] = len(wanted)
                result.update({k.replace("_ms", "_s"): round(v / 1000, 2) for k, v in
                               _percentiles("idle_to_delete", delays).items()})  # fmt: skip
                result["idle_to_delete_mean_s"] = round(statistics.mean(delays), 2) if delays else None
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
    parser.add_argument("--wave", type=int, default=1000, help="Services whose old pod goes, at once")
    parser.add_argument("--wait", type=float, default=40.0, help="seconds the wave waits for idle")
    parser.add_argument("--recheck-interval", type=float, default=2.0)
    parser.add_argument("--recheck-rate", type=float, default=50.0)
    args = parser.parse_args()
    result = asyncio.run(bench(args.services, args.wave, args.wait, args.recheck_interval, args.recheck_rate))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
