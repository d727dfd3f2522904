"""Kubernetes Events on a Service when its real servers are reaped: one per Service per reconcile, and at
most one per Service per interval (what is held back goes into the next one).

The only thing the agent ever writes to the API: `create` on `events`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ipvs_reaper.actor import ActionRecord, Outcome
from ipvs_reaper.values import format_endpoint

_REPORTED = (Outcome.DELETED, Outcome.WOULD_DELETE)
_SHOWN = 5  # real servers named in one message; the rest are counted


@dataclass(slots=True)
class _Pending:
    real_servers: list[str] = field(default_factory=list)
    dry_run: bool = False


class EventReporter:
    def __init__(self, node_name: str, interval: float, clock: Callable[[], float]) -> None:
        self._node = node_name
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._last_posted: dict[str, float] = {}

    def add(self, records: Iterable[ActionRecord]) -> None:
        for record in records:
            if record.outcome not in _REPORTED or record.decision.service is None:
                continue
            rs = record.decision.real_server.key
            pending = self._pending.setdefault(record.decision.service, _Pending())
            pending.real_servers.append(f"{rs.virtual} -> {format_endpoint(rs.address, rs.port)}")
            pending.dry_run = record.dry_run

    def due(self, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        """(namespace, Event body) for each Service whose interval has passed; they count as posted."""
        tick = self._clock()
        # A Service posted longer ago than the interval is due whenever it next has news: forget it, or every
        # Service that ever had a deletion stays here for the agent's life (Services come and go). Entries are
        # only added, after their old one is gone, so the oldest come first and the scan stops at the first
        # recent one.
        expired = []
        for ref, at in self._last_posted.items():
            if tick - at < self._interval:
                break
            expired.append(ref)
        for ref in expired:
            del self._last_posted[ref]
        ready = [
            ref for ref in self._pending if tick - self._last_posted.get(ref, float("-inf")) >= self._interval
        ]
        bodies = []
        for ref in ready:
            pending = self._pending.pop(ref)
            self._last_posted[ref] = tick
            bodies.append((ref.partition("/")[0], self._body(ref, pending, now)))
        return bodies

    def _body(self, ref: str, pending: _Pending, now: datetime) -> dict[str, Any]:
        namespace, _, name = ref.partition("/")
        count = len(pending.real_servers)
        shown = ", ".join(pending.real_servers[:_SHOWN])
        more = f" and {count - _SHOWN} more" if count > _SHOWN else ""
        verb = "would delete (dry-run)" if pending.dry_run else "deleted"
        stamp = now.isoformat().replace("+00:00", "Z")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": namespace, "name": name},
            "reason": "StaleRealServerWouldReap" if pending.dry_run else "StaleRealServerReaped",
            "message": f"node {self._node}: {verb} {count} stale IPVS real server(s): {shown}{more}",
            "type": "Normal",
            "source": {"component": "ipvs-reaper", "host": self._node},
            "reportingComponent": "ipvs-reaper",
            "reportingInstance": self._node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
