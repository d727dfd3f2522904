"""The chart's `values.schema.json` and the agent's own validation accept and reject the same documents.

Documents are generated (structure-aware: the config's keys with values of every kind, in and out of bounds,
plus unknown keys), as helm hands them on: through JSON, where a whole number is a whole number whatever it
was written as. The JSON Schema alone is checked on many; helm itself (schema plus the templates' check of
what a schema cannot say, `maxWaitSeconds` below `graceSeconds`) on fewer, since each is a helm run.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs_reaper.config import (
    BREAKER_KEYS,
    MAX_COUNT,
    MAX_SECONDS,
    RULE_KEYS,
    STATE_KEYS,
    TOP_KEYS,
    ConfigError,
    parse_config,
    parse_config_text,
)
from ipvs_reaper.config_schema import config_schema
from tests.chart.render import CHART, objects_of, render

VALUES_SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CROSS_FIELD = "must not be less than graceSeconds"


def test_the_chart_carries_the_generated_schema() -> None:
    assert VALUES_SCHEMA["properties"]["config"] == config_schema(), (
        "charts/ipvs-reaper/values.schema.json is stale: python -m ipvs_reaper.config_schema --write"
    )
    properties = config_schema()["properties"]
    assert set(properties) == TOP_KEYS
    assert set(properties["policy"]["properties"]) == set(STATE_KEYS)
    assert set(properties["policy"]["properties"]["gone"]["properties"]) == RULE_KEYS
    assert set(properties["breaker"]["properties"]) == BREAKER_KEYS


def whole_numbers_as_helm_passes_them(document: Any) -> Any:
    """Helm reads values into JSON numbers (float64): 30.0 reaches the ConfigMap as 30."""
    if isinstance(document, dict):
        return {key: whole_numbers_as_helm_passes_them(value) for key, value in document.items()}
    if isinstance(document, list):
        return [whole_numbers_as_helm_passes_them(value) for value in document]
    if isinstance(document, float) and document.is_integer():
        return int(document)
    return document


ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
    st.sampled_from(["", "x", "30", "idle", "enforce", "10.0.0.0/8"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "reap"]), st.integers(0, 3), max_size=1),
)
# Values just outside what is allowed, and the kinds a value can wrongly be.
NEAR_MISS = st.one_of(
    ODD,
    st.sampled_from([-1, MAX_SECONDS + 1, MAX_COUNT + 1, 0.5, 1.5, 1e-7, 30.5, 1e7, "sometimes", "Idle"]),
    st.sampled_from(["1.2.3.4/33", "256.0.0.0/8", "10.0.0.0/08", "::ffff:1.2.3.4", "fe80::1%eth0", "1.2.3"]),
    st.sampled_from(["a::b::c", "2001:db8::/129", " 10.0.0.0/8", "reportOnly", "0x10"]),
)

# Valid documents, near the bounds: one change (below) makes most of them invalid for one reason only, so
# that a bound or a key the two disagree on is not hidden behind another error.
SECONDS = st.one_of(
    st.integers(0, MAX_SECONDS),
    st.sampled_from([0, 1, 29, 30, 31, 299, 300, 301, MAX_SECONDS]),
    st.sampled_from([30.0, 300.0, 1e7]),
)
RULE = st.fixed_dictionaries(
    {},
    optional={
        "reap": st.sampled_from(["always", "idle", "never"]),
        "graceSeconds": SECONDS,
        "maxWaitSeconds": st.one_of(st.none(), SECONDS),
    },
)
POLICY = st.one_of(
    st.none(), st.fixed_dictionaries({}, optional={"gone": RULE, "terminating": RULE, "notReady": RULE})
)
COUNT = st.one_of(st.integers(0, MAX_COUNT), st.sampled_from([0, 1, 10, MAX_COUNT]))
CIDR = st.one_of(
    st.sampled_from(["10.0.0.0/8", "192.168.1.1", "0.0.0.0/0", "fd00::/8", "::/0", "::1", "2001:db8::1/128"]),
    st.ip_addresses(v=4).map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda pair: f"{pair[0]}/{pair[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda pair: f"{pair[0]}/{pair[1]}"),
)
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "policy": POLICY,
        "namespaces": st.dictionaries(st.sampled_from(["a", "payments"]), POLICY, max_size=2),
        "expireNodestConn": st.sampled_from(["enforce", "report-only", "ignore"]),
        "breaker": st.fixed_dictionaries(
            {},
            optional={
                "maxShare": st.one_of(st.floats(1e-9, 1.0), st.sampled_from([1, 0.5, 1.0, 1e-7])),
                "minDeletions": COUNT,
                "maxPerSweep": COUNT.filter(bool),
            },
        ),
        "nodePortAddresses": st.one_of(st.none(), st.lists(CIDR, min_size=1, max_size=3)),
        "excludeCIDRs": st.one_of(st.none(), st.lists(CIDR, min_size=1, max_size=3)),
    },
)


def places(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in the document (mapping keys and list indexes)."""
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += places(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += places(value, (*path, index))
    return found


def changed(document: Any, data: st.DataObject) -> Any:
    """The document with one value replaced by a near miss, or one unknown key added to a mapping."""
    document = copy.deepcopy(document)
    path = data.draw(st.sampled_from(places(document)))
    if not path:
        return data.draw(st.one_of(NEAR_MISS, st.just({"bogus": 1})))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    target = parent[path[-1]]
    if isinstance(target, dict) and data.draw(st.booleans()):
        target[data.draw(st.sampled_from(["bogus", "grace_seconds", "Reap", "notready"]))] = 1
    else:
        parent[path[-1]] = data.draw(NEAR_MISS)
    return document


def documents(data: st.DataObject) -> Any:
    document = data.draw(CONFIG)
    if data.draw(st.booleans()):
        document = changed(document, data)
    return whole_numbers_as_helm_passes_them(document)


def agent_verdict(document: Any) -> str | None:
    """None when the agent accepts it, else its error."""
    try:
        parse_config(document, "config")
    except ConfigError as error:
        return str(error)
    return None


def schema_accepts(document: Any) -> bool:
    return jsonschema.Draft7Validator(config_schema()).is_valid(document)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_schema_and_the_agent_agree(data: st.DataObject) -> None:
    document = documents(data)
    verdict = agent_verdict(document)
    if verdict is not None and CROSS_FIELD in verdict:
        return  # what JSON Schema cannot say: the helm-level property below covers it
    assert schema_accepts(document) == (verdict is None), verdict or "the agent accepts it"


def helm_verdict(config: Any) -> tuple[str | None, str | None]:
    """helm's error (None when it renders), and the config.yaml it rendered."""
    try:
        documents = render({"config": config})
    except AssertionError as error:
        return str(error), None
    (config_map,) = objects_of(documents, "ConfigMap")
    return None, config_map["data"]["config.yaml"]


def check_helm_agrees(document: Any) -> None:
    verdict = agent_verdict(document)
    refused, rendered = helm_verdict(document)
    assert (refused is None) == (verdict is None), refused or verdict
    if rendered is not None:
        # What helm writes is what the agent reads, and means the same.
        assert parse_config_text(rendered, "config.yaml") == parse_config(document, "config")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_helm_and_the_agent_agree(data: st.DataObject) -> None:
    document = documents(data)
    if isinstance(document, dict):  # helm values: `config` is a mapping (the schema property covers the rest)
        check_helm_agrees(document)


@pytest.mark.parametrize(
    "document",
    [
        {"policy": {"notReady": {"maxWaitSeconds": 10}}},
        {"policy": {"notReady": {"graceSeconds": 400}, "gone": {"graceSeconds": 400}}},
        {"namespaces": {"a": {"gone": {"graceSeconds": 60, "maxWaitSeconds": 59}}}},
        {"namespaces": {"a": {"gone": {"maxWaitSeconds": 10}}}},
        {"policy": {"notReady": {"maxWaitSeconds": None, "graceSeconds": 50}}},
        {"breaker": {"maxShare": 1e-7}, "policy": {"gone": {"graceSeconds": 30}}},
        {"nodePortAddresses": ["fd00::/8", "192.168.0.0/16"]},
    ],
)
def test_helm_and_the_agent_agree_across_fields(document: dict[str, Any]) -> None:
    check_helm_agrees(document)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policy": {"gone": {"reap": "sometimes"}}}, "config.policy.gone.reap"),
        ({"policy": {"notReady": {"maxWaitSeconds": 10}}}, "config.policy.notReady.maxWaitSeconds"),
        ({"breaker": {"maxShare": 2}}, "config.breaker.maxShare"),
        ({"nodePortAddresses": ["10.0.0.0/33"]}, "config.nodePortAddresses.0"),
        ({"excludeCIDRs": ["fd00::/129"]}, "config.excludeCIDRs.0"),
        ({"expireNodeStConn": "enforce"}, "expireNodeStConn"),
    ],
)
def test_helm_names_the_bad_key(config: dict[str, Any], message: str) -> None:
    refused, _ = helm_verdict(config)
    assert refused is not None and message in refused, refused
