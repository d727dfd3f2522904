from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Breaker, Config, SysctlMode, parse_config
from ipvs_reaper.mapping import EndpointState
from ipvs_reaper.planner import Action, Plan, PolicyChoice, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests.builders import endpoint, endpoint_slice, port, service

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
VIP = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.2"), 80)


def rs(
    address: str, weight: int = 0, active: int = 0, inactive: int = 5, vip: VirtualKey = VIP
) -> RealServer:
    return RealServer(RealKey(vip, ipaddress.ip_address(address), 8080), "Masq", weight, active, inactive)


def plan(
    real_servers: list[RealServer],
    endpoints: list[dict[str, Any]],
    *,
    config: Config | None = None,
    nodest: int | None = 1,
    first_seen: dict[RealKey, datetime] | None = None,
    now: datetime = NOW,
    policy: PolicyChoice = PolicyChoice.DEFAULT,
    annotations: dict[str, str] | None = None,
    extra_items: list[dict[str, Any]] | None = None,
    gone_settle: float = 0.0,
    gone_since: dict[RealKey, datetime] | None = None,
) -> Plan:
    items = [
        service("app", "web", ["10.96.0.2"], [port(80, "http")], annotations=annotations),
        endpoint_slice("app", "web-1", "web", [port(8080, "http")], endpoints),
        *(extra_items or []),
    ]
    table = IpvsTable((VirtualService(VIP, "rr"),), tuple(real_servers))
    return plan_sweep(
        SweepInputs(
            table=table,
            cluster=cluster_state_from_items(items),
            node_name="node-a",
            config=config or Config(breaker=Breaker(min_deletions=100)),
            expire_nodest_conn=nodest,
            now=now,
            first_seen=first_seen or {},
            policy=policy,
            gone_settle=timedelta(seconds=gone_settle),
            gone_since=gone_since or {},
        )
    )


def only(p: Plan) -> tuple[Action, str]:
    (decision,) = [d for d in p.decisions if d.real_server.weight == 0]
    return decision.action, decision.reason


LIVE = endpoint("10.1.0.1")


def test_gone_is_reaped_at_once_whatever_its_connections() -> None:
    # docs/rollout.md: a gone pod's ActiveConn is kept up by reused ports, not by anything alive.
    for active in (0, 34):
        p = plan([rs("10.1.0.1", weight=1), rs("10.1.0.9", active=active)], [LIVE])
        assert only(p) == (Action.REAP, "gone: reap regardless of connections")
        assert not p.reaps[0].requires_idle
        assert p.reaps[0].endpoint.state is EndpointState.GONE


def test_a_gone_endpoint_with_connections_waits_for_the_settle_on_its_own_clock() -> None:
    # Weight 0 for a minute already (terminating, say), gone only now: the weight-0 clock must not count.
    r = rs("10.1.0.9", active=34)
    early = {r.key: NOW - timedelta(seconds=60)}
    first = plan([r], [LIVE], gone_settle=5, first_seen=early)
    assert only(first) == (
        Action.WAIT,
        "gone: seen gone for 0s of the 5s settle (a moved endpoint is missing for a moment; ActiveConn 34)",
    )
    assert first.decisions[0].reap_after == NOW + timedelta(seconds=5)
    assert first.gone_since == {r.key: NOW}
    later = NOW + timedelta(seconds=4)
    still = plan([r], [LIVE], gone_settle=5, first_seen=early, gone_since=first.gone_since, now=later)
    assert only(still)[0] is Action.WAIT and still.gone_since == {r.key: NOW}
    settled = plan([r], [LIVE], gone_settle=5, gone_since=first.gone_since, now=NOW + timedelta(seconds=5))
    assert only(settled) == (Action.REAP, "gone: reap regardless of connections")


def test_the_settle_clock_starts_again_when_the_endpoint_comes_back() -> None:
    r = rs("10.1.0.9", active=3)
    gone = plan([r], [LIVE], gone_settle=5)
    back = plan([r], [LIVE, endpoint("10.1.0.9")], gone_settle=5, gone_since=gone.gone_since)
    assert only(back)[0] is Action.KEEP and back.gone_since == {}
    # A clock from the future (none is written so, but a restart's wall clock may step back) starts now.
    future = {r.key: NOW + timedelta(days=1)}
    assert plan([r], [LIVE], gone_settle=5, gone_since=future).gone_since == {r.key: NOW}


def test_an_idle_gone_endpoint_waits_out_the_settle_too() -> None:
    # Idle or not, the cluster may still want it: a moved endpoint's idle real server, deleted, would leave
    # the Service a backend short until kube-proxy adds it again.
    r = rs("10.1.0.9", active=0)
    assert only(plan([r], [LIVE], gone_settle=5))[0] is Action.WAIT
    later = plan([r], [LIVE], gone_settle=5, gone_since={r.key: NOW - timedelta(seconds=5)})
    assert only(later) == (Action.REAP, "gone: reap regardless of connections")


def test_the_settle_holds_the_cap_and_immediate_too() -> None:
    # It guards against a moment's view, not a policy: `immediate`, a cap reached and an idle rule wait too.
    r = rs("10.1.0.9", active=3)
    assert only(plan([r], [LIVE], gone_settle=5, policy=PolicyChoice.IMMEDIATE))[0] is Action.WAIT
    capped = plan([r], [LIVE], gone_settle=5, config=IDLE_GONE, first_seen={r.key: NOW - timedelta(hours=1)})
    assert only(capped)[0] is Action.WAIT
    assert only(plan([rs("10.1.0.9", active=0)], [LIVE], gone_settle=5, config=IDLE_GONE))[0] is Action.WAIT


IDLE_GONE = parse_config({"policy": {"gone": {"reap": "idle"}}, "breaker": {"minDeletions": 100}})


def test_gone_and_idle_is_reaped_at_once_under_an_idle_rule() -> None:
    p = plan([rs("10.1.0.1", weight=1), rs("10.1.0.9")], [LIVE], config=IDLE_GONE)
    assert only(p)[0] is Action.REAP
    assert p.reaps[0].requires_idle


def test_weight_above_zero_is_kept_even_when_gone() -> None:
    p = plan([rs("10.1.0.9", weight=1)], [LIVE])
    assert p.decisions[0].action is Action.KEEP


def test_ready_weight_zero_is_kept() -> None:
    assert only(plan([rs("10.1.0.1")], [LIVE]))[0] is Action.KEEP


def test_terminating_but_serving_is_kept_even_with_immediate() -> None:
    ep = endpoint("10.1.0.2", ready=False, serving=True, terminating=True)
    for policy in PolicyChoice:
        assert only(plan([rs("10.1.0.2")], [LIVE, ep], policy=policy)) == (
            Action.KEEP,
            "endpoint is terminating but still serving",
        )


def test_gone_with_connections_waits_for_the_cap_under_an_idle_rule() -> None:
    r = rs("10.1.0.9", active=3)
    waiting = plan([r], [LIVE], config=IDLE_GONE)
    assert only(waiting)[0] is Action.WAIT
    assert waiting.decisions[0].reap_after == NOW + timedelta(seconds=300)
    later = plan(
        [r], [LIVE], first_seen=waiting.first_seen, now=NOW + timedelta(seconds=300), config=IDLE_GONE
    )
    assert only(later)[0] is Action.REAP
    assert not later.reaps[0].requires_idle


def test_first_seen_survives_and_is_dropped_when_weight_returns() -> None:
    r = rs("10.1.0.9", active=3)
    first = plan([r], [LIVE])
    second = plan([r], [LIVE], first_seen=first.first_seen, now=NOW + timedelta(seconds=10))
    assert second.first_seen == {r.key: NOW}
    back = plan([replace(r, weight=1)], [LIVE], first_seen=second.first_seen)
    assert back.first_seen == {}


def test_not_ready_waits_out_its_grace() -> None:
    r = rs("10.1.0.3")
    ep = endpoint("10.1.0.3", ready=False)
    first = plan([r], [LIVE, ep])
    assert only(first)[0] is Action.WAIT
    assert first.decisions[0].reap_after == NOW + timedelta(seconds=30)
    later = plan([r], [LIVE, ep], first_seen=first.first_seen, now=NOW + timedelta(seconds=30))
    assert only(later)[0] is Action.REAP


def test_immediate_ignores_grace_and_connections() -> None:
    p = plan(
        [rs("10.1.0.3", active=9)], [LIVE, endpoint("10.1.0.3", ready=False)], policy=PolicyChoice.IMMEDIATE
    )
    assert only(p)[0] is Action.REAP


def test_immediate_keeps_an_explicit_never() -> None:
    p = plan(
        [rs("10.1.0.9")],
        [LIVE],
        policy=PolicyChoice.IMMEDIATE,
        annotations={"ipvs-reaper.io/policy": "gone: {reap: never}"},
    )
    assert only(p) == (Action.KEEP, "gone: policy says never")


def test_namespace_then_annotation_override() -> None:
    config = parse_config(
        {"namespaces": {"app": {"gone": {"reap": "never"}}}, "breaker": {"minDeletions": 100}}
    )
    assert only(plan([rs("10.1.0.9")], [LIVE], config=config))[0] is Action.KEEP
    annotated = plan(
        [rs("10.1.0.9")],
        [LIVE],
        config=config,
        annotations={"ipvs-reaper.io/policy": '{"gone": {"reap": "idle"}}'},
    )
    assert only(annotated)[0] is Action.REAP


def test_bad_annotation_keeps_and_says_why() -> None:
    action, reason = only(
        plan([rs("10.1.0.9")], [LIVE], annotations={"ipvs-reaper.io/policy": "gone: {reap: x}"})
    )
    assert action is Action.KEEP
    assert "bad annotation on app/web" in reason


def test_unmapped_virtual_service_is_never_touched() -> None:
    other = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("172.17.0.1"), 8080)
    p = plan([rs("10.1.0.9", vip=other)], [LIVE])
    assert only(p)[0] is Action.KEEP
    assert p.decisions[0].endpoint.state is EndpointState.UNMAPPED


def test_unusable_cluster_view_reaps_nothing() -> None:
    items = [service("app", "web", ["10.96.0.2"], [port(80, "http")])]
    inputs = SweepInputs(
        table=IpvsTable((VirtualService(VIP, "rr"),), (rs("10.1.0.9"),)),
        cluster=cluster_state_from_items(items),
        node_name="node-a",
        config=Config(),
        expire_nodest_conn=1,
        now=NOW,
        first_seen={},
    )
    p = plan_sweep(inputs)
    assert p.reaps == ()
    assert p.refusal is not None
    assert "no EndpointSlice objects" in p.refusal


@pytest.mark.parametrize(
    ("mode", "nodest", "action", "needs_sysctl"),
    [
        (SysctlMode.ENFORCE, 0, Action.REAP, True),
        (SysctlMode.ENFORCE, 1, Action.REAP, False),
        (SysctlMode.REPORT_ONLY, 0, Action.KEEP, False),
        (SysctlMode.REPORT_ONLY, None, Action.KEEP, False),
        (SysctlMode.REPORT_ONLY, 1, Action.REAP, False),
        (SysctlMode.IGNORE, 0, Action.REAP, False),
    ],
)
def test_expire_nodest_conn_gate(
    mode: SysctlMode, nodest: int | None, action: Action, needs_sysctl: bool
) -> None:
    config = Config(expire_nodest_conn=mode, breaker=Breaker(min_deletions=100))
    p = plan([rs("10.1.0.9")], [LIVE], config=config, nodest=nodest)
    assert only(p)[0] is action
    assert p.needs_expire_nodest_conn is needs_sysctl
    if mode is SysctlMode.IGNORE:
        assert "expireNodestConn: ignore" in only(p)[1]
    if action is Action.KEEP:
        assert "report-only" in only(p)[1]
        assert p.refusal is not None and "not deleting 1 real server(s)" in p.refusal
    else:
        assert p.refusal is None


def test_circuit_breaker_refuses_the_whole_sweep() -> None:
    reals = [rs(f"10.1.1.{i}") for i in range(1, 7)] + [rs("10.1.0.1", weight=1)]
    config = Config(breaker=Breaker(max_share=0.5, min_deletions=3))
    p = plan(reals, [LIVE], config=config)
    assert p.reaps == ()
    assert p.refusal is not None and "circuit breaker: this sweep would delete 6 of the node's 7" in p.refusal
    # Below minDeletions the share does not apply.
    small = plan(reals[:2] + reals[-1:], [LIVE], config=config)
    assert len(small.reaps) == 2


def test_per_sweep_cap_takes_the_oldest_first() -> None:
    reals = [rs(f"10.1.1.{i}") for i in range(1, 6)]
    seen = {r.key: NOW - timedelta(seconds=i) for i, r in enumerate(reals)}
    config = Config(breaker=Breaker(max_share=1.0, max_per_sweep=2))
    p = plan(reals, [LIVE], config=config, first_seen=seen)
    assert {d.real_server.key for d in p.reaps} == {reals[4].key, reals[3].key}
    assert sum(d.action is Action.WAIT for d in p.decisions) == 3
