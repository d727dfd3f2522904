"""The list-and-watch reflector against a scripted API server: one listing at start, cut watches resumed from
the last version seen (bookmarks included), a listing again only after 410 Gone, and after any script of
cuts, failures, garbage answers and missed events, the view equals the server's objects."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kopf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kopf._cogs.clients import auth
from kopf._cogs.structs.credentials import Vault

from ipvs_reaper.cluster.cache import Parsed
from ipvs_reaper.cluster.reflector import Reflector, ReflectorTiming, read_page
from ipvs_reaper.cluster.watch_api import Collection, Gone, KopfApi, list_params, watch_params
from ipvs_reaper.errors import ApiFailure

SLICES = Collection("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices")


class ScriptDone(Exception):
    """The script has run out: the test stops the reflector here."""


def body(name: str, version: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "a", "resourceVersion": str(version)},
        "addressType": "IPv4",
        "endpoints": [],
    }


@dataclass
class Server:
    """The objects, the latest version, and a script of what each request does."""

    script: list[tuple[str, Any]]
    objects: dict[str, int] = field(default_factory=dict)  # name -> version
    version: int = 100
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (verb, version asked)
    delivered: int = 0  # the newest version sent to the client (a listing, an event, a bookmark)
    resumed: list[tuple[str, int]] = field(default_factory=list)  # per watch: (asked, newest delivered)

    def change(self, name: str, delete: bool) -> dict[str, Any]:
        self.version += 1
        if delete and name in self.objects:
            del self.objects[name]
            return {"type": "DELETED", "object": body(name, self.version)}
        kind = "MODIFIED" if name in self.objects else "ADDED"
        self.objects[name] = self.version
        return {"type": kind, "object": body(name, self.version)}

    def step(self, verb: str) -> tuple[str, Any]:
        if not self.script:
            raise ScriptDone
        what, argument = self.script.pop(0)
        return what, argument


class ScriptedApi:
    def __init__(self, server: Server, page_size: int = 2) -> None:
        self.server = server
        self.page_size = page_size

    async def list_page(
        self, collection: Collection, resource_version: str | None, token: str | None
    ) -> bytes:
        server = self.server
        server.requests.append(("list", resource_version if token is None else f"continue {token}"))
        # A listing's later pages are part of its step.
        what, _ = server.step("list") if token is None else ("list", None)
        if what == "fail":
            raise ApiFailure("listing: HTTP 503")
        if what == "garbage":
            return b'{"items": [{"metadata": '  # a truncated answer
        server.delivered = server.version
        names = sorted(server.objects)
        start = int(token or 0)
        chunk = names[start : start + self.page_size]
        more = start + self.page_size < len(names)
        return json.dumps(
            {
                "metadata": {
                    "resourceVersion": str(server.version),
                    "continue": str(start + len(chunk)) if more else "",
                },
                "items": [body(n, server.objects[n]) for n in chunk],
            }
        ).encode()

    async def watch(self, collection: Collection, since: str) -> AsyncIterator[dict[str, Any]]:
        server = self.server
        server.requests.append(("watch", since))
        server.resumed.append((since, server.delivered))
        what, changes = server.step("watch")
        if what == "fail":
            raise ApiFailure("watching: connection refused")
        if what == "gone":
            for name, delete in changes:  # missed while the watch was down: the server says 410
                server.change(name, delete)
            raise Gone("watching: 410 Gone")
        for name, delete in changes:
            event = server.change(name, delete)
            server.delivered = server.version
            yield event
            await asyncio.sleep(0)
        if what == "bookmark":
            server.version += 1
            server.delivered = server.version
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(server.version)}}}
        if what == "cut":
            raise ApiFailure("watching: connection reset")

    async def read(self, path: str, resource_version: str | None = None) -> dict[str, Any] | None:
        raise NotImplementedError

    async def create(self, path: str, body: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclass
class Store:
    """The sink: what the agent's cache would hold, by name and version."""

    objects: dict[str, str] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    listings: int = 0
    open: int = 0  # listings begun and not ended: a failed one must end too

    def begin_listing(self) -> int:
        self.open += 1
        return 0

    def end_listing(self, since: int) -> None:
        self.open -= 1

    def listed(self, kind: str, entries: list[Parsed], since: int) -> None:
        self.open -= 1
        self.listings += 1
        self.objects = {e.key.name: e.version or "" for e in entries if e.key is not None}

    def on_event(self, kind: str, event_type: str | None, body: Any) -> None:
        name, version = body["metadata"]["name"], body["metadata"]["resourceVersion"]
        if event_type == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = version

    def heard(self, kind: str) -> None:
        pass

    def lost(self, kind: str, why: str) -> None:
        self.gaps.append(why)

    def failed(self, site: str) -> None:
        self.failures.append(site)


async def run_script(server: Server, spread: float = 10.0) -> tuple[Store, list[float], Reflector]:
    store, pauses = Store(), []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    reflector = Reflector(
        SLICES,
        ScriptedApi(server),
        store,
        "node-a",
        timing=ReflectorTiming(relist_spread=spread),
        rng=random.Random(7),
        clock=lambda: 0.0,
        sleep=sleep,
    )
    with pytest.raises(ScriptDone):
        await reflector.run()
    return store, pauses, reflector


async def test_one_listing_then_cut_watches_resume_from_the_last_version_even_a_bookmarks() -> None:
    server = Server(
        [
            ("list", None),
            ("events", [("web-1", False), ("web-2", False)]),  # the request's timeout: a normal end
            ("cut", [("web-1", False)]),
            ("bookmark", []),
            ("events", []),
        ],
        objects={"web-0": 100},
    )
    store, pauses, _ = await run_script(server)
    assert server.requests == [
        ("list", "0"),
        ("watch", "100"),
        ("watch", "102"),
        ("watch", "103"),
        ("watch", "104"),
        ("watch", "104"),  # the script's end
    ]
    assert store.listings == 1 and store.objects == {k: str(v) for k, v in server.objects.items()}
    assert pauses == [1.0]  # after the cut, before resuming


async def test_a_410_marks_the_view_incomplete_and_lists_again_from_the_cache_after_a_random_pause() -> None:
    server = Server(
        [("list", None), ("gone", [("web-1", True)]), ("list", None), ("events", [])],
        objects={"web-0": 100, "web-1": 100},
    )
    store, pauses, reflector = await run_script(server, spread=10.0)
    assert server.requests[:3] == [("list", "0"), ("watch", "100"), ("list", "100")]
    assert len(store.gaps) == 1 and "410" in store.gaps[0]
    assert len(pauses) == 1 and 0 <= pauses[0] <= 10.0
    assert store.objects == {"web-0": "100"}  # the one deleted while nobody watched is gone
    assert reflector.listings == 2


async def test_a_listing_follows_continue_tokens_and_asks_a_version_on_its_first_page_only() -> None:
    server = Server([("list", None), ("events", [])], objects={f"s-{i}": 100 + i for i in range(5)})
    store, _, _ = await run_script(server)
    assert server.requests[:3] == [("list", "0"), ("list", "continue 2"), ("list", "continue 4")]
    assert len(store.objects) == 5 and store.listings == 1


async def test_failures_are_retried_with_backoff_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(
        [("fail", None), ("garbage", None), ("fail", None), ("list", None)]
        + [("fail", [])] * 3
        + [("events", [("web-1", False)])],
    )
    with caplog.at_level(logging.DEBUG, logger="ipvs_reaper.cluster.reflector"):
        store, pauses, _ = await run_script(server)
    assert pauses == [1.0, 2.0, 5.0, 1.0, 2.0, 5.0]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("listing EndpointSlice objects failed" in line for line in lines) == 1
    assert sum("watching EndpointSlice objects failed" in line for line in lines) == 1
    assert "listing EndpointSlice objects complete again" in lines
    assert "watching EndpointSlice objects again" in lines
    assert store.failures.count("list") == 3 and store.failures.count("watch") == 3
    assert store.objects == {"web-1": "101"}


def test_query_parameters() -> None:
    node = Collection("Node", "/api/v1/nodes", field_selector="metadata.name=n")
    assert list_params(node, "0", None, 500) == {
        "limit": "500",
        "fieldSelector": "metadata.name=n",
        "resourceVersion": "0",
    }
    assert list_params(SLICES, "42", None, 500) == {
        "limit": "500",
        "resourceVersion": "42",
        "resourceVersionMatch": "NotOlderThan",
    }
    assert list_params(SLICES, "42", "tok", 500) == {"limit": "500", "continue": "tok"}
    assert watch_params(SLICES, "42", 300) == {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "resourceVersion": "42",
        "timeoutSeconds": "300",
    }


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b'{"items": {}}', b'{"items": [], "metadata": []}', b'{"items": [' * 5000, b"\xff"],
)
def test_a_page_that_is_not_a_list_is_an_api_failure(raw: bytes) -> None:
    with pytest.raises(ApiFailure):
        read_page(raw, "EndpointSlice", "node-a")


_names = st.sampled_from([f"web-{i}" for i in range(4)])
_changes = st.lists(st.tuples(_names, st.booleans()), max_size=4)
_watch_steps = st.one_of(
    st.tuples(st.sampled_from(["events", "cut", "bookmark", "gone"]), _changes),
    st.tuples(st.just("fail"), st.just([])),
)
_list_steps = st.tuples(st.sampled_from(["list", "fail", "garbage"]), st.none())


@st.composite
def _scripts(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A valid script: listings until one succeeds, then watch steps; after a 410, listings again."""
    script: list[tuple[str, Any]] = []
    listing = True
    for _ in range(draw(st.integers(1, 25))):
        step = draw(_list_steps if listing else _watch_steps)
        script.append(step)
        if listing and step[0] == "list":
            listing = False
        elif not listing and step[0] == "gone":
            listing = True
    while listing:  # end with a complete view
        script.append(("list", None))
        listing = False
    return script


@settings(max_examples=150, deadline=None)
@given(_scripts(), st.dictionaries(_names, st.integers(1, 99), max_size=4))
def test_after_any_script_the_view_is_the_servers_and_only_410s_list_again(
    script: list[tuple[str, Any]], objects: dict[str, int]
) -> None:
    server = Server(list(script), objects=dict(objects))
    store, _, reflector = asyncio.run(run_script(server))
    assert store.objects == {name: str(version) for name, version in server.objects.items()}
    assert store.open == 0
    gones = sum(1 for what, _ in script if what == "gone")
    assert reflector.listings == 1 + gones
    # Every watch resumes from the newest version the reflector was sent: nothing skipped, nothing older.
    assert all(since == str(delivered) for since, delivered in server.resumed)


async def test_a_watch_answer_nested_too_deeply_is_an_api_failure() -> None:
    """A garbage watch line must end that watch request, not the agent's loop (json.loads raises
    RecursionError, which is no ValueError)."""

    async def deep(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        await response.write(b"[" * 100_000 + b"\n")
        return response

    app = aiohttp.web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/endpointslices", deep)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        vault = Vault()
        await vault.populate({"test": kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}")})
        auth.vault_var.set(vault)
        api = KopfApi(kopf.OperatorSettings())
        with pytest.raises(ApiFailure):
            async for _ in api.watch(SLICES, "1"):
                pass
        await vault.close()
    finally:
        await runner.cleanup()
