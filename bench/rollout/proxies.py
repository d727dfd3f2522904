"""What programs the lab's virtual service: kube-proxy's IPVS proxier and kube-router, as stand-ins that do
for one TCP virtual service what their code does, through `ipvsadm` (the lab's, not the product's).

kube-proxy (`pkg/proxy/ipvs/proxier.go` `syncEndpoint`, `graceful_termination.go`;
docs/kube-proxy-source-notes.md E6, E7): a ready endpoint that is missing is added at weight 1, and one
still on the graceful list is deleted and added again; an endpoint no longer ready is deleted at once if
ActiveConn + InActConn is 0 (or the protocol is UDP or SCTP), else set to weight 0 and put on the list;
every 60 s, each real server on the list is deleted once ActiveConn + InActConn is 0, or dropped from the
list if it is gone.

kube-router (`network_services_controller.go` `ipvsDeleteDestination`, `gracefulSync`): a removed endpoint is
set to weight 0 and queued; every 5 s, each queued real server is deleted once it has no connection at all,
or once the pod's terminationGracePeriodSeconds has passed since its removal.

Deviation from both: they react to an EndpointSlice change after their watch delivers it and a sync runs
(kube-proxy's --min-sync-period, 1 s by default); here the change is applied before the old pod is sent
SIGTERM, as if the pod's preStop hook outlasted that delay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

KUBE_PROXY_PERIOD = 60.0  # rsCheckDeleteInterval
KUBE_ROUTER_PERIOD = 5.0  # gracefulTermServiceTickTime


@dataclass(frozen=True)
class Real:
    weight: int
    active: int
    inactive: int


async def ipvsadm(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "ipvsadm", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ipvsadm {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


class VirtualService:
    """One TCP virtual service, masquerading, round robin."""

    def __init__(self, vip: str, port: int) -> None:
        self.key = f"{vip}:{port}"

    async def create(self) -> None:
        await ipvsadm("-A", "-t", self.key, "-s", "rr")

    async def reals(self) -> dict[str, Real]:
        listing = await ipvsadm("-Ln", "-t", self.key)
        found = {}
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[0] == "->" and fields[1][0].isdigit():
                found[fields[1]] = Real(int(fields[3]), int(fields[4]), int(fields[5]))
        return found

    async def add(self, real: str) -> None:
        await ipvsadm("-a", "-t", self.key, "-r", real, "-m", "-w", "1")

    async def set_weight(self, real: str, weight: int) -> None:
        await ipvsadm("-e", "-t", self.key, "-r", real, "-m", "-w", str(weight))

    async def delete(self, real: str) -> None:
        await ipvsadm("-d", "-t", self.key, "-r", real)


Log = Callable[[str], None]


class KubeProxy:
    def __init__(self, service: VirtualService, log: Log) -> None:
        self._service = service
        self._log = log
        self._graceful: set[str] = set()

    async def sync(self, ready: set[str]) -> None:
        current = await self._service.reals()
        for real in sorted(ready):
            if real in current:
                if real not in self._graceful:
                    continue
                self._graceful.discard(real)  # MoveRSOutofGracefulDeleteList: deleted now, added again below
                await self._service.delete(real)
            await self._service.add(real)
        for real in sorted(set(current) - ready):
            if real in self._graceful:
                continue
            counts = current[real]
            if counts.active + counts.inactive == 0:
                await self._service.delete(real)
                self._log(f"kube-proxy deleted {real} (no connections)")
            else:
                await self._service.set_weight(real, 0)
                self._graceful.add(real)
                self._log(f"kube-proxy set {real} to weight 0")

    async def tick(self) -> None:
        if not self._graceful:
            return
        current = await self._service.reals()
        for real in sorted(self._graceful):
            counts = current.get(real)
            if counts is None:
                self._graceful.discard(real)
            elif counts.active + counts.inactive == 0:
                await self._service.delete(real)
                self._graceful.discard(real)
                self._log(f"kube-proxy deleted {real} (graceful termination done)")

    period = KUBE_PROXY_PERIOD


class KubeRouter:
    def __init__(self, service: VirtualService, log: Log, grace_seconds: float) -> None:
        self._service = service
        self._log = log
        self._grace = grace_seconds
        self._queue: dict[str, float] = {}  # real server -> when it was removed

    async def sync(self, ready: set[str]) -> None:
        current = await self._service.reals()
        for real in sorted(ready - set(current)):
            await self._service.add(real)
        for real in sorted(set(current) - ready - set(self._queue)):
            await self._service.set_weight(real, 0)
            self._queue[real] = time.monotonic()
            self._log(f"kube-router set {real} to weight 0")

    async def tick(self) -> None:
        if not self._queue:
            return
        current = await self._service.reals()
        for real, removed in sorted(self._queue.items()):
            counts = current.get(real)
            if counts is None:
                del self._queue[real]
            elif counts.active + counts.inactive == 0 or time.monotonic() - removed > self._grace:
                await self._service.delete(real)
                del self._queue[real]
                self._log(f"kube-router deleted {real}")

    period = KUBE_ROUTER_PERIOD
