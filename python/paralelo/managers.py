"""``multiprocessing.managers`` with its server started as a paralelo ``Process``.

A manager's proxies (dict, list, Namespace, Queue, Lock, Value, Array, ...) work from
paralelo's processes and pools as from multiprocessing's: they are the standard
library's, talking over a Unix socket to the manager's server process.
"""

from __future__ import annotations

from multiprocessing.managers import (  # noqa: F401 (re-exported)
    BaseManager,
    BaseProxy,
    Namespace,
    SharedMemoryManager,
    SyncManager,
    Token,
)
from typing import Any

__all__ = ["BaseManager", "BaseProxy", "Manager", "Namespace", "SharedMemoryManager", "SyncManager", "Token"]


def Manager(ctx: Any = None) -> SyncManager:
    """A started ``SyncManager`` whose server is a paralelo ``Process`` (of `ctx`'s start
    method; default: the current one). Shut it down with ``shutdown()`` or a ``with``
    block; it is shut down at exit otherwise."""
    if ctx is None:
        from .context import get_context

        ctx = get_context()
    m = SyncManager(ctx=ctx)
    m.start()
    return m
