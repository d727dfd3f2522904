"""What the doctor reports: findings with a severity, the evidence behind them, who is affected, the fix."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class Kind(enum.StrEnum):
    HIJACK = "hijack"
    WELL_KNOWN_PORT = "well-known-port"
    KERNEL_EXPOSURE = "kernel-exposure"
    STALE_REAL_SERVERS = "stale-real-servers"
    SYSCTL_MISMATCH = "sysctl-mismatch"
    RULES_UNREADABLE = "rules-unreadable"
    IPVS_UNREADABLE = "ipvs-unreadable"


@dataclass(frozen=True, slots=True)
class Evidence:
    rule: str  # as the tool printed it
    chain_path: str  # PREROUTING -> CNI-HOSTPORT-DNAT -> CNI-DN-...
    source: str  # table and where it was read: "iptables-legacy ip nat (iptables-legacy-save)"
    hooks: tuple[str, ...]  # prerouting, output
    conditions: tuple[str, ...] = ()  # matches that could not be judged, which must also hold

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "chainPath": self.chain_path,
            "source": self.source,
            "hooks": list(self.hooks),
            "conditions": list(self.conditions),
        }


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    severity: Severity
    title: str
    affected: str
    fix: str
    evidence: tuple[Evidence, ...] = ()
    details: tuple[str, ...] = ()  # lines of plain evidence when there is no rule (sysctls, counts)
    protocol: str | None = None  # TCP | UDP | SCTP
    port: int | None = None
    address: str | None = None
    service: str | None = None  # namespace/name, when the cluster state names it
    owner: str | None = None  # the pod behind the rule, namespace/name
    destination: str | None = None  # where the rule sends the traffic
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.label,
            "title": self.title,
            "protocol": self.protocol,
            "address": self.address,
            "port": self.port,
            "service": self.service,
            "owner": self.owner,
            "destination": self.destination,
            "affected": self.affected,
            "fix": self.fix,
            "evidence": [e.as_json() for e in self.evidence],
            "details": list(self.details),
        } | self.extra
