"""The agent's Prometheus metrics, in a registry of its own (no process-wide default registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ipvs_reaper.actor import ActionRecord


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ready = Gauge(
            "ipvs_reaper_ready", "1 once every kind is listed and the view is usable", registry=r
        )
        self.view_unusable = Gauge(
            "ipvs_reaper_cluster_view_unusable",
            "1 while the cluster view is incomplete or stale: reaping is paused",
            registry=r,
        )
        self.config_error = Gauge(
            "ipvs_reaper_config_error",
            "1 while the config file is rejected (the last good one applies)",
            registry=r,
        )
        self.config_missing = Gauge(
            "ipvs_reaper_config_missing",
            "1 while no good config has ever been read: nothing is reaped",
            registry=r,
        )
        self.real_servers = Counter(
            "ipvs_reaper_real_servers",
            "Real servers the actor acted on, by outcome (deleted, would-delete, skipped, ...)",
            ["outcome"],
            registry=r,
        )
        self.reconciles = Counter(
            "ipvs_reaper_reconciles",
            "Reconciles, by trigger (event, follow-up, sweep)",
            ["trigger"],
            registry=r,
        )
        self.refusals = Counter(
            "ipvs_reaper_refusals",
            "Reconciles that reaped nothing on purpose (breaker, sysctl, view)",
            registry=r,
        )
        self.errors = Counter(
            "ipvs_reaper_errors", "Failures, by where (ipvs, list, heartbeat, event)", ["where"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "ipvs_reaper_reconcile_seconds",
            "Time to read, plan and apply one reconcile",
            ["trigger"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.events_posted = Counter("ipvs_reaper_events_posted", "Kubernetes Events posted", registry=r)

    def record(self, record: ActionRecord) -> None:
        self.real_servers.labels(record.outcome.value).inc()
