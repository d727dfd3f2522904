"""kopf's side of the agent: settings, login, and the agent's loops from startup to cleanup.

No resource handlers: the agent lists and watches through its own reflectors (cluster/reflector.py) on kopf's
client, because kopf's watching lists every kind again at start and after every 410, from etcd, and hands
each object of that listing to a worker of its own; on thousands of nodes that is the API server's biggest
cost of this agent, and on a large cluster most of the agent's memory. Peering is off (thousands of
same-priority pods would pause each other), and so are scanning and event posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import kopf

from ipvs_reaper.agent.agent import Agent

log = logging.getLogger(__name__)


class _RetryForever:
    """kopf's request backoffs, never exhausted: an API outage must pause the agent, not end it (an ended
    watch stops the operator, and a restarting DaemonSet pod helps nobody)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(30.0))


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


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.posting.enabled = False
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = _RetryForever()
    return settings


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def start(memo: kopf.Memo, **_: Any) -> None:
        agent: Agent = memo.agent
        # After kopf's own handlers: its task that installs them resumes before this callback runs.
        asyncio.get_running_loop().call_soon(_take_over_signals, memo.stop)
        # Started here, not before kopf runs: requests need the credentials kopf's login puts in this context.
        memo.tasks = [
            *(asyncio.create_task(r.run(), name=f"watch {r.kind}") for r in agent.reflectors()),
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

    return registry
