"""kopf's side of the agent: settings, login, and three watch handlers that hand each event to the agent.

Only `on.event` handlers that return None: kopf writes nothing for them (other handler kinds patch status,
annotations or finalizers). Peering is off (thousands of same-priority pods would pause each other), and so
are scanning and event posting. The agent's loops start at startup and stop at cleanup. Handlers are async:
kopf runs sync ones in a thread pool, a thread hop per event for a few microseconds of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import kopf

# Not re-exported by kopf, but what kopf.operator(memories=...) takes; kopf is pinned below 2.
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory

from ipvs_reaper.agent.agent import Agent
from ipvs_reaper.cluster.cache import ENDPOINT_SLICE, NODE, SERVICE

log = logging.getLogger(__name__)


class _RetryForever:
    """kopf's request backoffs, never exhausted: an API outage must pause the agent, not end it (an ended
    watch stops the operator, and a restarting DaemonSet pod helps nobody)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(30.0))


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff base (a deep copy of the body) on every event for change-detecting handlers; event
    handlers need none, and on a large cluster's listing those copies cost more than everything else."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class ForgetfulMemories(ResourceMemories):
    """kopf remembers every object it has seen until it is deleted (for daemons, timers and change handlers):
    on a cluster of 20,000 objects that is most of the agent's memory, and event handlers use none of it."""

    async def recall(
        self,
        raw_body: kopf.RawBody,
        *,
        memobase: Any = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


def _stop_on_failure(task: asyncio.Task[None], memo: kopf.Memo) -> None:
    """The loops never end on their own: one that failed is a bug. Stop the process (the DaemonSet restarts
    it) rather than run on watching without reconciling."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("agent loop %s failed; stopping", task.get_name(), exc_info=task.exception())
    memo.failure = f"agent loop {task.get_name()} failed: {task.exception()!r}"
    memo.stop.set()


def _take_over_signals(stop: asyncio.Event) -> None:
    """kopf's own handlers set a future's result, and a second SIGTERM or Ctrl-C sets it again and fails with
    InvalidStateError. Ours: the first signal stops gracefully (through the stop flag), the second at once."""
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        name = signal.Signals(number).name
        if not stop.is_set():
            log.info("%s received: stopping (again to stop at once)", name)
            stop.set()
            return
        log.warning("%s received again: stopping at once", name)
        logging.shutdown()
        os._exit(128 + number)

    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread's loop (tests run the agent elsewhere)
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, on_signal, number)


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        agent: Agent = memo.agent
        options = agent.options
        # After kopf's own handlers: its task that installs them resumes before this callback runs.
        asyncio.get_running_loop().call_soon(_take_over_signals, memo.stop)
        settings.peering.standalone = True
        settings.scanning.disabled = True
        settings.posting.enabled = False
        settings.watching.server_timeout = int(options.watch_timeout)
        settings.watching.client_timeout = int(options.watch_timeout) + 30
        settings.watching.connect_timeout = 10
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 30
        settings.networking.error_backoffs = _RetryForever()
        settings.persistence.diffbase_storage = _NoDiffBase()
        # kopf keeps a worker per object until it has been idle this long; its own listing of a large
        # cluster would otherwise keep tens of thousands of them (and their queues) alive at once.
        settings.queueing.idle_timeout = 0.5
        # Only this node's Node: a cluster's Nodes change often and matter to no other node.
        settings.watching.field_selectors["nodes"] = f"metadata.name={options.node_name}"
        # The first complete listing, before kopf starts watching: readiness then waits on our listing alone,
        # and kopf's own initial listing finds the same versions in the cache (nothing to do).
        await agent.list_until_complete()
        memo.tasks = [
            asyncio.create_task(agent.relist_forever(), name="relist"),
            asyncio.create_task(agent.heartbeat_forever(), name="heartbeat"),
            asyncio.create_task(agent.work_forever(), name="work"),
        ]
        for task in memo.tasks:
            task.add_done_callback(lambda done: _stop_on_failure(done, memo))

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        for task in memo.get("tasks", []):
            task.cancel()
        for task in memo.get("tasks", []):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.login(registry=registry)
    async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        connection: kopf.ConnectionInfo = memo.login()
        return connection

    @kopf.on.event("v1", "services", registry=registry)
    async def service_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.agent.on_event(SERVICE, event["type"], event["object"])

    @kopf.on.event("discovery.k8s.io", "v1", "endpointslices", registry=registry)
    async def slice_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.agent.on_event(ENDPOINT_SLICE, event["type"], event["object"])

    @kopf.on.event("v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.agent.on_event(NODE, event["type"], event["object"])

    return registry
