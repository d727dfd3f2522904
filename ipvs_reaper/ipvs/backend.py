"""The interface every IPVS table implementation offers: the kernel one and the in-memory fake."""

from __future__ import annotations

import enum
from typing import Protocol

from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey


class IpvsError(Exception):
    """The kernel (or the fake) refused an IPVS operation for a reason other than 'already gone'."""


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
