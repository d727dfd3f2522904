"""The agent's small parts on their own: grace clocks kept across restarts, Events aggregated and
rate-limited, flags checked, follow-ups and breaker counts of the reconciler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ipvs_reaper.actor import ActionRecord, Outcome
from ipvs_reaper.agent.first_seen import FirstSeen
from ipvs_reaper.agent.k8s_events import EventReporter
from ipvs_reaper.agent.memory import heap_trimmer, settle_after_listing
from ipvs_reaper.agent.options import add_run_arguments, options_from_args
from ipvs_reaper.agent.reconciler import Reconciler
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import Config, parse_config
from ipvs_reaper.errors import InputError
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.mapping import EndpointState, EndpointStatus
from ipvs_reaper.planner import Action, Decision, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, VirtualService
from tests.agent.harness import real, table, vip
from tests.builders import endpoint, endpoint_slice, node, port, service

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WEB = vip("10.96.0.2", 80)
V6 = vip("fd00::2", 80)


def test_first_seen_times_survive_a_restart_and_a_bad_file_restarts_the_clocks(tmp_path: Path) -> None:
    path = tmp_path / "first-seen.json"
    store = FirstSeen(path)
    a, b = real(WEB, "10.1.0.1", 8080).key, real(V6, "fd00:1::5", 8080).key
    store.update(None, {a: T0, b: T0 + timedelta(seconds=5)})
    assert FirstSeen(path).all == {a: T0, b: T0 + timedelta(seconds=5)}
    # A partial update keeps what it did not look at, and drops what it looked at and no longer saw.
    store.update({WEB}, {})
    assert FirstSeen(path).all == {b: T0 + timedelta(seconds=5)}
    path.write_text("{not json")
    assert FirstSeen(path).all == {}


@pytest.mark.parametrize(
    "text",
    [
        '{"TCP 4 10.96.0.2 80 0 10.1.0.1 8080": "2026-11-22T12:00:00"}',  # no time zone: not comparable
        '{"TCP 4 10.96.0.2 80 0 10.1.0.1 8080": 5}',
        '{"TCP 4 10.96.0.2 80": "2026-11-22T12:00:00+00:00"}',
        "[" * 100_000,
        "[]",
    ],
)
def test_a_bad_first_seen_file_restarts_the_clocks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "first-seen.json"
    path.write_text(text)
    assert FirstSeen(path).all == {}


def test_an_unwritable_first_seen_file_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FirstSeen(tmp_path / "missing-dir" / "first-seen.json")
    for second in range(3):
        store.update(None, {real(WEB, "10.1.0.1", 8080).key: T0 + timedelta(seconds=second)})
    assert store.all  # kept in memory
    assert sum("not written" in r.getMessage() for r in caplog.records) == 1


def test_a_first_seen_time_from_the_future_starts_now() -> None:
    # A corrupt clock far ahead must neither overflow date arithmetic nor reap early: it counts from now.
    key = real(WEB, "10.1.0.1", 8080).key
    table = IpvsTable((VirtualService(WEB, "rr"),), (real(WEB, "10.1.0.1", 8080),))
    cluster = cluster_state_from_items(
        [service("a", "web", ["10.96.0.2"], [port(80)]), endpoint_slice("a", "w", "web", [port(8080)], [])]
    )
    plan = plan_sweep(
        SweepInputs(
            table=table,
            cluster=cluster,
            node_name="node-a",
            config=parse_config({"policy": {"gone": {"reap": "always", "graceSeconds": 30}}}),
            expire_nodest_conn=1,
            now=T0,
            first_seen={key: datetime.max.replace(tzinfo=UTC)},
        )
    )
    (decision,) = plan.decisions
    assert decision.action is Action.WAIT and decision.reap_after == T0 + timedelta(seconds=30)
    assert plan.first_seen[key] == T0


def _record(service: str, address: str, outcome: Outcome = Outcome.DELETED) -> ActionRecord:
    rs = real(WEB, address, 8080)
    decision = Decision(rs, service, EndpointStatus(EndpointState.GONE), Action.REAP, "gone")
    return ActionRecord(T0, decision, outcome, "", dry_run=False)


def test_events_are_one_per_service_and_held_back_within_the_interval() -> None:
    tick = [0.0]
    reporter = EventReporter("node-a", interval=60, clock=lambda: tick[0])
    reporter.add([_record("a/web", f"10.1.0.{i}") for i in range(1, 8)] + [_record("b/api", "10.1.0.9")])
    reporter.add([_record("a/web", "10.1.0.99", Outcome.SKIPPED)])  # not a deletion: not reported
    bodies = dict(reporter.due(T0))
    assert set(bodies) == {"a", "b"}
    assert "deleted 7 stale IPVS real server(s)" in bodies["a"]["message"]
    assert "and 2 more" in bodies["a"]["message"] and "10.1.0.99" not in bodies["a"]["message"]
    reporter.add([_record("a/web", "10.1.0.20")])
    tick[0] = 59
    assert reporter.due(T0) == []
    tick[0] = 60
    ((namespace, body),) = reporter.due(T0)
    assert namespace == "a" and "deleted 1 stale" in body["message"] and "10.1.0.20" in body["message"]


def test_the_reporter_forgets_services_once_their_interval_has_passed() -> None:
    tick = [0.0]
    reporter = EventReporter("node-a", interval=60, clock=lambda: tick[0])
    for i in range(1000):  # a cluster whose Services come and go: each had one deletion
        tick[0] = i * 0.1
        reporter.add([_record(f"ns/svc-{i}", "10.1.0.1")])
        assert len(reporter.due(T0)) == 1
    tick[0] = 100.0  # Services posted before 40 s are forgotten; the later ones still hold back news
    reporter.add([_record("ns/svc-999", "10.1.0.2"), _record("ns/svc-0", "10.1.0.2")])
    assert [body["involvedObject"]["name"] for _, body in reporter.due(T0)] == ["svc-0"]
    assert len(reporter._last_posted) == 600
    tick[0] = 160.0
    assert [body["involvedObject"]["name"] for _, body in reporter.due(T0)] == ["svc-999"]
    assert list(reporter._last_posted) == ["ns/svc-999"]  # svc-0, posted at 100 s, is forgotten too


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(["--node-name", "node-a", *argv])


def test_flags_are_checked() -> None:
    options = options_from_args(_parse("--listen", "[::1]:9000", "--dry-run"))
    assert (options.listen_host, options.listen_port, options.dry_run) == ("::1", 9000, True)
    with pytest.raises(InputError, match="--listen"):
        options_from_args(_parse("--listen", "localhost:http"))
    with pytest.raises(InputError, match="--max-silence"):
        options_from_args(_parse("--max-silence", "10", "--heartbeat-interval", "30"))
    with pytest.raises(InputError, match="--sweep-interval"):
        options_from_args(_parse("--sweep-interval", "0"))


def _reconciler(
    fake: FakeIpvs, window: float = 60, clock: Callable[[], datetime] = lambda: T0
) -> tuple[Reconciler, list[float]]:
    tick = [0.0]
    reconciler = Reconciler(
        node_name="node-a",
        backend=fake,
        sysctls=FakeSysctls({"expire_nodest_conn": 1}),
        first_seen=FirstSeen(),
        dry_run=False,
        clock=clock,
        recorder=lambda _r: None,
        breaker_window=window,
        monotonic=lambda: tick[0],
    )
    return reconciler, tick


def _cluster(*ready: str) -> ClusterState:
    return cluster_state_from_items(
        [
            service("a", "web", ["10.96.0.2"], [port(80)]),
            endpoint_slice("a", "web-1", "web", [port(8080)], [endpoint(ip) for ip in ready]),
            node("node-a", "192.168.49.2"),
        ]
    )


def test_a_reconcile_asks_to_follow_up_while_kube_proxy_still_weights_a_gone_endpoint() -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=1)))
    reconciler, _ = _reconciler(fake)
    result = reconciler.reconcile({WEB}, _cluster("10.1.0.1"), Config())
    assert result.follow_up == {WEB} and fake.deleted == []
    fake.set_weight(real(WEB, "10.1.0.2", 8080).key, 0)
    result = reconciler.reconcile({WEB}, _cluster("10.1.0.1"), Config())
    assert result.follow_up == frozenset() and len(fake.deleted) == 1


def test_small_reconciles_add_up_in_the_breaker() -> None:
    # 12 real servers on the node; 6 endpoints go one reconcile at a time. Alone each is 1 of 12; together
    # they pass the default share (half the node, at least 10 deletions) only if counted together.
    pods = [f"10.1.0.{i}" for i in range(1, 13)]
    fake = FakeIpvs(table(*(real(WEB, ip, 8080, weight=1) for ip in pods)))
    reconciler, tick = _reconciler(fake)
    reconciler.sweep(_cluster(*pods), Config())
    for i in range(7):
        fake.set_weight(real(WEB, pods[i], 8080).key, 0)
        reconciler.reconcile({WEB}, _cluster(*pods[i + 1 :]), Config())
    assert len(fake.deleted) == 7
    for i in range(7, 10):
        fake.set_weight(real(WEB, pods[i], 8080).key, 0)
    result = reconciler.reconcile({WEB}, _cluster(*pods[10:]), Config())
    assert result.plan.refusal is not None and "7 of them just now" in result.plan.refusal
    assert len(fake.deleted) == 7
    tick[0] = 61  # the window has passed
    result = reconciler.reconcile({WEB}, _cluster(*pods[10:]), Config())
    assert result.plan.refusal is None and len(fake.deleted) == 10


def test_a_deleted_real_servers_clock_goes_with_it() -> None:
    # Reaped after its grace, then an equal real server appears at weight 0: its grace starts again.
    rs = real(WEB, "10.1.0.2", 8080, weight=0)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), rs))
    now = [T0]
    reconciler, _ = _reconciler(fake, clock=lambda: now[0])
    config = parse_config({"policy": {"gone": {"reap": "always", "graceSeconds": 30}}})
    reconciler.reconcile({WEB}, _cluster("10.1.0.1"), config)
    now[0] = T0 + timedelta(seconds=30)
    reconciler.reconcile({WEB}, _cluster("10.1.0.1"), config)
    assert fake.deleted == [rs.key]
    fake.put(rs)
    now[0] = T0 + timedelta(seconds=31)
    result = reconciler.reconcile({WEB}, _cluster("10.1.0.1"), config)
    assert fake.deleted == [rs.key] and result.due == {WEB: now[0] + timedelta(seconds=30)}
    now[0] = T0 + timedelta(seconds=32)
    reconciler.sweep_table(fake.read_table(), _cluster("10.1.0.1"), config)  # a sweep keeps the new clock
    assert reconciler.reconcile({WEB}, _cluster("10.1.0.1"), config).due == {WEB: T0 + timedelta(seconds=61)}


def test_a_reconcile_says_when_each_waiting_virtual_service_becomes_due() -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=0)))
    reconciler, _ = _reconciler(fake)
    not_ready = cluster_state_from_items(
        [
            service("a", "web", ["10.96.0.2"], [port(80)]),
            endpoint_slice(
                "a", "web-1", "web", [port(8080)], [endpoint("10.1.0.1"), endpoint("10.1.0.2", False)]
            ),
            node("node-a", "192.168.49.2"),
        ]
    )
    result = reconciler.reconcile({WEB}, not_ready, Config())
    assert result.due == {WEB: T0 + timedelta(seconds=30)}  # the default not-ready grace
    assert fake.deleted == []


def test_after_a_listing_the_view_is_frozen_out_of_the_collectors_reach() -> None:
    import gc

    trims: list[int] = []
    try:
        settle_after_listing(lambda: trims.append(1))
        assert gc.get_freeze_count() > 0 and trims == [1]
        frozen = gc.get_freeze_count()
        settle_after_listing(lambda: trims.append(1))  # the next listing unfreezes, collects, freezes again
        assert 0 < gc.get_freeze_count() <= frozen + 1000
    finally:
        gc.unfreeze()
    heap_trimmer()()  # trims the C heap where there is glibc, and never fails where there is none
