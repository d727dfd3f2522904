"""Whoever can annotate a Service in any namespace must not be able to crash, stall or widen the reaper for
any other Service. Proven over arbitrary annotation text, and over documents shaped like a policy with
any values in them."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.config import MAX_SECONDS, Config, ConfigError, PolicyOverride, parse_annotation
from ipvs_reaper.planner import Decision, SweepInputs, plan_sweep
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService
from tests.builders import endpoint, endpoint_slice, node, port, service

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TENANT = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.2"), 80)
OTHER = VirtualKey.inet(Protocol.TCP, ipaddress.ip_address("10.96.0.3"), 80)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["always", "idle", "never", "sometimes", "", "null", "1e400", ".inf"]),
    st.text(max_size=20),
)
_keys = st.sampled_from(["gone", "terminating", "notReady", "reap", "graceSeconds", "maxWaitSeconds", "x"])
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_keys | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


def _as_text(document: Any, form: str) -> str:
    if form == "json":
        return json.dumps(document)
    return yaml.safe_dump(document)


annotation_texts = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
    st.tuples(_documents, st.sampled_from(["json", "yaml"])).map(lambda pair: _as_text(*pair)),
    st.sampled_from(
        [
            '{"gone": {"maxWaitSeconds": 99999999999999}}',
            "gone: {graceSeconds: 1e400}",
            "[" * 5000,
            "{a: *x}",
            "&a [*a]",
            "!!python/object:os.system {}",
            "gone: !!binary aGVsbG8=",
            "? [a]\n: b",
            "gone: {reap: always}\ngone: {reap: never}",
            "x" * 5000,
        ]
    ),
)


def _within_bounds(override: PolicyOverride) -> bool:
    for rule in (override.gone, override.terminating, override.not_ready):
        if rule is None:
            continue
        for seconds in (rule.grace_seconds, rule.max_wait_seconds):
            if seconds is not None and not 0 <= seconds <= MAX_SECONDS:
                return False
    return True


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(annotation_texts)
def test_any_annotation_parses_within_bounds_or_is_a_config_error(text: str) -> None:
    try:
        override = parse_annotation(text)
    except ConfigError as error:
        assert str(error)  # a reason to show, never empty
        return
    assert _within_bounds(override)


def _rs(virtual: VirtualKey, address: str, active: int) -> RealServer:
    return RealServer(RealKey(virtual, ipaddress.ip_address(address), 8080), "Masq", 0, active, 3)


def _decisions(annotation: str | None, first_seen_days: int) -> dict[RealKey, Decision]:
    annotations = {"ipvs-reaper.io/policy": annotation} if annotation is not None else None
    items = [
        service("tenant", "app", ["10.96.0.2"], [port(80)], annotations=annotations),
        endpoint_slice("tenant", "app-1", "app", [port(8080)], [endpoint("10.1.0.1", ready=False)]),
        service("other", "db", ["10.96.0.3"], [port(80)]),
        endpoint_slice("other", "db-1", "db", [port(8080)], [endpoint("10.1.1.1", ready=False)]),
        node("node-a", "192.168.49.2"),
    ]
    real_servers = (
        _rs(TENANT, "10.1.0.1", 0),
        _rs(TENANT, "10.1.0.2", 4),
        _rs(OTHER, "10.1.1.1", 0),
        _rs(OTHER, "10.1.1.2", 4),
        _rs(OTHER, "10.1.1.3", 0),
    )
    since = NOW - timedelta(days=first_seen_days)
    plan = plan_sweep(
        SweepInputs(
            table=IpvsTable((VirtualService(TENANT, "rr"), VirtualService(OTHER, "rr")), real_servers),
            cluster=cluster_state_from_items(items),
            node_name="node-a",
            config=Config(),
            expire_nodest_conn=1,
            now=NOW,
            first_seen={rs.key: since for rs in real_servers},
        )
    )
    return {d.real_server.key: d for d in plan.decisions}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(annotation_texts, st.integers(min_value=0, max_value=400_000))
def test_one_services_annotation_never_changes_another_services_decisions(text: str, days: int) -> None:
    # Five real servers cannot trip the breaker (breaker.minDeletions is 10), which counts the whole
    # sweep's deletions by design; everything else about another Service must be as if no annotation existed.
    plain = _decisions(None, days)
    annotated = _decisions(text, days)
    for key, decision in annotated.items():
        if key.virtual == OTHER:
            assert decision == plain[key]
        else:
            assert decision.service == "tenant/app"
