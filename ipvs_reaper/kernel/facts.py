"""What we know about the node's kernel: its release and the IPVS sysctls that decide exposure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ipvs_reaper.errors import InputError
from ipvs_reaper.kernel.sysctl import (
    CONN_REUSE_MODE,
    EXPIRE_NODEST_CONN,
    EXPIRE_QUIESCENT_TEMPLATE,
    IPVS_SYSCTLS,
    Sysctls,
)


@dataclass(frozen=True, slots=True)
class KernelFacts:
    release: str | None  # `uname -r`
    version: str | None  # `uname -v`: Debian puts the real stable version here, not in the release
    conn_reuse_mode: int | None
    expire_nodest_conn: int | None
    expire_quiescent_template: int | None
    source: str  # "live": read on this node; "input": given on the command line; "none": not known
    # /sys/module/ip_vs/taint when ip_vs is loaded ("" for a module of the kernel's own build). An "O" says
    # the module was built outside the kernel tree, so the kernel's version says nothing about its IPVS.
    ip_vs_taint: str | None = None


UNKNOWN_KERNEL = KernelFacts(None, None, None, None, None, source="none")
IP_VS_TAINT = Path("/sys/module/ip_vs/taint")


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_live_facts(
    sysctls: Sysctls, proc_kernel: Path = Path("/proc/sys/kernel"), ip_vs_taint: Path = IP_VS_TAINT
) -> KernelFacts:
    return KernelFacts(
        release=_read_optional(proc_kernel / "osrelease"),
        version=_read_optional(proc_kernel / "version"),
        conn_reuse_mode=sysctls.read(CONN_REUSE_MODE),
        expire_nodest_conn=sysctls.read(EXPIRE_NODEST_CONN),
        expire_quiescent_template=sysctls.read(EXPIRE_QUIESCENT_TEMPLATE),
        source="live",
        ip_vs_taint=_read_optional(ip_vs_taint),
    )


_SYSCTL_LINE = re.compile(r"^\s*(?:net\.ipv4\.vs\.|net/ipv4/vs/)?([a-z_]+)\s*[=:]?\s*(-?\d+)\s*$")


def parse_sysctl_text(text: str, source: str) -> dict[str, int]:
    """`sysctl net.ipv4.vs` output (`net.ipv4.vs.conn_reuse_mode = 0`); other sysctls are ignored."""
    values: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.lstrip().startswith(("net.ipv4.vs.", "net/ipv4/vs/")) and "=" in line:
            continue
        match = _SYSCTL_LINE.match(line)
        if match is None:
            raise InputError(
                f"{source}: line {number}: expected 'net.ipv4.vs.NAME = VALUE', got {line.strip()!r}"
            )
        if match.group(1) in IPVS_SYSCTLS:
            values[match.group(1)] = int(match.group(2))
    if not values:
        # Silently "unknown" would read as "we could not tell", when the file is simply the wrong one.
        raise InputError(
            f"{source}: none of net.ipv4.vs.{', '.join(IPVS_SYSCTLS)} found "
            "(expected the output of `sysctl net.ipv4.vs` on the node)"
        )
    return values


def facts_from_input(release: str | None, version: str | None, sysctl_values: dict[str, int]) -> KernelFacts:
    if release is None and version is None and not sysctl_values:
        return UNKNOWN_KERNEL
    return KernelFacts(
        release=release,
        version=version,
        conn_reuse_mode=sysctl_values.get(CONN_REUSE_MODE),
        expire_nodest_conn=sysctl_values.get(EXPIRE_NODEST_CONN),
        expire_quiescent_template=sysctl_values.get(EXPIRE_QUIESCENT_TEMPLATE),
        source="input",
    )
