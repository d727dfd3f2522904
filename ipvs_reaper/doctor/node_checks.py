"""The node's own exposure as findings: the kernel verdict, the sysctls against what the agent enforces, and
the stale weight-0 real servers that are waiting."""

from __future__ import annotations

from ipvs_reaper.config import Config, SysctlMode
from ipvs_reaper.doctor.findings import Finding, Kind, Severity
from ipvs_reaper.kernel.exposure import Exposure, Verdict
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.planner import Action, Plan
from ipvs_reaper.values import IpvsTable


def _shown(value: int | None) -> str:
    return "?" if value is None else str(value)


def kernel_findings(facts: KernelFacts, verdict: Verdict, probe_hint: bool) -> list[Finding]:
    if verdict.exposure is Exposure.NOT_EXPOSED:
        return []
    details = (
        f"kernel {facts.release or 'unknown'} ({facts.source})",
        f"conn_reuse_mode={_shown(facts.conn_reuse_mode)} "
        f"expire_nodest_conn={_shown(facts.expire_nodest_conn)}",
    )
    if verdict.exposure is Exposure.EXPOSED:
        return [
            Finding(
                kind=Kind.KERNEL_EXPOSURE,
                severity=Severity.WARNING,
                title=f"exposed: {verdict.reason}",
                affected="clients on this node that reuse a source port after a rolling update reach dead "
                "pods",
                fix="Run the ipvs-reaper agent on this node with expireNodestConn: enforce (the default): it "
                "sets expire_nodest_conn=1 and deletes stale weight-0 real servers.",
                details=details,
            )
        ]
    hint = " `ipvs-reaper doctor --probe-kernel` measures what this kernel does." if probe_hint else ""
    return [
        Finding(
            kind=Kind.KERNEL_EXPOSURE,
            severity=Severity.INFO,
            title=f"exposure unknown: {verdict.reason}",
            affected="possibly clients that reuse a source port after a rolling update",
            fix="Give the node's `uname -r`, `uname -v` and `sysctl net.ipv4.vs` (offline), or run on the "
            "node." + hint,
            details=details,
        )
    ]


def sysctl_findings(facts: KernelFacts, config: Config) -> list[Finding]:
    """Whether the node's IPVS sysctls are what the agent (with this configuration) keeps them at."""
    mode, value = config.expire_nodest_conn, facts.expire_nodest_conn
    if value is None or value == 1 or mode is SysctlMode.IGNORE:
        return []
    enforce = mode is SysctlMode.ENFORCE
    return [
        Finding(
            kind=Kind.SYSCTL_MISMATCH,
            severity=Severity.WARNING,
            title=f"net.ipv4.vs.expire_nodest_conn={value}"
            + (
                ", although the agent enforces 1"
                if enforce
                else ", and the agent (expireNodestConn: report-only) deletes nothing while it is 0"
            ),
            affected="packets of a connection whose real server was deleted are dropped silently (timeouts "
            "instead of refusals) while it is 0",
            fix="Is the agent running on this node, and can it write the sysctl (the chart's sysctlMount)? "
            "Its ipvs_reaper_sysctl metric and logs say."
            if enforce
            else "Set it to 1 on the node (sysctl -w net.ipv4.vs.expire_nodest_conn=1), or let the agent "
            "enforce it.",
            details=(
                f"conn_reuse_mode={facts.conn_reuse_mode} (kube-proxy's setting; 0 lets a reused source port "
                "reach a weight-0 real server)",
            ),
        )
    ]


def stale_findings(table: IpvsTable, plan: Plan | None, why_not: str | None) -> list[Finding]:
    weight_zero = [rs for rs in table.real_servers if rs.weight == 0]
    if not weight_zero:
        return []
    if plan is None or plan.refusal:
        reason = (plan.refusal if plan is not None else None) or why_not or "no cluster state"
        return [
            Finding(
                kind=Kind.STALE_REAL_SERVERS,
                severity=Severity.INFO,
                title=f"{len(weight_zero)} weight-0 real servers; whether they are stale cannot be told: "
                f"{reason}",
                affected="clients that reuse a source port may still reach them",
                fix="Run `ipvs-reaper scan` with a cluster state (or cluster access) to judge them.",
                details=tuple(str(rs.key) for rs in weight_zero[:20]),
            )
        ]
    stale = [
        d for d in plan.decisions if d.real_server.weight == 0 and d.action in (Action.REAP, Action.WAIT)
    ]
    if not stale:
        return []
    reap = sum(1 for d in stale if d.action is Action.REAP)
    return [
        Finding(
            kind=Kind.STALE_REAL_SERVERS,
            severity=Severity.WARNING if reap else Severity.INFO,
            title=f"{len(stale)} stale weight-0 real servers ({reap} reapable now, "
            f"{len(stale) - reap} waiting out their grace)",
            affected="clients that reuse a source port reach these dead pods until they are deleted",
            fix="The ipvs-reaper agent deletes them; `ipvs-reaper scan` shows each with its reason.",
            details=tuple(
                f"{d.real_server.key} ({d.service or 'unmapped'}): {d.action.value}, {d.reason}"
                for d in stale[:20]
            ),
            extra={"reapable": reap, "waiting": len(stale) - reap},
        )
    ]
