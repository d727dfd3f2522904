"""List once, then watch from the listing's version, per kind: the way client-go's reflector and kubespawner's
reflector.py keep a cache, with the API server's costs in mind (the agent runs on every node).

- The first listing asks the API server's watch cache (`resourceVersion=0`), not etcd.
- A watch request that ends (its timeout, a cut connection, an API server restart) is resumed from the last
  version seen; bookmarks keep that version current on a quiet kind, so a resumed watch is rarely too old.
- Only a 410 Gone (the version is older than the server keeps) makes it list again, after a random pause
  (a restarted API server sends 410 to every node at once) and from the watch cache, no older than the last
  version seen. Until that listing completes, the kind's view is marked incomplete: events were missed.
- An optional periodic relisting (off by default) for operators who want one anyway.
- A heartbeat (the agent's read of its Node) stands in for a quiet kind's silence only while that kind's
  watch is up: a watch that keeps failing while other requests work lets its kind go stale.

Pages are decoded and parsed off the event loop, one at a time, so a listing of a large cluster holds one
page of raw JSON and never stalls the loop's other work (reconciles, health checks).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ipvs_reaper.cluster.cache import Parsed, parse_object
from ipvs_reaper.cluster.list_json import decode_list
from ipvs_reaper.cluster.watch_api import Collection, Gone, WatchApi
from ipvs_reaper.errors import ApiFailure

log = logging.getLogger(__name__)

RETRY = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff for failed listings and watch requests


class ReflectorSink(Protocol):
    """Where a reflector's news goes (the agent, which feeds its cache and wakes its work loop)."""

    def begin_listing(self) -> int: ...

    def end_listing(self, since: int) -> None: ...

    def listed(self, kind: str, entries: list[Parsed], since: int) -> None: ...

    def on_event(self, kind: str, event_type: str | None, body: Any) -> None: ...

    def heard(self, kind: str) -> None: ...

    def lost(self, kind: str, why: str) -> None: ...

    def failed(self, site: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Parsed]
    version: str | None
    token: str | None


def read_page(raw: bytes, kind: str, node_name: str) -> Page:
    """One page of a listing, decoded and parsed an item at a time (pure: runs in a thread). Raises ApiFailure
    for an answer that is not a List; an item that is not an object is kept as unreadable by the cache."""
    entries: list[Parsed] = []

    def take(item: Any) -> None:
        if isinstance(item, dict):
            item["kind"] = kind  # list responses leave it out of their items
            entries.append(parse_object(kind, item, node_name))
        else:
            entries.append(Parsed(None, None, None))

    try:
        fields = decode_list(raw.decode("utf-8"), take)
    except (ValueError, RecursionError) as error:
        raise ApiFailure(f"listing {kind} objects: the answer is not a JSON List ({error})") from None
    meta = fields.get("metadata")
    if "items" in fields or not isinstance(meta, dict | None):
        raise ApiFailure(f"listing {kind} objects: the answer is not a List")
    version, token = (meta or {}).get("resourceVersion"), (meta or {}).get("continue")
    return Page(
        entries,
        version if isinstance(version, str) and version else None,
        token if isinstance(token, str) and token else None,
    )


@dataclass(frozen=True, slots=True)
class ReflectorTiming:
    relist_spread: float = 10.0  # seconds: after a 410, list again at a random moment within this
    relist_interval: float = 0.0  # seconds between periodic listings, ±10 %; 0: none
    retry: tuple[float, ...] = RETRY


class Reflector:
    def __init__(
        self,
        collection: Collection,
        api: WatchApi,
        sink: ReflectorSink,
        node_name: str,
        *,
        timing: ReflectorTiming | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.collection = collection
        self._api = api
        self._sink = sink
        self._node_name = node_name
        self._timing = timing or ReflectorTiming()
        self._rng = rng or random.Random()
        self._clock = clock or asyncio.get_running_loop().time
        self._sleep = sleep
        self.version: str | None = None  # the last version seen; None until the first listing
        self.listings = 0
        # Whether the watch is up (its last request did not fail): only then may a heartbeat stand in for its
        # silence. A watch that keeps failing while other requests work (a proxy that breaks streams, a
        # missing `watch` permission) must let its kind go stale, not be vouched for.
        self.watching = False
        self._failing: str | None = None  # what is failing, said once

    @property
    def kind(self) -> str:
        return self.collection.kind

    async def run(self) -> None:
        """Forever: list, then watch; list again only when the API says the version is gone."""
        reason = "start"
        while True:
            version = await self._list_until_complete(reason)
            reason = await self._watch_from(version)
            if reason == "gone":
                pause = self._rng.uniform(0, self._timing.relist_spread)
                await self._sleep(pause)

    async def _list_until_complete(self, reason: str) -> str:
        failures = 0
        while True:
            try:
                version = await self._list()
            except ApiFailure as error:
                self._sink.failed("list")
                self._say_failing(
                    f"listing {self.kind} objects failed, "
                    + ("nothing is reaped until one completes" if reason == "start" else "retrying")
                    + f": {error}"
                )
                await self._sleep(self._timing.retry[min(failures, len(self._timing.retry) - 1)])
                failures += 1
                continue
            self._say_recovered(f"listing {self.kind} objects complete again")
            self.listings += 1
            log.debug("%s listed (%s), version %s", self.kind, reason, version)
            return version

    async def _list(self) -> str:
        # The first listing takes any version the watch cache has; a relisting one no older than the last
        # seen, so the view never goes back in time.
        asked = self.version or "0"
        since = self._sink.begin_listing()
        entries: list[Parsed] = []
        token: str | None = None
        version: str | None = None
        try:
            while True:
                raw = await self._api.list_page(self.collection, asked, token)
                page = await asyncio.to_thread(read_page, raw, self.kind, self._node_name)
                del raw
                entries += page.entries
                version = version or page.version
                if page.token is None:
                    break
                token = page.token
            if version is None:
                raise ApiFailure(f"listing {self.kind} objects: the List has no resourceVersion")
        except (ApiFailure, asyncio.CancelledError):
            self._sink.end_listing(since)
            raise
        self._sink.listed(self.kind, entries, since)
        self.version = version
        return version

    async def _watch_from(self, version: str) -> str:
        """Watch requests one after another from the last version seen; returns why to list again."""
        failures = 0
        interval = self._timing.relist_interval
        # With periodic listings, the watch in progress is ended when one is due.
        due = self._clock() + interval * (1 + 0.1 * self._rng.uniform(-1, 1)) if interval > 0 else None
        while True:
            # Up only once the server has taken the request (its OPENED item, or any event): a request still
            # waiting for an answer could wait up to the client timeout, longer than the view may be silent.
            self.watching = False
            try:
                async with asyncio.timeout(None if due is None else max(0.0, due - self._clock())):
                    async for event in self._api.watch(self.collection, self.version or version):
                        self.watching = True
                        if failures:
                            self._say_recovered(f"watching {self.kind} objects again")
                            failures = 0
                        self._on_event(event)
            except TimeoutError:
                return "interval"
            except Gone as error:
                self._sink.failed("watch")
                self._sink.lost(self.kind, f"the {self.kind} watch fell behind ({error}); listing again")
                log.info("%s: the API no longer has version %s (410): listing again", self.kind, self.version)
                return "gone"
            except ApiFailure as error:
                self._sink.failed("watch")
                if failures:
                    self._say_failing(f"watching {self.kind} objects failed, retrying: {error}")
                else:
                    log.debug("%s watch ended: %s; resuming from %s", self.kind, error, self.version)
                await self._sleep(self._timing.retry[min(failures, len(self._timing.retry) - 1)])
                failures += 1
                continue
            self._say_recovered(f"watching {self.kind} objects again")
            failures = 0

    def _on_event(self, event: dict[str, Any]) -> None:
        event_type, body = event.get("type"), event.get("object")
        if not isinstance(body, dict):
            return
        meta = body.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(version, str) and version:
            self.version = version
        if event_type == "BOOKMARK":
            self._sink.heard(self.kind)
        elif event_type in ("ADDED", "MODIFIED", "DELETED"):
            self._sink.on_event(self.kind, event_type, body)

    def _say_failing(self, line: str) -> None:
        if self._failing is None:
            log.error("%s", line)
        self._failing = line

    def _say_recovered(self, line: str) -> None:
        if self._failing is not None:
            log.info("%s", line)
        self._failing = None
