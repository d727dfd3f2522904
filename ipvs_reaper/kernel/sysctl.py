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


DEFAULT_SYSCTL_DIR = Path("/proc/sys/net/ipv4/vs")


class ProcSysctls:
    """Reads from `root`; writes to `write_dir` when given. In a container /proc/sys is read-only (and, with
    hostNetwork, shows the host's values, so reading there is right); a bind mount of the one sysctl file the
    agent writes, outside /proc, is writable and is the host's (`--sysctl-write-dir`)."""

    def __init__(self, root: Path = DEFAULT_SYSCTL_DIR, write_dir: Path | None = None) -> None:
        self._root = root
        self._write_dir = write_dir or root

    def read(self, name: str) -> int | None:
        try:
            return int((self._root / name).read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise SysctlError(f"reading net.ipv4.vs.{name}: {error}") from None

    def write(self, name: str, value: int) -> None:
        try:
            (self._write_dir / name).write_text(f"{value}\n")
        except OSError as error:
            # In a container /proc/sys is usually mounted read-only unless the pod is privileged.
            raise SysctlError(
                f"setting net.ipv4.vs.{name}={value} in {self._write_dir}: {error.strerror or error}"
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
