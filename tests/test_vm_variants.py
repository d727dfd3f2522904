"""The kernel variants' plumbing, on the host: the guest refuses a module that is not the one it was
promised, the pre-fix build refuses anything that is not exactly the VM kernel's own version, and each
kernel's package is found where it lives."""

from __future__ import annotations

import dataclasses
import shutil
import stat
from pathlib import Path

import pytest

from tests.vm import machine
from tests.vm.errors import VmError
from tests.vm.image import VmImage
from tests.vm.kernel_packages import Apt, KernelPackage, resolve
from tests.vm.machine import run_in_vm
from tests.vm.prefix_ipvs import (
    _apply_reverts,
    _check_same_kernel,
    build_inputs,
    build_prefix_ip_vs,
    patches,
)
from tests.vm.variant import DEFAULT, Variant, check_loaded_module


@pytest.mark.parametrize(
    ("variant", "taint", "fine"),
    [
        (Variant.DEBIAN_6_1, "", True),
        (Variant.DEBIAN_6_12, "", True),
        (Variant.PREFIX, "OE", True),
        (Variant.PREFIX, "", False),  # Debian's fixed module where the pre-fix one was promised
        (Variant.DEBIAN_6_1, "OE", False),
    ],
)
def test_the_guest_checks_the_loaded_module(tmp_path: Path, variant: Variant, taint: str, fine: bool) -> None:
    taint_file = tmp_path / "taint"
    taint_file.write_text(taint + "\n")
    if fine:
        check_loaded_module(variant, taint_file)
    else:
        with pytest.raises(RuntimeError, match=f"was to run {variant.title}"):
            check_loaded_module(variant, taint_file)
    with pytest.raises(RuntimeError, match="ip_vs is not loaded"):
        check_loaded_module(variant, tmp_path / "absent")


def test_the_three_reverts_are_there_and_say_what_they_restore() -> None:
    found = patches()
    for patch, commit in zip(found, ("c95c07836fa4", "35dfb013149f", "f0a5e4d7a594"), strict=True):
        text = patch.read_text()
        assert commit in patch.name and f"Revert {commit}" in text
        assert "What the revert restores:" in text and "Upstream: mainline" in text
        # The code says it too: every revert leaves a comment in what it changes.
        assert (
            f"+/* ipvs-reaper lab: {commit} reverted." in text
            or f"+\t/* ipvs-reaper lab: {commit} reverted." in text
        )


def makefile(path: Path, version: str) -> None:
    major, minor, sub = version.split(".")
    path.mkdir(parents=True, exist_ok=True)
    (path / "Makefile").write_text(f"VERSION = {major}\nPATCHLEVEL = {minor}\nSUBLEVEL = {sub}\n")


@pytest.mark.parametrize(
    ("source", "common", "release", "says"),
    [
        ("6.1.170", "6.1.192", "6.1.0-57-amd64", "kernel versions do not match"),
        ("6.1.192", "6.1.176", "6.1.0-57-amd64", "kernel versions do not match"),
        ("6.1.192", "6.1.192", "6.1.0-50-amd64", "builds for release 6.1.0-50-amd64, not 6.1.0-57-amd64"),
    ],
)
def test_the_build_refuses_sources_and_headers_of_another_kernel(
    tmp_path: Path, source: str, common: str, release: str, says: str
) -> None:
    inputs = build_inputs("6.1.0-57-amd64", "6.1.192-3")
    makefile(tmp_path / "source", source)
    makefile(tmp_path / "common", common)
    headers = tmp_path / "headers"
    headers.mkdir()
    (headers / ".kernelvariables").write_text(f"override ARCH = x86\noverride KERNELRELEASE = {release}\n")
    with pytest.raises(VmError, match=says):
        _check_same_kernel(inputs, tmp_path / "source", headers, tmp_path / "common")


def test_a_release_not_in_debians_form_is_refused() -> None:
    with pytest.raises(VmError, match="not Debian's"):
        build_inputs("6.12.118+deb12-amd64", "6.12.118-1~deb12u1")
    inputs = build_inputs("6.1.0-57-amd64", "6.1.192-3")
    assert inputs.packages == (
        "linux-source-6.1",
        "linux-headers-6.1.0-57-amd64",
        "linux-headers-6.1.0-57-common",
        "linux-kbuild-6.1",
    )
    assert inputs.upstream == "6.1.192"


def test_a_revert_that_no_longer_applies_stops_the_build(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is missing (tests/vm/host-packages.sh installs it)")
    # A tree whose ip_vs_core.c is not the one the reverts were written against.
    core = tmp_path / "net/netfilter/ipvs/ip_vs_core.c"
    core.parent.mkdir(parents=True)
    core.write_text("/* some other kernel */\n")
    with pytest.raises(VmError, match=r"1-revert-c95c07836fa4\.patch does not apply"):
        _apply_reverts(tmp_path)
    assert core.read_text() == "/* some other kernel */\n"


@dataclasses.dataclass(frozen=True)
class FakeApt(Apt):
    """apt-cache answers from a table; downloads fail the way apt does for a version it does not have."""

    answers: dict[tuple[str, ...], str] = dataclasses.field(default_factory=dict)

    def cache(self, *args: str) -> str:
        return self.answers.get(args, "")

    def download(self, package: str, into: Path) -> Path:
        raise VmError(f"E: Version '{package.split('=')[1]}' for '{package.split('=')[0]}' was not found")


def test_the_build_says_which_version_it_needed_and_which_apt_has(tmp_path: Path) -> None:
    apt = FakeApt(answers={("policy", "linux-source-6.1"): "linux-source-6.1:\n  Candidate: 6.1.170-3\n"})
    kernel = KernelPackage("linux-image-6.1.0-57-amd64", "6.1.192-3", apt)
    with pytest.raises(
        VmError, match=r"needs linux-source-6.1 at the kernel's own version 6.1.192-3"
    ) as raised:
        build_prefix_ip_vs(kernel, "6.1.0-57-amd64", tmp_path / "ip_vs.ko", tmp_path / "out.ko")
    assert "candidate is 6.1.170-3" in str(raised.value)
    assert not (tmp_path / "out.ko").exists()


def test_the_newest_installable_612_package_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    names = [f"linux-image-6.12.{n}+deb12-amd64-unsigned" for n in (99, 118, 107)]
    answers = {
        ("search", "--names-only", r"^linux-image-6\.12\.([0-9]+)\+deb12-amd64-unsigned$"): "\n".join(
            f"{name} - Linux 6.12 for 64-bit PCs" for name in [*names, "linux-image-6.12.118+deb12-amd64-dbg"]
        ),
        # The newest name is listed but has no installable version: the next one is taken.
        ("policy", names[1]): f"{names[1]}:\n  Candidate: (none)\n",
        ("policy", names[2]): f"{names[2]}:\n  Candidate: 6.12.107-1~deb12u1\n",
        ("policy", names[0]): f"{names[0]}:\n  Candidate: 6.12.99-1\n",
    }
    monkeypatch.setattr("tests.vm.kernel_packages.Apt", lambda: FakeApt(answers=answers))
    package = resolve(Variant.DEBIAN_6_12, tmp_path)
    assert (package.name, package.version) == (names[2], "6.12.107-1~deb12u1")


def test_612_runs_on_one_host_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = tmp_path / "args"
    qemu = tmp_path / "qemu"
    qemu.write_text(f'#!/bin/sh\necho "$@" > {seen}\nexit 0\n')
    qemu.chmod(qemu.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(machine, "QEMU", str(qemu))
    image = VmImage(Path("/k"), Path("/i"), "linux-image-x", "1", "6.1.0-x", DEFAULT)
    for variant, accel in ((DEFAULT, "-accel tcg "), (Variant.DEBIAN_6_12, "-accel tcg,thread=single ")):
        with pytest.raises(VmError, match="without running the job"):
            run_in_vm(
                dataclasses.replace(image, variant=variant), ["true"], cwd=tmp_path, results=tmp_path / "r"
            )
        assert accel in seen.read_text()
