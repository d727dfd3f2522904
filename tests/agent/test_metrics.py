"""The metrics contract, scraped over HTTP from the running agent: names, labels pre-created at 0, no
`_created` series, and each metric moving when what it counts happens."""

from __future__ import annotations

import asyncio
import errno
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ipvs_reaper.agent.metrics import FAILURE_REASONS
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from ipvs_reaper.netfilter.sources import read_rule_files
from tests.agent.harness import NO_RULES, SLICES, Cluster, eventually, options, real, running, table
from tests.agent.test_agent import WEB, seed, web_slice
from tests.builders import endpoint
from tests.conftest import ROOT

# The names of the contract (issue: "a contract from now on"), as exposed (counters with `_total`).
CONTRACT = {
    "ipvs_reaper_reaped_total": ("state", "protocol"),
    "ipvs_reaper_reap_failures_total": ("reason",),
    "ipvs_reaper_refusals_total": ("reason",),
    "ipvs_reaper_breaker_open": (),
    "ipvs_reaper_stale_real_servers": ("state", "decision"),
    "ipvs_reaper_stale_oldest_age_seconds": (),
    "ipvs_reaper_overdue_seconds": (),
    "ipvs_reaper_table_size": ("part",),
    "ipvs_reaper_ipvs_loaded": (),
    "ipvs_reaper_breaker_share": (),
    "ipvs_reaper_breaker_max_share": (),
    "ipvs_reaper_view_age_seconds": ("kind",),
    "ipvs_reaper_mode_info": ("dry_run", "expire_nodest_conn", "config_checksum"),
    "process_resident_memory_bytes": (),
    "process_cpu_seconds_total": (),
    "process_open_fds": (),
    "process_start_time_seconds": (),
    "ipvs_reaper_sweep_duration_seconds_count": (),
    "ipvs_reaper_last_sweep_timestamp_seconds": (),
    "ipvs_reaper_event_to_reap_seconds_count": (),
    "ipvs_reaper_ready": (),
    "ipvs_reaper_cluster_view_unusable": (),
    "ipvs_reaper_config_error": (),
    "ipvs_reaper_config_last_reload_timestamp_seconds": (),
    "ipvs_reaper_node_exposed": (),
    "ipvs_reaper_sysctl": ("name",),
    "ipvs_reaper_build_info": ("version", "kernel_release"),
    "ipvs_reaper_reap_retries_total": ("outcome",),
    "ipvs_reaper_reap_retrying": (),
    "ipvs_reaper_idle_wait_virtual_services": (),
    "ipvs_reaper_recheck_interval_seconds": (),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(agent: Any) -> Samples:
    url = f"http://127.0.0.1:{agent.options.listen_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


async def test_every_contract_series_exists_from_the_first_scrape(api: Any, tmp_path: Path) -> None:
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url)), fake) as agent:
            samples = await scrape(agent)
    names = {name for name, _ in samples}
    for name, labels in CONTRACT.items():
        assert name in names, name
        assert all({label for label, _ in key} == set(labels) for n, key in samples if n == name), name
    assert not [name for name in names if name.endswith("_created")]
    assert "ipvs_reaper_would_reap_total" not in names
    for state in ("gone", "terminating", "not-ready"):
        for protocol in ("TCP", "UDP", "SCTP"):
            assert value(samples, "ipvs_reaper_reaped_total", state=state, protocol=protocol) == 0
    for reason in ("breaker", "sysctl", "view"):
        assert value(samples, "ipvs_reaper_refusals_total", reason=reason) == 0
    for reason in FAILURE_REASONS:
        assert value(samples, "ipvs_reaper_reap_failures_total", reason=reason) == 0
    assert value(samples, "ipvs_reaper_stale_real_servers", state="gone", decision="reap") == 0
    # The first sweep has read the table (one virtual service, one weighted real server).
    assert value(samples, "ipvs_reaper_table_size", part="virtual_services") in (-1, 1)
    assert value(samples, "ipvs_reaper_overdue_seconds") == 0
    assert value(samples, "process_open_fds") > 0


def test_the_readme_documents_every_contract_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in CONTRACT:
        base = name.removesuffix("_count")
        if not base.startswith("process_"):
            assert f"`{base}" in readme, f"{base} is not in README.md"
    assert "`process_*`" in readme
    assert "`ipvs_reaper_would_reap_total" in readme
    # A series per conflict found, none while there is none (`> 0` alerts need no zero series).
    assert "`ipvs_reaper_hostport_conflicts" in readme


async def test_deletions_failures_and_the_kernel_show(api: Any, tmp_path: Path) -> None:
    gone, failing = real(WEB, "10.1.0.2", 8080), real(WEB, "10.1.0.3", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone, failing))
    fake.fail_deletes[failing.key] = errno.EPERM
    sysctls = FakeSysctls({"conn_reuse_mode": 0, "expire_nodest_conn": 0, "expire_quiescent_template": 1})
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1"), endpoint("10.1.0.2"), endpoint("10.1.0.3")))
        async with running(options(tmp_path, str(api.url)), fake, sysctls=sysctls) as agent:
            await eventually(lambda: not agent.not_ready_because(), what="ready")
            samples = await scrape(agent)
            assert value(samples, "ipvs_reaper_node_exposed") == 1  # reuse 0, nodest 0
            assert value(samples, "ipvs_reaper_sysctl", name="conn_reuse_mode") == 0
            # The two pods go; kube-proxy has already set their weights to 0.
            await cluster.patch(SLICES, web_slice(endpoint("10.1.0.1")))
            await eventually(lambda: fake.deleted == [gone.key], what="reaped")
            await eventually(lambda: agent.metrics.reap_failures.labels("EPERM")._value.get() >= 1)
            # A sweep that began before the deletion would count the deleted one as stale still: wait for
            # one that begins after it (any earlier sweep would satisfy "a sweep has run").
            sweeps = agent.metrics.reconciles.labels("sweep")
            before = sweeps._value.get()
            agent.request_sweep()
            await eventually(lambda: sweeps._value.get() > before, what="a sweep after the deletion")
            samples = await scrape(agent)
    assert value(samples, "ipvs_reaper_reaped_total", state="gone", protocol="TCP") == 1
    assert value(samples, "ipvs_reaper_event_to_reap_seconds_count") >= 1
    assert value(samples, "ipvs_reaper_reap_failures_total", reason="EPERM") >= 1
    # The agent set expire_nodest_conn=1 before deleting (enforce): the gauge shows the value it read last.
    assert sysctls.values["expire_nodest_conn"] == 1
    assert value(samples, "ipvs_reaper_stale_real_servers", state="gone", decision="reap") == 1
    assert value(samples, "ipvs_reaper_last_sweep_timestamp_seconds") > 0


async def test_a_dry_run_counts_what_it_would_reap_and_nothing_as_reaped(api: Any, tmp_path: Path) -> None:
    gone = real(WEB, "10.1.0.2", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), dry_run=True), fake) as agent:
            await eventually(lambda: agent.metrics.reaped.labels("gone", "TCP")._value.get() == 1)
            sweeps = agent.metrics.reconciles.labels("sweep")
            before = sweeps._value.get()
            agent.request_sweep()
            await eventually(lambda: sweeps._value.get() > before, what="another sweep")
            samples = await scrape(agent)
    assert fake.deleted == []
    # Counted once, not once per sweep that decides the same again.
    assert value(samples, "ipvs_reaper_would_reap_total", state="gone", protocol="TCP") == 1
    assert not [name for name, _ in samples if name == "ipvs_reaper_reaped_total"]


async def test_the_breaker_is_a_refusal_and_a_gauge(api: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("breaker: {maxShare: 0.1, minDeletions: 1}\n")
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), real(WEB, "10.1.0.2", 8080)))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), config_path=config), fake) as agent:
            await eventually(lambda: agent.metrics.breaker_open._value.get() == 1, what="breaker open")
            samples = await scrape(agent)
            assert value(samples, "ipvs_reaper_refusals_total", reason="breaker") >= 1
            assert value(samples, "ipvs_reaper_config_last_reload_timestamp_seconds") > 0
            config.write_text("breaker: {maxShare: 1}\n")
            await eventually(lambda: fake.deleted != [], what="reaped once the breaker allows")
            await eventually(lambda: agent.metrics.breaker_open._value.get() == 0, what="breaker closed")


async def test_hostport_conflicts_follow_the_doctor_pass(api: Any, tmp_path: Path) -> None:
    """A hostPort 80 rule (the VM's legacy dump) takes the web Service's ClusterIP:80; the series names it,
    and goes away with the rule."""
    dump = ROOT / "tests" / "netfilter" / "dumps" / "portmap.iptables-legacy-save"
    hijacking = read_rule_files([str(dump)], [])
    current = [hijacking]
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1)))
    conflict = {"protocol": "TCP", "port": "80", "service": "a/web", "certainty": "certain"}
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        agent_options = options(tmp_path, str(api.url), doctor_interval=0.2)
        async with running(agent_options, fake, rules=lambda: current[0]) as agent:
            await eventually(lambda: agent.cache.ready, what="the first listing")
            named: list[Samples] = []

            async def conflicted() -> bool:
                named.append(await scrape(agent))
                return ("ipvs_reaper_hostport_conflicts", frozenset(conflict.items())) in named[-1]

            deadline = asyncio.get_running_loop().time() + 10
            while not await conflicted():
                assert asyncio.get_running_loop().time() < deadline, "no conflict series"
                await asyncio.sleep(0.1)
            assert value(named[-1], "ipvs_reaper_hostport_conflicts", **conflict) == 1
            current[0] = NO_RULES
            deadline = asyncio.get_running_loop().time() + 10
            while await conflicted():
                assert asyncio.get_running_loop().time() < deadline, "the conflict series stayed"
                await asyncio.sleep(0.1)


async def test_an_errno_outside_the_set_counts_as_other_and_the_table_and_overdue_show(
    api: Any, tmp_path: Path
) -> None:
    failing = real(WEB, "10.1.0.3", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), failing))
    fake.fail_deletes[failing.key] = errno.EXDEV  # no netlink delete answers so; its count must still show
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        async with running(options(tmp_path, str(api.url), sweep_interval=0.3), fake) as agent:
            await eventually(lambda: agent.metrics.reap_failures.labels("other")._value.get() >= 1)
            # Due sweep after sweep and never deleted: overdue grows from the first sweep that found it due.
            await eventually(lambda: agent.metrics.overdue._value.get() > 0.5, what="overdue grows")
            samples = await scrape(agent)
    assert not [
        key
        for name, key in samples
        if name == "ipvs_reaper_reap_failures_total" and ("reason", "EXDEV") in key
    ]
    assert value(samples, "ipvs_reaper_table_size", part="virtual_services") == 1
    assert value(samples, "ipvs_reaper_table_size", part="real_servers") == 2
    assert value(samples, "ipvs_reaper_table_size", part="weight_zero") == 1


async def test_the_mode_the_view_age_and_the_breakers_margin_show(api: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("breaker: {maxShare: 0.75, minDeletions: 1}\n")
    gone = real(WEB, "10.1.0.2", 8080)
    fake = FakeIpvs(table(real(WEB, "10.1.0.1", 8080, weight=1), gone))
    async with Cluster(str(api.url)) as cluster:
        await seed(cluster, web_slice(endpoint("10.1.0.1")))
        agent_options = options(tmp_path, str(api.url), config_path=config, dry_run=True)
        async with running(agent_options, fake) as agent:
            await eventually(lambda: agent.metrics.reconciles.labels("sweep")._value.get() >= 1, what="swept")
            samples = await scrape(agent)
            config.write_text("breaker: {maxShare: 0.5, minDeletions: 1}\n")
            await eventually(lambda: agent.metrics.breaker_max_share._value.get() == 0.5, what="re-read")
            after = await scrape(agent)
    first = hashlib.sha256(b"breaker: {maxShare: 0.75, minDeletions: 1}\n").hexdigest()[:12]
    mode = [dict(key) for name, key in samples if name == "ipvs_reaper_mode_info"]
    assert mode == [{"dry_run": "true", "expire_nodest_conn": "enforce", "config_checksum": first}]
    # One series only, for the config now in force.
    assert len([key for name, key in after if name == "ipvs_reaper_mode_info"]) == 1
    assert value(samples, "ipvs_reaper_breaker_max_share") == 0.75
    # One of the node's two real servers would go: half, under the limit of 0.75.
    assert value(samples, "ipvs_reaper_breaker_share") == 0.5
    for kind in ("Service", "EndpointSlice", "Node"):
        assert 0 <= value(samples, "ipvs_reaper_view_age_seconds", kind=kind) < 30
    assert value(samples, "ipvs_reaper_ipvs_loaded") == 1
