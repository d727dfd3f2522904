"""Build (once) and cache the throwaway VM's kernel and initramfs.

The kernel is Debian's `linux-image-amd64`, fetched with `apt-get download` and unpacked with `dpkg -x`, so
the tier runs on exactly the kernel a Debian node runs. The initramfs carries only busybox-static, the
modules the tier needs (with their dependencies, resolved by `modprobe --show-depends` against the full
tree and re-indexed with `depmod -b`), and `init.sh`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.vm.errors import VmError

META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("init.sh")

# What init.sh loads, in this order, with parameters; written into the initramfs as /modules. ip_vs pulls
# nf_conntrack, nf_defrag_* and libcrc32c along, but busybox's modprobe ignores softdeps, and libcrc32c only
# loads once a crc32c implementation is there: hence crc32c_generic first.
MODULES = (
    ("virtio_pci", ""),
    ("9pnet_virtio", ""),
    ("9p", ""),
    ("crc32c_generic", ""),
    ("ip_vs", ""),
    ("ip_vs_rr", ""),
    ("ip_vs_wrr", ""),
    ("ip_vs_sh", ""),
    ("veth", ""),
    # Netfilter for the doctor's tier: portmap-style NAT rules through both iptables backends and nftables.
    ("iptable_nat", ""),
    ("xt_addrtype", ""),
    ("xt_comment", ""),
    ("xt_multiport", ""),
    ("xt_tcpudp", ""),
    ("xt_nat", ""),
    ("xt_mark", ""),
    ("xt_MASQUERADE", ""),
    ("nft_compat", ""),
    ("nft_chain_nat", ""),
    ("nft_nat", ""),
    ("nft_fib_ipv4", ""),
    ("nft_masq", ""),
    ("xt_set", ""),
    ("ip6table_nat", ""),
    ("nft_fib_ipv6", ""),
    ("ip_set_hash_ipport", ""),
    # No stray dummy0: the tests create exactly the dummy devices they want.
    ("dummy", "numdummies=0"),
)

# Bump when the initramfs layout changes in a way the cache key (kernel version, init.sh) would not notice.
LAYOUT_VERSION = "4"


@dataclass(frozen=True)
class VmImage:
    kernel: Path
    initramfs: Path
    package: str
    package_version: str
    release: str


def default_cache_dir() -> Path:
    configured = os.environ.get("IPVS_REAPER_VM_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ipvs-reaper" / "vm"


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise VmError(f"{args[0]} is not installed (.ci/run installs it): {error}") from error
    if done.returncode != 0:
        raise VmError(f"`{' '.join(args)}` failed with exit code {done.returncode}:\n{done.stderr.strip()}")
    return done.stdout


def resolve_kernel_package() -> tuple[str, str]:
    """The concrete image package the meta package points at, and its version."""
    depends = _run(["apt-cache", "depends", META_PACKAGE])
    for line in depends.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            version = _run(["apt-cache", "show", "--no-all-versions", name])
            for field in version.splitlines():
                if field.startswith("Version:"):
                    return name, field.split(":", 1)[1].strip()
    raise VmError(f"cannot find the kernel image package behind {META_PACKAGE} (is `apt-get update` done?)")


def ensure_image(cache_dir: Path | None = None) -> VmImage:
    cache = cache_dir or default_cache_dir()
    package, version = resolve_kernel_package()
    target = cache / f"{package}_{version}_layout{LAYOUT_VERSION}"
    kernel, initramfs, release_file = target / "vmlinuz", target / "initramfs.cpio", target / "release"
    init_changed = (target / "init.sh").exists() and (
        target / "init.sh"
    ).read_bytes() != INIT_SCRIPT.read_bytes()
    if not (kernel.exists() and initramfs.exists() and release_file.exists()) or init_changed:
        _build(target, package)
    return VmImage(kernel, initramfs, package, version, release_file.read_text().strip())


def _build(target: Path, package: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipvs-reaper-vm-") as scratch_name:
        scratch = Path(scratch_name)
        _run(["apt-get", "download", package], cwd=scratch)
        debs = sorted(scratch.glob(f"{package}_*.deb"))
        if not debs:
            raise VmError(f"apt-get download {package} produced no .deb")
        unpacked = scratch / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)])
        releases = sorted(p.name for p in (unpacked / "lib" / "modules").iterdir())
        if len(releases) != 1:
            raise VmError(f"expected one module tree in {package}, found {releases}")
        release = releases[0]
        _run(["depmod", "-b", str(unpacked), release])
        initramfs_root = scratch / "initramfs"
        _copy_modules(unpacked, initramfs_root, release)
        _run(["depmod", "-b", str(initramfs_root), release])
        _add_userland(initramfs_root)
        _write_cpio(initramfs_root, target / "initramfs.cpio")
        shutil.copyfile(unpacked / "boot" / f"vmlinuz-{release}", target / "vmlinuz")
        shutil.copyfile(INIT_SCRIPT, target / "init.sh")
        (target / "release").write_text(release + "\n")


def _copy_modules(unpacked: Path, initramfs_root: Path, release: str) -> None:
    needed: set[Path] = set()
    for module, _ in MODULES:
        shown = _run(["modprobe", "-d", str(unpacked), "-S", release, "--show-depends", module])
        for line in shown.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                needed.add(Path(words[1]))
    for source in needed:
        relative = source.relative_to(unpacked)
        destination = initramfs_root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    for index in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        source = unpacked / "lib" / "modules" / release / index
        if source.exists():
            shutil.copyfile(source, initramfs_root / "lib" / "modules" / release / index)


def _add_userland(initramfs_root: Path) -> None:
    if not BUSYBOX.exists():
        raise VmError(f"{BUSYBOX} is missing: install busybox-static")
    for directory in ("bin", "dev", "proc", "sys", "host", "results"):
        (initramfs_root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, initramfs_root / "bin" / "busybox")
    (initramfs_root / "bin" / "busybox").chmod(0o755)
    (initramfs_root / "bin" / "sh").symlink_to("busybox")
    shutil.copyfile(INIT_SCRIPT, initramfs_root / "init")
    (initramfs_root / "modules").write_text("".join(f"{name} {args}\n" for name, args in MODULES))
    (initramfs_root / "init").chmod(0o755)


def _write_cpio(initramfs_root: Path, output: Path) -> None:
    # busybox's own cpio writes the newc format the kernel unpacks; no extra host package needed.
    names = sorted(str(path.relative_to(initramfs_root)) for path in initramfs_root.rglob("*"))
    with output.open("wb") as sink:
        writer = subprocess.run(
            [str(BUSYBOX), "cpio", "-o", "-H", "newc"],
            cwd=initramfs_root,
            input=("\n".join(names) + "\n").encode(),
            stdout=sink,
            stderr=subprocess.PIPE,
            check=False,
        )
    if writer.returncode != 0:
        raise VmError(f"busybox cpio failed: {writer.stderr.decode(errors='replace').strip()}")
