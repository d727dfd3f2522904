"""`ipvs-reaper run`: wire the agent's parts together and run them until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import Callable

import kopf

from ipvs_reaper import package_version
from ipvs_reaper.agent.agent import Agent, Clocks
from ipvs_reaper.agent.handlers import build_registry, operator_settings
from ipvs_reaper.agent.health import start_health_server
from ipvs_reaper.agent.metrics import AgentMetrics
from ipvs_reaper.agent.options import AgentOptions
from ipvs_reaper.cluster.credentials import agent_credentials
from ipvs_reaper.cluster.watch_api import KopfApi
from ipvs_reaper.errors import RuntimeFailure
from ipvs_reaper.ipvs.backend import IpvsBackend
from ipvs_reaper.kernel.facts import read_live_facts
from ipvs_reaper.kernel.sysctl import Sysctls
from ipvs_reaper.netfilter.sources import RuleSources, read_live_rules
from ipvs_reaper.values import IPAddress

log = logging.getLogger(__name__)


async def run_agent(
    options: AgentOptions,
    backend: IpvsBackend,
    sysctls: Sysctls,
    local_addresses: Callable[[], tuple[IPAddress, ...]],
    *,
    stop: asyncio.Event | None = None,
    clocks: Clocks | None = None,
    started: asyncio.Future[Agent] | None = None,
    read_rules: Callable[[], RuleSources] = read_live_rules,
) -> int:
    """Runs until `stop` is set (or a signal stops it); returns the exit code. `started` receives the agent,
    for tests."""
    login = agent_credentials(options.kubeconfig)
    settings = operator_settings()
    api = KopfApi(settings, watch_timeout=options.watch_timeout)
    agent = Agent(
        options,
        api=api,
        backend=backend,
        sysctls=sysctls,
        local_addresses=local_addresses,
        kernel_facts=lambda: read_live_facts(sysctls),
        metrics=AgentMetrics(
            dry_run=options.dry_run,
            version=package_version(),
            kernel_release=platform.release(),
        ),
        clocks=clocks or Clocks(),
        read_rules=read_rules,
    )
    try:
        health = await start_health_server(agent, options.listen_host, options.listen_port)
    except OSError as error:
        # aiohttp wraps the bind error in its own words; the errno's are shorter. A name that does not
        # resolve has a negative (resolver) errno, whose text is the error's own.
        reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
        raise RuntimeFailure(f"--listen {options.listen_host}:{options.listen_port}: {reason}") from None
    log.info(
        "ipvs-reaper %s on node %s%s; health and metrics on %s:%d",
        package_version(),
        options.node_name,
        " (dry-run)" if options.dry_run else "",
        options.listen_host,
        options.listen_port,
    )
    # Config problems are reported at once and whatever the API does: this loop does not wait for a listing.
    config_task = asyncio.create_task(agent.config_forever(), name="config")
    doctor_task = asyncio.create_task(agent.doctor_forever(), name="doctor")
    if started is not None:
        started.set_result(agent)
    # kopf asks again after a 401: each login reads the (rotated) token anew.
    stop = stop or asyncio.Event()
    memo = kopf.Memo(agent=agent, login=login, stop=stop, failure=None)
    try:
        await kopf.operator(
            registry=build_registry(),
            settings=settings,
            memo=memo,
            standalone=True,
            clusterwide=True,
            stop_flag=stop,
        )
    finally:
        for task in (config_task, doctor_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await health.cleanup()
    if memo.failure is not None:
        raise RuntimeFailure(memo.failure)
    log.info("stopped")
    return 0
