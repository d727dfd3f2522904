"""Renders a plan for people (a kubectl-like table) and for scripts (the JSON contract of `scan -o json`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
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


def scan_json(node: str, facts: KernelFacts, verdict: Verdict, plan: Plan, show_all: bool) -> dict[str, Any]:
    return {
        "node": node,
        "kernel": kernel_json(facts, verdict),
        "realServers": [decision_json(d) for d in listed(plan, show_all)],
    }


def _columns(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header) - 1)]
    return [
        "   ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in all_rows
    ]


def _value(value: int | None) -> str:
    return "?" if value is None else str(value)


def scan_table(node: str, facts: KernelFacts, verdict: Verdict, plan: Plan, show_all: bool) -> str:
    shown = listed(plan, show_all)
    lines = [
        f"NODE:      {node}",
        f"KERNEL:    {facts.release or 'unknown'} ({facts.source})  "
        f"conn_reuse_mode={_value(facts.conn_reuse_mode)} "
        f"expire_nodest_conn={_value(facts.expire_nodest_conn)} "
        f"expire_quiescent_template={_value(facts.expire_quiescent_template)}",
        f"EXPOSURE:  {verdict.exposure.value}: {verdict.reason}",
    ]
    if any(d.real_server.key.virtual.protocol.value == "UDP" and d.real_server.weight == 0 for d in shown):
        lines.append(f"NOTE:      {UDP_NOTE}")
    if plan.refusal:
        lines.append(f"REFUSED:   {plan.refusal}")
    lines.append("")
    header = (
        "PROTOCOL",
        "VIRTUAL",
        "REAL",
        "WEIGHT",
        "ACTIVE",
        "INACTIVE",
        "SERVICE",
        "ENDPOINT",
        "DECISION",
        "REASON",
    )
    rows = []
    for d in shown:
        rs = d.real_server
        reason = d.reason + (f" (after {_rfc3339(d.reap_after)})" if d.reap_after else "")
        rows.append(
            (
                rs.key.virtual.protocol.value,
                str(rs.key.virtual),
                format_endpoint(rs.key.address, rs.key.port),
                str(rs.weight),
                str(rs.active_conns),
                str(rs.inactive_conns),
                d.service or "-",
                d.endpoint.state.value,
                d.action.value,
                reason,
            )
        )
    if rows:
        lines.extend(_columns(header, rows))
    else:
        lines.append("No weight-0 real servers." if not show_all else "No real servers.")
    counts = Counter(d.action.value for d in shown)
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
