"""Between sweeps: a failed delete is retried within seconds with a backoff per real server, a reconcile that
could not read the table is tried again, and a real server waiting for ActiveConn 0 is read again at a short
cadence within a budget of reads. The sweep is 30 s away in every test here, so only these can act."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.agent.options import AgentOptions
from ipvs_reaper.agent.schedule import ReapRetries, Schedule, Why, recheck_interval
from ipvs_reaper.ipvs.backend import IpvsError
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey
from tests.agent.harness import SERVICES, SLICES, Cluster, eventually, options, real, running, table, vip
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint, port, service

DELAYS = (0.2, 0.4, 0.8)


class Attempts:
    """Times of delete attempts, from the fake's hook; the first `failures` fail with EPERM."""

    def __init__(self, fake: FakeIpvs, key: RealKey, failures: int) -> None:
        self.times: list[float] = []
        self._fake, self._key, self._left = fake, key, failures
        fake.fail_deletes[key] = errno.EPERM
        fake.before_delete = self

    def __call__(self, key: RealKey) -> None:
        if key != self._key:
            return
        self.times.append(time.monotonic())
        self._left -= 1
        if self._left < 0:
            self._fake.fail_deletes.pop(key, None)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def waiting_for_idle(tmp_path: Path, **overrides: Any) -> AgentOptions:
    """A gone pod's real server is reaped at once by default; these tests wait on the idle rule itself."""
    config = tmp_path / "config.yaml"
    config.write_text("policy:\n  gone: {reap: idle, maxWaitSeconds: 300}\n")
    return replace(options(tmp_path, overrides.pop("url"), **overrides), config_path=config)


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_failed_delete_is_retried_with_backoff_and_said_once(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gone = real(WEB, "10.1.0.2", 8080, weight=1)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    attempts = Attempts(fake, gone.key, failures=4)
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2")))
        # Heartbeats (each a sweep when the Node reads differently) not within the retries' 2 s.
        quiet = options(
            tmp_path, str(api.url), reap_retry_delays=DELAYS, heartbeat_interval=10, max_silence=30
        )
        async with running(quiet, fake) as agent:
            sweeps = agent.metrics.reconciles.labels("sweep")
            await eventually(lambda: sweeps._value.get() >= 1, what="swept")
            await asyncio.sleep(0.5)  # each kind's first listing asks for a sweep
            swept = sweeps._value.get()
            # The pod goes: kube-proxy sets its weight to 0, the slice drops it. Only the event's reconcile
            # and the retries try to delete it (the next sweep is 30 s away).
            fake.set_weight(gone.key, 0)
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))
            await eventually(lambda: fake.deleted == [gone.key], timeout=20, what="deleted on a retry")
            retries = agent.metrics.retries
            assert retries.labels("failed")._value.get() == 3
            assert retries.labels("deleted")._value.get() == 1
            assert agent.metrics.retrying._value.get() == 0
            assert sweeps._value.get() == swept
    assert len(attempts.times) == 5
    # Each pause at least its step of the backoff, the last step repeated: never sooner.
    for gap, least in zip(attempts.gaps(), (0.2, 0.4, 0.8, 0.8), strict=True):
        assert gap >= least * 0.95, attempts.gaps()
    # One line when it starts failing, one when it ends; the repeats are counted, not logged.
    assert len(said(caplog, "delete failed (attempt 1)")) == 1
    assert said(caplog, "delete failed (attempt 2)") == []
    assert len(said(caplog, "deleted on attempt 5")) == 1
    assert len(said(caplog, '"outcome": "failed"')) == 1


async def test_a_retry_ends_when_the_endpoint_is_wanted_again(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gone = real(WEB, "10.1.0.2", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    attempts = Attempts(fake, gone.key, failures=1000)
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), reap_retry_delays=DELAYS), fake) as agent:
            await eventually(lambda: len(attempts.times) >= 2, timeout=20, what="a retry")
            assert agent.metrics.retrying._value.get() == 1
            # The pod is back (a rollback): kube-proxy weights it again, and the slice lists it ready.
            fake.set_weight(gone.key, 1)
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2")))
            await eventually(lambda: agent.metrics.retrying._value.get() == 0, timeout=20, what="retry ended")
            tried = len(attempts.times)
            await asyncio.sleep(2 * DELAYS[-1])
            assert len(attempts.times) == tried
    assert fake.deleted == []
    assert len(said(caplog, "no longer retried after")) + len(said(caplog, "skipped on attempt")) == 1


class FlakyReads(FakeIpvs):
    """Every read fails while `broken` is set, as a netlink socket that keeps answering ECONNRESET."""

    def __init__(self, initial: IpvsTable) -> None:
        super().__init__(initial)
        self.broken = threading.Event()
        self.table_reads = 0

    def read_table(self) -> IpvsTable:
        self.table_reads += 1
        if self.broken.is_set():
            raise IpvsError("reading the table over netlink: (104, 'Connection reset by peer')")
        return super().read_table()

    def read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        if self.broken.is_set():
            raise IpvsError(f"reading {virtual} over netlink: (104, 'Connection reset by peer')")
        return super().read_service(virtual)


async def test_an_events_reconcile_that_cannot_read_is_tried_again_not_at_the_next_sweep(
    api: Any, tmp_path: Path
) -> None:
    gone = real(WEB, "10.1.0.2", 8080)
    fake = FlakyReads(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2")))
        async with running(options(tmp_path, str(api.url), reap_retry_delays=DELAYS), fake) as agent:
            await eventually(lambda: agent.metrics.reconciles.labels("sweep")._value.get() >= 1, what="swept")
            fake.broken.set()
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))
            errors = agent.metrics.errors.labels("ipvs")
            await eventually(lambda: errors._value.get() >= 2, timeout=20, what="the event's read, retried")
            fake.broken.clear()
            await eventually(lambda: fake.deleted == [gone.key], timeout=20, what="deleted once reads work")
            assert agent.metrics.reconciles.labels("retry")._value.get() >= 1


async def test_a_sweep_that_cannot_read_backs_off_instead_of_spinning(api: Any, tmp_path: Path) -> None:
    fake = FlakyReads(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    fake.broken.set()
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), reap_retry_delays=DELAYS), fake) as agent:
            await eventually(lambda: fake.table_reads >= 1, timeout=20, what="a first sweep")
            started, reads = time.monotonic(), fake.table_reads
            await asyncio.sleep(3)
            took = time.monotonic() - started
            assert agent.metrics.errors.labels("ipvs")._value.get() >= 2
    # Never sooner than the shortest pause (0.2 s): a handful in 3 s, where a spinning loop reads thousands
    # of times.
    assert fake.table_reads - reads <= 1 + took / DELAYS[0]


async def test_a_real_server_waiting_for_idle_is_deleted_soon_after_its_last_connection(
    api: Any, tmp_path: Path
) -> None:
    busy = real(WEB, "10.1.0.2", 8080, active=3)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), busy))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(waiting_for_idle(tmp_path, url=str(api.url), recheck_interval=0.2), fake) as agent:
            await eventually(lambda: agent.metrics.idle_waits._value.get() == 1, what="waiting for idle")
            rechecks = agent.metrics.reconciles.labels("recheck")
            await eventually(lambda: rechecks._value.get() >= 2, timeout=10, what="read again while waiting")
            assert fake.deleted == []
            fake.put(replace(busy, active_conns=0, inactive_conns=7))
            await eventually(lambda: fake.deleted == [busy.key], timeout=10, what="deleted once idle")
            await eventually(lambda: agent.metrics.idle_waits._value.get() == 0, what="no longer waiting")


async def test_rechecks_of_many_waiting_services_stay_within_the_reads_budget(
    api: Any, tmp_path: Path
) -> None:
    """Forty virtual services waiting, a budget of 20 reads a second: each is read every 2 s, not 0.2."""
    services = [f"10.96.1.{n}" for n in range(1, 41)]
    busy = [real(vip(address, 80), "10.1.0.9", 8080, active=1) for address in services]
    fake = FakeIpvs(table(*busy))
    reads: list[float] = []
    original = fake.read_service

    def counted(virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        reads.append(time.monotonic())
        return original(virtual)

    fake.read_service = counted  # type: ignore[method-assign]
    opts = waiting_for_idle(tmp_path, url=str(api.url), recheck_interval=0.2, recheck_rate=20.0)
    async with Cluster(str(api.url)) as cluster:
        for n, address in enumerate(services):
            await cluster.create(SERVICES, service("a", f"svc-{n}", [address], [port(80)]))
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(opts, fake) as agent:
            await eventually(lambda: agent.metrics.idle_waits._value.get() == 40, timeout=20, what="waiting")
            assert agent.metrics.recheck_interval._value.get() == pytest.approx(2.0)
            start = time.monotonic()
            await asyncio.sleep(6)
            window = [t for t in reads if t >= start]
    # 20 a second on average; the spread within the interval allows bursts, not a higher average.
    assert len(window) <= 20 * 6 * 1.5, len(window)
    assert len(window) >= 40, "every waiting virtual service is read again within the window"


def test_the_schedule_keeps_the_earliest_moment_and_every_reason() -> None:
    schedule = Schedule()
    key = vip("10.96.0.9", 80)
    schedule.ask(key, 5.0, Why.RECHECK)
    schedule.ask(key, 2.0, Why.RETRY)
    schedule.ask(key, 9.0, Why.DUE)
    assert schedule.next_at() == 2.0
    assert schedule.take_due(1.9) == {}
    assert schedule.take_due(2.0) == {key: frozenset({Why.RECHECK, Why.RETRY, Why.DUE})}
    assert key not in schedule and schedule.next_at() is None


def test_retry_backoff_grows_to_its_last_step_and_ends() -> None:
    retries = ReapRetries((1.0, 2.0, 5.0))
    key = real(WEB, "10.1.0.2", 8080).key
    steps = [retries.failed(key, "EPERM")[0].delay for _ in range(5)]
    assert steps == [1.0, 2.0, 5.0, 5.0, 5.0]
    ended = retries.ended(key)
    assert ended is not None and ended.attempts == 5
    assert retries.ended(key) is None and len(retries) == 0
    assert recheck_interval(10, 2.0, 50.0) == 2.0
    assert recheck_interval(1000, 2.0, 50.0) == 20.0


class SlowTable(FakeIpvs):
    """A whole-table read slower than the sweep interval: a sweep is always due when one ends."""

    def read_table(self) -> IpvsTable:
        time.sleep(0.1)
        return super().read_table()


async def test_sweeps_back_to_back_do_not_starve_the_schedule(api: Any, tmp_path: Path) -> None:
    busy = real(WEB, "10.1.0.2", 8080, active=3)
    fake = SlowTable(table(real(WEB, "10.1.0.1", 8080, weight=1), busy))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        opts = waiting_for_idle(tmp_path, url=str(api.url), sweep_interval=0.05, recheck_interval=0.2)
        async with running(opts, fake) as agent:
            sweeps = agent.metrics.reconciles.labels("sweep")
            rechecks = agent.metrics.reconciles.labels("recheck")
            await eventually(lambda: sweeps._value.get() >= 5, timeout=20, what="sweeps")
            await eventually(lambda: rechecks._value.get() >= 3, timeout=20, what="rechecks between sweeps")
