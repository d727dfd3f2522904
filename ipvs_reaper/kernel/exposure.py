"""The exposure verdict: can a client reusing a source port reach the weight-0 real server of a dead pod?

Rests on shared facts (kernel commits and the stable releases that carry them) and on what was observed on
a Debian 6.1 kernel. Version numbers lie only one way: vendors backport fixes behind old numbers, never
remove mainline code, so a release at or above the mainline version is certain and an older vendor
release is "unknown".
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ipvs_reaper.kernel.facts import KernelFacts

# c95c07836fa4 "ipvs: Fix reuse connection if RS weight is 0": mainline 5.16-rc3, and these stable releases.
_WEIGHT0_FIX_MAINLINE = (5, 16)
_WEIGHT0_FIX_STABLE = {(4, 14): 257, (4, 19): 219, (5, 4): 163, (5, 10): 83, (5, 15): 6}
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_DEBIAN_VERSION = re.compile(r"Debian (\d+)\.(\d+)\.(\d+)")
# Distribution ABI numbering ("5.10.0-28-amd64", "5.15.0-91-generic") and vendor builds hide the
# upstream patch level.
_VENDOR_MARKERS = re.compile(
    r"\.el\d|el\d|suse|-default|amzn|uek|azure|aws|gcp|gke|oracle|generic|cos|\+deb|-\d+-"
)

UDP_NOTE = (
    "UDP is not covered by any kernel fix: a UDP flow that keeps its source port reaches a weight-0 real "
    "server until the entry expires; only deleting the real server (with expire_nodest_conn=1) moves it"
)


class Exposure(enum.StrEnum):
    EXPOSED = "exposed"
    NOT_EXPOSED = "not-exposed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    exposure: Exposure
    reason: str


@dataclass(frozen=True, slots=True)
class FixStatus:
    present: bool | None  # None: cannot be told from the version
    reason: str


def weight0_fix_status(release: str | None, version: str | None) -> FixStatus:
    """Whether the kernel carries c95c07836fa4, judged from `uname -r` and `uname -v`."""
    if release is None:
        return FixStatus(None, "kernel release not known")
    match = _RELEASE.match(release)
    if match is None:
        return FixStatus(None, f"kernel release {release!r} is not a version number")
    series = (int(match.group(1)), int(match.group(2)))
    if series >= _WEIGHT0_FIX_MAINLINE:
        return FixStatus(True, f"{release} is 5.16 or later, which carries c95c07836fa4")
    debian = _DEBIAN_VERSION.search(version or "")
    if debian is not None:
        series = (int(debian.group(1)), int(debian.group(2)))
        patch = int(debian.group(3))
        upstream = debian.group(0).removeprefix("Debian ")
    elif _VENDOR_MARKERS.search(match.group(4).lower()) or match.group(3) is None:
        return FixStatus(
            None,
            f"{release} is a vendor kernel: its version number does not show which fixes were backported",
        )
    else:
        patch = int(match.group(3))
        upstream = f"{series[0]}.{series[1]}.{patch}"
    threshold = _WEIGHT0_FIX_STABLE.get(series)
    if threshold is not None and patch >= threshold:
        return FixStatus(
            True, f"{upstream} carries c95c07836fa4 (backported in {series[0]}.{series[1]}.{threshold})"
        )
    if threshold is not None:
        return FixStatus(
            False, f"{upstream} predates c95c07836fa4 (backported in {series[0]}.{series[1]}.{threshold})"
        )
    return FixStatus(False, f"{upstream} is in a series that never received c95c07836fa4")


def exposure_verdict(facts: KernelFacts) -> Verdict:
    reuse, nodest = facts.conn_reuse_mode, facts.expire_nodest_conn
    if reuse is not None and reuse != 0:
        # Decides it alone: expire_nodest_conn does not matter then.
        return Verdict(
            Exposure.NOT_EXPOSED,
            f"conn_reuse_mode={reuse}: a new connection on a reused port is rescheduled (after a ~1 s "
            "retransmit when its conntrack entry is confirmed)",
        )
    if reuse is None:
        return Verdict(
            Exposure.UNKNOWN,
            "conn_reuse_mode is not known (ip_vs not loaded, or an offline table without --sysctls)",
        )
    if nodest is None:
        return Verdict(
            Exposure.UNKNOWN,
            "conn_reuse_mode=0 but expire_nodest_conn is not known: it decides whether a reused port reaches "
            "a dead pod",
        )
    if nodest == 0:
        return Verdict(
            Exposure.EXPOSED,
            "conn_reuse_mode=0 and expire_nodest_conn=0: a reused source port reaches the weight-0 real "
            "server of a dead pod, and once it is deleted the packets are dropped until the entry expires",
        )
    fix = weight0_fix_status(facts.release, facts.version)
    if facts.ip_vs_taint is not None and "O" in facts.ip_vs_taint:
        # A DKMS or vendor-supplied ip_vs (or a lab's rebuild) may carry any IPVS, fixed or not.
        fix = FixStatus(
            None,
            f"the loaded ip_vs module was built outside the kernel tree (taint {facts.ip_vs_taint!r}): "
            f"{facts.release or 'the kernel'}'s version says nothing about its IPVS",
        )
    if fix.present is None:
        return Verdict(
            Exposure.UNKNOWN,
            f"conn_reuse_mode=0, expire_nodest_conn=1, and {fix.reason}; c95c07836fa4 decides it "
            "(`ipvs-reaper doctor --probe-kernel` measures it)",
        )
    if fix.present:
        return Verdict(
            Exposure.NOT_EXPOSED,
            f"expire_nodest_conn=1 and {fix.reason}: a new connection to a weight-0 real server is "
            "rescheduled",
        )
    return Verdict(
        Exposure.EXPOSED,
        f"conn_reuse_mode=0 and {fix.reason}: even with expire_nodest_conn=1 a reused source port reaches "
        "the weight-0 real server until it is deleted",
    )
