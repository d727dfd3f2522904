"""`ipvs-reaper run` end to end: kopf, our listings and the work loop against kmock's Kubernetes emulator over
real HTTP (list, watch, 410 Gone, dropped streams, outages), with a fake IPVS table."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from ipvs_reaper.ipvs.fake import FakeIpvs
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
NODE_PORT = vip("192.168.49.2", 30080)


def web_service() -> dict[str, Any]:
    return service("a", "web", ["10.96.0.2"], [port(80, node_port=30080)])


def web_slice(*endpoints: dict[str, Any], name: str = "web-1") -> dict[str, Any]:
    return endpoint_slice("a", name, "web", [port(8080)], list(endpoints))


async def seed(cluster: Cluster, *slices: dict[str, Any]) -> None:
    await cluster.create(SERVICES, web_service())
    for body in slices:
        await cluster.create(SLICES, body)
    await cluster.create(NODES, node("node-a", "192.168.49.2"))
    await cluster.create(NODES, node("node-b", "192.168.49.3"))


async def http_status(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def readyz(agent: Any) -> str:
    return f"http://127.0.0.1:{agent.options.listen_port}/readyz"


def keys(fake: FakeIpvs) -> list[str]:
    return [f"{k.virtual} -> {k.address}" for k in fake.deleted]


async def test_a_removed_endpoint_is_reaped_and_a_ready_one_never(api: Any, tmp_path: Path) -> None:
    # 10.1.0.3 is weight 0 but ready: an operator drained it by hand; it must stay.
    fake = FakeIpvs(
        table(
            *(real(v, ip, 8080, weight=1) for v in (WEB, NODE_PORT) for ip in ("10.1.0.1", "10.1.0.2")),
            real(WEB, "10.1.0.3", 8080, weight=0),
        )
    )
    ready = [endpoint("10.1.0.1"), endpoint("10.1.0.2"), endpoint("10.1.0.3")]
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(*ready))
        async with running(options(tmp_path, str(api.url)), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            # The pod 10.1.0.2 goes: the slice loses it, and kube-proxy (later) sets its weight to 0.
            await cluster.patch(SLICES, web_slice(ready[0], ready[2]))
            await asyncio.sleep(0.1)
            assert fake.deleted == []  # still weighted: kube-proxy has not caught up
            for v in (WEB, NODE_PORT):
                fake.set_weight(real(v, "10.1.0.2", 8080).key, 0)
            # Found by the follow-up reads, long before the 30 s sweep.
            await eventually(lambda: len(fake.deleted) == 2, timeout=3, what="follow-up reap")
            assert sorted(keys(fake)) == ["10.96.0.2:80 -> 10.1.0.2", "192.168.49.2:30080 -> 10.1.0.2"]
            agent.request_sweep()
            await asyncio.sleep(0.3)
            assert real(WEB, "10.1.0.3", 8080).key in fake.real_servers  # ready: never reaped


async def test_nothing_is_reaped_before_the_first_full_listing(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.9", 8080, weight=0)))
    slices_down = {"down": True}
    (
        api[lambda request: slices_down["down"] and CHURN_AGENT not in request.headers.get("User-Agent", "")][
            kmock.resource("discovery.k8s.io", "v1", "endpointslices")
        ]
        << 503
    )
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url)), fake) as agent:
            await asyncio.sleep(1.5)
            status, text = await http_status(readyz(agent))
            assert status == 503 and "not listed yet: EndpointSlice" in text
            agent.request_sweep()
            await asyncio.sleep(0.3)
            assert fake.deleted == []
            slices_down["down"] = False
            await eventually(lambda: bool(fake.deleted), timeout=15, what="reaped once listed")
            assert keys(fake) == ["10.96.0.2:80 -> 10.1.0.9"]
            assert (await http_status(readyz(agent)))[0] == 200


async def test_a_cut_watch_resumes_from_its_version_and_only_a_410_lists_again(
    api: Any, tmp_path: Path
) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    slices, services = (
        kmock.resource("discovery.k8s.io", "v1", "endpointslices"),
        kmock.resource("v1", "services"),
    )
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }
    # The first slice watch says 410 Gone when the test says so; the first service watches end at once (cut
    # streams) after a bookmark.
    gone_now: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    api["watch", slices][0:1] << (gone_now,)
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "7"}}}
    api["watch", services][0:3] << (bookmark,)
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")), web_slice(endpoint("10.1.0.5"), name="web-2"))
        async with running(options(tmp_path, str(api.url)), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            await eventually(
                lambda: len(api["watch", services]) >= 4, what="service watch resumed after cuts"
            )
            # Cut streams are resumed from the last version seen (the bookmark's), never listed again.
            assert len(api["list", services]) == 1
            assert [r.url.query.get("resourceVersion") for r in api["watch", services]][1:4] == ["7"] * 3
            assert all(r.url.query.get("allowWatchBookmarks") == "true" for r in api["watch", services])
            # The one listing of each kind came from the watch cache.
            assert [r.url.query.get("resourceVersion") for r in api["list", slices]] == ["0"]
            # Deleted while no watch was looking: no DELETED event will ever come for it.
            del api.objects[slices, "a", "web-2"]
            await asyncio.sleep(0.3)
            assert {s.name for s in agent.cache.snapshot().slices} == {"web-1", "web-2"}
            gone_now.set_result(gone)
            await eventually(lambda: len(api["list", slices]) == 2, what="listed again after 410")
            await eventually(
                lambda: {s.name for s in agent.cache.snapshot().slices} == {"web-1"}, what="gone"
            )
            relist = api["list", slices][1]
            assert relist.url.query.get("resourceVersionMatch") == "NotOlderThan"
            await eventually(lambda: not agent.not_ready_because(), what="ready again")
            # The watch came back: a change made now still arrives as an event.
            await cluster.create(SLICES, web_slice(endpoint("10.1.0.7"), name="web-3"))
            await eventually(
                lambda: {s.name for s in agent.cache.snapshot().slices} == {"web-1", "web-3"}, what="watch"
            )
            assert len(api["list", services]) == 1


async def test_a_watch_that_keeps_failing_is_not_vouched_for_by_heartbeats(api: Any, tmp_path: Path) -> None:
    """Listings and reads work but every slice watch fails (a proxy that breaks streams, no `watch` verb):
    the heartbeat proves the API answers, not that slice events arrive, so the slice view goes stale."""
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=1)))
    api["watch", kmock.resource("discovery.k8s.io", "v1", "endpointslices")] << 503
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), max_silence=2.0), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready (the listing is fresh)")
            await eventually(
                lambda: any("about EndpointSlice objects" in r for r in agent.not_ready_because()),
                timeout=8,
                what="the slice view stale",
            )
            assert not any("about Service objects" in r for r in agent.not_ready_because())
            # 10.1.0.2 is listed again, ready, and drained by hand: the stale view still has it gone.
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2")))
            fake.set_weight(real(WEB, "10.1.0.2", 8080).key, 0)
            agent.request_sweep()
            await asyncio.sleep(0.5)
            assert fake.deleted == []


async def test_an_unreachable_api_pauses_reaping_and_readiness_and_both_recover(
    api: Any, tmp_path: Path
) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=1)))
    outage = {"on": False}
    (api**100)[
        lambda request: outage["on"] and CHURN_AGENT not in request.headers.get("User-Agent", "")
    ] << 503
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), max_silence=2.0), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            outage["on"] = True
            await eventually(lambda: bool(agent.not_ready_because()), timeout=6, what="stale")
            assert any("no word from the API" in reason for reason in agent.not_ready_because())
            fake.set_weight(real(WEB, "10.1.0.2", 8080).key, 0)  # reapable, but the view is stale
            agent.request_sweep()
            await asyncio.sleep(0.5)
            assert fake.deleted == []
            assert agent.metrics.view_unusable._value.get() == 1
            outage["on"] = False
            await eventually(lambda: not agent.not_ready_because(), timeout=8, what="fresh again")
            agent.request_sweep()
            await eventually(lambda: keys(fake) == ["10.96.0.2:80 -> 10.1.0.2"], what="reaped after recovery")


@contextlib.asynccontextmanager
async def ready_with_config(api: Any, tmp_path: Path, text: str) -> AsyncIterator[tuple[Any, FakeIpvs, Path]]:
    """A ready agent with this config file, over web with a live and a stale real server."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=0)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), config_path=config), fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            yield agent, fake, config


async def swept(agent: Any) -> None:
    agent.request_sweep()
    await asyncio.sleep(0.3)


async def test_a_garbage_config_keeps_the_last_good_one_and_a_valid_change_applies(
    api: Any, tmp_path: Path
) -> None:
    async with ready_with_config(api, tmp_path, "policy:\n  gone: {reap: never}\n") as (agent, fake, config):
        await swept(agent)
        assert fake.deleted == []  # the operator said never
        config.write_text("policy: [this is: not, a mapping\n")
        await eventually(lambda: agent.metrics.config_error._value.get() == 1, timeout=5, what="rejected")
        await swept(agent)
        assert fake.deleted == []  # still the last good config, not the (reaping) defaults
        assert (await http_status(readyz(agent)))[0] == 200
        config.write_text("policy:\n  gone: {reap: idle}\n")
        await eventually(lambda: bool(fake.deleted), timeout=5, what="applied without restart")
        assert agent.metrics.config_error._value.get() == 0


async def test_exclude_cidrs_are_read_live(api: Any, tmp_path: Path) -> None:
    async with ready_with_config(api, tmp_path, "excludeCIDRs: [10.96.0.0/24]\n") as (agent, fake, config):
        await swept(agent)
        assert fake.deleted == []  # the operator said another IPVS user lives there
        config.write_text("excludeCIDRs: [10.250.0.0/24]\n")
        await eventually(lambda: bool(fake.deleted), timeout=5, what="applied without restart")
        assert keys(fake) == ["10.96.0.2:80 -> 10.1.0.2"]


async def test_grace_runs_on_the_injected_clock(api: Any, tmp_path: Path) -> None:
    wall = WallClock()
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=0)))
    async with Cluster(str(api.url)) as cluster:
        # 10.1.0.2 is not ready: the default policy gives it 30 s.
        await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False)))
        opts = options(tmp_path, str(api.url), relist_interval=0.5)
        async with running(opts, fake, wall=wall) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            sweeps = agent.metrics.reconciles.labels("sweep")
            await eventually(lambda: sweeps._value.get() >= 1, what="first sweep")
            wall.advance(29)
            agent.request_sweep()
            await asyncio.sleep(0.3)
            assert fake.deleted == []
            # A re-list does not reset the clock.
            lists = len(api["list", kmock.resource("discovery.k8s.io", "v1", "endpointslices")])
            await eventually(
                lambda: len(api["list", kmock.resource("discovery.k8s.io", "v1", "endpointslices")]) > lists,
                what="a periodic relisting",
            )
            wall.advance(2)
            agent.request_sweep()
            await eventually(lambda: keys(fake) == ["10.96.0.2:80 -> 10.1.0.2"], what="reaped after grace")


async def test_over_a_churn_run_the_agent_only_reads_and_posts_events(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(table(*(real(WEB, f"10.1.0.{i}", 8080, weight=1) for i in range(1, 9))))
    pods = [endpoint(f"10.1.0.{i}") for i in range(1, 9)]
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(*pods))
        opts = options(tmp_path, str(api.url), post_events=True, relist_interval=1.0, watch_timeout=1.0)
        async with running(opts, fake) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            for i in range(1, 7):  # a rolling update, one pod at a time, with other objects churning
                await cluster.patch(SLICES, web_slice(*pods[i:]))
                fake.set_weight(real(WEB, f"10.1.0.{i}", 8080).key, 0)
                other = service("b", f"svc-{i}", [f"10.96.1.{i}"], [port(80)])
                await cluster.create(SERVICES, other)
                await cluster.patch(
                    SERVICES, {**other, "metadata": {**other["metadata"], "labels": {"x": "y"}}}
                )
                await cluster.delete(SERVICES, other)
                await eventually(lambda i=i: len(fake.deleted) == i, timeout=3, what=f"pod {i} reaped")
            await asyncio.sleep(1.5)  # a re-list and watch restarts happen in between
    ours = [r for r in api if CHURN_AGENT not in r.headers.get("User-Agent", "")]
    writes = [(r.method.value, r.url.path) for r in ours if r.method.value not in ("GET", "HEAD")]
    assert {path for _, path in writes} == {"/api/v1/namespaces/a/events"}, writes
    assert all(method == "POST" for method, _ in writes)
    # One Event for the first reap; the rest of the rollout is held back by the per-Service interval.
    (first,) = [json.loads(r.body) for r in ours if r.method.value == "POST"]
    assert first["involvedObject"] == {"apiVersion": "v1", "kind": "Service", "namespace": "a", "name": "web"}
    assert first["reason"] == "StaleRealServerReaped" and "10.1.0.1:8080" in first["message"]
    watched = {r.resource for r in ours if r.action is not None and str(r.action).endswith("WATCH")}
    assert len(watched) == 3


def test_a_churn_slice_copy_is_independent() -> None:
    # Guard for the tests above: builders return fresh objects, so patches never alias seeded bodies.
    a = web_slice(endpoint("10.1.0.1"))
    b = copy.deepcopy(a)
    b["endpoints"].clear()
    assert a["endpoints"]
