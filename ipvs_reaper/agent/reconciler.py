"""One reconcile: read (the whole table, or the virtual services an event touched), plan, apply.

Synchronous and free of Kubernetes: the agent hands it a cluster view and a config, and runs it in a thread.
Between reconciles it keeps the grace clocks (first-seen times), the settle clocks of gone endpoints, the
node's real-server count (the breaker's share is of the node, also for a reconcile that read a few virtual
services), and recent deletions (many small reconciles must not add up to what one sweep would be refused).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ipvs_reaper.actor import ApplyResult, Outcome, Recorder, apply_plan
from ipvs_reaper.agent.first_seen import FirstSeen
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.config import Config
from ipvs_reaper.ipvs.backend import IpvsBackend
from ipvs_reaper.kernel.sysctl import EXPIRE_NODEST_CONN, SysctlError, Sysctls
from ipvs_reaper.mapping import EndpointState
from ipvs_reaper.planner import Action, Plan, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey, VirtualService

_UNWANTED = (EndpointState.GONE, EndpointState.TERMINATING, EndpointState.NOT_READY)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    plan: Plan
    applied: ApplyResult
    # Virtual services with a real server the cluster no longer wants but kube-proxy still weights: it will
    # set the weight to 0 on its own schedule, so they are worth reading again soon.
    follow_up: frozenset[VirtualKey]
    # When a waiting real server becomes reapable (its grace or cap ends), earliest per virtual service.
    due: Mapping[VirtualKey, datetime]
    # Virtual services with a real server waiting only for its ActiveConn to reach 0.
    idle_waits: frozenset[VirtualKey] = frozenset()


def weight_zero_services(table: IpvsTable) -> frozenset[VirtualKey]:
    """The virtual services a sweep decides for: only weight-0 real servers can be reaped."""
    return frozenset(rs.key.virtual for rs in table.real_servers if rs.weight == 0)


class Reconciler:
    def __init__(
        self,
        *,
        node_name: str,
        backend: IpvsBackend,
        sysctls: Sysctls,
        first_seen: FirstSeen,
        dry_run: bool,
        clock: Callable[[], datetime],
        recorder: Recorder,
        breaker_window: float,
        monotonic: Callable[[], float] = time.monotonic,
        gone_settle: float = 0.0,
    ) -> None:
        self._node = node_name
        self._backend = backend
        self._sysctls = sysctls
        self._first_seen = first_seen
        # In memory only: after a restart a gone endpoint settles again, a few seconds' later reaping.
        self._gone_since = FirstSeen()
        self._gone_settle = timedelta(seconds=gone_settle)
        self._dry_run = dry_run
        self._clock = clock
        self._recorder = recorder
        self._window = breaker_window
        self._monotonic = monotonic
        self._deletions: collections.deque[float] = collections.deque()
        self.node_real_servers: int | None = None

    def sweep(self, cluster: ClusterState, config: Config) -> ReconcileResult:
        """The whole table. Raises IpvsError when it cannot be read."""
        return self.sweep_table(self.read_table(), cluster, config)

    def read_table(self) -> IpvsTable:
        """Raises IpvsError."""
        table = self._backend.read_table()
        self.node_real_servers = len(table.real_servers)
        return table

    def sweep_table(self, table: IpvsTable, cluster: ClusterState, config: Config) -> ReconcileResult:
        """Decide for every weight-0 real server of `table`; `cluster` needs to cover only their virtual
        services (see `weight_zero_services`)."""
        result = self._run(table, cluster, config, node_total=None, describe_weighted=False)
        self._first_seen.update(None, _clocks_still_running(result, result.plan.first_seen))
        self._gone_since.update(None, _clocks_still_running(result, result.plan.gone_since))
        return result

    def reconcile(self, keys: Iterable[VirtualKey], cluster: ClusterState, config: Config) -> ReconcileResult:
        """Only these virtual services (the rest of the table is not read). Raises IpvsError."""
        wanted = frozenset(keys)
        services: list[VirtualService] = []
        real_servers: list[RealServer] = []
        for key in sorted(wanted, key=VirtualKey.sort_key):
            current = self._backend.read_service(key)
            if current is not None:
                services.append(VirtualService(key, ""))
                real_servers.extend(current)
        table = IpvsTable(tuple(services), tuple(real_servers))
        # Weighted real servers are described too, to find those kube-proxy has yet to set to weight 0.
        result = self._run(table, cluster, config, self.node_real_servers, describe_weighted=True)
        self._first_seen.update(wanted, _clocks_still_running(result, result.plan.first_seen))
        self._gone_since.update(wanted, _clocks_still_running(result, result.plan.gone_since))
        return result

    def _run(
        self,
        table: IpvsTable,
        cluster: ClusterState,
        config: Config,
        node_total: int | None,
        describe_weighted: bool,
    ) -> ReconcileResult:
        now = self._clock()
        try:
            expire_nodest_conn = self._sysctls.read(EXPIRE_NODEST_CONN)
        except SysctlError:
            expire_nodest_conn = None  # the planner treats unknown as not 1
        plan = plan_sweep(
            SweepInputs(
                table=table,
                cluster=cluster,
                node_name=self._node,
                config=config,
                expire_nodest_conn=expire_nodest_conn,
                now=now,
                first_seen=self._first_seen.all,
                describe_weighted=describe_weighted,
                node_real_servers=node_total,
                recent_deletions=self._recent_deletions(),
                gone_settle=self._gone_settle,
                gone_since=self._gone_since.all,
            )
        )
        applied = apply_plan(
            plan,
            self._backend,
            self._sysctls,
            dry_run=self._dry_run,
            clock=self._clock,
            recorder=self._recorder,
        )
        tick = self._monotonic()
        self._deletions.extend(tick for r in applied.records if r.outcome is Outcome.DELETED)
        follow_up = frozenset(
            d.real_server.key.virtual
            for d in plan.decisions
            if d.real_server.weight > 0 and d.endpoint.state in _UNWANTED and not d.endpoint.serving
        )
        due: dict[VirtualKey, datetime] = {}
        for d in plan.decisions:
            if d.action is Action.WAIT and d.reap_after is not None:
                key = d.real_server.key.virtual
                due[key] = min(due.get(key, d.reap_after), d.reap_after)
        idle_waits = frozenset(d.real_server.key.virtual for d in plan.decisions if d.awaits_idle)
        return ReconcileResult(plan, applied, follow_up, due, idle_waits)

    def _recent_deletions(self) -> int:
        horizon = self._monotonic() - self._window
        while self._deletions and self._deletions[0] < horizon:
            self._deletions.popleft()
        return len(self._deletions)


def _clocks_still_running(
    result: ReconcileResult, clocks: Mapping[RealKey, datetime]
) -> dict[RealKey, datetime]:
    """A plan's clocks less the real servers now gone: a clock kept for a deleted one would be
    carried, until the next sweep, by an equal real server seen at weight 0 again, and cut its grace short
    (and the clocks of a busy rollout piled up between sweeps)."""
    gone = {
        r.decision.real_server.key
        for r in result.applied.records
        if r.outcome in (Outcome.DELETED, Outcome.ALREADY_GONE)
    }
    return {key: when for key, when in clocks.items() if key not in gone}
