"""What one arm's raw result says, as the numbers the lab's table reports (computed on the host)."""

from __future__ import annotations

from collections import Counter
from typing import Any

IPVS_TIME_WAIT = 120.0  # seconds an entry outlives its connection, whatever the sysctls
STILL_FAILING = 5  # failures in the window's last 20 s


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def reused_ports(records: list[list[Any]]) -> tuple[int, int]:
    """(requests whose source port, as the pod saw it, was seen within IPVS's TIME_WAIT before; requests
    with a source port seen)."""
    last: dict[int, float] = {}
    reused = seen = 0
    for record in sorted(records, key=lambda r: r[0]):
        port = record[5]
        if port is None:
            continue
        seen += 1
        if port in last and record[0] - last[port] < IPVS_TIME_WAIT:
            reused += 1
        last[port] = record[0]
    return reused, seen


def client_summary(records: list[list[Any]], rollout_ended: float, window_end: float) -> dict[str, Any]:
    outcomes = Counter(record[3] for record in records)
    failed = [record for record in records if record[3] != "ok"]
    connects = [record[1] for record in records if record[1] is not None]
    reused, seen = reused_ports(records)
    last_failure = max((record[0] for record in failed), default=None)
    return {
        "requests": len(records),
        "failed": len(failed),
        "outcomes": dict(sorted(outcomes.items())),
        "connect_p50": percentile(connects, 0.5),
        "connect_p99": percentile(connects, 0.99),
        "connect_max": max(connects, default=None),
        "seconds_p99": percentile([record[2] for record in records], 0.99),
        # From the end of the rollout (the last old pod gone) to the start of the last failed request.
        "failing_after": None if last_failure is None else round(max(0.0, last_failure - rollout_ended), 1),
        # Still failing: a steady rate in the window's last 20 s, not one stray failure there.
        "failing_at_end": sum(window_end - record[0] < 20.0 for record in failed) >= STILL_FAILING,
        "ports_reused": reused,
        "ports_seen": seen,
    }


def weight_zero(samples: list[list[Any]], end: float) -> dict[str, Any]:
    """How long real servers sat at weight 0 (from the once-a-second table samples) and how many were left."""
    since: dict[str, float] = {}
    spans: list[float] = []
    present_at_zero: set[str] = set()
    for at, reals in samples:
        zero_now = {real for real, (weight, _, _) in reals.items() if weight == 0}
        for real in zero_now - set(since):
            since[real] = at
        for real in set(since) - zero_now:
            spans.append(at - since.pop(real))
        present_at_zero = zero_now
    spans.extend(end - start for start in since.values())
    return {"left_at_end": len(present_at_zero), "longest": round(max(spans, default=0.0), 1)}


def arm_summary(result: dict[str, Any]) -> dict[str, Any]:
    rollout = result["rollout"]
    end = rollout["ended"] + result["spec"]["timing"]["window"]
    spec = result["spec"]
    deleted = [r for r in result["agent_records"] if r["outcome"] == "deleted"]
    return {
        "kernel": result["kernel"],
        "arm": spec["arm"],
        "setting": spec["setting"],
        "sysctls": result["sysctls"],
        "clients": {
            kind: client_summary(records, rollout["ended"], end)
            for kind, records in result["clients"].items()
        },
        "nginx_errors": result["nginx_errors"],
        "weight_zero": weight_zero(result["samples"], end),
        "reaper_deleted": len(deleted),
    }
