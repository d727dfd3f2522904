"""The doctor's report for people (a table of findings, then each one's evidence) and for scripts (JSON)."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ipvs_reaper.doctor.findings import Finding, Severity
from ipvs_reaper.doctor.probe import ProbeRow
from ipvs_reaper.kernel.exposure import Exposure, Verdict, exposure_verdict
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.netfilter.rules import Table
from ipvs_reaper.report import kernel_json

# Bumped when a field changes meaning or goes away; new fields may appear without a bump.
SCHEMA_VERSION = 1
EXIT_CLEAN, EXIT_FINDINGS = 0, 3


@dataclass(frozen=True, slots=True)
class DoctorReport:
    node: str
    facts: KernelFacts
    verdict: Verdict
    findings: tuple[Finding, ...]
    tables: tuple[Table, ...]  # what was read
    notes: tuple[str, ...]  # what could not be read or named, and why
    names_unavailable: str | None

    def ordered(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (-f.severity, f.kind.value, f.title))

    def summary(self) -> dict[str, int]:
        counts = Counter(f.severity.label for f in self.findings)
        return {level.label: counts[level.label] for level in sorted(Severity, reverse=True)}

    def exit_code(self) -> int:
        return EXIT_FINDINGS if any(f.severity >= Severity.WARNING for f in self.findings) else EXIT_CLEAN


def doctor_json(report: DoctorReport) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "node": report.node,
        "names": report.names_unavailable is None,
        "namesUnavailable": report.names_unavailable,
        "kernel": kernel_json(report.facts, report.verdict),
        "rules": [
            {"backend": t.backend, "family": t.family, "table": t.name, "source": t.source}
            for t in report.tables
        ],
        "notes": list(report.notes),
        "summary": report.summary(),
        "findings": [f.as_json() for f in report.ordered()],
    }


def _wrap(label: str, text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=f"  {label:<10}", subsequent_indent=" " * 12) or [
        f"  {label}"
    ]


def doctor_table(report: DoctorReport, width: int | None = None) -> str:
    room = max(60, width or 110)
    lines = [f"NODE:      {report.node}"]
    sources = sorted({f"{t.backend} {t.family} {t.name}" for t in report.tables})
    lines.append(f"RULES:     {', '.join(sources) if sources else 'no nat tables'}")
    if report.names_unavailable:
        lines += textwrap.wrap(
            f"names unavailable ({report.names_unavailable}): findings are by address, port and protocol",
            room, initial_indent="NAMES:     ", subsequent_indent=" " * 11,
        )  # fmt: skip
    for note in report.notes:
        lines += textwrap.wrap(note, room, initial_indent="NOTE:      ", subsequent_indent=" " * 11)
    lines.append("")
    ordered = report.ordered()
    if not ordered:
        lines.append("No findings.")
        return "\n".join(lines)
    for number, finding in enumerate(ordered, start=1):
        lines += textwrap.wrap(
            f"{number}. [{finding.severity.label.upper()}] {finding.kind.value}: {finding.title}",
            room, subsequent_indent="   ",
        )  # fmt: skip
        for evidence in finding.evidence:
            lines += _wrap("rule:", evidence.rule, room)
            lines += _wrap("path:", f"{evidence.chain_path}  ({evidence.source})", room)
            for condition in evidence.conditions:
                lines += _wrap("only if:", condition, room)
        for detail in finding.details:
            lines += _wrap("detail:", detail, room)
        lines += _wrap("affects:", finding.affected, room)
        lines += _wrap("fix:", finding.fix, room)
        lines.append("")
    counts = report.summary()
    lines.append(", ".join(f"{n} {level}" for level, n in counts.items()))
    return "\n".join(lines)


def _version_agrees(verdict: Verdict, exposed: bool | None) -> bool | None:
    """Whether the verdict `scan` gives from the version and sysctls matches the measurement: None when
    either could not tell."""
    if exposed is None or verdict.exposure is Exposure.UNKNOWN:
        return None
    return (verdict.exposure is Exposure.EXPOSED) == exposed


def probe_json(rows: Sequence[ProbeRow], facts: KernelFacts, exposed: bool | None) -> dict[str, Any]:
    verdict = exposure_verdict(facts)
    return {
        "schemaVersion": SCHEMA_VERSION,
        "kernel": {"release": facts.release, "version": facts.version, "ipVsTaint": facts.ip_vs_taint},
        "node": {"connReuseMode": facts.conn_reuse_mode, "expireNodestConn": facts.expire_nodest_conn},
        "exposedAtNodeSettings": exposed,
        "versionVerdict": {"exposure": verdict.exposure.value, "reason": verdict.reason},
        "versionAgrees": _version_agrees(verdict, exposed),
        "rows": [row.as_json() for row in rows],
    }


def probe_table(rows: Sequence[ProbeRow], facts: KernelFacts, exposed: bool | None) -> str:
    header = ("CONN_REUSE_MODE", "EXPIRE_NODEST_CONN", "AT WEIGHT 0", "AFTER DELETE", "EXPOSED")
    body = [
        (
            str(r.conn_reuse_mode),
            str(r.expire_nodest_conn),
            r.weight_zero,
            r.deleted,
            "yes" if r.exposed else "no",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = [f"KERNEL:    {facts.release or 'unknown'} {facts.version or ''}".rstrip(), ""]
    for line in (header, *body):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    node = f"conn_reuse_mode={facts.conn_reuse_mode} expire_nodest_conn={facts.expire_nodest_conn}"
    verdict = {True: "EXPOSED", False: "not exposed", None: "unknown (the sysctls could not be read)"}[
        exposed
    ]
    lines += ["", f"This node ({node}): {verdict}, as measured on this kernel."]
    from_version = exposure_verdict(facts)
    agrees = _version_agrees(from_version, exposed)
    judged = {True: "agrees", False: "DISAGREES (trust the measurement)", None: "cannot tell"}[agrees]
    lines.append(f"From the version and sysctls, `scan` says {from_version.exposure.value}: it {judged}.")
    lines += _wrap("why:", from_version.reason, 100)
    return "\n".join(lines)


def metrics_view(findings: Sequence[Finding]) -> dict[tuple[str, int, str, str], int]:
    """Hijacks counted by (protocol, port, service, certainty): what `ipvs_reaper_hostport_conflicts`
    exports. `certain`: a rule takes the traffic whatever the packet; `possible`: it may, under a condition
    the rules alone cannot judge (a critical alert must hear only of the first)."""
    counts: Counter[tuple[str, int, str, str]] = Counter()
    for finding in findings:
        if finding.kind.value == "hijack" and finding.protocol and finding.port is not None:
            certainty = "certain" if finding.severity is Severity.CRITICAL else "possible"
            counts[(finding.protocol, finding.port, finding.service or "", certainty)] += 1
    return dict(counts)
