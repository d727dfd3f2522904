"""The agent's moving parts on one event loop: feeding the cluster cache (a list-and-watch per kind, and
heartbeats), and the work loop that reconciles what events touched, reads again what its schedule says
(follow-ups on what kube-proxy has yet to weight to 0, grace ends, retries of failed deletes, rechecks of real
servers waiting to go idle; see schedule.py), and sweeps the whole table on a jittered interval.

Reconciles run in a thread one at a time, on a snapshot of the view taken on the loop: the cache is only ever
touched from the loop. Nothing here writes to the objects it watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ipvs_reaper.actor import ActionRecord, Outcome, log_recorder
from ipvs_reaper.agent.first_seen import FirstSeen
from ipvs_reaper.agent.k8s_events import EventReporter
from ipvs_reaper.agent.memory import heap_trimmer, settle_after_listing
from ipvs_reaper.agent.metrics import AgentMetrics
from ipvs_reaper.agent.options import AgentOptions
from ipvs_reaper.agent.reconciler import Reconciler, ReconcileResult, weight_zero_services
from ipvs_reaper.agent.schedule import ReapRetries, Schedule, Why, recheck_interval
from ipvs_reaper.cluster.cache import ENDPOINT_SLICE, NODE, SERVICE, Affected, ClusterCache, Parsed
from ipvs_reaper.cluster.reflector import Reflector, ReflectorTiming
from ipvs_reaper.cluster.watch_api import Collection, WatchApi
from ipvs_reaper.config import Config, SysctlMode
from ipvs_reaper.config_reload import ReloadingConfig
from ipvs_reaper.doctor.hostports import Names, hijacks
from ipvs_reaper.doctor.report import metrics_view
from ipvs_reaper.errors import ApiFailure
from ipvs_reaper.ipvs.backend import IpvsAbsent, IpvsBackend, IpvsError
from ipvs_reaper.kernel.addresses import AddressError
from ipvs_reaper.kernel.exposure import exposure_verdict
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.kernel.sysctl import EXPIRE_NODEST_CONN, SysctlError, Sysctls
from ipvs_reaper.netfilter.sources import RuleSources, read_live_rules
from ipvs_reaper.netfilter.walk import WalkTooLong
from ipvs_reaper.planner import RefusalKind
from ipvs_reaper.values import IPAddress, RealKey, VirtualKey, format_endpoint

log = logging.getLogger(__name__)

_CONFIG_POLL = 2.0  # seconds between looks at the mounted config file


@dataclass(frozen=True, slots=True)
class Clocks:
    """The agent's two clocks: monotonic seconds for scheduling and staleness, wall time for grace."""

    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


class Agent:
    def __init__(
        self,
        options: AgentOptions,
        *,
        api: WatchApi,
        backend: IpvsBackend,
        sysctls: Sysctls,
        local_addresses: Callable[[], tuple[IPAddress, ...]],
        kernel_facts: Callable[[], KernelFacts],
        metrics: AgentMetrics,
        read_rules: Callable[[], RuleSources] = read_live_rules,
        clocks: Clocks | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self._api = api
        self._local_addresses = local_addresses
        self._kernel_facts = kernel_facts
        # `uname -r` once read: the doctor's interface matches depend on it (unknown until then).
        self._kernel_release: str | None = None
        self._read_rules = read_rules
        self._backend = backend
        self._sysctls = sysctls
        self._sysctl_failure: str | None = None  # said once, until it changes or the write works
        self._ipvs_absent: bool | None = None  # None until the first read
        # The doctor pass's last conflicts (and whether the rules could be read): logged when they change.
        self._conflicts: frozenset[str] | None = None
        self._rules_unreadable: str | None = None
        self._rule_notes: tuple[str, ...] = ()
        self._clocks = clocks = clocks or Clocks()
        self._rng = rng or random.Random()
        self.cache = ClusterCache(options.node_name, clocks.monotonic, options.max_silence)
        self.config = ReloadingConfig(options.config_path)
        self.reconciler = Reconciler(
            node_name=options.node_name,
            backend=backend,
            sysctls=sysctls,
            first_seen=FirstSeen(options.first_seen_file),
            dry_run=options.dry_run,
            clock=clocks.now,
            recorder=self._record,
            breaker_window=options.sweep_interval,
            monotonic=clocks.monotonic,
            gone_settle=options.gone_settle,
        )
        self._events = (
            EventReporter(options.node_name, options.event_interval, clocks.monotonic)
            if options.post_events
            else None
        )
        self._wake = asyncio.Event()
        self._sweep_requested = True  # the first sweep runs as soon as the view is usable
        self._pending: set[VirtualKey] = set()
        # Virtual services to read again at a given moment, and how many follow-ups each has had.
        self._schedule = Schedule()
        self._follow_up_step: dict[VirtualKey, int] = {}
        self._retries = ReapRetries(options.reap_retry_delays)
        # Virtual services with a real server waiting for ActiveConn 0: their count sets the recheck cadence.
        self._idle_waits: set[VirtualKey] = set()
        self._failed_reads = 0  # reconciles in a row that could not read the table: their backoff
        # When a watch event last touched each virtual service: the start of event_to_reap_seconds.
        self._event_at: dict[VirtualKey, float] = {}
        # A dry run deletes nothing, so every sweep would decide the same again: each stale real server is
        # recorded (logged, counted, posted) the first time only, until it is no longer stale.
        self._would_reaped: set[RealKey] = set()
        self._repeated: set[int] = set()  # this reconcile's records of the above, by id, left out of Events
        self._last_refusal: str | None = None
        # What was last said about readiness, listings and addresses: one log line per change, not per try.
        self._said_not_ready: tuple[str, ...] | None = None
        self._address_error: str | None = None
        self._release_memory = heap_trimmer()
        self._reflectors: list[Reflector] = []
        self.last_loop = clocks.monotonic()
        config = self._refresh_config()  # readiness says why from the first request on
        if config is not None:
            self.cache.set_node_port_networks(config.node_port_networks)

    # --- feeding, from kopf's watch events -----------------------------------------------------------------

    def on_event(self, kind: str, event_type: str | None, body: Any) -> None:
        if not isinstance(body, dict):
            return
        affected = self.cache.remove(kind, body) if event_type == "DELETED" else self.cache.upsert(kind, body)
        self._note(affected)

    def request_sweep(self) -> None:
        self._sweep_requested = True
        self._wake.set()

    def _note(self, affected: Affected) -> None:
        if affected.everything:
            self.request_sweep()
        elif affected.keys:
            self._pending |= affected.keys
            now = self._clocks.monotonic()
            for key in affected.keys:  # kube-proxy reacts to this event too: follow up from the start
                self._follow_up_step.pop(key, None)
                self._event_at[key] = now
            self._wake.set()

    # --- readiness -----------------------------------------------------------------------------------------

    def not_ready_because(self) -> list[str]:
        problems = self.cache.problems
        reasons = list(problems)
        state = self.config.state
        if state.config is None:
            reasons.append(f"no good config yet: {state.error or 'not read yet'}")
        if self._sysctl_failure is not None:
            reasons.append(
                "expireNodestConn is enforce, but net.ipv4.vs.expire_nodest_conn cannot be set to 1, so "
                f"nothing is deleted: {self._sysctl_failure} (mount it writable, the chart's sysctlMount; or "
                "set it on the node; or use report-only)"
            )
        self.metrics.ready.set(0 if reasons else 1)
        self.metrics.view_ages(self.cache.heard_ages())
        self.metrics.view_unusable.set(1 if problems else 0)
        return reasons

    def _say_readiness(self) -> None:
        reasons = tuple(self.not_ready_because())
        if reasons == self._said_not_ready:
            return
        if reasons:
            log.warning("not ready, reaping nothing: %s", "; ".join(reasons))
        elif self._said_not_ready is not None:
            log.info("ready: reaping")
        else:
            log.info("ready")
        self._said_not_ready = reasons

    def alive(self) -> bool:
        """The work loop has come round recently (it wakes at least once per sweep interval)."""
        return self._clocks.monotonic() - self.last_loop < 3 * self.options.sweep_interval + 30

    # --- listing and watching (the reflectors' sink), and heartbeats ----------------------------------------

    def reflectors(self) -> list[Reflector]:
        """One list-and-watch per kind; the cache is usable once each has listed."""
        node = self.options.node_name
        collections = (
            Collection(SERVICE, "/api/v1/services"),
            Collection(ENDPOINT_SLICE, "/apis/discovery.k8s.io/v1/endpointslices"),
            # Only this node's Node: a cluster's Nodes change often and matter to no other node.
            Collection(NODE, "/api/v1/nodes", field_selector=f"metadata.name={node}"),
        )
        timing = ReflectorTiming(
            relist_spread=self.options.relist_spread,
            relist_interval=self.options.relist_interval,
            retry=self.options.retry_backoff,
        )
        self._reflectors = [
            Reflector(c, self._api, self, node, timing=timing, rng=self._rng, clock=self._clocks.monotonic)
            for c in collections
        ]
        return self._reflectors

    def begin_listing(self) -> int:
        return self.cache.begin_listing()

    def end_listing(self, since: int) -> None:
        self.cache.end_listing(since)

    def listed(self, kind: str, entries: list[Parsed], since: int) -> None:
        self.cache.replace_parsed(kind, entries, since)
        if self.cache.ready:
            settle_after_listing(self._release_memory)
            self.request_sweep()

    def heard(self, kind: str) -> None:
        self.cache.heard_from(kind)

    def lost(self, kind: str, why: str) -> None:
        self.cache.lost(kind, why)
        self.request_sweep()  # decisions now quote the gap; a sweep records the refusal

    def failed(self, site: str) -> None:
        self.metrics.errors.labels(site).inc()

    async def heartbeat_forever(self) -> None:
        """Prove the API still answers when a kind has been quiet (no event, no bookmark) for a heartbeat
        interval: an event-less watch looks the same as a dead one. A read of this node's Node from the watch
        cache (resourceVersion=0), never from etcd: only the API server's answer matters here."""
        failing = False
        path = f"/api/v1/nodes/{self.options.node_name}"
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            if not self.cache.silent_kinds(self.options.heartbeat_interval):
                continue
            try:
                node = await self._api.read(path, resource_version="0")
            except ApiFailure as error:
                if not failing:
                    log.error(
                        "the API does not answer; reaping pauses once it has been silent too long: %s", error
                    )
                failing = True
                self.metrics.errors.labels("heartbeat").inc()
                continue
            if failing:
                log.info("the API answers again")
            failing = False
            if node is not None:
                node["kind"] = NODE
                self._note(self.cache.upsert(NODE, node))
            for reflector in self._reflectors:
                if reflector.watching:  # a failing watch is not vouched for: its kind goes stale
                    self.cache.heard_from(reflector.kind)

    # --- the work loop -------------------------------------------------------------------------------------

    async def work_forever(self) -> None:
        next_sweep = self._clocks.monotonic()
        while True:
            now = self._clocks.monotonic()
            scheduled = self._schedule.next_at()
            deadline = min(next_sweep, now + _CONFIG_POLL, scheduled if scheduled is not None else next_sweep)
            if not self.cache.ready:
                # Nothing to decide before the first complete listing; it requests the first sweep.
                self.last_loop = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=_CONFIG_POLL)
                self._wake.clear()
                continue
            if not (self._pending or self._sweep_requested):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, deadline - now))
            self._wake.clear()
            now = self.last_loop = self._clocks.monotonic()
            config = self.config.state.config
            if self._sweep_requested or now >= next_sweep:
                self._sweep_requested = False
                if await self._run({"sweep"}, None, config):
                    jitter = self.options.sweep_jitter * self._rng.uniform(-1, 1)
                    next_sweep = now + self.options.sweep_interval * (1 + jitter)
                    self._release_memory()  # the whole table was read
                else:
                    next_sweep = now + self._failure_delay()  # not at once: that would spin
                # Then what events and the schedule ask, in the same turn: a sweep that takes longer than
                # the interval, or sweeps asked for again and again, must not starve them. Event keys need
                # their own read even after a sweep: it starts the follow-ups a sweep does not (a sweep
                # leaves weighted real servers out).
                now = self._clocks.monotonic()
            due = self._schedule.take_due(now)  # asked again after the read if still needed
            triggers: set[str] = set().union(*due.values())
            if self._pending - due.keys():
                triggers.add("event")
            keys, self._pending = self._pending | due.keys(), set()
            if keys and not await self._run(triggers, keys, config):
                for key in keys:  # an event's keys too: lost, they would wait for the next sweep
                    self._schedule.ask(key, now + self._failure_delay(), Why.RETRY)
            await self._post_events()

    def _failure_delay(self) -> float:
        delays = self.options.reap_retry_delays
        return delays[min(max(self._failed_reads, 1), len(delays)) - 1]

    async def config_forever(self) -> None:
        """Re-read the config and say what changed about readiness, and read the kernel's sysctls; runs from
        the start, whatever the API does, so a bad config is reported while the first listing is still
        failing, and a sysctl drifting back to 0 shows within seconds."""
        while True:
            before = self.config.state.config
            config = self._refresh_config()
            if config is not None and config != before:
                self.cache.set_node_port_networks(config.node_port_networks)
                self.request_sweep()  # decide again under the new policy now, not at the next sweep
            self._say_readiness()
            await self._read_kernel_facts()
            await asyncio.sleep(_CONFIG_POLL)

    async def doctor_forever(self) -> None:
        """The doctor's hostPort check, at start and then every --doctor-interval: reads only, never acts."""
        if self.options.doctor_interval <= 0:
            return
        # Not before the first complete listing: without it no virtual service can be named or told to be
        # kube-proxy's, and a pass would report (and alert on) what the view does not know yet.
        while not self.cache.ready:
            await asyncio.sleep(_CONFIG_POLL)
        while True:
            await self._doctor_pass()
            await asyncio.sleep(self.options.doctor_interval)

    async def _doctor_pass(self) -> None:
        rules = await asyncio.to_thread(self._read_rules)
        if not rules.read_any:
            why = "; ".join(rules.notes)
            if why != self._rules_unreadable:
                log.error("doctor: the node's NAT rules cannot be read, hostPort conflicts unknown: %s", why)
            self._rules_unreadable = why
            self.metrics.errors.labels("doctor").inc()
            return
        if rules.notes != self._rule_notes:
            # Some tool missing or failing (legacy iptables without NET_RAW...): the check is partial.
            for note in rules.notes:
                log.warning("doctor: %s", note)
            self._rule_notes = rules.notes
        try:
            # Beside a reconcile, as kube-proxy reads beside us: a table read changes nothing.
            table = await asyncio.to_thread(self._backend.read_table)
        except IpvsError as error:
            log.debug("doctor: reading the IPVS table: %s", error)
            self.metrics.errors.labels("doctor").inc()
            return
        cluster = self.cache.snapshot() if self.cache.ready else None
        names = Names(cluster, self.options.node_name, None if cluster else "no complete listing yet")
        try:
            findings = await asyncio.to_thread(
                hijacks, rules.tables, table, names, self._kernel_release, rules.ipsets
            )
        except WalkTooLong as error:
            if str(error) != self._rules_unreadable:
                log.error("doctor: %s", error)
            self._rules_unreadable = str(error)
            self.metrics.errors.labels("doctor").inc()
            return
        if self._rules_unreadable is not None:
            log.info("doctor: the node's NAT rules can be judged again")
        self._rules_unreadable = None
        self.metrics.conflicts(metrics_view(findings))
        said = {f"{f.title} [{f.evidence[0].source}: {f.evidence[0].rule}]" for f in findings}
        for line in sorted(said - (self._conflicts or frozenset())):
            log.warning("doctor: hostPort conflict: %s", line)
        for line in sorted((self._conflicts or frozenset()) - said):
            log.info("doctor: resolved: %s", line)
        self._conflicts = frozenset(said)

    def _refresh_config(self) -> Config | None:
        before = self.config.state.config
        state = self.config.refresh()
        self.metrics.config_error.set(1 if state.error else 0)
        self.metrics.config_missing.set(1 if state.config is None else 0)
        if state.config is not None:
            self.metrics.breaker_max_share.set(state.config.breaker.max_share)
        mode = state.config.expire_nodest_conn.value if state.config is not None else None
        self.metrics.mode_in_force(mode, state.checksum)
        if state.config is not None and state.config is not before:
            self.metrics.config_reload.set(self._clocks.now().timestamp())
        return state.config

    async def _read_local_addresses(self) -> None:
        """The node's interface addresses (kube-proxy's NodePort addresses); on failure the last ones read
        stay, and NodePorts on an address not known are kept, never reaped."""
        try:
            addresses = await asyncio.to_thread(self._local_addresses)
        except AddressError as error:
            if self._address_error != str(error):
                log.error("%s; NodePorts map only to the addresses already known", error)
            self._address_error = str(error)
            self.metrics.errors.labels("addresses").inc()
            return
        if self._address_error is not None:
            log.info("the node's addresses can be read again")
        self._address_error = None
        self.cache.set_local_addresses(addresses)

    async def _run(
        self, triggers: set[str], keys: Iterable[VirtualKey] | None, config: Config | None
    ) -> bool:
        """One reconcile; False when it could not run (no config, no table)."""
        if config is None:
            return False  # no good config has been read: defaults could reap more than the operator meant
        started = self._clocks.monotonic()
        wanted = frozenset(keys) if keys is not None else None
        try:
            if wanted is None:
                self._keep_expire_nodest_conn(config)
                await self._read_local_addresses()
                table = await asyncio.to_thread(self.reconciler.read_table)
                # The part of the view for the weight-0 real servers' virtual services decides as the whole
                # view would, at a cost in proportion to them rather than to the cluster.
                stale = weight_zero_services(table)
                view = self.cache.view_for(stale)
                result = await asyncio.to_thread(self.reconciler.sweep_table, table, view, config)
                self.metrics.swept(result.plan, table, self._clocks.now(), self._clocks.monotonic() - started)
                self._would_reaped &= {d.real_server.key for d in result.plan.decisions}
                self._forget_events(stale)
            else:
                view = self.cache.view_for(wanted)
                result = await asyncio.to_thread(self.reconciler.reconcile, wanted, view, config)
            self.metrics.view_unusable.set(0 if view.usable else 1)
        except IpvsAbsent as error:
            # Nothing to reap here, which is no failure: the pod stays ready and the next sweep looks again.
            self._say_ipvs(str(error))
            self.metrics.table_unreadable()
            return True
        except IpvsError as error:
            self._failed_reads += 1
            if self._failed_reads == 1:  # the sweep's and a service's read fail with different words
                log.error(
                    "%s: reading the IPVS table failed, reaping nothing until it works (tried again in %g s, "
                    "then backing off to %g s): %s",
                    "+".join(sorted(triggers)),
                    self._failure_delay(),
                    self.options.reap_retry_delays[-1],
                    error,
                )
            else:
                log.debug("%s: reading the IPVS table failed again: %s", "+".join(sorted(triggers)), error)
            self.metrics.errors.labels("ipvs").inc()
            if wanted is None:
                self.metrics.table_unreadable()
            return False
        self._say_ipvs(None)
        if self._failed_reads:
            log.info("the IPVS table can be read again")
        self._failed_reads = 0
        for trigger in triggers:
            self.metrics.reconciles.labels(trigger).inc()
        self._after(result, wanted)
        return True

    def _say_ipvs(self, absent: str | None) -> None:
        """One line when the node turns out to have no IPVS, and one when it has again."""
        if absent is not None and self._ipvs_absent is not True:
            log.info("no IPVS on this node (%s): nothing to reap; looked for again at every sweep", absent)
        elif absent is None and self._ipvs_absent is True:
            log.info("IPVS is loaded now: reaping")
        self._ipvs_absent = absent is not None
        self.metrics.ipvs_loaded.set(0 if absent is not None else 1)

    def _keep_expire_nodest_conn(self, config: Config) -> None:
        """With `enforce`, expire_nodest_conn=1 at every sweep, not only before a deletion. On a kernel with
        c95c07836fa4 (5.10.83, 5.15.6, 5.16 and later) it alone sends a reused source port's new connection
        away from a weight-0 real server, so it covers the terminating pod that is still serving and must not
        be deleted yet; the rollout lab (docs/rollout.md) counted the failures without it."""
        if config.expire_nodest_conn is not SysctlMode.ENFORCE or self.options.dry_run:
            self._sysctl_failure = None  # nothing to write, nothing failing
            return
        try:
            was = self._sysctls.read(EXPIRE_NODEST_CONN)
            if was is None:
                return  # no ip_vs loaded: nothing to keep, and the table read says so
            if was != 1:
                self._sysctls.write(EXPIRE_NODEST_CONN, 1)
                log.info(
                    "set net.ipv4.vs.expire_nodest_conn=1 (it was %s): new connections leave weight-0 real "
                    "servers, and a deleted one's connection entries are not dropped",
                    was,
                )
        except SysctlError as error:
            if str(error) != self._sysctl_failure:
                log.warning("cannot keep net.ipv4.vs.expire_nodest_conn=1 (tried at every sweep): %s", error)
            self._sysctl_failure = str(error)
            return
        if self._sysctl_failure is not None:
            log.info("net.ipv4.vs.expire_nodest_conn is 1 again")
        self._sysctl_failure = None

    async def _read_kernel_facts(self) -> None:
        """The sysctls and the exposure verdict, for metrics (three small files)."""
        try:
            facts = await asyncio.to_thread(self._kernel_facts)
        except SysctlError as error:
            log.debug("reading the IPVS sysctls: %s", error)
            self.metrics.errors.labels("sysctl").inc()
            return
        self._kernel_release = facts.release
        self.metrics.kernel(facts, exposure_verdict(facts).exposure)

    def _forget_events(self, stale: frozenset[VirtualKey]) -> None:
        """Event times of virtual services with nothing left to reap or to follow up (bounded memory)."""
        for key in [k for k in self._event_at if k not in stale and k not in self._schedule]:
            if key not in self._pending:
                del self._event_at[key]

    def _after(self, result: ReconcileResult, read: frozenset[VirtualKey] | None) -> None:
        refusal = result.plan.refusal
        kind = result.plan.refusal_kind
        if kind is None and any(r.outcome is Outcome.REFUSED for r in result.applied.records):
            kind = RefusalKind.SYSCTL  # expire_nodest_conn could not be set: each record says so
        self.metrics.refused(kind)
        now = self._clocks.monotonic()
        for record in result.applied.records:
            at = self._event_at.get(record.decision.real_server.key.virtual)
            first = id(record) not in self._repeated
            if at is not None and first and record.outcome in (Outcome.DELETED, Outcome.WOULD_DELETE):
                self.metrics.event_to_reap.observe(now - at)
        if refusal is not None:
            if refusal != self._last_refusal:
                log.warning("reaping nothing: %s", refusal)
        elif self._last_refusal is not None:
            log.info("reaping resumed")
        self._last_refusal = refusal
        # What this reconcile read is scheduled again from what it found; a sweep read only the weight-0
        # real servers, and the follow-ups on weighted ones stand.
        for key in read if read is not None else ():
            self._schedule.cancel(key)
            if key not in result.follow_up:
                self._follow_up_step.pop(key, None)
        # Follow-ups: read again, at growing delays, what kube-proxy still has to set to weight 0.
        delays = self.options.follow_up_delays
        for key in result.follow_up:
            step = self._follow_up_step.get(key, 0)
            if step < len(delays):  # after the last, the sweep takes it from here
                self._follow_up_step[key] = step + 1
                self._schedule.ask(key, now + delays[step], Why.FOLLOW_UP)
        # A grace period or a cap ends: read that virtual service again then, not at the next sweep.
        wall = self._clocks.now()
        for key, when in result.due.items():
            self._schedule.ask(key, now + max(0.0, (when - wall).total_seconds()), Why.DUE)
        self._schedule_rechecks(result, read, now)
        self._note_retries(result, read, now)
        if self._events is not None:
            self._events.add(r for r in result.applied.records if id(r) not in self._repeated)
        self._repeated.clear()

    def _schedule_rechecks(
        self, result: ReconcileResult, read: frozenset[VirtualKey] | None, now: float
    ) -> None:
        """Real servers waiting for ActiveConn 0 are read again soon, so that the delete follows within
        seconds of the last connection's end; all of them together within the reads-per-second budget."""
        if read is None:
            self._idle_waits = set(result.idle_waits)
        else:  # in place: the cost of a small reconcile is its own size, not the node's waits
            self._idle_waits -= read
            self._idle_waits |= result.idle_waits
        options = self.options
        interval = recheck_interval(len(self._idle_waits), options.recheck_interval, options.recheck_rate)
        self.metrics.rechecks(len(self._idle_waits), interval)
        for key in result.idle_waits:
            # Spread within the interval: a wave's rechecks would otherwise all come due together.
            self._schedule.ask(key, now + interval * self._rng.uniform(0.5, 1.5), Why.RECHECK)

    def _note_retries(self, result: ReconcileResult, read: frozenset[VirtualKey] | None, now: float) -> None:
        """A failed delete is tried again within seconds, backing off per real server; one log line when it
        starts failing, when its error changes and when it ends, and the outcome of each retry counted."""
        attempted = set()
        for record in result.applied.records:
            key = record.decision.real_server.key
            attempted.add(key)
            if record.outcome is Outcome.FAILED:
                failing, before = self._retries.failed(key, record.detail)
                self._schedule.ask(key.virtual, now + failing.delay, Why.RETRY)
                if before is not None:
                    self.metrics.retried(record.outcome)
                if before is None or before.error != failing.error:
                    log.warning(
                        "%s: delete failed (attempt %d), trying again in %g s, backing off to %g s: %s",
                        _describe(key),
                        failing.attempts,
                        failing.delay,
                        self.options.reap_retry_delays[-1],
                        record.detail,
                    )
            else:
                ended = self._retries.ended(key)
                if ended is not None:
                    self.metrics.retried(record.outcome)
                    log.info(
                        "%s: %s on attempt %d: %s",
                        _describe(key),
                        record.outcome.value,
                        ended.attempts + 1,
                        record.detail,
                    )
        for key in self._retries.of(read):
            ended = self._retries.ended(key) if key not in attempted else None
            if ended is None:
                continue
            self.metrics.retried(None)
            decision = next((d for d in result.plan.decisions if d.real_server.key == key), None)
            why = f"{decision.action.value}: {decision.reason}" if decision else "not at weight 0 any more"
            log.info("%s: no longer retried after %d failures: %s", _describe(key), ended.attempts, why)
        self.metrics.retrying.set(len(self._retries))

    def _record(self, record: ActionRecord) -> None:
        if record.outcome is Outcome.FAILED:
            failing = self._retries.get(record.decision.real_server.key)
            if failing is not None and failing.error == record.detail:
                self.metrics.record(record)  # the same failure again: said when it began, counted here
                return
        if record.outcome is Outcome.WOULD_DELETE:
            key = record.decision.real_server.key
            if key in self._would_reaped:
                self._repeated.add(id(record))
                return
            self._would_reaped.add(key)
        log_recorder(record)
        self.metrics.record(record)

    async def _post_events(self) -> None:
        if self._events is None:
            return
        for namespace, body in self._events.due(self._clocks.now()):
            try:
                await self._api.create(f"/api/v1/namespaces/{namespace}/events", body)
                self.metrics.events_posted.inc()
            except ApiFailure as error:
                log.warning("Event not posted (the deletion itself is logged): %s", error)
                self.metrics.errors.labels("event").inc()


def _describe(key: RealKey) -> str:
    return f"{key.virtual} -> {format_endpoint(key.address, key.port)}"
