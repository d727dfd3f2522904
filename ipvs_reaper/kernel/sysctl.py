"""Reading and writing the net.ipv4.vs sysctls of this network namespace, behind a small interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

CONN_REUSE_MODE = "conn_reuse_mode"
EXPIRE_NODEST_CONN = "expire_nodest_conn"
EXPIRE_QUIESCENT_TEMPLATE = "expire_quiescent_template"
IPVS_SYSCTLS = (CONN_REUSE_MODE, EXPIRE_NODEST_CONN, EXPIRE_QUIESCENT_TEMPLATE)


class SysctlError(Exception):
    pass


class Sysctls(Protocol):
    def read(self, name: str) -> int | None:
        """The value of net.ipv4.vs.NAME, or None when it does not exist (ip_vs not loaded)."""

    def write(self, name: str, value: int) -> None:
        """Set net.ipv4.vs.NAME; raises SysctlError when the kernel refuses."""


# In a container /proc/sys is mounted read-only; a bind mount of this directory elsewhere is writable (and
# is the host's, with hostNetwork): `--sysctl-dir` points there.
DEFAULT_SYSCTL_DIR = Path("/proc/sys/net/ipv4/vs")


class ProcSysctls:
    def __init__(self, root: Path = DEFAULT_SYSCTL_DIR) -> None:
        self._root = root

    def read(self, name: str) -> int | None:
        try:
            return int((self._root / name).read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise SysctlError(f"reading net.ipv4.vs.{name}: {error}") from None

    def write(self, name: str, value: int) -> None:
        try:
            (self._root / name).write_text(f"{value}\n")
        except OSError as error:
            # In a container /proc/sys is usually mounted read-only unless the pod is privileged.
            raise SysctlError(
                f"setting net.ipv4.vs.{name}={value} in {self._root}: {error.strerror or error}"
            ) from None


class FakeSysctls:
    def __init__(self, values: dict[str, int] | None = None, writable: bool = True) -> None:
        self.values = dict(values or {})
        self.writable = writable
        self.writes: list[tuple[str, int]] = []

    def read(self, name: str) -> int | None:
        return self.values.get(name)

    def write(self, name: str, value: int) -> None:
        if not self.writable:
            raise SysctlError(f"setting net.ipv4.vs.{name}={value}: Read-only file system")
        self.values[name] = value
        self.writes.append((name, value))
