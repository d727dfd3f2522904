"""Anonymous network namespaces for the kernel probe, held only by file descriptors of this process.

Nothing is mounted under /run/netns: when the process ends, however it ends (even SIGKILL), the kernel drops
the namespaces and everything in them (interfaces, IPVS services, sysctls). A namespace is entered by a
short-lived thread (network namespaces are per thread), so the caller's own thread never leaves the node's."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NamespaceError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _in_thread(work: Callable[[], T], name: str) -> T:
    # A fresh thread each time: one that entered a namespace never runs anything else. The future carries
    # work()'s exception back to this thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        return pool.submit(work).result()


def new_namespace() -> int:
    """A new, empty network namespace; the descriptor keeps it alive."""

    def make() -> int:
        if _libc().unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NamespaceError(f"unshare(CLONE_NEWNET): {os.strerror(code)} (the probe needs root)")
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    return _in_thread(make, "netns-new")


def enter(namespace: int) -> None:
    """Moves the calling thread into the namespace (only a thread made for it should call this)."""
    if _libc().setns(namespace, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NamespaceError(f"setns: {os.strerror(code)}")


def run_in(namespace: int, work: Callable[[], T]) -> T:
    """`work()` in a thread inside the namespace; sockets and netlink handles it makes stay in it."""

    def inside() -> T:
        enter(namespace)
        return work()

    return _in_thread(inside, "netns-run")
