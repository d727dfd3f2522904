"""Listing the cluster state from the API, against kmock's Kubernetes emulator over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kmock
import pytest

from ipvs_reaper.cluster.sources import load_cluster_api
from ipvs_reaper.errors import RuntimeFailure
from tests.agent.harness import kubeconfig
from tests.builders import endpoint, endpoint_slice, node, port, service


def store(emulator: Any, resource: str, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    emulator.objects[resource, meta.get("namespace"), meta["name"]] = obj


@pytest.fixture
def api(kmock: Any) -> Any:
    kmock.resources.load_bundled()
    return kmock


async def test_lists_services_slices_and_this_node(api: Any, tmp_path: Path) -> None:
    store(api, "v1/services", service("shop", "web", ["10.96.12.7"], [port(443, "https", node_port=31234)]))
    store(
        api,
        "discovery.k8s.io/v1/endpointslices",
        endpoint_slice("shop", "web-1", "web", [port(8443, "https")], [endpoint("10.244.3.17")]),
    )
    store(api, "v1/nodes", node("node-a", "192.168.49.2"))
    store(api, "v1/nodes", node("node-b", "192.168.49.3"))
    state = await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, str(api.url)))
    assert state.usable
    assert [s.ref for s in state.services] == ["shop/web"]
    assert [s.name for s in state.slices] == ["web-1"]
    assert [n.name for n in state.nodes] == ["node-a"]  # read by name, not listed
    # Only reads: the reaper never writes to what it watches.
    assert len(api["get"]) >= 3
    assert [len(api[verb]) for verb in ("post", "put", "patch", "delete")] == [0, 0, 0, 0]


async def test_a_missing_node_only_leaves_nodeports_unmapped(api: Any, tmp_path: Path) -> None:
    store(api, "v1/services", service("a", "b", ["10.96.0.2"], [port(80)]))
    store(api, "discovery.k8s.io/v1/endpointslices", endpoint_slice("a", "b-1", "b", [port(8080)], []))
    state = await asyncio.to_thread(load_cluster_api, "node-x", kubeconfig(tmp_path, str(api.url)))
    assert state.usable
    assert state.nodes == ()


async def test_an_empty_cluster_is_unusable(api: Any, tmp_path: Path) -> None:
    state = await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, str(api.url)))
    assert not state.usable


async def test_api_errors_are_runtime_failures(api: Any, tmp_path: Path) -> None:
    api["list", kmock.resource("discovery.k8s.io", "v1", "endpointslices")] << 500
    with pytest.raises(RuntimeFailure, match="listing the cluster state"):
        await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, str(api.url)))


async def test_unreachable_api_is_a_runtime_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure):
        await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, "http://127.0.0.1:9"))


@pytest.mark.parametrize("answer", [[1, 2], {"items": {"a": 1}}, {"items": [], "metadata": "x"}])
async def test_an_answer_that_is_not_a_list_is_a_runtime_failure(
    api: Any, tmp_path: Path, answer: Any
) -> None:
    # A proxy or a broken server in between: a clear failure (the agent retries), never a TypeError.
    api["list", kmock.resource("v1", "services")] << answer
    with pytest.raises(RuntimeFailure, match="listing Service objects: the answer is not a List"):
        await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, str(api.url)))


async def test_items_that_are_not_objects_make_the_view_unusable(api: Any, tmp_path: Path) -> None:
    api["list", kmock.resource("v1", "services")] << {"items": ["junk"], "metadata": {}}
    store(api, "discovery.k8s.io/v1/endpointslices", endpoint_slice("a", "b-1", "b", [port(8080)], []))
    state = await asyncio.to_thread(load_cluster_api, "node-a", kubeconfig(tmp_path, str(api.url)))
    assert not state.usable
    assert "items[0] is not an object" in state.problems[0]
