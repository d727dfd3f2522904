"""The agent on bad input and broken surroundings: a bad config while the API is down is reported at once,
a wrong node name keeps it unready, NodePorts on the node's other addresses are reaped, and its logs are
quiet, stamped, and one line per state change."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.logs import FIELDS, configure_logging
from tests.agent.harness import (
    CHURN_AGENT,
    NODES,
    SERVICES,
    SLICES,
    Cluster,
    eventually,
    options,
    real,
    running,
    table,
    vip,
)
from tests.agent.test_agent import http_status, readyz, seed, web_service, web_slice
from tests.builders import endpoint, node

WEB = vip("10.96.0.2", 80)
CNI_NODE_PORT = vip("10.244.0.1", 30080)  # cni0's address: in no Node object


async def test_a_bad_config_is_reported_while_the_api_is_down(
    api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api[lambda request: CHURN_AGENT not in request.headers.get("User-Agent", "")] << 503
    config = tmp_path / "config.yaml"
    config.write_text("policy:\n  gone: {reap: idle}\n  gone: {reap: never}\n")
    with caplog.at_level(logging.INFO):
        async with running(options(tmp_path, str(api.url), config_path=config), FakeIpvs()) as agent:
            status, text = await http_status(readyz(agent))
            assert status == 503
            assert f"no good config yet: {config}: not valid YAML: line 3: duplicate key 'gone'" in text
            assert "not listed yet: Service" in text
            await eventually(lambda: agent.metrics.config_missing._value.get() == 1, what="config gauge")
            assert agent.metrics.config_error._value.get() == 1
            await eventually(lambda: "objects failed" in caplog.text, what="the failed listing logged")
            await asyncio.sleep(2.5)  # retries go on: they are not logged again
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("ipvs_reaper")]
    assert sum("config rejected" in m for m in messages) == 1
    for kind in ("Service", "EndpointSlice", "Node"):  # once for each kind, not once per retry
        assert sum(f"listing {kind} objects failed" in m for m in messages) == 1
    assert sum(m.startswith("not ready") for m in messages) == 1
    assert not [m for m in messages if "re-list failed" in m]  # there is no view to keep


async def test_without_its_node_the_agent_is_never_ready(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080, weight=0)))
    async with Cluster(str(api.url)) as cluster:
        await cluster.create(SERVICES, web_service())
        await cluster.create(SLICES, web_slice(endpoint("10.1.0.1")))
        await cluster.create(NODES, node("node-b", "192.168.49.3"))
        async with running(options(tmp_path, str(api.url)), fake) as agent:
            await eventually(lambda: agent.cache.ready, what="listed")
            status, text = await http_status(readyz(agent))
            assert status == 503 and "the API has no Node named 'node-a'" in text
            agent.request_sweep()
            await asyncio.sleep(0.3)
            assert fake.deleted == []
            # The node appears (it was registering): ready, and the stale real server goes.
            await cluster.create(NODES, node("node-a", "192.168.49.2"))
            await eventually(lambda: not agent.not_ready_because(), what="ready once the Node exists")
            await eventually(lambda: bool(fake.deleted), what="reaped")


async def test_node_ports_on_the_nodes_other_addresses_are_reaped(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(
        table(
            real(CNI_NODE_PORT, "10.1.0.1", 8080, weight=1), real(CNI_NODE_PORT, "10.1.0.2", 8080, weight=0)
        )
    )
    local = (ipaddress.ip_address("192.168.49.2"), ipaddress.ip_address("10.244.0.1"))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url)), fake, local_addresses=local) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            await eventually(lambda: bool(fake.deleted), what="the cni0 NodePort reaped")
            assert [f"{k.virtual} -> {k.address}" for k in fake.deleted] == ["10.244.0.1:30080 -> 10.1.0.2"]


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("kopf", "aiohttp", "asyncio", "kubernetes", "urllib3"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.usefixtures("root_logging")
def test_logs_are_stamped_json_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    logging.getLogger("kopf.objects").info("Handler 'slice_event' succeeded.")
    logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2)) after connection broken")
    logging.getLogger("ipvs_reaper.agent.agent").warning("not ready, reaping nothing: %s", "why")
    record = {"outcome": "deleted", "real": "10.1.0.2:8080", "service": "a/web"}
    logging.getLogger("ipvs_reaper.actor").info("%s", json.dumps(record), extra={FIELDS: record})
    logging.getLogger("ipvs_reaper.agent.agent").error("%s", '{"looks": "like JSON"}')  # but stays a message
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    loggers = [line["logger"] for line in lines]
    assert loggers == ["ipvs_reaper.agent.agent", "ipvs_reaper.actor", "ipvs_reaper.agent.agent"]
    assert lines[2]["message"] == '{"looks": "like JSON"}'
    assert lines[0]["level"] == "warning" and lines[0]["message"] == "not ready, reaping nothing: why"
    assert lines[0]["time"].endswith("Z")
    assert lines[1]["outcome"] == "deleted" and "message" not in lines[1]  # the record's fields, merged
    configure_logging("debug", "text")
    logging.getLogger("kopf.objects").debug("Handler 'slice_event' succeeded.")
    assert "kopf.objects: Handler 'slice_event' succeeded." in capsys.readouterr().err
