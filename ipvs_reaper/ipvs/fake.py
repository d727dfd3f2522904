"""An in-memory IPVS table with the kernel's semantics, for tests and offline runs.

Like kube-proxy's `pkg/util/ipvs/testing/fake.go`, it keeps services and real servers in maps and records
what was done to them. A hook lets a test change the table between a read and a delete, the way
kube-proxy can race the reaper on a real node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsError
from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey, VirtualService


class FakeIpvs:
    def __init__(self, table: IpvsTable | None = None) -> None:
        self.services: dict[VirtualKey, VirtualService] = {}
        self.real_servers: dict[RealKey, RealServer] = {}
        self.deleted: list[RealKey] = []
        # Called with the key right before a delete is carried out: a test's stand-in for kube-proxy.
        self.before_delete: Callable[[RealKey], None] | None = None
        self.fail_deletes: dict[RealKey, str] = {}
        if table is not None:
            self.load(table)

    def load(self, table: IpvsTable) -> None:
        self.services = {svc.key: svc for svc in table.services}
        self.real_servers = {rs.key: rs for rs in table.real_servers}

    def set_weight(self, key: RealKey, weight: int) -> None:
        self.real_servers[key] = replace(self.real_servers[key], weight=weight)

    def read_table(self) -> IpvsTable:
        return IpvsTable(
            services=tuple(self.services.values()), real_servers=tuple(self.real_servers.values())
        )

    def read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        if virtual not in self.services:
            return None
        return tuple(rs for key, rs in self.real_servers.items() if key.virtual == virtual)

    def delete_real_server(self, key: RealKey) -> DeleteOutcome:
        if self.before_delete is not None:
            self.before_delete(key)
        if key in self.fail_deletes:
            raise IpvsError(f"deleting {key}: {self.fail_deletes[key]}")
        if key not in self.real_servers:
            return DeleteOutcome.ALREADY_GONE
        del self.real_servers[key]
        self.deleted.append(key)
        return DeleteOutcome.DELETED
