"""When the agent reads a virtual service again between sweeps, and why.

Four reasons, each with its own cadence:
- follow-up: an event made an endpoint unwanted and kube-proxy has yet to set its weight to 0 (growing delays
  from the event on);
- due: a grace period or a cap ends;
- retry: a delete (or the read before it) failed; retried per real server with a bounded backoff, because
  the next sweep is up to a minute away and every pinned client fails until the delete is made;
- recheck: a real server waits for its ActiveConn to reach 0; read again at a short cadence so the delete
  follows within seconds of it going idle, within a budget of reads per second (a rollout wave of a
  thousand Services must not turn into a thousand netlink reads every second).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ipvs_reaper.values import RealKey, VirtualKey


class Why(enum.StrEnum):
    """A metric label (ipvs_reaper_reconciles_total's trigger): keep the set small."""

    FOLLOW_UP = "follow-up"
    DUE = "due"
    RETRY = "retry"
    RECHECK = "recheck"


class Schedule:
    """Virtual services to read again, each at its earliest requested moment, with the reasons that asked."""

    def __init__(self) -> None:
        self._at: dict[VirtualKey, float] = {}
        self._why: dict[VirtualKey, set[Why]] = {}

    def ask(self, key: VirtualKey, at: float, why: Why) -> None:
        """Read `key` at `at` at the latest: an earlier request stands."""
        self._at[key] = min(self._at.get(key, at), at)
        self._why.setdefault(key, set()).add(why)

    def cancel(self, key: VirtualKey) -> None:
        self._at.pop(key, None)
        self._why.pop(key, None)

    def next_at(self) -> float | None:
        return min(self._at.values(), default=None)

    def take_due(self, now: float) -> dict[VirtualKey, frozenset[Why]]:
        """The keys due by `now`, removed: the reconcile that reads them asks again if still needed."""
        due = {key: frozenset(self._why.pop(key)) for key, at in self._at.items() if at <= now}
        for key in due:
            del self._at[key]
        return due

    def __contains__(self, key: VirtualKey) -> bool:
        return key in self._at


@dataclass(frozen=True, slots=True)
class Failing:
    """A real server whose delete failed and is being retried."""

    attempts: int  # failed attempts so far
    error: str  # the last one's detail
    delay: float  # until the next attempt


class ReapRetries:
    """Failed deletes per real server, with the backoff of each: `delays`, the last one repeated. Cleared when
    an attempt ends any other way (deleted, gone, no longer reapable)."""

    def __init__(self, delays: tuple[float, ...]) -> None:
        if not delays or any(d <= 0 for d in delays):
            raise ValueError(f"retry delays must be > 0, got {delays}")
        self._delays = delays
        self._failing: dict[RealKey, Failing] = {}

    def failed(self, key: RealKey, error: str) -> tuple[Failing, Failing | None]:
        """Counts one failed attempt: the new state and the one before (None: the first failure)."""
        before = self._failing.get(key)
        attempts = before.attempts + 1 if before is not None else 1
        now = Failing(attempts, error, self._delays[min(attempts, len(self._delays)) - 1])
        self._failing[key] = now
        return now, before

    def ended(self, key: RealKey) -> Failing | None:
        """The state of a real server whose attempt did not fail, now forgotten (None: it was not failing)."""
        return self._failing.pop(key, None)

    def get(self, key: RealKey) -> Failing | None:
        return self._failing.get(key)

    def of(self, virtuals: Iterable[VirtualKey] | None) -> list[RealKey]:
        """The failing real servers of these virtual services (None: all)."""
        if virtuals is None:
            return list(self._failing)
        wanted = set(virtuals)
        return [key for key in self._failing if key.virtual in wanted]

    def __len__(self) -> int:
        return len(self._failing)


def recheck_interval(waiting: int, interval: float, reads_per_second: float) -> float:
    """How often each virtual service with a real server waiting for ActiveConn 0 is read again: `interval`,
    stretched so that all of them together cost at most `reads_per_second` netlink reads."""
    return max(interval, waiting / reads_per_second)
