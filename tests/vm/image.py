"""Build (once) and cache the throwaway VM's kernel and initramfs, per variant.

The kernel is a Debian kernel package (`kernel_packages.py` says which), fetched with `apt-get download` and
unpacked with `dpkg -x`, so the tier runs on exactly the kernel a Debian node runs. The initramfs carries
only busybox-static, the modules the tier needs (with their dependencies, resolved by `modprobe
--show-depends` against the full tree, decompressed where Debian ships them xz-compressed, and re-indexed with
`depmod -b`), and `init.sh`. The pre-fix variant is Debian 6.1's kernel and initramfs with `ip_vs.ko` rebuilt
by `prefix_ipvs.py`, cached apart under a key that includes the reverts."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.kernel_packages import KernelPackage, resolve, run
from tests.vm.prefix_ipvs import PATCHES_DIR, build_prefix_ip_vs
from tests.vm.variant import DEFAULT, Variant

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
    # The doctor's differential test: nft's inet tables and redirect, iptables' REDIRECT (a module the
    # kernel cannot load by itself in the guest: the host's /lib/modules is not this kernel's).
    ("nft_fib_inet", ""),
    ("nft_redir", ""),
    ("xt_REDIRECT", ""),
    # The doctor's construct dumps (tests/netfilter/capture.py): a target it does not model.
    ("xt_NETMAP", ""),
    # Every rule iptables-nft writes has a counter: a module of its own on 5.10, part of nf_tables later.
    ("nft_counter", ""),
    # No stray dummy0: the tests create exactly the dummy devices they want.
    ("dummy", "numdummies=0"),
)

# Modules that later kernels fold into another one (no module of that name to load there).
OPTIONAL_MODULES = frozenset({"nft_counter"})

# Bump when the initramfs layout changes in a way the cache key (kernel version, init.sh) would not notice.
LAYOUT_VERSION = "8"


@dataclass(frozen=True)
class VmImage:
    kernel: Path
    initramfs: Path
    package: str
    package_version: str
    release: str
    variant: Variant

    @property
    def single_threaded_tcg(self) -> bool:
        # 6.12 can oops at boot under multi-threaded TCG (seen once in three boots on qemu 7.2: an int3 that
        # text_poke_bp left in sched_clock_cpu, hit while the other vCPU patched it): one host thread runs
        # both vCPUs for it, slower but not racy.
        return self.variant is Variant.DEBIAN_6_12


def default_cache_dir() -> Path:
    configured = os.environ.get("IPVS_REAPER_VM_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ipvs-reaper" / "vm"


def _variant_key(variant: Variant) -> str:
    if not variant.prefix_ipvs:
        return ""
    # A changed revert or build script must never reuse a module built from the old one.
    digest = hashlib.sha256(Path(__file__).with_name("prefix_ipvs.py").read_bytes())
    for patch in sorted(PATCHES_DIR.glob("*.patch")):
        digest.update(patch.name.encode() + patch.read_bytes())
    return f"_prefix-{digest.hexdigest()[:12]}"


def ensure_image(cache_dir: Path | None = None, variant: Variant = DEFAULT) -> VmImage:
    cache = cache_dir or default_cache_dir()
    package = resolve(variant, cache)
    target = cache / f"{package.name}_{package.version}_layout{LAYOUT_VERSION}{_variant_key(variant)}"
    kernel, initramfs, release_file = target / "vmlinuz", target / "initramfs.cpio", target / "release"
    init_changed = (target / "init.sh").exists() and (
        target / "init.sh"
    ).read_bytes() != INIT_SCRIPT.read_bytes()
    if not (kernel.exists() and initramfs.exists() and release_file.exists()) or init_changed:
        _build(target, package, variant)
    return VmImage(
        kernel, initramfs, package.name, package.version, release_file.read_text().strip(), variant
    )


def _build(target: Path, package: KernelPackage, variant: Variant) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipvs-reaper-vm-") as scratch_name:
        scratch = Path(scratch_name)
        deb = package.apt.download(f"{package.name}={package.version}", scratch)
        unpacked = scratch / "root"
        run(["dpkg", "-x", str(deb), str(unpacked)])
        releases = sorted(p.name for p in (unpacked / "lib" / "modules").iterdir())
        if len(releases) != 1:
            raise VmError(f"expected one module tree in {package.name}, found {releases}")
        release = releases[0]
        run(["depmod", "-b", str(unpacked), release])
        initramfs_root = scratch / "initramfs"
        builtin = _copy_modules(unpacked, initramfs_root, release)
        if variant.prefix_ipvs:
            relative = Path("lib/modules") / release / "kernel/net/netfilter/ipvs/ip_vs.ko"
            if not (unpacked / relative).exists():
                raise VmError(f"{package.name} has no {relative}: nothing to swap the pre-fix module in for")
            build_prefix_ip_vs(package, release, unpacked / relative, initramfs_root / relative)
        run(["depmod", "-b", str(initramfs_root), release])
        _add_userland(initramfs_root, builtin)
        _write_cpio(initramfs_root, target / "initramfs.cpio")
        shutil.copyfile(unpacked / "boot" / f"vmlinuz-{release}", target / "vmlinuz")
        shutil.copyfile(INIT_SCRIPT, target / "init.sh")
        (target / "release").write_text(release + "\n")


def _copy_modules(unpacked: Path, initramfs_root: Path, release: str) -> set[str]:
    """Copies what MODULES need; returns those this kernel has nothing to load for (built in, or an optional
    one folded into another module)."""
    needed: set[Path] = set()
    builtin: set[str] = set()
    for module, _ in MODULES:
        try:
            shown = run(["modprobe", "-d", str(unpacked), "-S", release, "--show-depends", module])
        except VmError:
            if module not in OPTIONAL_MODULES:
                raise
            builtin.add(module)
            continue
        for line in shown.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                needed.add(Path(words[1]))
            elif words[:1] == ["builtin"]:
                builtin.add(module)
    for source in needed:
        relative = source.relative_to(unpacked)
        destination = initramfs_root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".xz":
            # busybox's modprobe loads plain .ko files only (6.12's are shipped as .ko.xz).
            destination.with_suffix("").write_bytes(lzma.decompress(source.read_bytes()))
        else:
            shutil.copyfile(source, destination)
    for index in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        source = unpacked / "lib" / "modules" / release / index
        if source.exists():
            shutil.copyfile(source, initramfs_root / "lib" / "modules" / release / index)
    return builtin


def _add_userland(initramfs_root: Path, builtin: set[str]) -> None:
    if not BUSYBOX.exists():
        raise VmError(f"{BUSYBOX} is missing: install busybox-static")
    for directory in ("bin", "dev", "proc", "sys", "host", "results"):
        (initramfs_root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, initramfs_root / "bin" / "busybox")
    (initramfs_root / "bin" / "busybox").chmod(0o755)
    (initramfs_root / "bin" / "sh").symlink_to("busybox")
    shutil.copyfile(INIT_SCRIPT, initramfs_root / "init")
    loaded = "".join(f"{name} {args}\n" for name, args in MODULES if name not in builtin)
    (initramfs_root / "modules").write_text(loaded)
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
