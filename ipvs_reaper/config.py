"""The operator's configuration (a YAML file, in the cluster a mounted ConfigMap), validated strictly.

Every unknown key and bad value is a ConfigError naming the key's path, so a typo never silently falls
back to a default that deletes more than the operator meant.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(Exception):
    """A configuration that must not be used; the message names the key."""


class ReapMode(enum.StrEnum):
    ALWAYS = "always"  # reap once the grace has passed, whatever the connections
    IDLE = "idle"  # reap once the grace has passed and ActiveConn is 0 (or maxWaitSeconds has passed)
    NEVER = "never"


class SysctlMode(enum.StrEnum):
    # Set net.ipv4.vs.expire_nodest_conn=1 before deleting anything.
    ENFORCE = "enforce"
    # Never write it; while it is 0, delete nothing (deleting would turn refusals into silent drops).
    REPORT_ONLY = "report-only"
    # Delete whatever it is: the operator accepts the drops. Every such deletion says so.
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Rule:
    reap: ReapMode
    grace_seconds: int = 0
    # The cap for `idle`: churn keeps ActiveConn up on a busy service, and a real server must not stay
    # forever because of it. None: no cap.
    max_wait_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class RuleOverride:
    reap: ReapMode | None = None
    grace_seconds: int | None = None
    max_wait_seconds: int | None = None
    clear_max_wait: bool = False  # `maxWaitSeconds: null` removes the base rule's cap

    def apply(self, rule: Rule) -> Rule:
        return Rule(
            reap=self.reap if self.reap is not None else rule.reap,
            grace_seconds=self.grace_seconds if self.grace_seconds is not None else rule.grace_seconds,
            max_wait_seconds=None
            if self.clear_max_wait
            else (self.max_wait_seconds if self.max_wait_seconds is not None else rule.max_wait_seconds),
        )


@dataclass(frozen=True, slots=True)
class StatePolicy:
    """One rule per endpoint state that may be reaped. `ready` and serving `terminating` are never reaped."""

    gone: Rule
    terminating: Rule
    not_ready: Rule


@dataclass(frozen=True, slots=True)
class PolicyOverride:
    gone: RuleOverride | None = None
    terminating: RuleOverride | None = None
    not_ready: RuleOverride | None = None

    def apply(self, policy: StatePolicy) -> StatePolicy:
        changes = {}
        for f in fields(self):
            override = getattr(self, f.name)
            if override is not None:
                changes[f.name] = override.apply(getattr(policy, f.name))
        return replace(policy, **changes)


# Defaults, and why:
# - gone: the pod is deleted and its connections are dead; an idle real server (ActiveConn 0) is reaped at
#   once, which is what ends the incident. ActiveConn > 0 can still be a pod draining on a cluster that
#   drops terminating endpoints from slices, so those wait for the connections, at most 5 minutes.
# - terminating (not serving): the pod is shutting down and failing readiness; the same reasoning.
# - not-ready: the pod is alive and answers existing connections; readiness flaps are common, so wait
#   30 s before reaping even an idle one, and never cut live connections (no cap).
DEFAULT_POLICY = StatePolicy(
    gone=Rule(ReapMode.IDLE, grace_seconds=0, max_wait_seconds=300),
    terminating=Rule(ReapMode.IDLE, grace_seconds=0, max_wait_seconds=300),
    not_ready=Rule(ReapMode.IDLE, grace_seconds=30, max_wait_seconds=None),
)

# `--policy immediate`: what the home-made DaemonSets do. The hard rules still hold.
IMMEDIATE_POLICY = StatePolicy(
    gone=Rule(ReapMode.ALWAYS),
    terminating=Rule(ReapMode.ALWAYS),
    not_ready=Rule(ReapMode.ALWAYS),
)


@dataclass(frozen=True, slots=True)
class Breaker:
    # Refuse a whole sweep that would delete more than this share of the node's real servers: that is
    # what a broken view of the cluster looks like, not a rolling update.
    max_share: float = 0.5
    # ... unless it deletes fewer than this many (a small node's normal rollout can exceed the share).
    min_deletions: int = 10
    # Bound one sweep; the rest wait for the next.
    max_per_sweep: int = 200


@dataclass(frozen=True, slots=True)
class Config:
    policy: StatePolicy = DEFAULT_POLICY
    namespaces: Mapping[str, PolicyOverride] = field(default_factory=dict)
    expire_nodest_conn: SysctlMode = SysctlMode.ENFORCE
    breaker: Breaker = Breaker()


_STATE_KEYS = {"gone": "gone", "terminating": "terminating", "notReady": "not_ready"}
_RULE_KEYS = {"reap", "graceSeconds", "maxWaitSeconds"}


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, got {key!r}")
    return value


def _check_keys(value: Mapping[str, Any], allowed: set[str] | dict[str, Any], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown key (expected one of: {', '.join(sorted(allowed))})")


def _seconds(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{path}: expected a whole number of seconds >= 0, got {value!r}")
    return value


E = TypeVar("E", bound=enum.StrEnum)


def _enum(kind: type[E], value: Any, path: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"{path}: expected one of {choices}, got {value!r}") from None


def _rule_override(value: Any, path: str) -> RuleOverride:
    raw = _mapping(value, path)
    _check_keys(raw, _RULE_KEYS, path)
    override = RuleOverride(
        reap=_enum(ReapMode, raw["reap"], f"{path}.reap") if "reap" in raw else None,
        grace_seconds=_seconds(raw["graceSeconds"], f"{path}.graceSeconds")
        if "graceSeconds" in raw
        else None,
        max_wait_seconds=_seconds(raw["maxWaitSeconds"], f"{path}.maxWaitSeconds")
        if raw.get("maxWaitSeconds") is not None
        else None,
        clear_max_wait="maxWaitSeconds" in raw and raw["maxWaitSeconds"] is None,
    )
    if (
        override.grace_seconds is not None
        and override.max_wait_seconds is not None
        and override.max_wait_seconds < override.grace_seconds
    ):
        raise ConfigError(f"{path}.maxWaitSeconds: must not be less than graceSeconds")
    return override


def parse_policy_override(value: Any, path: str) -> PolicyOverride:
    raw = _mapping(value, path)
    _check_keys(raw, _STATE_KEYS, path)
    rules = {
        attr: _rule_override(raw[key], f"{path}.{key}") for key, attr in _STATE_KEYS.items() if key in raw
    }
    return PolicyOverride(**rules)


def _check_rule(rule: Rule, path: str) -> None:
    if rule.max_wait_seconds is not None and rule.max_wait_seconds < rule.grace_seconds:
        raise ConfigError(f"{path}.maxWaitSeconds: must not be less than graceSeconds")


def parse_config(document: Any, source: str = "config") -> Config:
    raw = _mapping(document, source)
    _check_keys(raw, {"policy", "namespaces", "expireNodestConn", "breaker"}, source)
    policy = parse_policy_override(raw.get("policy"), f"{source}: policy").apply(DEFAULT_POLICY)
    for key, attr in _STATE_KEYS.items():
        _check_rule(getattr(policy, attr), f"{source}: policy.{key}")
    namespaces = {
        name: parse_policy_override(value, f"{source}: namespaces.{name}")
        for name, value in _mapping(raw.get("namespaces"), f"{source}: namespaces").items()
    }
    breaker_raw = _mapping(raw.get("breaker"), f"{source}: breaker")
    _check_keys(breaker_raw, {"maxShare", "minDeletions", "maxPerSweep"}, f"{source}: breaker")
    breaker = Breaker()
    if "maxShare" in breaker_raw:
        share = breaker_raw["maxShare"]
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ConfigError(f"{source}: breaker.maxShare: expected a number in (0, 1], got {share!r}")
        breaker = replace(breaker, max_share=float(share))
    for key, attr, least in (("minDeletions", "min_deletions", 0), ("maxPerSweep", "max_per_sweep", 1)):
        if key in breaker_raw:
            count = breaker_raw[key]
            if isinstance(count, bool) or not isinstance(count, int) or count < least:
                raise ConfigError(
                    f"{source}: breaker.{key}: expected a whole number >= {least}, got {count!r}"
                )
            breaker = replace(breaker, **{attr: count})
    return Config(
        policy=policy,
        namespaces=namespaces,
        expire_nodest_conn=_enum(
            SysctlMode, raw.get("expireNodestConn", "enforce"), f"{source}: expireNodestConn"
        ),
        breaker=breaker,
    )


def parse_config_text(text: str | bytes, source: str) -> Config:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_config(document, source)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    return parse_config_text(text, str(path))


def parse_annotation(text: str) -> PolicyOverride:
    """The per-Service override `ipvs-reaper.io/policy`: a YAML or JSON mapping like the config's `policy`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_policy_override(document, "annotation")
