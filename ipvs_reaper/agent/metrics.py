"""The agent's Prometheus metrics, in a registry of its own (no process-wide default registry).

The names are a contract (alerts and dashboards use them; the README lists each). Every labelled series is
created at 0 for each label value it can take, so `rate()` and `absent()` work from the first scrape, and no
label carries a pod, an address or anything else without a bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from ipvs_reaper.actor import ActionRecord, Outcome
from ipvs_reaper.agent.schedule import Why
from ipvs_reaper.kernel.exposure import Exposure
from ipvs_reaper.kernel.facts import KernelFacts
from ipvs_reaper.kernel.sysctl import IPVS_SYSCTLS
from ipvs_reaper.mapping import EndpointState
from ipvs_reaper.planner import Action, Plan, RefusalKind
from ipvs_reaper.values import IpvsTable, Protocol, RealKey

REAPED_STATES = (EndpointState.GONE, EndpointState.TERMINATING, EndpointState.NOT_READY)
PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
# Every reason a failure can be counted under, pre-created at 0: a series that first appears at 1 has no
# increase() for an alert to see. Any other errno is counted as `other` (the log line names it).
FAILURE_REASONS = (
    "EPERM",
    "EACCES",
    "EINVAL",
    "ENOMEM",
    "EBUSY",
    "EIO",
    "ENOBUFS",
    "EAGAIN",
    "EINTR",
    "ECONNRESET",
    "ETIMEDOUT",
    "EOPNOTSUPP",
    "ENOENT",
    "ESRCH",
    "sysctl",
    "reread",
    "other",
)
TABLE_PARTS = ("virtual_services", "real_servers", "weight_zero")
ERROR_SITES = ("ipvs", "list", "watch", "heartbeat", "event", "addresses", "sysctl", "doctor")
TRIGGERS = ("sweep", "event", *(why.value for why in Why))
# A retried delete's outcome; `dropped`: no longer to be deleted (kept, waiting, or gone from the table).
RETRY_OUTCOMES = (Outcome.DELETED, Outcome.ALREADY_GONE, Outcome.SKIPPED, Outcome.FAILED, Outcome.REFUSED)
_EXPOSED = {Exposure.EXPOSED: 1, Exposure.NOT_EXPOSED: 0, Exposure.UNKNOWN: -1}


class AgentMetrics:
    def __init__(self, *, dry_run: bool = False, version: str = "", kernel_release: str = "") -> None:
        # `_created` series double every counter's cardinality and no alert of ours reads them. The switch is
        # the library's, for the whole process: the agent is the only user of prometheus_client in it.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry()
        # process_* (memory, CPU, open fds, start time) and python_info, as the default registry would have.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.dry_run = dry_run
        # When each real server the policy says to reap was first seen so, at a sweep (the overdue gauge).
        self._due_since: dict[RealKey, datetime] = {}
        # Exactly one of the two exists: a dashboard never shows deletions that a dry run did not make.
        reaped_name, reaped_help = (
            ("ipvs_reaper_would_reap", "Real servers a dry run would have deleted, by endpoint state")
            if dry_run
            else ("ipvs_reaper_reaped", "Real servers deleted, by the endpoint state that made them stale")
        )
        self.reaped = Counter(reaped_name, reaped_help, ["state", "protocol"], registry=r)
        self.reap_failures = Counter(
            "ipvs_reaper_reap_failures",
            "Deletions that failed, by errno name (sysctl: expire_nodest_conn could not be set first; "
            "reread: the real server could not be read again before deleting)",
            ["reason"],
            registry=r,
        )
        self.refusals = Counter(
            "ipvs_reaper_refusals",
            "Reconciles that deleted nothing on purpose, by why (breaker, sysctl, view)",
            ["reason"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "ipvs_reaper_breaker_open",
            "1 while the last reconcile was refused by the circuit breaker",
            registry=r,
        )
        self.stale = Gauge(
            "ipvs_reaper_stale_real_servers",
            "Weight-0 real servers at the last sweep, by endpoint state and decision (reap, wait, keep)",
            ["state", "decision"],
            registry=r,
        )
        self.overdue = Gauge(
            "ipvs_reaper_overdue_seconds",
            "At the last sweep, how long the longest-due real server has been due for deletion (its policy "
            "said reap) and is still in the table: held by the breaker, a report-only sysctl, failing "
            "deletes or the per-sweep cap; 0 when none, and always 0 in a dry run",
            registry=r,
        )
        self.ipvs_loaded = Gauge(
            "ipvs_reaper_ipvs_loaded",
            "1 while the node has IPVS (ip_vs loaded), 0 while it has none (nothing to reap), -1 before the "
            "first read",
            registry=r,
        )
        self.breaker_share = Gauge(
            "ipvs_reaper_breaker_share",
            "At the last sweep, the share of the node's real servers its deletions (with those of the "
            "breaker's window) came to; the breaker refuses above ipvs_reaper_breaker_max_share",
            registry=r,
        )
        self.breaker_max_share = Gauge(
            "ipvs_reaper_breaker_max_share", "breaker.maxShare of the config in force", registry=r
        )
        self.view_age = Gauge(
            "ipvs_reaper_view_age_seconds",
            "Seconds since the API was last heard from about each kind (an event, a bookmark, a listing; for "
            "Node also the heartbeat); -1 before the first time",
            ["kind"],
            registry=r,
        )
        self.mode = Gauge(
            "ipvs_reaper_mode_info",
            "Always 1: the mode in force: dry_run (true, false), expire_nodest_conn (enforce, report-only, "
            "ignore; none before a good config) and config_checksum (the first 12 hex digits of the config "
            "file's sha256, defaults without a file)",
            ["dry_run", "expire_nodest_conn", "config_checksum"],
            registry=r,
        )
        self.table_size = Gauge(
            "ipvs_reaper_table_size",
            "The node's IPVS table at the last sweep: virtual_services, real_servers, weight_zero (-1 before "
            "the first read, or when it cannot be read)",
            ["part"],
            registry=r,
        )
        self.stale_oldest_age = Gauge(
            "ipvs_reaper_stale_oldest_age_seconds",
            "How long the oldest weight-0 real server still waiting (decision wait) has been at weight 0",
            registry=r,
        )
        self.sweep_duration = Histogram(
            "ipvs_reaper_sweep_duration_seconds",
            "Time to read, plan and apply one whole-table sweep",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.last_sweep = Gauge(
            "ipvs_reaper_last_sweep_timestamp_seconds",
            "Unix time the last whole-table sweep ended",
            registry=r,
        )
        self.event_to_reap = Histogram(
            "ipvs_reaper_event_to_reap_seconds",
            "From the watch event that made a real server stale to its deletion",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.ready = Gauge(
            "ipvs_reaper_ready",
            "1 once the view is complete and fresh and a good config is in force",
            registry=r,
        )
        self.view_unusable = Gauge(
            "ipvs_reaper_cluster_view_unusable",
            "1 while the cluster view is incomplete or stale: reaping is paused",
            registry=r,
        )
        self.config_error = Gauge(
            "ipvs_reaper_config_error",
            "1 while the config file is rejected (the last good one applies, if any)",
            registry=r,
        )
        self.config_missing = Gauge(
            "ipvs_reaper_config_missing",
            "1 while no good config has ever been read: nothing is reaped",
            registry=r,
        )
        self.config_reload = Gauge(
            "ipvs_reaper_config_last_reload_timestamp_seconds",
            "Unix time a changed config was last read and accepted",
            registry=r,
        )
        self.node_exposed = Gauge(
            "ipvs_reaper_node_exposed",
            "Whether a reused source port can reach a dead pod on this node: 1 exposed, 0 not, -1 unknown",
            registry=r,
        )
        self.hostport_conflicts = Gauge(
            "ipvs_reaper_hostport_conflicts",
            "Port-forwarding (hostPort) rules that take a virtual service's traffic before IPVS sees it, by "
            "the virtual service's protocol and port, its Service (empty when not named) and certainty "
            "(certain: whatever the packet; possible: under a condition the rules cannot judge); doctor pass",
            ["protocol", "port", "service", "certainty"],
            registry=r,
        )
        self.sysctl = Gauge(
            "ipvs_reaper_sysctl",
            "The node's net.ipv4.vs sysctls as last read (-1: not present, ip_vs not loaded)",
            ["name"],
            registry=r,
        )
        self.build_info = Gauge(
            "ipvs_reaper_build_info",
            "Always 1: the version and the node's kernel",
            ["version", "kernel_release"],
            registry=r,
        )
        self.reconciles = Counter(
            "ipvs_reaper_reconciles",
            "Reconciles, by trigger (event, follow-up, sweep)",
            ["trigger"],
            registry=r,
        )
        self.errors = Counter(
            "ipvs_reaper_errors",
            "Failures to read or talk, by where (ipvs, list, watch, heartbeat, event, addresses, sysctl, "
            "doctor)",
            ["where"],
            registry=r,
        )
        self.events_posted = Counter("ipvs_reaper_events_posted", "Kubernetes Events posted", registry=r)
        self.retries = Counter(
            "ipvs_reaper_reap_retries",
            "Retries of failed deletes, by outcome (deleted, already-gone, skipped, failed, refused; "
            "dropped: no longer to be deleted)",
            ["outcome"],
            registry=r,
        )
        self.retrying = Gauge(
            "ipvs_reaper_reap_retrying",
            "Real servers whose delete failed and is being retried",
            registry=r,
        )
        self.idle_waits = Gauge(
            "ipvs_reaper_idle_wait_virtual_services",
            "Virtual services with a real server waiting for its ActiveConn to reach 0, read again every "
            "ipvs_reaper_recheck_interval_seconds",
            registry=r,
        )
        self.recheck_interval = Gauge(
            "ipvs_reaper_recheck_interval_seconds",
            "How often each of them is read again: --recheck-interval, longer when --recheck-rate says so",
            registry=r,
        )
        self._initialise(version, kernel_release)

    def _initialise(self, version: str, kernel_release: str) -> None:
        for state in REAPED_STATES:
            for protocol in PROTOCOLS:
                self.reaped.labels(state.value, protocol.value)
        for reason in FAILURE_REASONS:
            self.reap_failures.labels(reason)
        self.table_unreadable()
        self.ipvs_loaded.set(-1)
        self.mode_in_force(None, None)
        for kind in RefusalKind:
            self.refusals.labels(kind.value)
        self.set_stale(())
        for name in IPVS_SYSCTLS:
            self.sysctl.labels(name).set(-1)
        self.node_exposed.set(-1)
        self.build_info.labels(version, kernel_release or "unknown").set(1)
        for trigger in TRIGGERS:
            self.reconciles.labels(trigger)
        for site in ERROR_SITES:
            self.errors.labels(site)
        for outcome in RETRY_OUTCOMES:
            self.retries.labels(outcome.value)
        self.retries.labels("dropped")

    def retried(self, outcome: Outcome | None) -> None:
        """One retry of a failed delete ended this way (None: no longer to be deleted)."""
        self.retries.labels(outcome.value if outcome is not None else "dropped").inc()

    def rechecks(self, waiting: int, interval: float) -> None:
        self.idle_waits.set(waiting)
        self.recheck_interval.set(interval)

    def record(self, record: ActionRecord) -> None:
        """One actor record: a deletion (or a dry run's), or a failure."""
        rs = record.decision.real_server
        if record.outcome in (Outcome.DELETED, Outcome.WOULD_DELETE):
            self.reaped.labels(record.decision.endpoint.state.value, rs.key.virtual.protocol.value).inc()
        elif record.outcome is Outcome.FAILED:
            reason = record.failure_reason if record.failure_reason in FAILURE_REASONS else "other"
            self.reap_failures.labels(reason).inc()
        elif record.outcome is Outcome.REFUSED:
            self.reap_failures.labels("sysctl").inc()

    def refused(self, kind: RefusalKind | None) -> None:
        """After each reconcile: why it deleted nothing on purpose, if it did not."""
        if kind is not None:
            self.refusals.labels(kind.value).inc()
        self.breaker_open.set(1 if kind is RefusalKind.BREAKER else 0)

    def swept(self, plan: Plan, table: IpvsTable, now: datetime, seconds: float) -> None:
        """After each whole-table sweep: the table's size, the stale real servers it found and what it
        decided for them."""
        stale = [d for d in plan.decisions if d.real_server.weight == 0]
        self.table_size.labels("virtual_services").set(len(table.services))
        self.table_size.labels("real_servers").set(len(table.real_servers))
        self.table_size.labels("weight_zero").set(len(stale))
        self.breaker_share.set(plan.deletion_share)
        due = {d.real_server.key for d in stale if d.reapable} if not self.dry_run else set()
        self._due_since = {key: self._due_since.get(key, now) for key in due}
        since = min(self._due_since.values(), default=now)
        self.overdue.set(max(0.0, (now - since).total_seconds()))
        self.set_stale((d.endpoint.state, d.action) for d in stale)
        waiting = [plan.first_seen[d.real_server.key] for d in stale if d.action is Action.WAIT]
        oldest = min(waiting, default=now)
        self.stale_oldest_age.set(max(0.0, (now - oldest).total_seconds()))
        self.sweep_duration.observe(seconds)
        self.last_sweep.set(now.timestamp())

    def mode_in_force(self, expire_nodest_conn: str | None, checksum: str | None) -> None:
        """One series, for the mode now in force (the last one's is removed)."""
        self.mode.clear()
        dry_run = "true" if self.dry_run else "false"
        self.mode.labels(dry_run, expire_nodest_conn or "none", checksum or "none").set(1)

    def view_ages(self, ages: Mapping[str, float]) -> None:
        for kind, age in ages.items():
            self.view_age.labels(kind).set(age)

    def table_unreadable(self) -> None:
        for part in TABLE_PARTS:
            self.table_size.labels(part).set(-1)

    def set_stale(self, decided: Iterable[tuple[EndpointState, Action]]) -> None:
        counts = {(state, action): 0 for state in EndpointState for action in Action}
        for key in decided:
            counts[key] += 1
        for (state, action), count in counts.items():
            self.stale.labels(state.value, action.value).set(count)

    def conflicts(self, counts: Mapping[tuple[str, int, str, str], int]) -> None:
        """Replaces the series: a conflict that went away leaves no stale series behind."""
        self.hostport_conflicts.clear()
        for (protocol, port, service, certainty), count in counts.items():
            self.hostport_conflicts.labels(protocol, str(port), service, certainty).set(count)

    def kernel(self, facts: KernelFacts, exposure: Exposure) -> None:
        for name in IPVS_SYSCTLS:
            value = getattr(facts, name)
            self.sysctl.labels(name).set(-1 if value is None else value)
        self.node_exposed.set(_EXPOSED[exposure])
