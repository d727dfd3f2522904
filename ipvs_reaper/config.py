"""The operator's configuration (a YAML file, in the cluster a mounted ConfigMap), validated strictly.

Every unknown key and bad value is a ConfigError naming the key's path, so a typo never silently falls
back to a default that deletes more than the operator meant.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from ipvs_reaper.values import IPNetwork
from ipvs_reaper.yaml_text import LineDict, YamlTextError, load_strict


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
# - gone: the pod is deleted (since Kubernetes 1.22 a terminating pod's endpoint stays in its slice, marked
#   terminating, until then), so it has nothing left to drain: reaped at once, whatever ActiveConn says.
#   ActiveConn is no sign of life there: where reused ports reach the dead pod (the pre-fix IPVS under
#   kube-proxy's own settings), the rollout lab (docs/rollout.md) saw a gone pod's real server held at
#   ActiveConn 34 by the reused ports' entries, and its clients failing, until the cap.
# - terminating (not serving): the pod is shutting down and may be finishing requests: reaped once
#   ActiveConn is 0, at most 5 minutes after; when the pod is gone, the rule above takes over.
# - not-ready: the pod is alive and answers existing connections; readiness flaps are common, so wait
#   30 s before reaping even an idle one, and never cut live connections (no cap).
DEFAULT_POLICY = StatePolicy(
    gone=Rule(ReapMode.ALWAYS, grace_seconds=0, max_wait_seconds=300),  # the cap, if `reap: idle` is set
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
    # kube-proxy's --nodeport-addresses: the networks whose addresses carry NodePorts. Empty: every address
    # of the node, kube-proxy's default. Set it as kube-proxy's is set, or a virtual service of another IPVS
    # user on an address kube-proxy leaves alone could be taken for a NodePort.
    node_port_networks: tuple[IPNetwork, ...] = ()
    # kube-proxy's ipvs.excludeCIDRs: ranges where other IPVS users live, whose virtual services kube-proxy's
    # cleanup leaves alone. The reaper never touches a virtual service in them.
    exclude_networks: tuple[IPNetwork, ...] = ()


STATE_KEYS = {"gone": "gone", "terminating": "terminating", "notReady": "not_ready"}
RULE_KEYS = {"reap", "graceSeconds", "maxWaitSeconds"}
TOP_KEYS = {"policy", "namespaces", "expireNodestConn", "breaker", "nodePortAddresses", "excludeCIDRs"}
BREAKER_KEYS = {"maxShare", "minDeletions", "maxPerSweep"}
# Bounds for every number, so no value (a typo, or a tenant's annotation) can overflow date arithmetic or
# stand for "for ever": a year is longer than any sane grace, and `reap: never` or `maxWaitSeconds: null`
# say "never" outright.
MAX_SECONDS = 365 * 24 * 3600
MAX_COUNT = 1_000_000
# The annotation is a small mapping; the API allows 256 KiB of annotations, which the planner must not parse.
MAX_ANNOTATION_BYTES = 4096


@dataclass(frozen=True, slots=True)
class _Invalid(Exception):
    """A bad key or value at `path` ("policy.gone.reap"), on `line` when the text said where."""

    path: str
    message: str
    line: int | None = None

    def located(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _line(mapping: Mapping[str, Any], key: str) -> int | None:
    return mapping.lines.get(key) if isinstance(mapping, LineDict) else None


def _mapping(value: Any, path: str, line: int | None = None) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected a mapping, got {_kind(value)}", line)
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, f"keys must be strings, got {key!r}", _line(value, key))
    return value


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else type(value).__name__


def _check_keys(value: Mapping[str, Any], allowed: set[str] | dict[str, Any], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise _Invalid(
                _join(path, key),
                f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                _line(value, key),
            )


def _whole(raw: Mapping[str, Any], key: str, path: str, least: int, most: int, unit: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise _Invalid(
            _join(path, key),
            f"expected a whole number of {unit} from {least} to {most}, got {_shown(value)}",
            _line(raw, key),
        )
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


E = TypeVar("E", bound=enum.StrEnum)


def _enum(kind: type[E], raw: Mapping[str, Any], key: str, path: str) -> E:
    value = raw[key]
    try:
        return kind(value)
    except (ValueError, TypeError):  # TypeError: an unhashable value (a list, a mapping)
        choices = ", ".join(member.value for member in kind)
        raise _Invalid(
            _join(path, key), f"expected one of {choices}, got {_shown(value)}", _line(raw, key)
        ) from None


def _seconds(raw: Mapping[str, Any], key: str, path: str) -> int:
    return _whole(raw, key, path, 0, MAX_SECONDS, "seconds")


def _rule_override(raw_parent: Mapping[str, Any], key: str, path: str) -> RuleOverride:
    path = _join(path, key)
    raw = _mapping(raw_parent[key], path, _line(raw_parent, key))
    _check_keys(raw, RULE_KEYS, path)
    override = RuleOverride(
        reap=_enum(ReapMode, raw, "reap", path) if "reap" in raw else None,
        grace_seconds=_seconds(raw, "graceSeconds", path) if "graceSeconds" in raw else None,
        max_wait_seconds=_seconds(raw, "maxWaitSeconds", path)
        if raw.get("maxWaitSeconds") is not None
        else None,
        clear_max_wait="maxWaitSeconds" in raw and raw["maxWaitSeconds"] is None,
    )
    if (
        override.grace_seconds is not None
        and override.max_wait_seconds is not None
        and override.max_wait_seconds < override.grace_seconds
    ):
        raise _Invalid(
            _join(path, "maxWaitSeconds"), "must not be less than graceSeconds", _line(raw, "maxWaitSeconds")
        )
    return override


def _policy_override(value: Any, path: str, line: int | None = None) -> PolicyOverride:
    raw = _mapping(value, path, line)
    _check_keys(raw, STATE_KEYS, path)
    rules = {attr: _rule_override(raw, key, path) for key, attr in STATE_KEYS.items() if key in raw}
    return PolicyOverride(**rules)


def _check_rule(rule: Rule, path: str) -> None:
    if rule.max_wait_seconds is not None and rule.max_wait_seconds < rule.grace_seconds:
        raise _Invalid(f"{path}.maxWaitSeconds", "must not be less than graceSeconds")


def _breaker(raw: Mapping[str, Any]) -> Breaker:
    breaker = Breaker()
    if "maxShare" in raw:
        share = raw["maxShare"]
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise _Invalid(
                "breaker.maxShare",
                f"expected a number in (0, 1], got {_shown(share)}",
                _line(raw, "maxShare"),
            )
        breaker = replace(breaker, max_share=float(share))
    if "minDeletions" in raw:
        breaker = replace(
            breaker, min_deletions=_whole(raw, "minDeletions", "breaker", 0, MAX_COUNT, "deletions")
        )
    if "maxPerSweep" in raw:
        breaker = replace(
            breaker, max_per_sweep=_whole(raw, "maxPerSweep", "breaker", 1, MAX_COUNT, "deletions")
        )
    return breaker


_IPV4 = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    (
        f"({_H}:){{7}}{_H}",
        f"({_H}:){{1,7}}:",
        f"({_H}:){{1,6}}:{_H}",
        f"({_H}:){{1,5}}(:{_H}){{1,2}}",
        f"({_H}:){{1,4}}(:{_H}){{1,3}}",
        f"({_H}:){{1,3}}(:{_H}){{1,4}}",
        f"({_H}:){{1,2}}(:{_H}){{1,5}}",
        f"{_H}:(:{_H}){{1,6}}",
        f":((:{_H}){{1,7}}|:)",
    )
)
# A CIDR as kube-proxy's --nodeport-addresses and ipvs.excludeCIDRs take it (the prefix may be left out: one
# address). Spelled out as a pattern, not only parsed, so the chart's schema can say exactly the same (no
# IPv4-in-IPv6 forms).
CIDR_PATTERN = f"^(({_IPV4})(/(3[0-2]|[12]?[0-9]))?|({_IPV6})(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
_CIDR = re.compile(CIDR_PATTERN)


def _networks(raw: Mapping[str, Any], key: str) -> tuple[IPNetwork, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    line = _line(raw, key)
    if not isinstance(value, list) or not value:
        raise _Invalid(key, f"expected a list of CIDRs, got {_shown(value)}", line)
    networks = []
    for i, text in enumerate(value):
        try:
            if not isinstance(text, str) or _CIDR.match(text) is None:
                raise ValueError(text)
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise _Invalid(
                f"{key}[{i}]", f"expected a CIDR such as 192.168.0.0/16, got {_shown(text)}", line
            ) from None
    return tuple(networks)


def _config(document: Any) -> Config:
    raw = _mapping(document, "", None)
    _check_keys(raw, TOP_KEYS, "")
    policy = _policy_override(raw.get("policy"), "policy", _line(raw, "policy")).apply(DEFAULT_POLICY)
    for key, attr in STATE_KEYS.items():
        _check_rule(getattr(policy, attr), f"policy.{key}")
    names = _mapping(raw.get("namespaces"), "namespaces", _line(raw, "namespaces"))
    namespaces = {
        name: _policy_override(value, f"namespaces.{name}", _line(names, name))
        for name, value in names.items()
    }
    breaker_raw = _mapping(raw.get("breaker"), "breaker", _line(raw, "breaker"))
    _check_keys(breaker_raw, BREAKER_KEYS, "breaker")
    return Config(
        policy=policy,
        namespaces=namespaces,
        expire_nodest_conn=_enum(SysctlMode, raw, "expireNodestConn", "")
        if "expireNodestConn" in raw
        else SysctlMode.ENFORCE,
        breaker=_breaker(breaker_raw),
        node_port_networks=_networks(raw, "nodePortAddresses"),
        exclude_networks=_networks(raw, "excludeCIDRs"),
    )


def parse_config(document: Any, source: str = "config") -> Config:
    """A parsed YAML document (plain dicts, or LineDicts that give errors their line)."""
    try:
        return _config(document)
    except _Invalid as error:
        raise ConfigError(f"{source}: {error.located()}") from None


def parse_config_text(text: str | bytes, source: str) -> Config:
    try:
        document = load_strict(text)
    except YamlTextError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    return parse_config(document, source)


def load_config(path: Path) -> Config:
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    return parse_config_text(text, str(path))


def parse_annotation(text: str) -> PolicyOverride:
    """The per-Service override `ipvs-reaper.io/policy`: a YAML or JSON mapping like the config's `policy`.

    Whatever a tenant writes here, the answer is a PolicyOverride within the bounds, or a ConfigError that
    keeps only this Service's real servers."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ANNOTATION_BYTES:
        raise ConfigError(f"longer than {MAX_ANNOTATION_BYTES} bytes")
    try:
        document = load_strict(text)
    except YamlTextError as error:
        raise ConfigError(f"not valid YAML: {error}") from None
    try:
        return _policy_override(document, "")
    except _Invalid as error:
        raise ConfigError(error.located()) from None
