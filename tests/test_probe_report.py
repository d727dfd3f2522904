"""`doctor --probe-kernel`'s report beside the verdict `scan` gives from the version: agreeing, disagreeing,
and unable to tell (a module built outside the kernel tree)."""

from __future__ import annotations

import pytest

from ipvs_reaper.doctor.probe import DEAD, LIVE, TIMEOUT, ProbeRow
from ipvs_reaper.doctor.report import probe_json, probe_table
from ipvs_reaper.kernel.facts import KernelFacts

DEBIAN_61 = ("6.1.0-57-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-01)")
FIXED = [
    ProbeRow(0, 0, DEAD, TIMEOUT),
    ProbeRow(0, 1, LIVE, LIVE),
    ProbeRow(1, 0, LIVE, LIVE),
    ProbeRow(1, 1, LIVE, LIVE),
]
PRE_FIX = [
    ProbeRow(0, 1, DEAD, LIVE) if (r.conn_reuse_mode, r.expire_nodest_conn) == (0, 1) else r for r in FIXED
]


@pytest.mark.parametrize(
    ("rows", "release", "taint", "exposed", "version_says", "agrees"),
    [
        (FIXED, DEBIAN_61, "", False, "not-exposed", True),
        # A kernel whose version claims the fix but whose IPVS lacks it (a vendor's module, say).
        (PRE_FIX, DEBIAN_61, "", True, "not-exposed", False),
        (PRE_FIX, ("5.4.100", None), "", True, "exposed", True),
        # The lab's pre-fix rebuild: out of tree, so the version cannot speak for it.
        (PRE_FIX, DEBIAN_61, "OE", True, "unknown", None),
    ],
)
def test_the_probe_says_whether_the_version_verdict_holds(
    rows: list[ProbeRow],
    release: tuple[str, str | None],
    taint: str,
    exposed: bool,
    version_says: str,
    agrees: bool | None,
) -> None:
    facts = KernelFacts(*release, 0, 1, 1, source="live", ip_vs_taint=taint)
    document = probe_json(rows, facts, exposed)
    assert document["exposedAtNodeSettings"] is exposed
    assert document["versionVerdict"]["exposure"] == version_says
    assert document["versionAgrees"] is agrees
    assert document["kernel"]["ipVsTaint"] == taint
    table = probe_table(rows, facts, exposed)
    assert ("EXPOSED, as measured" if exposed else "not exposed, as measured") in table
    said = {True: "it agrees", False: "it DISAGREES", None: "it cannot tell"}[agrees]
    assert f"`scan` says {version_says}: {said}" in table
