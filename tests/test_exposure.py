from __future__ import annotations

from pathlib import Path

import pytest

from ipvs_reaper.errors import InputError
from ipvs_reaper.kernel.exposure import Exposure, exposure_verdict, weight0_fix_status
from ipvs_reaper.kernel.facts import KernelFacts, facts_from_input, parse_sysctl_text, read_live_facts
from ipvs_reaper.kernel.sysctl import ProcSysctls

DEBIAN_61 = ("6.1.0-18-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)")


def facts(
    reuse: int | None, nodest: int | None, release: str | None, version: str | None = None
) -> KernelFacts:
    return KernelFacts(release, version, reuse, nodest, 1, source="input")


@pytest.mark.parametrize(
    ("reuse", "nodest", "expected"),
    [
        # Observed on Debian 6.1: only (0, 0) reaches the dead pod.
        (0, 0, Exposure.EXPOSED),
        (0, 1, Exposure.NOT_EXPOSED),
        (1, 0, Exposure.NOT_EXPOSED),
        (1, 1, Exposure.NOT_EXPOSED),
    ],
)
def test_debian_61_matrix(reuse: int, nodest: int, expected: Exposure) -> None:
    assert exposure_verdict(facts(reuse, nodest, *DEBIAN_61)).exposure is expected


@pytest.mark.parametrize(
    ("release", "version", "present"),
    [
        ("6.1.0-18-amd64", DEBIAN_61[1], True),
        ("5.16.0", None, True),
        ("5.10.83", None, True),
        ("5.10.82", None, False),
        ("5.15.6", None, True),
        ("5.15.5", None, False),
        ("5.4.163", None, True),
        ("4.19.219", None, True),
        ("4.19.218", None, False),
        ("4.14.257", None, True),
        ("4.9.337", None, False),
        ("5.13.19", None, False),
        ("5.10.0-28-amd64", "#1 SMP Debian 5.10.209-2 (2024-01-31)", True),
        ("4.19.0-21-amd64", "#1 SMP Debian 4.19.249-2 (2022-06-30)", True),
        ("4.19.0-6-amd64", "#1 SMP Debian 4.19.67-2+deb10u2 (2019-11-11)", False),
        # Vendor numbering hides backports: unknown.
        ("3.10.0-1160.el7.x86_64", None, None),
        ("4.18.0-513.el8.x86_64", None, None),
        ("5.4.0-150-generic", "#167-Ubuntu SMP", None),
        ("4.12.14-197.37-default", None, None),
        ("5.10.0-28-amd64", None, None),
        ("4.14.320-242.534.amzn2.x86_64", None, None),
        ("5.14.0-362.8.1.el9_3.x86_64", None, None),
        (None, None, None),
        ("garbage", None, None),
    ],
)
def test_weight0_fix_from_versions(release: str | None, version: str | None, present: bool | None) -> None:
    assert weight0_fix_status(release, version).present is present


def test_vendor_kernels_below_516_with_nodest_1_are_unknown() -> None:
    verdict = exposure_verdict(facts(0, 1, "4.18.0-513.el8.x86_64"))
    assert verdict.exposure is Exposure.UNKNOWN
    assert "vendor kernel" in verdict.reason


def test_old_kernel_without_the_fix_is_exposed_even_with_nodest_1() -> None:
    verdict = exposure_verdict(facts(0, 1, "5.4.100"))
    assert verdict.exposure is Exposure.EXPOSED
    assert "predates c95c07836fa4" in verdict.reason


def test_unknown_sysctls_are_unknown() -> None:
    assert exposure_verdict(facts(None, None, *DEBIAN_61)).exposure is Exposure.UNKNOWN


def test_sysctl_text() -> None:
    text = (
        "net.ipv4.vs.conn_reuse_mode = 0\nnet.ipv4.vs.expire_nodest_conn=1\n"
        "net.ipv4.vs.conntrack = 1\nkernel.x = 3\n"
    )
    assert parse_sysctl_text(text, "s.txt") == {"conn_reuse_mode": 0, "expire_nodest_conn": 1}
    with pytest.raises(InputError, match=r"s.txt: line 1"):
        parse_sysctl_text("net.ipv4.vs.conn_reuse_mode = zero\n", "s.txt")
    assert facts_from_input(None, None, {}).source == "none"


@pytest.mark.parametrize(
    ("taint", "release", "expected"),
    [
        # Debian's own module, untainted: the version decides (6.1 carries the fix; 5.4.100 does not).
        ("", DEBIAN_61, Exposure.NOT_EXPOSED),
        ("", ("5.4.100", None), Exposure.EXPOSED),
        # Unsigned only (a self-built kernel's own module): still the kernel's own IPVS.
        ("E", DEBIAN_61, Exposure.NOT_EXPOSED),
        # Built outside the tree (DKMS, a vendor's or a lab's rebuild): the version says nothing, either way.
        ("OE", DEBIAN_61, Exposure.UNKNOWN),
        ("O", ("5.4.100", None), Exposure.UNKNOWN),
    ],
)
def test_an_out_of_tree_ip_vs_makes_the_version_say_nothing(
    taint: str, release: tuple[str, str | None], expected: Exposure
) -> None:
    kernel = KernelFacts(*release, 0, 1, 1, source="live", ip_vs_taint=taint)
    verdict = exposure_verdict(kernel)
    assert verdict.exposure is expected, verdict.reason
    if expected is Exposure.UNKNOWN:
        assert "outside the kernel tree" in verdict.reason and "--probe-kernel" in verdict.reason


def test_the_taint_does_not_matter_where_the_sysctls_decide() -> None:
    for reuse, nodest, expected in ((0, 0, Exposure.EXPOSED), (1, 1, Exposure.NOT_EXPOSED)):
        kernel = KernelFacts(*DEBIAN_61, reuse, nodest, 1, source="live", ip_vs_taint="OE")
        assert exposure_verdict(kernel).exposure is expected


def test_the_live_facts_read_the_modules_taint(tmp_path: Path) -> None:
    sysctls = ProcSysctls(tmp_path)
    taint = tmp_path / "taint"
    taint.write_text("OE\n")
    assert read_live_facts(sysctls, tmp_path, taint).ip_vs_taint == "OE"
    # ip_vs not loaded: nothing to say.
    assert read_live_facts(sysctls, tmp_path, tmp_path / "absent").ip_vs_taint is None
