"""Quiet during an API outage: an API server that refuses every connection from the start gets one line per
state change from the agent, and nothing from kopf's own retries, however long it lasts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.logs import quiet_libraries
from tests.agent.harness import free_port, options, real, running, table
from tests.agent.test_agent import WEB


async def test_an_api_that_refuses_connections_gets_a_line_per_state_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    quiet_libraries("info")  # as `ipvs-reaper run` sets them (configure_logging would drop caplog's handler)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    agent_options = options(tmp_path, refused, retry_backoff=(0.2, 0.5), heartbeat_interval=0.3)
    async with running(agent_options, fake):
        await asyncio.sleep(3)
        early = [r for r in caplog.records if r.levelno >= logging.INFO]
        await asyncio.sleep(6)  # a dozen more retries of every request
        late = [r for r in caplog.records if r.levelno >= logging.INFO]
    lines = [f"{r.name} {r.levelname} {r.getMessage()[:160]}" for r in late]
    assert not [r for r in late if r.name.startswith("kopf") and r.levelno >= logging.WARNING], lines
    assert len(late) == len(early), "lines kept coming during the outage:\n" + "\n".join(lines[len(early) :])
    assert any("not ready" in r.getMessage() for r in late), lines
