"""Listing the cluster state from the API, against kmock's Kubernetes emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kmock
import pytest

from ipvs_reaper.cli import NodeAccess, main
from ipvs_reaper.cluster.sources import load_cluster_api
from ipvs_reaper.errors import RuntimeFailure
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from tests.agent.harness import kubeconfig
from tests.builders import endpoint, endpoint_slice, node, pod, port, service
from tests.netfilter.scene import DUMPS, NODE, cluster_items, table


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


async def test_doctor_names_owners_from_this_nodes_pods(
    api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`doctor` without a cluster-state file lists the cluster, and this node's Pods for the rules' owners."""
    resources = {
        "Service": "v1/services",
        "EndpointSlice": "discovery.k8s.io/v1/endpointslices",
        "Node": "v1/nodes",
        "Pod": "v1/pods",
    }
    for item in cluster_items():
        store(api, resources[item["kind"]], item)
    elsewhere = pod(
        "db", "mysql-a-0-twin", "node-b", "10.244.1.5", [{"containerPort": 3306, "hostPort": 3306}]
    )
    store(api, "v1/pods", elsewhere)  # same address on another node: not this node's owner
    sysctls = FakeSysctls({"conn_reuse_mode": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1})
    access = NodeAccess(FakeIpvs(table()), sysctls, proc_kernel=tmp_path, local_addresses=lambda: ())
    argv = ["doctor", "--node-name", NODE, "--kubeconfig", kubeconfig(tmp_path, str(api.url)), "-o", "json"]
    argv += ["--iptables-save", str(DUMPS / "portmap.iptables-legacy-save")]
    code = await asyncio.to_thread(main, argv, access)
    document = json.loads(capsys.readouterr().out)
    assert code == 3 and document["names"] is True, document["namesUnavailable"]
    owners = {f["service"]: f["owner"] for f in document["findings"] if f["kind"] == "hijack"}
    assert owners["db/mysql-b"] == "db/mysql-a-0"
    assert owners["web/frontend"] == "ingress/controller-x1"
    assert [len(api[verb]) for verb in ("post", "put", "patch", "delete")] == [0, 0, 0, 0]
