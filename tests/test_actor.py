from __future__ import annotations

import errno
import ipaddress
import sys
import threading
from datetime import UTC, datetime

from ipvs_reaper.actor import ActionRecord, Outcome, apply_plan
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.mapping import EndpointState, EndpointStatus
from ipvs_reaper.planner import Action, Decision, Plan
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService

NOW = datetime(2026, 11, 22, tzinfo=UTC)
VIP = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.2"), 80)


def real(last: int, weight: int = 0, active: int = 0) -> RealServer:
    return RealServer(RealKey(VIP, ipaddress.ip_address(f"10.1.0.{last}"), 8080), "Masq", weight, active, 3)


def setup(*reals: RealServer, needs_sysctl: bool = False) -> tuple[Plan, FakeIpvs]:
    decisions = tuple(
        Decision(
            rs,
            "app/web",
            EndpointStatus(EndpointState.GONE),
            Action.REAP,
            "gone and idle",
            requires_idle=True,
        )
        for rs in reals
    )
    plan = Plan(decisions=decisions, first_seen={}, needs_expire_nodest_conn=needs_sysctl)
    return plan, FakeIpvs(IpvsTable((VirtualService(VIP, "rr"),), reals))


def run(
    plan: Plan, fake: FakeIpvs, sysctls: FakeSysctls | None = None, dry_run: bool = False
) -> list[ActionRecord]:
    records: list[ActionRecord] = []
    apply_plan(
        plan, fake, sysctls or FakeSysctls(), dry_run=dry_run, clock=lambda: NOW, recorder=records.append
    )
    return records


def test_deletes_and_records_each() -> None:
    plan, fake = setup(real(1), real(2))
    records = run(plan, fake)
    assert [r.outcome for r in records] == [Outcome.DELETED, Outcome.DELETED]
    assert fake.real_servers == {}
    assert records[0].as_json()["real"] == "10.1.0.1:8080"


def test_dry_run_rechecks_but_deletes_nothing() -> None:
    plan, fake = setup(real(1), real(2), needs_sysctl=True)
    fake.set_weight(real(2).key, 1)
    sysctls = FakeSysctls({"expire_nodest_conn": 0})
    records = run(plan, fake, sysctls, dry_run=True)
    assert [r.outcome for r in records] == [Outcome.WOULD_DELETE, Outcome.SKIPPED]
    assert fake.deleted == [] and sysctls.writes == []
    assert all(r.dry_run for r in records)


def test_weight_change_and_new_connections_skip() -> None:
    plan, fake = setup(real(1), real(2))
    fake.set_weight(real(1).key, 1)
    fake.real_servers[real(2).key] = real(2, active=4)
    records = run(plan, fake)
    assert [(r.outcome, r.detail) for r in records] == [
        (Outcome.SKIPPED, "weight changed to 1 since the table was read"),
        (Outcome.SKIPPED, "ActiveConn rose to 4 since the table was read"),
    ]
    assert fake.deleted == []


def test_kube_proxy_deleting_first_is_success() -> None:
    plan, fake = setup(real(1), real(2))
    del fake.real_servers[real(1).key]
    fake.before_delete = lambda key: fake.real_servers.pop(key)
    records = run(plan, fake)
    assert [r.outcome for r in records] == [Outcome.ALREADY_GONE, Outcome.ALREADY_GONE]


def test_failure_of_one_does_not_stop_the_rest() -> None:
    plan, fake = setup(real(1), real(2))
    fake.fail_deletes[real(1).key] = errno.EPERM
    records = run(plan, fake)
    assert [r.outcome for r in records] == [Outcome.FAILED, Outcome.DELETED]
    assert records[0].failure_reason == "EPERM"


def test_sysctl_is_set_before_deleting() -> None:
    plan, fake = setup(real(1), needs_sysctl=True)
    sysctls = FakeSysctls({"expire_nodest_conn": 0})
    assert [r.outcome for r in run(plan, fake, sysctls)] == [Outcome.DELETED]
    assert sysctls.writes == [("expire_nodest_conn", 1)]


def test_unwritable_sysctl_refuses_every_delete() -> None:
    plan, fake = setup(real(1), real(2), needs_sysctl=True)
    records = run(plan, fake, FakeSysctls({"expire_nodest_conn": 0}, writable=False))
    assert {r.outcome for r in records} == {Outcome.REFUSED}
    assert "Read-only" in records[0].detail
    assert fake.deleted == []


def test_the_fake_table_can_be_read_while_another_thread_deletes() -> None:
    """The agent's doctor pass reads the table beside reconciles, as the kernel's can be; the fake must allow
    it too (without its lock this fails within a few thousand deletions)."""
    services, real_servers = [], []
    for i in range(1000):
        virtual = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address(f"10.96.{i // 250}.{i % 250}"), 80)
        services.append(VirtualService(virtual, "rr"))
        for j in range(3):
            key = RealKey(virtual, ipaddress.ip_address(f"10.1.{i // 250}.{j}"), 80 + i)
            real_servers.append(RealServer(key, "Masq", 0, 0, 0))
    fake = FakeIpvs(IpvsTable(tuple(services), tuple(real_servers)))
    deleting = threading.Event()
    deleting.set()
    failures: list[RuntimeError] = []

    def read() -> None:
        while deleting.is_set():
            try:
                fake.read_table()
            except RuntimeError as error:
                failures.append(error)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often
    reader = threading.Thread(target=read)
    try:
        reader.start()
        for rs in real_servers:
            fake.delete_real_server(rs.key)
    finally:
        deleting.clear()
        reader.join()
        sys.setswitchinterval(interval)
    assert failures == []
    assert fake.read_table().real_servers == ()
