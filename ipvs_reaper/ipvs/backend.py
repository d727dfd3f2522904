"""The interface every IPVS table implementation offers: the kernel one and the in-memory fake."""

from __future__ import annotations

import enum
import errno
from typing import Protocol

from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey


class IpvsError(Exception):
    """The kernel (or the fake) refused an IPVS operation for a reason other than 'already gone'."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        # A short, bounded name for metrics: the errno's (EPERM), or "other".
        self.reason = reason


class IpvsAbsent(IpvsError):
    """No IPVS on this node (ip_vs is not loaded): nothing to reap, which is no failure."""


def errno_name(code: int | None) -> str:
    """`EPERM` for 1 (netlink answers carry negative codes); "other" when there is no errno."""
    if code is None:
        return "other"
    return errno.errorcode.get(abs(code), "other")


class DeleteOutcome(enum.Enum):
    DELETED = "deleted"
    # kube-proxy (or an operator) removed it between our read and our delete: the goal is met.
    ALREADY_GONE = "already-gone"


class IpvsBackend(Protocol):
    def read_table(self) -> IpvsTable:
        """The whole table, as cheaply as the backend can produce it."""

    def read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        """The current real servers of one virtual service, or None when the service no longer exists."""

    def delete_real_server(self, key: RealKey) -> DeleteOutcome:
        """Delete one real server. Raises IpvsError on anything but success or 'already gone'."""
