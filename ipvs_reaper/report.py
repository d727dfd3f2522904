"""Renders a plan for people (a kubectl-like table) and for scripts (the JSON contract of `scan -o json`)."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ipvs_reaper.actor import ApplyResult
from ipvs_reaper.kernel.exposure import UDP_NOTE, Verdict
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.planner import Decision, Plan
from ipvs_reaper.values import format_endpoint


def _rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def listed(plan: Plan, show_all: bool) -> list[Decision]:
    return [d for d in plan.decisions if show_all or d.real_server.weight == 0]


def kernel_json(facts: KernelFacts, verdict: Verdict) -> dict[str, Any]:
    return {
        "release": facts.release,
        "version": facts.version,
        "source": facts.source,
        "connReuseMode": facts.conn_reuse_mode,
        "expireNodestConn": facts.expire_nodest_conn,
        "expireQuiescentTemplate": facts.expire_quiescent_template,
        "exposure": verdict.exposure.value,
        "exposureReason": verdict.reason,
    }


def decision_json(decision: Decision) -> dict[str, Any]:
    rs = decision.real_server
    return {
        "protocol": rs.key.virtual.protocol.value,
        "virtual": str(rs.key.virtual),
        "real": format_endpoint(rs.key.address, rs.key.port),
        "weight": rs.weight,
        "activeConns": rs.active_conns,
        "inactiveConns": rs.inactive_conns,
        "service": decision.service,
        "endpointState": decision.endpoint.state.value,
        "decision": decision.action.value,
        "reason": decision.reason,
        "reapAfter": _rfc3339(decision.reap_after),
    }


# Bumped when a field changes meaning or goes away; new fields may appear without a bump.
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What `scan` (and `reap`) report: the node, its kernel, the plan, and what the person should know."""

    node: str
    facts: KernelFacts
    verdict: Verdict
    plan: Plan
    show_all: bool  # every real server, not only weight-0 ones
    warnings: Sequence[str] = ()

    @property
    def shown(self) -> list[Decision]:
        return listed(self.plan, self.show_all)

    def summary(self) -> dict[str, int]:
        counts = Counter(d.action.value for d in self.shown)
        return {action: counts[action] for action in ("reap", "wait", "keep")}


def scan_json(report: ScanReport) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "node": report.node,
        "kernel": kernel_json(report.facts, report.verdict),
        "refusal": report.plan.refusal,
        "warnings": list(report.warnings),
        "summary": report.summary(),
        "realServers": [decision_json(d) for d in report.shown],
    }


def _columns(
    header: Sequence[str] | None, rows: Iterable[Sequence[str]], width: int | None = None, gap: int = 3
) -> list[str]:
    """Aligned columns; with `width`, the last column is cut to fit (at least 20 characters of it stay)."""
    all_rows = ([list(header)] if header else []) + [list(r) for r in rows]
    if not all_rows:
        return []
    count = len(all_rows[0])
    widths = [max(len(r[i]) for r in all_rows) for i in range(count - 1)]
    room = None if width is None else max(20, width - sum(w + gap for w in widths))
    lines = []
    for r in all_rows:
        last = r[-1] if room is None or len(r[-1]) <= room else r[-1][: room - 1] + "…"
        cells = [*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), last]
        lines.append((" " * gap).join(cells).rstrip())
    return lines


def _fold(label: str, text: str, width: int | None) -> list[str]:
    """`LABEL:    text`, folded under itself to the terminal's width."""
    if width is None:
        return [f"{label:<11}{text}"]
    return textwrap.wrap(text, max(40, width), initial_indent=f"{label:<11}", subsequent_indent=" " * 11)


def _value(value: int | None) -> str:
    return "?" if value is None else str(value)


# The table shows what decides (InActConn never does, and the forwarding method seldom matters); -o wide
# shows everything.
_HEADER = ("PROTO", "VIRTUAL", "REAL", "WEIGHT", "ACTIVE", "SERVICE", "ENDPOINT", "DECISION", "REASON")
_WIDE_HEADER = (
    "PROTOCOL", "VIRTUAL", "REAL", "FORWARD", "WEIGHT", "ACTIVE", "INACTIVE", "SERVICE", "ENDPOINT",
    "DECISION", "REAP-AFTER", "REASON",
)  # fmt: skip


def _row(d: Decision, wide: bool) -> tuple[str, ...]:
    rs = d.real_server
    virtual = (
        rs.key.virtual.protocol.value,
        str(rs.key.virtual),
        format_endpoint(rs.key.address, rs.key.port),
    )
    decided = (d.service or "-", d.endpoint.state.value, d.action.value)
    if wide:
        counters = (rs.forward, str(rs.weight), str(rs.active_conns), str(rs.inactive_conns))
        return (*virtual, *counters, *decided, _rfc3339(d.reap_after) or "-", d.reason)
    reason = d.reason + (f" (after {_rfc3339(d.reap_after)})" if d.reap_after else "")
    return (*virtual, str(rs.weight), str(rs.active_conns), *decided, reason)


def scan_table(
    report: ScanReport, *, width: int | None = None, wide: bool = False, headers: bool = True
) -> str:
    """`width`: cut each row's reason to fit a terminal this wide (not with `wide`). Without `headers`, only
    the rows, for scripts that read columns."""
    shown, facts, verdict, plan = report.shown, report.facts, report.verdict, report.plan
    header = _WIDE_HEADER if wide else _HEADER
    rows = _columns(
        header if headers else None, [_row(d, wide) for d in shown], None if wide else width, 3 if wide else 2
    )
    if not headers:
        return "\n".join(rows)
    fold = None if wide else width
    lines = [
        f"NODE:      {report.node}",
        *_fold(
            "KERNEL:",
            f"{facts.release or 'unknown'} ({facts.source})  "
            f"conn_reuse_mode={_value(facts.conn_reuse_mode)} "
            f"expire_nodest_conn={_value(facts.expire_nodest_conn)} "
            f"expire_quiescent_template={_value(facts.expire_quiescent_template)}",
            fold,
        ),
        *_fold("EXPOSURE:", f"{verdict.exposure.value}: {verdict.reason}", fold),
    ]
    if any(d.real_server.key.virtual.protocol.value == "UDP" and d.real_server.weight == 0 for d in shown):
        lines.extend(_fold("NOTE:", UDP_NOTE, fold))
    for warning in report.warnings:
        lines.extend(_fold("WARNING:", warning, fold))
    if plan.refusal:
        lines.extend(_fold("REFUSED:", plan.refusal, fold))
    lines.append("")
    if shown:
        lines.extend(rows)
    else:
        lines.append("No weight-0 real servers." if not report.show_all else "No real servers.")
    counts = report.summary()
    lines.append("")
    lines.append(f"{counts['reap']} to reap, {counts['wait']} waiting, {counts['keep']} kept")
    return "\n".join(lines)


def results_table(result: ApplyResult) -> str:
    lines = []
    if result.sysctl_note:
        lines.append(f"SYSCTL:    {result.sysctl_note}")
    if result.records:
        header = ("OUTCOME", "PROTOCOL", "VIRTUAL", "REAL", "SERVICE", "DETAIL")
        rows = []
        for record in result.records:
            rs = record.decision.real_server
            rows.append(
                (
                    record.outcome.value,
                    rs.key.virtual.protocol.value,
                    str(rs.key.virtual),
                    format_endpoint(rs.key.address, rs.key.port),
                    record.decision.service or "-",
                    record.detail,
                )
            )
        lines.extend(_columns(header, rows))
    else:
        lines.append("Nothing to reap.")
    return "\n".join(lines)


def results_json(result: ApplyResult) -> dict[str, Any]:
    return {"sysctl": result.sysctl_note, "results": [record.as_json() for record in result.records]}
