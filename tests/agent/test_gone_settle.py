"""A gone endpoint's real server waits until the endpoint has been seen gone for the settle time, idle or not.
The EndpointSlice controller (or another slice writer) can move an endpoint from one slice to another in two
writes; between them the endpoint is in no slice, and the agent reconciles on the first write's event.
Without the settle it cut the serving pod's connections there (this test's first half fails
with `gone_settle=0`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ipvs_reaper.ipvs.fake import FakeIpvs
from tests.agent.harness import SLICES, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, keys, seed, web_slice
from tests.builders import endpoint

MOVED = "10.1.0.2"
SETTLE = 1.5


def moved_in(agent: Any, name: str) -> bool:
    return any(
        str(address) == MOVED
        for s in agent.cache.snapshot().slices
        if s.name == name
        for e in s.endpoints
        for address in e.addresses
    )


async def test_an_endpoint_moved_between_slices_keeps_its_connections_and_a_gone_one_goes_after_the_settle(
    api: Any, tmp_path: Path
) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, MOVED, 8080, weight=1, active=5)))
    stay, moved = endpoint("10.1.0.1"), endpoint(MOVED)
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(stay, moved), web_slice(name="web-2"))
        agent_options = options(tmp_path, str(api.url), sweep_interval=0.2, gone_settle=SETTLE)
        async with running(agent_options, fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            # The first write: the endpoint leaves web-1, and kube-proxy, seeing the same gap, weights it 0.
            await cluster.patch(SLICES, web_slice(stay))
            fake.set_weight(real(WEB, MOVED, 8080).key, 0)
            # Events, follow-ups and sweeps read it during the gap, as long as the controller takes.
            await asyncio.sleep(SETTLE * 0.6)
            # The second write: it is in web-2, and kube-proxy weights it again.
            await cluster.patch(SLICES, web_slice(moved, name="web-2"))
            await eventually(lambda: moved_in(agent, "web-2"), what="the move seen")
            assert fake.deleted == [], "a serving pod's connections were cut during the move"
            fake.set_weight(real(WEB, MOVED, 8080).key, 1)
            # Longer than the settle, counted from the gap's start: the clock was reset when it came back.
            await asyncio.sleep(SETTLE)
            assert fake.deleted == [], "a serving pod's connections were cut during the move"

            # The pod is deleted: gone for good, its connections dead, its real server goes after the settle.
            await cluster.patch(SLICES, web_slice(name="web-2"))
            gone_at = asyncio.get_running_loop().time()
            fake.set_weight(real(WEB, MOVED, 8080).key, 0)
            await eventually(lambda: bool(fake.deleted), timeout=SETTLE + 5, what="reaped after the settle")
            waited = asyncio.get_running_loop().time() - gone_at
    assert keys(fake) == [f"10.96.0.2:80 -> {MOVED}"]
    assert waited >= SETTLE * 0.9, f"reaped {waited:.1f} s after it went, before the {SETTLE} s settle"


async def test_an_idle_gone_real_server_waits_the_settle_too(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, MOVED, 8080, weight=1)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint(MOVED)))
        async with running(options(tmp_path, str(api.url), gone_settle=SETTLE), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))
            gone_at = asyncio.get_running_loop().time()
            fake.set_weight(real(WEB, MOVED, 8080).key, 0)
            await eventually(lambda: bool(fake.deleted), timeout=SETTLE + 5, what="reaped after the settle")
            waited = asyncio.get_running_loop().time() - gone_at
    assert keys(fake) == [f"10.96.0.2:80 -> {MOVED}"]
    assert waited >= SETTLE * 0.9, f"an idle real server reaped {waited:.1f} s after it went"
