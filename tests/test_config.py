from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.config import (
    DEFAULT_POLICY,
    Config,
    ConfigError,
    ReapMode,
    Rule,
    SysctlMode,
    load_config,
    parse_annotation,
    parse_config,
)


def test_empty_config_is_the_defaults() -> None:
    assert parse_config(None) == Config()
    assert parse_config({}) == Config()


def test_defaults_reap_a_gone_real_server_at_once_and_wait_for_a_terminating_ones_connections() -> None:
    # docs/rollout.md: a gone pod's ActiveConn is kept up by reused ports on the kernel where it matters.
    assert DEFAULT_POLICY.gone == Rule(ReapMode.ALWAYS, 0, 300)
    assert DEFAULT_POLICY.terminating == Rule(ReapMode.IDLE, 0, 300)


def test_switching_gone_back_to_idle_keeps_the_cap() -> None:
    config = parse_config({"policy": {"gone": {"reap": "idle"}}})
    assert config.policy.gone == Rule(ReapMode.IDLE, 0, 300)


def test_full_config() -> None:
    config = parse_config(
        {
            "policy": {"gone": {"reap": "always", "graceSeconds": 5}, "notReady": {"reap": "never"}},
            "namespaces": {"payments": {"gone": {"maxWaitSeconds": None, "reap": "idle"}}},
            "expireNodestConn": "report-only",
            "breaker": {"maxShare": 0.2, "minDeletions": 3, "maxPerSweep": 50},
        }
    )
    assert config.policy.gone == Rule(ReapMode.ALWAYS, 5, 300)
    assert config.policy.not_ready.reap is ReapMode.NEVER
    assert config.policy.terminating == DEFAULT_POLICY.terminating
    assert config.namespaces["payments"].apply(config.policy).gone == Rule(ReapMode.IDLE, 5, None)
    assert config.expire_nodest_conn is SysctlMode.REPORT_ONLY
    assert (config.breaker.max_share, config.breaker.min_deletions, config.breaker.max_per_sweep) == (
        0.2,
        3,
        50,
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"polcy": {}}, "config: polcy: unknown key"),
        ({"policy": {"gone": {"grace": 3}}}, "policy.gone.grace: unknown key"),
        ({"policy": {"dead": {}}}, "policy.dead: unknown key"),
        (
            {"policy": {"gone": {"reap": "sometimes"}}},
            "policy.gone.reap: expected one of always, idle, never",
        ),
        ({"policy": {"gone": {"graceSeconds": -1}}}, "policy.gone.graceSeconds"),
        ({"policy": {"gone": {"graceSeconds": "5"}}}, "policy.gone.graceSeconds"),
        ({"policy": {"gone": {"graceSeconds": True}}}, "policy.gone.graceSeconds"),
        ({"policy": {"gone": {"graceSeconds": 400}}}, "policy.gone.maxWaitSeconds: must not be less"),
        ({"policy": "never"}, "policy: expected a mapping"),
        ({"namespaces": {"x": {"gone": {"reap": 1}}}}, "namespaces.x.gone.reap"),
        ({"expireNodestConn": "off"}, "expireNodestConn: expected one of enforce, report-only, ignore"),
        ({"breaker": {"maxShare": 0}}, "breaker.maxShare"),
        ({"breaker": {"maxShare": 1.5}}, "breaker.maxShare"),
        ({"breaker": {"maxPerSweep": 0}}, "breaker.maxPerSweep"),
        ({"breaker": {"minDeletions": -1}}, "breaker.minDeletions"),
        ({"breaker": {"trip": 1}}, "breaker.trip: unknown key"),
        ([1, 2], "config: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert message in str(caught.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("policy: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"No such file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("policy:\n  gone:\n    reap: never\n")
    assert load_config(path).policy.gone.reap is ReapMode.NEVER


def test_annotation_overrides_like_the_policy() -> None:
    override = parse_annotation('{"gone": {"reap": "never"}}')
    assert override.apply(DEFAULT_POLICY).gone.reap is ReapMode.NEVER
    assert override.apply(DEFAULT_POLICY).terminating == DEFAULT_POLICY.terminating
    with pytest.raises(ConfigError, match=r"^line 1: gone.reap: expected one of"):
        parse_annotation("gone: {reap: maybe}")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        parse_annotation("gone: {reap: [")


def test_node_port_addresses_narrow_like_kube_proxys_flag() -> None:
    config = parse_config({"nodePortAddresses": ["192.168.0.0/16", "fd00::/8", "10.1.2.3"]})
    assert [str(n) for n in config.node_port_networks] == ["192.168.0.0/16", "fd00::/8", "10.1.2.3/32"]
    assert parse_config({}).node_port_networks == ()  # every address, kube-proxy's default
    for bad, message in (
        ([], "nodePortAddresses: expected a list of CIDRs"),
        ("10.0.0.0/8", "nodePortAddresses: expected a list of CIDRs"),
        (["primary"], "nodePortAddresses[0]: expected a CIDR such as 192.168.0.0/16, got 'primary'"),
        ([8], "nodePortAddresses[0]: expected a CIDR"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config({"nodePortAddresses": bad})
