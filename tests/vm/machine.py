"""Boot the throwaway VM once and run one job in it.

qemu runs in TCG mode: `/dev/kvm` exists on these machines but a KVM guest hangs at boot. The host's `/` is
the guest's root (read-only, over virtio-9p), so the guest runs the project's own virtualenv and source
tree at the same paths; a second, writable 9p share carries the job script in and the logs and results out."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.image import VmImage

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class VmRun:
    exit_code: int
    seconds: float
    console: str
    job_log: str
    results: Path


def _job_script(command: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    return (
        "set -e\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        # /tmp is the host's, read-only (a checkout may live there): scratch space is on /run's tmpfs.
        "mkdir -p /run/scratch && export TMPDIR=/run/scratch HOME=/run/scratch\n"
        # The root is read-only: nothing may try to write bytecode or caches beside the sources.
        "export PYTHONDONTWRITEBYTECODE=1 IPVS_REAPER_GUEST=1\n"
        f"{exports}"
        "ip link set lo up\n"
        "uname -r >/run/ipvs-vm/uname-r\n"
        "uname -v >/run/ipvs-vm/uname-v\n"
        f"cd {shlex.quote(str(cwd))}\n"
        f"exec {shlex.join(command)}\n"
    )


def run_in_vm(
    image: VmImage,
    command: Sequence[str],
    *,
    cwd: Path,
    results: Path,
    env: Mapping[str, str] | None = None,
    timeout_seconds: float = 1800,
    memory_mib: int = 2048,
) -> VmRun:
    """Boot, run `command` in `cwd` inside the guest, power off. `results` is the writable share."""
    accel = "tcg,thread=single" if image.single_threaded_tcg else "tcg"
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("exit-code", "job.log", "console.log"):
        (results / stale).unlink(missing_ok=True)
    (results / "job.sh").write_text(_job_script(command, cwd, env or {}))
    console = results / "console.log"
    args = [
        QEMU,
        "-accel", accel,
        "-cpu", "max",
        "-smp", "2",
        "-m", str(memory_mib),
        "-nodefaults",
        "-no-reboot",
        "-display", "none",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        # panic=-1 turns a dying init into a reboot, which -no-reboot turns into qemu exiting.
        "-append", "console=ttyS0 panic=-1 quiet loglevel=4",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none,multidevs=remap",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        qemu = subprocess.run(args, capture_output=True, text=True, timeout=timeout_seconds, check=False)
    except FileNotFoundError as error:
        raise VmError(f"{QEMU} is not installed (.ci/run installs qemu-system-x86): {error}") from error
    except subprocess.TimeoutExpired as error:
        raise VmError(
            f"the VM did not power off within {timeout_seconds:.0f} s; console tail:\n{_tail(console)}"
        ) from error
    seconds = time.monotonic() - started
    exit_file = results / "exit-code"
    if qemu.returncode != 0 or not exit_file.exists():
        raise VmError(
            f"the VM ended without running the job (qemu exit {qemu.returncode}: {qemu.stderr.strip()});"
            f" console tail:\n{_tail(console)}"
        )
    return VmRun(
        exit_code=int(exit_file.read_text().strip()),
        seconds=seconds,
        console=_read(console),
        job_log=_read(results / "job.log"),
        results=results,
    )


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(_read(path).splitlines()[-lines:]) or "(no console output)"
