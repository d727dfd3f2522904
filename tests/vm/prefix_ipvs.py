"""A pre-fix IPVS for the VM: the VM kernel's own `ip_vs.ko`, rebuilt from the same Debian version's
`linux-source-<series>` with the three fixes of `kernel-ipvs-facts.md` reverted (`prefix_ipvs/*.patch`, each
saying which behaviour it restores and which stable releases first carried the fix).

Everything comes from Debian's packages at exactly the version of the VM's kernel package: the source, the
headers of the kernel's ABI (`linux-headers-<release>`, its `-common` part and `linux-kbuild-<series>`).
Any mismatch (a source of another version, headers of another release, a module whose vermagic is not
the kernel's, a revert that no longer applies) is an error: there is no fallback to the fixed module.

Only `ip_vs.ko` is swapped. The reverts change no structure or exported symbol, so Debian's own schedulers
(`ip_vs_rr`...) load against it: modprobe would refuse them if a symbol's CRC differed."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.kernel_packages import KernelPackage, run

PATCHES_DIR = Path(__file__).with_name("prefix_ipvs")
IPVS_DIR = "net/netfilter/ipvs"
_RELEASE = re.compile(r"^(?P<series>\d+\.\d+)\.\d+-\d+-(?P<flavour>[a-z0-9]+)$")
_UPSTREAM = re.compile(r"^(\d+\.\d+\.\d+)")
_MAKE_VERSION = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class KernelBuildInputs:
    """The Debian packages one module build needs, all at the kernel package's version."""

    release: str  # `uname -r` of the VM kernel: "6.1.0-50-amd64"
    version: str  # the kernel package's Debian version: "6.1.176-1"
    series: str  # "6.1"

    @property
    def upstream(self) -> str:
        match = _UPSTREAM.match(self.version)
        if match is None:
            raise VmError(f"cannot read the upstream version out of kernel package version {self.version!r}")
        return match.group(1)

    @property
    def packages(self) -> tuple[str, ...]:
        abi = self.release.rsplit("-", 1)[0]
        return (
            f"linux-source-{self.series}",
            f"linux-headers-{self.release}",
            f"linux-headers-{abi}-common",
            f"linux-kbuild-{self.series}",
        )


def patches() -> list[Path]:
    found = sorted(PATCHES_DIR.glob("*.patch"))
    if len(found) != 3:
        raise VmError(f"expected the three reverts in {PATCHES_DIR}, found {[p.name for p in found]}")
    return found


def build_inputs(release: str, version: str) -> KernelBuildInputs:
    match = _RELEASE.match(release)
    if match is None:
        raise VmError(f"kernel release {release!r} is not Debian's '<series>.0-<abi>-<flavour>' form")
    return KernelBuildInputs(release, version, match.group("series"))


def _download(kernel: KernelPackage, inputs: KernelBuildInputs, into: Path) -> dict[str, Path]:
    debs: dict[str, Path] = {}
    for package in inputs.packages:
        try:
            debs[package] = kernel.apt.download(f"{package}={inputs.version}", into)
        except VmError as error:
            raise VmError(
                f"the pre-fix IPVS needs {package} at the kernel's own version {inputs.version}, and apt "
                f"cannot get it (a module from another version would not be this kernel's IPVS; apt's "
                f"candidate is {kernel.apt.candidate(package)}):\n{error}"
            ) from error
    return debs


def _make_version(makefile: Path) -> str:
    fields = dict(_MAKE_VERSION.findall(makefile.read_text()))
    try:
        return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"
    except KeyError as error:
        raise VmError(f"{makefile} does not say the kernel version ({error} missing)") from error


def _check_same_kernel(inputs: KernelBuildInputs, source: Path, headers: Path, common: Path) -> None:
    """The source, the headers and the kernel package must all be one kernel."""
    versions = {
        f"linux-source-{inputs.series}": _make_version(source / "Makefile"),
        common.name: _make_version(common / "Makefile"),
        "the kernel package": inputs.upstream,
    }
    if len(set(versions.values())) != 1:
        raise VmError(f"kernel versions do not match, refusing to build: {versions}")
    variables = (headers / ".kernelvariables").read_text()
    release = re.search(r"^override KERNELRELEASE = (\S+)$", variables, re.MULTILINE)
    if release is None or release.group(1) != inputs.release:
        raise VmError(
            f"{headers.name} builds for release {release.group(1) if release else '?'}, not {inputs.release}"
        )


def _apply_reverts(source: Path) -> None:
    for patch in patches():
        try:
            # git apply: all or nothing and no fuzz, unlike patch(1): a revert whose context moved fails here.
            run(["git", "apply", "--check", "-p1", str(patch)], cwd=source)
            run(["git", "apply", "-p1", str(patch)], cwd=source)
        except VmError as error:
            raise VmError(
                f"{patch.name} does not apply to this linux-source: read the new "
                f"{IPVS_DIR} and redo the revert ({error})"
            ) from error


def vermagic(module: Path) -> str:
    return run(["modinfo", "-F", "vermagic", str(module)]).strip()


def build_prefix_ip_vs(kernel: KernelPackage, release: str, debian_module: Path, output: Path) -> None:
    """Build the pre-fix `ip_vs.ko` for `kernel` (whose `uname -r` is `release`) into `output`.

    `debian_module` is Debian's own ip_vs.ko of that kernel: the new module must carry its vermagic."""
    inputs = build_inputs(release, kernel.version)
    with tempfile.TemporaryDirectory(prefix="ipvs-reaper-prefix-") as scratch_name:
        scratch = Path(scratch_name)
        debs = _download(kernel, inputs, scratch)
        root = scratch / "root"
        for deb in debs.values():
            run(["dpkg", "-x", str(deb), str(root)])
        tarballs = sorted((root / "usr" / "src").glob(f"linux-source-{inputs.series}.tar.*"))
        if len(tarballs) != 1:
            raise VmError(f"linux-source-{inputs.series} holds {tarballs}, expected one tarball")
        top = f"linux-source-{inputs.series}"
        run(["tar", "-xf", str(tarballs[0]), "-C", str(scratch), f"{top}/Makefile", f"{top}/{IPVS_DIR}"])
        source = scratch / top
        headers = root / "usr" / "src" / f"linux-headers-{inputs.release}"
        common = root / "usr" / "src" / inputs.packages[2]
        _check_same_kernel(inputs, source, headers, common)
        _apply_reverts(source)
        # The flavour's Makefile includes the common one by its installed path; these packages are unpacked,
        # not installed (nothing on the host changes), so point it at the unpacked copy.
        (headers / "Makefile").write_text(f"include {common}/Makefile\n")
        build = source / IPVS_DIR
        jobs = str(os.cpu_count() or 1)
        run(["make", "-C", str(headers), f"M={build}", f"-j{jobs}", "ip_vs.ko"])
        built = build / "ip_vs.ko"
        if not built.exists():
            raise VmError(f"the build did not produce {built}")
        run(["strip", "--strip-debug", str(built)])
        theirs, ours = vermagic(debian_module), vermagic(built)
        if theirs != ours:
            raise VmError(f"the pre-fix ip_vs.ko has vermagic {ours!r}, the kernel's own {theirs!r}")
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, output)
