"""Memory housekeeping for a process that holds a large, long-lived view.

- After a listing, what survived is the view: frozen out of the garbage collector's reach (the view holds no
  reference cycles, so reference counting still frees what a later listing replaces), so that collections
  triggered by event handling stop scanning it; on a large cluster they otherwise pause the event loop for
  hundreds of milliseconds.
- glibc keeps freed memory in its arenas for reuse; a node agent that lists a big cluster and then idles
  would otherwise keep its peak as its resident size for good, so the heap is trimmed after listings and
  sweeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def settle_after_listing(trim: Callable[[], None]) -> None:
    """Collect the listing's garbage once, freeze what survived (the view), and trim the heap.

    Unfrozen first: cycles that became garbage since the previous freeze (closed connections, finished
    tasks) are collected now rather than kept for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim()


def heap_trimmer() -> Callable[[], None]:
    """A function that trims the C heap (a no-op without glibc). No forced garbage collection: on a heap this
    size a full collection would hold up the event loop for longer than an event may wait."""
    name = ctypes.util.find_library("c")
    trim = None
    if name is not None:
        try:
            trim = ctypes.CDLL(name).malloc_trim
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            trim = None

    def release() -> None:
        if trim is not None:
            trim(0)

    return release
