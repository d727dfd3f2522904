"""An in-memory IPVS table with the kernel's semantics, for tests and offline runs.

Like kube-proxy's `pkg/util/ipvs/testing/fake.go`, it keeps services and real servers in maps and records
what was done to them. A hook lets a test change the table between a read and a delete, the way
kube-proxy can race the reaper on a real node. Safe to read from one thread while another deletes, as the
kernel's table is (the agent's doctor pass reads it beside reconciles).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import replace

from ipvs_reaper.ipvs.backend import DeleteOutcome, IpvsAbsent, IpvsError, errno_name
from ipvs_reaper.values import IpvsTable, RealKey, RealServer, VirtualKey, VirtualService


class RealServersByVirtual(MutableMapping[RealKey, RealServer]):
    """Real servers kept per virtual service, so that reading one service costs its own size, as in the
    kernel; a mapping by real-server key for tests that edit the table directly."""

    def __init__(self, real_servers: Iterable[RealServer] = ()) -> None:
        self.of: dict[VirtualKey, dict[RealKey, RealServer]] = {}
        for rs in real_servers:
            self[rs.key] = rs

    def __getitem__(self, key: RealKey) -> RealServer:
        return self.of[key.virtual][key]

    def __setitem__(self, key: RealKey, value: RealServer) -> None:
        self.of.setdefault(key.virtual, {})[key] = value

    def __delitem__(self, key: RealKey) -> None:
        group = self.of[key.virtual]
        del group[key]
        if not group:
            del self.of[key.virtual]

    def __iter__(self) -> Iterator[RealKey]:
        for group in self.of.values():
            yield from group

    def __len__(self) -> int:
        return sum(len(group) for group in self.of.values())


class FakeIpvs:
    def __init__(self, table: IpvsTable | None = None) -> None:
        self.services: dict[VirtualKey, VirtualService] = {}
        self.real_servers = RealServersByVirtual()
        self.deleted: list[RealKey] = []
        # Called with the key right before a delete is carried out: a test's stand-in for kube-proxy.
        self.before_delete: Callable[[RealKey], None] | None = None
        # Deletes that fail, with the errno the kernel would answer (errno.EPERM, ...).
        self.fail_deletes: dict[RealKey, int] = {}
        # A node without IPVS (ip_vs not loaded): every read says so.
        self.absent = False
        # Re-entrant: a test's before_delete hook may edit the table.
        self._lock = threading.RLock()
        if table is not None:
            self.load(table)

    def load(self, table: IpvsTable) -> None:
        self.services = {svc.key: svc for svc in table.services}
        self.real_servers = RealServersByVirtual(table.real_servers)

    def put(self, real_server: RealServer, *, add: bool = True) -> None:
        """Write a real server as kube-proxy would; without `add`, only one that is there is changed."""
        with self._lock:
            if add or real_server.key in self.real_servers:
                self.real_servers[real_server.key] = real_server

    def set_weight(self, key: RealKey, weight: int) -> None:
        with self._lock:
            self.real_servers[key] = replace(self.real_servers[key], weight=weight)

    def read_table(self) -> IpvsTable:
        if self.absent:
            raise IpvsAbsent("ip_vs is not loaded (the fake's absent flag)")
        with self._lock:
            real_servers = tuple(rs for group in self.real_servers.of.values() for rs in group.values())
            return IpvsTable(services=tuple(self.services.values()), real_servers=real_servers)

    def read_service(self, virtual: VirtualKey) -> tuple[RealServer, ...] | None:
        if self.absent:
            raise IpvsAbsent("ip_vs is not loaded (the fake's absent flag)")
        with self._lock:
            if virtual not in self.services:
                return None
            return tuple(self.real_servers.of.get(virtual, {}).values())

    def delete_real_server(self, key: RealKey) -> DeleteOutcome:
        if self.before_delete is not None:
            self.before_delete(key)
        if key in self.fail_deletes:
            code = self.fail_deletes[key]
            raise IpvsError(f"deleting {key}: {os.strerror(code)}", errno_name(code))
        with self._lock:
            if key not in self.real_servers:
                return DeleteOutcome.ALREADY_GONE
            del self.real_servers[key]
            self.deleted.append(key)
        return DeleteOutcome.DELETED
