"""The pure planner: decides, for every real server of the table, whether to reap it now, later, or never.

No I/O and no clock: everything it knows is in its arguments, so the safety rules can be proven over
generated tables and cluster states. The hard rules, checked before any policy:
- weight > 0: kube-proxy still wants it;
- a virtual service that maps to no Service (or to several) is not ours;
- a ready endpoint, or a terminating one that is still serving, is wanted;
- an unusable cluster view decides nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.config import (
    IMMEDIATE_POLICY,
    Config,
    ConfigError,
    PolicyOverride,
    ReapMode,
    Rule,
    SysctlMode,
    parse_annotation,
)
from ipvs_reaper.mapping import UNKNOWN_STATUS, ClusterIndex, EndpointState, EndpointStatus, Target
from ipvs_reaper.values import IPNetwork, IpvsTable, RealKey, RealServer


class Action(enum.StrEnum):
    REAP = "reap"
    WAIT = "wait"
    KEEP = "keep"


class PolicyChoice(enum.StrEnum):
    DEFAULT = "default"  # the configured grace policy
    IMMEDIATE = "immediate"  # every non-ready weight-0 real server, ignoring grace and connections


@dataclass(frozen=True, slots=True)
class Decision:
    real_server: RealServer
    service: str | None
    endpoint: EndpointStatus
    action: Action
    reason: str
    reap_after: datetime | None = None
    # The decision rests on ActiveConn being 0: the actor re-checks it right before deleting.
    requires_idle: bool = False
    # Waiting only for ActiveConn to reach 0 (its grace is over): worth reading again soon, not only when a
    # cap ends or at the next sweep.
    awaits_idle: bool = False
    # The policy says reap now, whatever a gate (the breaker, the sysctl, the per-sweep cap) then decided: a
    # real server that stays reapable sweep after sweep is overdue, which is what an alert should hear of.
    reapable: bool = False


class RefusalKind(enum.StrEnum):
    """Why a whole reconcile deletes nothing on purpose (a metric label: keep the set small)."""

    BREAKER = "breaker"
    SYSCTL = "sysctl"  # expire_nodest_conn is not 1 and the config says report-only
    VIEW = "view"  # the cluster view is incomplete or stale


@dataclass(frozen=True, slots=True)
class Plan:
    # One per real server of the table, in table order; only the weight-0 ones unless describe_weighted.
    decisions: tuple[Decision, ...]
    # When each weight-0 real server was first seen at weight 0: the clock for grace and caps.
    first_seen: Mapping[RealKey, datetime]
    # When each weight-0 real server's endpoint was first seen gone (only those gone now): the settle clock.
    gone_since: Mapping[RealKey, datetime] = field(default_factory=dict)
    # The actor must set expire_nodest_conn=1 before deleting anything.
    needs_expire_nodest_conn: bool = False
    # Why the whole sweep reaps nothing (unusable view, circuit breaker), for logs and metrics.
    refusal: str | None = None
    refusal_kind: RefusalKind | None = None
    # The share of the node's real servers this plan's deletions (and the window's earlier ones) come to:
    # what the breaker compares with breaker.maxShare.
    deletion_share: float = 0.0

    @property
    def reaps(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action is Action.REAP)


@dataclass(frozen=True, slots=True)
class SweepInputs:
    table: IpvsTable
    cluster: ClusterState
    node_name: str
    config: Config
    expire_nodest_conn: int | None  # the sysctl's current value, None when unknown
    now: datetime
    first_seen: Mapping[RealKey, datetime]
    policy: PolicyChoice = PolicyChoice.DEFAULT
    # Decide for real servers with weight > 0 too. Their decision is always "keep", so only a listing of
    # every real server (`scan --all`) needs them; a sweep leaves them out and so costs in proportion to
    # the weight-0 real servers, not to the table.
    describe_weighted: bool = True
    # The node's real-server count when the table is only part of it (an event's reconcile reads the
    # virtual services it touches): the breaker's share is of the node. None: the table is the node's.
    node_real_servers: int | None = None
    # Deletions earlier reconciles made within the breaker's window: many small reconciles must not add up
    # to what one sweep would be refused.
    recent_deletions: int = 0
    # A gone endpoint's real server is deleted only once the endpoint has been seen gone this long (its own
    # clock, `gone_since`, not the weight-0 one): an endpoint the EndpointSlice
    # controller moves between slices is missing from the view between its two writes, and the agent,
    # reconciling on the first write's event, would otherwise delete a serving pod's real server. Zero for a
    # one-shot read, which no event steers into that moment.
    gone_settle: timedelta = timedelta(0)
    gone_since: Mapping[RealKey, datetime] = field(default_factory=dict)


_STATE_RULES = {
    EndpointState.GONE: "gone",
    EndpointState.TERMINATING: "terminating",
    EndpointState.NOT_READY: "not_ready",
}


# Parsed annotations for one sweep: a Service's many real servers share one parse.
_AnnotationCache = dict[str, PolicyOverride | ConfigError]


def _annotation_override(text: str, cache: _AnnotationCache) -> PolicyOverride:
    if text not in cache:
        try:
            cache[text] = parse_annotation(text)
        except ConfigError as error:
            cache[text] = error
    parsed = cache[text]
    if isinstance(parsed, ConfigError):
        raise parsed
    return parsed


def _resolve_rule(inputs: SweepInputs, target: Target, state: EndpointState, cache: _AnnotationCache) -> Rule:
    """Configured policy, then the namespace's override, then the Service's annotation."""
    attr = _STATE_RULES[state]
    policy = inputs.config.policy
    namespace_override = inputs.config.namespaces.get(target.service.namespace)
    if namespace_override is not None:
        policy = namespace_override.apply(policy)
    if target.service.policy_annotation is not None:
        policy = _annotation_override(target.service.policy_annotation, cache).apply(policy)
    configured: Rule = getattr(policy, attr)
    if inputs.policy is PolicyChoice.IMMEDIATE and configured.reap is not ReapMode.NEVER:
        # `immediate` ignores grace, caps and connections, but not an operator's explicit `never`.
        immediate: Rule = getattr(IMMEDIATE_POLICY, attr)
        return immediate
    return configured


@dataclass(frozen=True, slots=True)
class _Ruling:
    action: Action
    reason: str
    reap_after: datetime | None = None
    requires_idle: bool = False
    awaits_idle: bool = False


def _apply_rule(rs: RealServer, rule: Rule, state: EndpointState, since: datetime, now: datetime) -> _Ruling:
    label = state.value
    if rule.reap is ReapMode.NEVER:
        return _Ruling(Action.KEEP, f"{label}: policy says never")
    eligible_at = since + timedelta(seconds=rule.grace_seconds)
    if now < eligible_at:
        return _Ruling(Action.WAIT, f"{label}: in its {rule.grace_seconds}s grace", eligible_at)
    if rule.reap is ReapMode.ALWAYS:
        return _Ruling(Action.REAP, f"{label}: reap regardless of connections")
    if rs.active_conns == 0:
        idle = f"{label} and idle (ActiveConn 0, InActConn {rs.inactive_conns})"
        return _Ruling(Action.REAP, idle, requires_idle=True)
    if rule.max_wait_seconds is not None:
        cap_at = since + timedelta(seconds=rule.max_wait_seconds)
        if now >= cap_at:
            capped = f"{label}: ActiveConn {rs.active_conns} but waited the {rule.max_wait_seconds}s cap"
            return _Ruling(Action.REAP, capped)
        waiting = f"{label}: ActiveConn {rs.active_conns}, waiting for 0 or the cap"
        return _Ruling(Action.WAIT, waiting, cap_at, awaits_idle=True)
    waiting = f"{label}: ActiveConn {rs.active_conns}, waiting for 0 (no cap)"
    return _Ruling(Action.WAIT, waiting, awaits_idle=True)


def _excluded(config: Config, rs: RealServer) -> IPNetwork | None:
    address = rs.key.virtual.address
    if address is None:
        return None
    return next((n for n in config.exclude_networks if n.version == address.version and address in n), None)


def _settle(
    ruling: _Ruling, rs: RealServer, gone_since: datetime, now: datetime, settle: timedelta
) -> _Ruling:
    """No reap of an endpoint seen gone for less than the settle time, idle or not: until then the view may
    be the moment between an endpoint's two slice writes, and the cluster may still want it."""
    if ruling.action is not Action.REAP:
        return ruling
    settled_at = gone_since + settle
    if now >= settled_at:
        return ruling
    waited, needed = (now - gone_since).total_seconds(), settle.total_seconds()
    return _Ruling(
        Action.WAIT,
        f"gone: seen gone for {waited:.0f}s of the {needed:g}s settle (a moved endpoint is missing for a "
        f"moment; ActiveConn {rs.active_conns})",
        settled_at,
    )


def _decide(
    inputs: SweepInputs,
    index: ClusterIndex,
    rs: RealServer,
    since: datetime,
    gone_since: datetime,
    cache: _AnnotationCache,
) -> Decision:
    if not inputs.cluster.usable:
        # Not even "maps to no Service" or "gone" is known from a view that is incomplete or stale.
        return Decision(
            rs,
            None,
            UNKNOWN_STATUS,
            Action.KEEP,
            f"cluster state unusable: {'; '.join(inputs.cluster.problems)}",
        )
    target = index.target(rs.key.virtual)
    service = target.service.ref if target is not None else None
    broken = inputs.cluster.broken
    unreadable = (
        broken.get(target.service.ref) or broken.get(f"{target.service.namespace}/*")
        if target is not None
        else None
    )
    status = UNKNOWN_STATUS if unreadable else index.endpoint_status(target, rs.key.address, rs.key.port)

    def keep(reason: str) -> Decision:
        return Decision(rs, service, status, Action.KEEP, reason)

    if rs.weight > 0:
        return keep(f"weight {rs.weight}: kube-proxy still sends new connections here")

    excluded = _excluded(inputs.config, rs)
    if excluded is not None:
        return keep(f"virtual service in excludeCIDRs {excluded}: another IPVS user's range, never touched")
    if target is None:
        claimants = index.ambiguous.get(rs.key.virtual)
        if claimants:
            return keep(
                f"virtual service on the address:port of several Service ports ({', '.join(claimants)}): "
                "not ours to judge"
            )
        not_built = index.not_built.get(rs.key.virtual)
        if not_built is not None:
            return keep(f"{not_built}: not kube-proxy's, never touched")
        return keep("virtual service maps to no Service: not kube-proxy's, never touched")
    if unreadable:
        return keep(f"part of {service}'s cluster view is unreadable: {unreadable}")
    if status.state is EndpointState.UNKNOWN:
        return keep(f"{service} has a selector but no EndpointSlice in the view: its endpoints are unknown")
    if status.state is EndpointState.READY:
        return keep("endpoint is ready: an admin drain or kube-proxy lag, never reaped")
    if status.serving:
        return keep(f"endpoint is {status.state.value} but still serving")
    try:
        rule = _resolve_rule(inputs, target, status.state, cache)
    except ConfigError as error:
        return keep(f"bad annotation on {service}: {error}")
    ruling = _apply_rule(rs, rule, status.state, since, inputs.now)
    if status.state is EndpointState.GONE:
        ruling = _settle(ruling, rs, gone_since, inputs.now, inputs.gone_settle)
    return Decision(
        rs,
        service,
        status,
        ruling.action,
        ruling.reason,
        ruling.reap_after,
        requires_idle=ruling.requires_idle,
        awaits_idle=ruling.awaits_idle,
        reapable=ruling.action is Action.REAP,
    )


def _gate_on_sysctl(
    inputs: SweepInputs, decisions: list[Decision]
) -> tuple[list[Decision], bool, str | None]:
    """Deleting with expire_nodest_conn=0 turns refusals into silent drops: enforce it, refuse, or say so.

    Returns the decisions, whether the sysctl must be set first, and the refusal when report-only withholds
    deletions (the operator must hear that nothing was reaped, and why).
    """
    value = inputs.expire_nodest_conn
    if value == 1 or not any(d.action is Action.REAP for d in decisions):
        return decisions, False, None
    mode = inputs.config.expire_nodest_conn
    if mode is SysctlMode.ENFORCE:
        return decisions, True, None
    shown = "unknown" if value is None else str(value)
    if mode is SysctlMode.REPORT_ONLY:
        reason = (
            f"expire_nodest_conn={shown} and expireNodestConn is report-only: deleting now would turn "
            "refused connections into silent drops"
        )
        withheld = sum(d.action is Action.REAP for d in decisions)
        kept = [
            replace(d, action=Action.KEEP, reason=reason) if d.action is Action.REAP else d for d in decisions
        ]
        return kept, False, f"not deleting {withheld} real server(s): {reason}"
    suffix = (
        f" (expire_nodest_conn={shown}, expireNodestConn: ignore: entries to it will be dropped, "
        "not rescheduled)"
    )
    return (
        [replace(d, reason=d.reason + suffix) if d.action is Action.REAP else d for d in decisions],
        False,
        None,
    )


def _apply_breaker(
    inputs: SweepInputs, decisions: list[Decision], total: int, count: int
) -> tuple[list[Decision], str | None]:
    """`count` deletions (this plan's and the window's earlier ones) of the node's `total` real servers."""
    breaker = inputs.config.breaker
    reaps = [d for d in decisions if d.action is Action.REAP]
    if reaps and count >= max(breaker.min_deletions, 1) and count > breaker.max_share * total:
        recent = f" ({inputs.recent_deletions} of them just now)" if inputs.recent_deletions else ""
        refusal = (
            f"circuit breaker: this sweep would delete {count}{recent} of the node's {total} real servers, "
            f"more than breaker.maxShare={breaker.max_share:g}"
        )
        return [
            replace(d, action=Action.KEEP, reason=refusal) if d.action is Action.REAP else d
            for d in decisions
        ], refusal
    if len(reaps) <= breaker.max_per_sweep:
        return decisions, None
    # Oldest first, so a steady stream of new ones cannot starve the old.
    order = sorted(
        reaps,
        key=lambda d: (inputs.first_seen.get(d.real_server.key, inputs.now), d.real_server.key.sort_key()),
    )
    deferred = {id(d) for d in order[breaker.max_per_sweep :]}
    reason = f"per-sweep cap breaker.maxPerSweep={breaker.max_per_sweep}: next sweep"
    return [
        replace(d, action=Action.WAIT, reason=reason) if id(d) in deferred else d for d in decisions
    ], None


def plan_sweep(inputs: SweepInputs) -> Plan:
    index = ClusterIndex(inputs.cluster, inputs.node_name)
    first_seen: dict[RealKey, datetime] = {}
    gone_since: dict[RealKey, datetime] = {}
    cache: _AnnotationCache = {}
    decisions = []
    for rs in inputs.table.real_servers:
        if rs.weight > 0 and not inputs.describe_weighted:
            continue
        since = gone = inputs.now
        if rs.weight == 0:
            # A clock from the future (a corrupt or hand-edited first-seen file) starts now: later reaping,
            # never earlier, and no date arithmetic beyond the calendar.
            since = min(inputs.first_seen.get(rs.key, inputs.now), inputs.now)
            first_seen[rs.key] = since
            gone = min(inputs.gone_since.get(rs.key, inputs.now), inputs.now)
        decision = _decide(inputs, index, rs, since, gone, cache)
        if rs.weight == 0 and decision.endpoint.state is EndpointState.GONE:
            gone_since[rs.key] = gone
        decisions.append(decision)
    decisions, needs_sysctl, sysctl_refusal = _gate_on_sysctl(inputs, decisions)
    total = (
        inputs.node_real_servers if inputs.node_real_servers is not None else len(inputs.table.real_servers)
    )
    count = sum(d.action is Action.REAP for d in decisions) + inputs.recent_deletions
    share = count / total if total else 0.0
    decisions, refusal = _apply_breaker(inputs, decisions, total, count)
    kind = RefusalKind.BREAKER if refusal is not None else None
    if refusal is None and sysctl_refusal is not None:
        refusal, kind = sysctl_refusal, RefusalKind.SYSCTL
    if refusal is None and not inputs.cluster.usable:
        refusal = f"cluster state unusable: {'; '.join(inputs.cluster.problems)}"
        kind = RefusalKind.VIEW
    return Plan(
        decisions=tuple(decisions),
        first_seen=first_seen,
        gone_since=gone_since,
        needs_expire_nodest_conn=needs_sysctl and any(d.action is Action.REAP for d in decisions),
        refusal=refusal,
        refusal_kind=kind,
        deletion_share=share,
    )
