"""When each weight-0 real server was first seen at weight 0: the clock its grace and cap run on.

Held in memory, so a re-list of the cluster does not reset it; optionally kept in a node-local file, so a
restart does not either. A file that cannot be read starts the clocks afresh (later reaping, never earlier)
and says so.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ipvs_reaper.values import Protocol, RealKey, VirtualKey

log = logging.getLogger(__name__)


def _encode(key: RealKey) -> str:
    virtual = key.virtual
    address = virtual.address.compressed if virtual.address is not None else ""
    fields = (virtual.protocol.value, virtual.family, address, virtual.port, virtual.fwmark)
    return " ".join(map(str, (*fields, key.address.compressed, key.port)))


def _moment(text: Any) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when


def _decode(text: str) -> RealKey:
    protocol, family, address, port, fwmark, real, real_port = text.split(" ")
    virtual = VirtualKey(
        protocol=Protocol(protocol),
        family=int(family),
        address=ipaddress.ip_address(address) if address else None,
        port=int(port),
        fwmark=int(fwmark),
    )
    return RealKey(virtual, ipaddress.ip_address(real), int(real_port))


class FirstSeen:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._write_failing = False
        self._seen: dict[RealKey, datetime] = self._load() if path is not None else {}
        # The same entries by virtual service: a reconcile of a few virtual services touches only theirs.
        self._by_virtual: dict[VirtualKey, dict[RealKey, datetime]] = {}
        for key, when in self._seen.items():
            self._by_virtual.setdefault(key.virtual, {})[key] = when

    @property
    def all(self) -> Mapping[RealKey, datetime]:
        return self._seen

    def update(self, looked_at: Iterable[VirtualKey] | None, seen: Mapping[RealKey, datetime]) -> None:
        """`seen`: what a plan found at weight 0 in the virtual services it read (None: all of them)."""
        if looked_at is None:
            changed = seen != self._seen
            self._seen = dict(seen)
            self._by_virtual = {}
            for key, when in self._seen.items():
                self._by_virtual.setdefault(key.virtual, {})[key] = when
        else:
            changed = False
            for virtual in looked_at:
                fresh = {key: when for key, when in seen.items() if key.virtual == virtual}
                old = self._by_virtual.pop(virtual, {})
                if fresh:
                    self._by_virtual[virtual] = fresh
                if fresh != old:
                    changed = True
                    for key in old:
                        del self._seen[key]
                    self._seen.update(fresh)
        if changed:
            self._save()

    def _load(self) -> dict[RealKey, datetime]:
        assert self._path is not None
        try:
            raw = json.loads(self._path.read_bytes())
            return {_decode(key): _moment(when) for key, when in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as error:
            log.error("first-seen file %s unreadable, grace clocks start now: %s", self._path, error)
            return {}

    def _save(self) -> None:
        if self._path is None:
            return
        text = json.dumps({_encode(key): when.isoformat() for key, when in self._seen.items()})
        temporary = self._path.with_name(self._path.name + ".tmp")
        try:
            temporary.write_text(text)
            os.replace(temporary, self._path)  # atomic: a crash leaves the old file or the new one
        except OSError as error:
            if not self._write_failing:  # once per outage, not once per change
                log.error("first-seen file %s not written (clocks kept in memory): %s", self._path, error)
            self._write_failing = True
            return
        if self._write_failing:
            log.info("first-seen file %s written again", self._path)
        self._write_failing = False
