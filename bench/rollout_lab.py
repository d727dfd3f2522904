"""The rollout lab: failed requests through rolling updates under load, kube-proxy alone and with the reaper,
on Debian's kernels in the throwaway VM (docs/rollout.md says what it builds and what it found).

    .venv/bin/python -m bench.rollout_lab run [--kernels pre-fix 6.1 5.10 6.12] [--repeats 2] [--results DIR]
    .venv/bin/python -m bench.rollout_lab report DIR... [--write-docs]

`run` boots one VM per kernel and runs, for each repeat and each sysctl setting, the five arms side by side
(each in a node namespace of its own: its own IPVS table and sysctls); raw results land in
DIR/<kernel>/out/*.json as each arm ends, and `report` runs at the end. `report` prints the table, and with
--write-docs replaces the generated part of docs/rollout.md and draws docs/rollout.png."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench.rollout.arm import ARMS, ArmSpec, Timing
from bench.rollout.report import write_report
from tests.kernel.lab import kube_proxy_sysctls
from tests.vm.errors import VmError
from tests.vm.image import ensure_image
from tests.vm.machine import run_in_vm
from tests.vm.variant import ENVIRONMENT, Variant

ROOT = Path(__file__).resolve().parents[1]
NGINX_CACHE = Path.home() / ".cache" / "ipvs-reaper" / "nginx"
SETTINGS = ("kube-proxy", "0,0", "0,1", "1,0", "1,1")
KERNELS = (Variant.PREFIX, Variant.DEBIAN_6_1, Variant.DEBIAN_5_10, Variant.DEBIAN_6_12)


def fetch_nginx(cache: Path = NGINX_CACHE) -> Path:
    """Debian's nginx binary, unpacked (never installed: no service starts on the host); the guest runs it
    from the host's root, which it mounts."""
    found = sorted(cache.glob("*/usr/sbin/nginx"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(["apt-get", "download", "nginx"], cwd=download, check=True, capture_output=True)
        package = next(Path(download).glob("nginx_*.deb"))
        target = cache / package.stem
        target.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(package), str(target)], check=True)
    return target / "usr" / "sbin" / "nginx"


def sysctls_for(setting: str, variant: Variant) -> dict[str, int]:
    if setting == "kube-proxy":
        # kube-proxy decides conn_reuse_mode by version: the pre-fix IPVS stands for a kernel before 5.9.
        return kube_proxy_sysctls(kernel_before_5_9=variant is Variant.PREFIX)
    reuse, expire = setting.split(",")
    return {"conn_reuse_mode": int(reuse), "expire_nodest_conn": int(expire)}


def plan(
    variant: Variant,
    settings: list[str],
    arms: list[str],
    repeats: int,
    timing: Timing,
    nginx: Path,
    together: int = 1,
) -> list[list[dict[str, object]]]:
    """Batches of arms that run side by side: every arm of `together` settings at a time."""
    batches: list[list[dict[str, object]]] = []
    for repeat in range(1, repeats + 1):
        for first in range(0, len(settings), together):
            batch: list[dict[str, object]] = []
            for setting in settings[first : first + together]:
                for arm in arms:
                    spec = ArmSpec(arm, setting, sysctls_for(setting, variant), timing, str(nginx))
                    name = f"{setting.replace(',', '')}-{arm}-r{repeat}"
                    batch.append({"name": name, "spec": asdict(spec)})
            batches.append(batch)
    return batches


def run(options: argparse.Namespace) -> int:
    nginx = fetch_nginx()
    timing = replace(Timing(), warmup=options.warmup, window=options.window)
    failed = False
    for variant in options.kernels:
        results = options.results / variant.value
        results.mkdir(parents=True, exist_ok=True)
        (results / "plan.json").write_text(
            json.dumps(
                plan(
                    variant, options.settings, options.arms, options.repeats, timing, nginx, options.together
                )
            )
        )
        started = time.monotonic()
        try:
            vm = run_in_vm(
                ensure_image(variant=variant),
                [sys.executable, "-m", "bench.rollout.guest", "/run/ipvs-vm/plan.json", "/run/ipvs-vm/out"],
                cwd=ROOT,
                results=results,
                env={ENVIRONMENT: variant.value},
                timeout_seconds=options.vm_timeout,
                memory_mib=6144,
            )
        except VmError as error:
            print(f"{variant.title}: {error}", file=sys.stderr)
            failed = True
            continue
        print(f"{variant.title}: exit {vm.exit_code} in {time.monotonic() - started:.0f} s; {results}")
        failed = failed or vm.exit_code != 0
    write_report([options.results], write_docs=options.write_docs)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout_lab")
    commands = parser.add_subparsers(dest="command", required=True)
    running = commands.add_parser("run", help="run the lab in the VM, then report")
    running.add_argument("--kernels", nargs="+", type=Variant, default=list(KERNELS),
                         help="(default: %(default)s)")  # fmt: skip
    running.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                         help="conn_reuse_mode,expire_nodest_conn or kube-proxy (default: all)")  # fmt: skip
    running.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="(default: all)")
    running.add_argument("--repeats", type=int, default=2, help="(default: %(default)s)")
    running.add_argument("--together", type=int, default=1,
                         help="settings run side by side in one batch (default: %(default)s)")  # fmt: skip
    running.add_argument("--warmup", type=float, default=15.0, help="seconds (default: %(default)s)")
    running.add_argument("--window", type=float, default=130.0,
                         help="seconds of load after the rollout (default: %(default)s)")  # fmt: skip
    running.add_argument("--vm-timeout", type=float, default=3 * 3600, help="seconds (default: %(default)s)")
    running.add_argument("--results", type=Path, default=Path("rollout-results"),
                         help="(default: %(default)s)")  # fmt: skip
    running.add_argument("--write-docs", action="store_true", help="update docs/rollout.md and its picture")
    reporting = commands.add_parser("report", help="the table from results already there")
    reporting.add_argument("results", nargs="+", type=Path)
    reporting.add_argument("--write-docs", action="store_true", help="update docs/rollout.md and its picture")
    options = parser.parse_args(argv)
    if options.command == "run":
        return run(options)
    write_report(options.results, write_docs=options.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
