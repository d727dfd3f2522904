"""Chaos against the real agent, with the safety invariants checked at every single deletion: a rollout keeps
removing and restoring endpoints while the API fails (503 bursts, slow answers, watches cut, 410 Gone),
deletes fail (EPERM, EBUSY) or find the real server already gone (kube-proxy first), the config flaps between
good and garbage, the first-seen file is corrupted and made unwritable, and the wall clock jumps both ways.

Invariants, at each delete (the fake table's hook runs in the agent's own thread, under the table's lock):
the real server is at weight 0, belongs to the one mapped virtual service, and its endpoint has not been
listed for longer than the view can lag. Afterwards, with the chaos over: ready again, and every endpoint
still removed has its real server reaped within the policy bound.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from pathlib import Path
from typing import Any

import kmock

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.values import RealKey
from tests.agent.harness import (
    CHURN_AGENT,
    NODES,
    SERVICES,
    SLICES,
    Cluster,
    WallClock,
    eventually,
    options,
    real,
    running,
    table,
    vip,
)
from tests.builders import endpoint, endpoint_slice, node, port, service

WEB = vip("10.96.0.2", 80)
UNMAPPED = vip("10.96.9.9", 80)  # no Service claims it: its weight-0 real server must stay
PODS = [f"10.1.0.{i}" for i in range(1, 9)]
LAG = 2.0  # seconds the agent's view may trail the test's truth (an event in flight)


def _slice(listed: set[str], version: int) -> dict[str, Any]:
    body = endpoint_slice("a", "web-1", "web", [port(8080)], [endpoint(a) for a in PODS if a in listed])
    body["metadata"]["resourceVersion"] = str(version)
    return body


async def test_under_chaos_nothing_wanted_is_deleted_and_everything_stale_is(
    api: Any, tmp_path: Path
) -> None:
    rng = random.Random(12)
    fake = FakeIpvs(
        table(*(real(WEB, a, 8080, weight=1) for a in PODS), real(UNMAPPED, "10.9.0.1", 8080, weight=0))
    )
    listed: dict[str, float | None] = dict.fromkeys(PODS, 0.0)  # address -> listed since (None: removed)
    violations: list[str] = []

    def check(key: RealKey) -> None:
        held = fake.real_servers.get(key)
        address = str(key.address)
        since = listed.get(address)
        if key.virtual != WEB:
            violations.append(f"deleted {key}: no Service maps it")
        elif held is None or held.weight != 0:
            violations.append(f"deleted {key} at weight {held.weight if held else 'gone'}")
        elif since is not None and time.monotonic() - since > LAG:
            violations.append(
                f"deleted {key}: its endpoint has been listed for {time.monotonic() - since:.1f} s"
            )

    def kube_proxy_first(key: RealKey) -> None:
        check(key)
        if rng.random() < 0.1:  # kube-proxy deleted it between our read and our delete: ENOENT, success
            fake.real_servers.pop(key, None)

    fake.before_delete = kube_proxy_first
    config = tmp_path / "config.yaml"
    good = "policy:\n  gone: {reap: idle}\n"
    config.write_text(good)
    first_seen = tmp_path / "first-seen.json"
    wall = WallClock()
    outage = {"on": False}
    agent_requests = lambda request: CHURN_AGENT not in request.headers.get("User-Agent", "")  # noqa: E731
    (api**100)[lambda request: outage["on"] and agent_requests(request)] << 503
    # Slow answers: while on, each of the agent's requests waits up to 1.5 s before the emulator answers it.
    slow = {"on": False}
    api[lambda request: slow["on"] and agent_requests(request)] >> (
        lambda: asyncio.sleep(rng.uniform(0.1, 1.5))
    )
    slices = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    # The first slice and service watches are cut at once (after a bookmark), the next slice watches are
    # told 410 Gone; later ones run until the outages cut them.
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}
    api["watch", slices][0:1] << (bookmark,)
    api["watch", slices][1:4] << (gone,)
    api["watch", kmock.resource("v1", "services")][0:5] << (bookmark,)
    opts = options(
        tmp_path,
        str(api.url),
        config_path=config,
        first_seen_file=first_seen,
        max_silence=3.0,
        sweep_interval=2.0,
        retry_backoff=(0.2, 0.5, 1.0),
    )
    async with Cluster(str(api.url)) as cluster:
        await cluster.create(SERVICES, service("a", "web", ["10.96.0.2"], [port(80)]))
        version = 10
        await cluster.create(SLICES, _slice(set(PODS), version))
        await cluster.create(NODES, node("node-a", "192.168.49.2"))
        async with running(opts, fake, wall=wall) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            started = time.monotonic()
            while time.monotonic() - started < 15:
                address = rng.choice(PODS)
                if listed[address] is not None:  # a pod goes: kube-proxy drains it after the event
                    listed[address] = None
                    version += 1
                    await cluster.patch(
                        SLICES, _slice({a for a, s in listed.items() if s is not None}, version)
                    )
                    fake.put(real(WEB, address, 8080, weight=0), add=False)
                else:  # it comes back: kube-proxy weights it first, then the slice lists it
                    fake.put(real(WEB, address, 8080, weight=1))
                    listed[address] = time.monotonic()
                    version += 1
                    await cluster.patch(
                        SLICES, _slice({a for a, s in listed.items() if s is not None}, version)
                    )
                roll = rng.random()
                if roll < 0.1:
                    outage["on"] = not outage["on"]
                elif roll < 0.15:
                    slow["on"] = not slow["on"]
                elif roll < 0.25:
                    fake.fail_deletes = {
                        real(WEB, a, 8080).key: rng.choice([errno.EPERM, errno.EBUSY]) for a in PODS[:3]
                    }
                elif roll < 0.3:
                    fake.fail_deletes = {}
                elif roll < 0.4:
                    config.write_text(
                        rng.choice([good, "policy: [not, a mapping\n", "policy:\n  gone: {reap: 7}\n"])
                    )
                elif roll < 0.45 and not first_seen.is_dir():
                    first_seen.write_text(rng.choice(["{not json", "[]", '{"x": "2026-11-22T11"}']))
                elif roll < 0.5:  # unwritable (root ignores modes: a directory in its place)
                    if first_seen.is_dir():
                        first_seen.rmdir()
                    else:
                        first_seen.unlink(missing_ok=True)
                        first_seen.mkdir()
                elif roll < 0.6:
                    wall.advance(rng.choice([-3600.0, -30.0, 30.0, 3600.0]))
                await asyncio.sleep(rng.uniform(0.05, 0.4))
            # The chaos ends: the API answers, deletes work, the config is good.
            outage["on"] = slow["on"] = False
            fake.fail_deletes = {}
            config.write_text(good)
            if first_seen.is_dir():
                first_seen.rmdir()
            await eventually(lambda: not agent.not_ready_because(), timeout=15, what="ready again")
            stale = {
                real(WEB, a, 8080).key
                for a, since in listed.items()
                if since is None and real(WEB, a, 8080).key in fake.real_servers
            }
            await eventually(
                lambda: not (stale & set(fake.real_servers)),
                timeout=15,
                what=f"every stale one reaped: {stale}",
            )
    assert violations == []
    assert real(UNMAPPED, "10.9.0.1", 8080).key in fake.real_servers
    assert fake.deleted, "the run reaped nothing: the chaos hid the test's point"
