"""Real-kernel benchmark: a table of N virtual services x M real servers, timed in one VM run.

Run from the repository root, after the Quick start's setup (boots the throwaway VM, about 20x slower than
the host):

    .venv/bin/python -m tests.vm -- .venv/bin/python bench/vm_sweep.py --services 10000 --reals 5

Inside the guest it builds the table with `ipvsadm -R` and a matching cluster state (one weight-0 real
server of a gone endpoint in every 100th service), then times, best of --repeat:
  1. `ipvsadm -Ln` (output read through a pipe);
  2. our whole-table read (`KernelIpvs.read_table`);
  3. the whole `ipvs-reaper reap --once --dry-run --cluster-state FILE` command, interpreter start included,
     and the same sweep in-process, phase by phase (load the cluster state, read the table, plan, re-read
     each reapable service over netlink).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ipvs_reaper.actor import apply_plan
from ipvs_reaper.cluster.sources import load_cluster_file
from ipvs_reaper.config import Config
from ipvs_reaper.ipvs.kernel import KernelIpvs
from ipvs_reaper.kernel.facts import read_live_facts
from ipvs_reaper.kernel.sysctl import ProcSysctls
from ipvs_reaper.planner import PolicyChoice, SweepInputs, plan_sweep

VIP_BASE = int(ipaddress.IPv4Address("10.96.0.0"))
POD_BASE = int(ipaddress.IPv4Address("10.128.0.0"))
NODE = "node-a"


def build(services: int, reals: int, cluster_file: Path) -> int:
    rules, items = (
        [],
        [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": NODE},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]},
            }
        ],
    )
    reapable = 0
    for i in range(services):
        vip = str(ipaddress.IPv4Address(VIP_BASE + i + 1))
        rules.append(f"-A -t {vip}:80 -s rr")
        endpoints = []
        for j in range(reals):
            pod = str(ipaddress.IPv4Address(POD_BASE + i * reals + j + 1))
            gone = i % 100 == 0 and j == reals - 1
            rules.append(f"-a -t {vip}:80 -r {pod}:8080 -m -w {0 if gone else 1}")
            if gone:
                reapable += 1
            else:
                endpoints.append({"addresses": [pod], "conditions": {"ready": True, "serving": True}})
        name = f"svc-{i}"
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ports": [{"port": 80}]},
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "addressType": "IPv4",
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }
        )
    subprocess.run(["ipvsadm", "-C"], check=True)
    subprocess.run(["ipvsadm", "-R"], input="\n".join(rules) + "\n", text=True, check=True)
    cluster_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return reapable


def best_of(repeat: int, action: Callable[[], Any]) -> tuple[float, Any]:
    timings, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def ipvsadm_list() -> int:
    return len(subprocess.run(["ipvsadm", "-Ln"], capture_output=True, check=True).stdout)


def our_read() -> int:
    kernel = KernelIpvs()
    try:
        return len(kernel.read_table().real_servers)
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--reals", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cluster_file = Path(tempfile.mkdtemp()) / "cluster.json"
    started = time.perf_counter()
    reapable = build(args.services, args.reals, cluster_file)
    build_seconds = time.perf_counter() - started

    sweep_args = ["reap", "--once", "--dry-run", "-o", "json", "--cluster-state", str(cluster_file)]
    sweep_args += ["--node-name", NODE]
    reaper = Path(sys.executable).with_name("ipvs-reaper")

    def command_sweep() -> dict[str, Any]:
        done = subprocess.run([str(reaper), *sweep_args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the sweep failed ({done.returncode}): {done.stderr[-2000:]}")
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def in_process_sweep() -> dict[str, float]:
        """The command's work without the interpreter start, phase by phase."""
        phases: dict[str, float] = {}

        def timed(name: str, action: Callable[[], Any]) -> Any:
            started = time.perf_counter()
            result = action()
            phases[name] = round(time.perf_counter() - started, 3)
            return result

        kernel = KernelIpvs()
        try:
            cluster = timed("loadClusterState", lambda: load_cluster_file(str(cluster_file)))
            table = timed("readTable", kernel.read_table)
            plan = timed(
                "plan",
                lambda: plan_sweep(
                    SweepInputs(
                        table=table,
                        cluster=cluster,
                        node_name=NODE,
                        config=Config(),
                        expire_nodest_conn=read_live_facts(ProcSysctls()).expire_nodest_conn,
                        now=datetime.now(UTC),
                        first_seen={},
                        policy=PolicyChoice.DEFAULT,
                        describe_weighted=False,  # as `reap` without --all
                    )
                ),
            )
            timed(
                "applyDryRun",
                lambda: apply_plan(
                    plan,
                    kernel,
                    ProcSysctls(),
                    dry_run=True,
                    clock=lambda: datetime.now(UTC),
                    recorder=lambda _: None,
                ),
            )
        finally:
            kernel.close()
        phases["total"] = round(sum(phases.values()), 3)
        return phases

    ipvsadm_seconds, listed_bytes = best_of(args.repeat, ipvsadm_list)
    read_seconds, real_servers = best_of(args.repeat, our_read)
    command_seconds, document = best_of(args.repeat, command_sweep)
    in_process_seconds, phases = best_of(args.repeat, in_process_sweep)
    would = [r for r in document["results"] if r["outcome"] == "would-delete"]
    assert real_servers == args.services * args.reals, real_servers
    assert len(would) == min(reapable, 200), (len(would), reapable)

    result = {
        "kernel": platform.release(),
        "services": args.services,
        "realServers": real_servers,
        "reapable": reapable,
        "wouldDelete": len(would),
        "buildSeconds": round(build_seconds, 2),
        "ipvsadmListSeconds": round(ipvsadm_seconds, 3),
        "ipvsadmListBytes": listed_bytes,
        "ourReadSeconds": round(read_seconds, 3),
        "dryRunCommandSeconds": round(command_seconds, 3),
        "dryRunInProcessSeconds": round(in_process_seconds, 3),
        "readRatio": round(read_seconds / ipvsadm_seconds, 2),
        "commandRatio": round(command_seconds / ipvsadm_seconds, 2),
        "inProcessRatio": round(in_process_seconds / ipvsadm_seconds, 2),
        "inProcessPhases": phases,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
