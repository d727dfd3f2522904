"""The thin actor: carries out a plan's reap decisions, re-checking each real server right before it acts.

Dry-run takes the same path to the last step: it re-reads, re-checks and records, and only the delete
itself (and the sysctl write) is left out.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsBackend, IpvsError
from ipvs_reaper.kernel.sysctl import EXPIRE_NODEST_CONN, SysctlError, Sysctls
from ipvs_reaper.logs import FIELDS
from ipvs_reaper.planner import Decision, Plan
from ipvs_reaper.values import RealServer, format_endpoint

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would-delete"  # dry-run
    ALREADY_GONE = "already-gone"  # kube-proxy deleted it first: the goal is met
    SKIPPED = "skipped"  # the re-read showed it is no longer reapable
    FAILED = "failed"
    REFUSED = "refused"  # the precondition (expire_nodest_conn=1) could not be met


@dataclass(frozen=True, slots=True)
class ActionRecord:
    time: datetime
    decision: Decision
    outcome: Outcome
    detail: str
    dry_run: bool
    # For FAILED: the errno's name (EPERM), or "reread" when the real server could not be read again.
    failure_reason: str | None = None

    def as_json(self) -> dict[str, object]:
        rs = self.decision.real_server
        return {
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "protocol": rs.key.virtual.protocol.value,
            "virtual": str(rs.key.virtual),
            "real": format_endpoint(rs.key.address, rs.key.port),
            "service": self.decision.service,
            "endpointState": self.decision.endpoint.state.value,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "dryRun": self.dry_run,
        }


Recorder = Callable[[ActionRecord], None]


def log_recorder(record: ActionRecord) -> None:
    """The default record of every deletion: one JSON log line each, for log pipelines to keep."""
    fields = record.as_json()
    # The text is the record as JSON (for plain logs); `fields` lets a JSON log make them fields of the line.
    log.info("%s", json.dumps(fields, sort_keys=True), extra={FIELDS: fields})


@dataclass(frozen=True, slots=True)
class ApplyResult:
    records: tuple[ActionRecord, ...]
    sysctl_note: str | None

    @property
    def failed(self) -> bool:
        return any(r.outcome in (Outcome.FAILED, Outcome.REFUSED) for r in self.records)


def _recheck(decision: Decision, fresh: tuple[RealServer, ...] | None) -> tuple[Outcome | None, str]:
    """None when the real server may still be deleted; otherwise the outcome that replaces the delete."""
    if fresh is None:
        return Outcome.ALREADY_GONE, "virtual service no longer exists"
    key = decision.real_server.key
    current = next((rs for rs in fresh if rs.key == key), None)
    if current is None:
        return Outcome.ALREADY_GONE, "real server no longer exists"
    if current.weight != 0:
        return Outcome.SKIPPED, f"weight changed to {current.weight} since the table was read"
    if decision.requires_idle and current.active_conns > 0:
        return Outcome.SKIPPED, f"ActiveConn rose to {current.active_conns} since the table was read"
    return None, ""


def _ensure_expire_nodest_conn(plan: Plan, sysctls: Sysctls, dry_run: bool) -> tuple[bool, str | None]:
    if not plan.needs_expire_nodest_conn:
        return True, None
    if dry_run:
        return True, "would set net.ipv4.vs.expire_nodest_conn=1 before deleting"
    try:
        sysctls.write(EXPIRE_NODEST_CONN, 1)
    except SysctlError as error:
        return False, f"not deleting: {error}; without it deleted real servers' entries drop packets"
    return True, "set net.ipv4.vs.expire_nodest_conn=1 before deleting"


def apply_plan(
    plan: Plan,
    backend: IpvsBackend,
    sysctls: Sysctls,
    *,
    dry_run: bool,
    clock: Callable[[], datetime],
    recorder: Recorder = log_recorder,
) -> ApplyResult:
    reaps = plan.reaps
    if not reaps:
        return ApplyResult(records=(), sysctl_note=None)
    ready, sysctl_note = _ensure_expire_nodest_conn(plan, sysctls, dry_run)
    records = []
    for decision in reaps:
        if not ready:
            outcome, detail, reason = Outcome.REFUSED, sysctl_note or "", None
        else:
            outcome, detail, reason = _act(decision, backend, dry_run)
        record = ActionRecord(clock(), decision, outcome, detail, dry_run, reason)
        recorder(record)
        records.append(record)
    return ApplyResult(records=tuple(records), sysctl_note=sysctl_note)


def _act(decision: Decision, backend: IpvsBackend, dry_run: bool) -> tuple[Outcome, str, str | None]:
    """The outcome, its detail, and for a failure a short reason for metrics."""
    key = decision.real_server.key
    try:
        fresh = backend.read_service(key.virtual)
    except IpvsError as error:
        return Outcome.FAILED, f"re-reading before delete: {error}", "reread"
    skip, detail = _recheck(decision, fresh)
    if skip is not None:
        return skip, detail, None
    if dry_run:
        return Outcome.WOULD_DELETE, decision.reason, None
    try:
        result = backend.delete_real_server(key)
    except IpvsError as error:
        return Outcome.FAILED, str(error), error.reason
    if result is DeleteOutcome.ALREADY_GONE:
        return Outcome.ALREADY_GONE, "deleted by someone else between re-read and delete", None
    return Outcome.DELETED, decision.reason, None
