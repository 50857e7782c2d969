"""Past one machine: paralelo's Pool and executor API on a Dask or Ray cluster.

``Pool(backend="dask")``, ``ProcessPoolExecutor(backend="ray", address=...)``, or
``PARALELO_BACKEND`` / ``paralelo.set_backend()`` for every pool of a program: the
same calls run as tasks of the cluster (`cluster`), a map's items in chunks
(`stream` for the lazy maps), each task running `task` on a worker. Results, their
order, and exceptions with their remote tracebacks are the local engine's; the local
engine's process-level controls (``maxtasksperchild``, ``task_timeout``, inline mode)
are refused by name.
"""

from .choice import set_backend

__all__ = ["set_backend"]
