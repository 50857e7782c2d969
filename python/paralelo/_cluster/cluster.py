"""A pool's connection to a cluster: the tasks it sends (`task.run_chunk`,
`task.run_call`), the large arrays it stores once (``client.scatter``, ``ray.put``) and
names in the tasks' arguments, and what it learns of the cluster's workers (their
insights). `DaskCluster` and `RayCluster` speak to the two engines; the pool and the
executor above them (`_cluster.pool`, `_cluster.executor`) are the same for both."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
import queue
import uuid
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, Iterator

from .._broken import WorkerLostError
from .._insights import Figures, Insights, report
from .._pickling import MainNames
from . import task
from . import choice as _choice
from .choice import Choice

__all__ = ["Cluster", "connect"]

#: Arrays of at least this many bytes go to the cluster's store, once per pool.
STORE_MIN_BYTES = 1 << 20
#: How deep `externalize` looks into a task's arguments (chunk, item, argument, element).
_DEPTH = 4


#: The engines' errors for a task whose worker (or what held its data) was lost.
_LOST = frozenset(("KilledWorker", "WorkerCrashedError", "NodeDiedError", "ActorDiedError", "OutOfMemoryError",
                   "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError"))


class Cluster:
    """What a pool or executor needs of a cluster (see the module)."""

    backend = ""

    def __init__(self, choice: Choice, retries: int) -> None:
        self.choice = choice
        self.retries = retries
        #: Names this pool's initializer runs under on the workers (see `task`).
        self.token = uuid.uuid4().hex
        self.lock = threading.Lock()
        #: The caller's ``__main__`` functions as they are now: a task's function among
        #: them shares the pool's namespace on the workers (see `task`); one made or
        #: changed since carries its own globals, as with a local pool.
        self.main = MainNames()
        self.figures: dict[str, Figures] = {}
        self.since = time.monotonic()
        self.closed = False

    # -- what each engine provides ----------------------------------------------------

    #: Joined as it was (a Ray runtime this process had): its size is its own.
    attached = False

    def workers(self) -> int:
        """How many tasks the cluster runs at once."""
        raise NotImplementedError

    def _submit(self, fn: Callable, args: tuple, handles: list) -> Future:
        """Runs ``fn(*args, *handles)`` on the cluster (each handle given as the object it
        stands for); a Future of its value, whose ``remote`` is the engine's own."""
        raise NotImplementedError

    def _put(self, obj: Any) -> Any:
        """`obj` in the cluster's store: a handle to pass to `_submit`."""
        raise NotImplementedError

    def _cancel(self, remotes: list) -> None:
        """Cancels the engine's tasks `remotes` (those not finished)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- the same for both ----------------------------------------------------------

    def chunk(self, setup: tuple | None, fn: Callable, star: bool, items: list,
              stored: dict[int, Any] | None = None) -> Future:
        """A Future of ``(outcomes, where, busy_ns)`` for `fn` over `items` (see
        `task.run_chunk`). `stored`: the large arrays this map put in the store already
        (`externalize`), shared by its chunks."""
        handles: list = []
        seen: dict[int, int] = {}
        stored = {} if stored is None else stored
        fn, items = self.externalize(fn, handles, seen, stored), self.externalize(items, handles, seen, stored)
        shared = self.main.has(fn.func if type(fn) is functools.partial else fn)
        return self._counted(self._submit(task.run_chunk, (self.token, setup, fn, shared, star, items), handles))

    def call(self, setup: tuple | None, fn: Callable, args: tuple, kwargs: dict) -> Future:
        """A Future of ``(outcomes, where, busy_ns)`` for ``fn(*args, **kwargs)``."""
        handles: list = []
        seen: dict[int, int] = {}
        stored: dict[int, Any] = {}
        fn, args, kwargs = (self.externalize(x, handles, seen, stored) for x in (fn, args, kwargs))
        shared = self.main.has(fn.func if type(fn) is functools.partial else fn)
        return self._counted(self._submit(task.run_call, (self.token, setup, fn, shared, args, kwargs), handles))

    def cancel(self, futures: list[Future]) -> None:
        """Cancels the cluster's tasks behind `futures` (from `chunk` or `call`), in one
        request, from the results' thread: never from the caller's, which may be the
        garbage collector's anywhere (inside the engine's own calls: Dask's cancel then
        waits on its event loop for ever). Those already finished are left alone."""
        remotes = [r for r in (getattr(f, "remote", None) for f in futures if not f.done()) if r is not None]
        if remotes and not self.closed:
            deliver(self._cancel_now, remotes)

    def _cancel_now(self, remotes: list) -> None:
        if not self.closed:
            try:
                self._cancel(remotes)
            except Exception:  # noqa: BLE001 - (finished, or the cluster is going)
                pass

    def externalize(self, obj: Any, handles: list, seen: dict[int, int], stored: dict[int, Any],
                    depth: int = 0) -> Any:
        """`obj` with each large numpy array in it replaced by a `task.Stored` naming its
        place in `handles`, the array put in the cluster's store once per map or call
        (`stored`, by the array's identity: a map over ``[(big, i) for i in ...]`` sends
        it once, not with every task). Each map or call stores its arrays afresh, as a
        local pool pickles them when they are handed over: one changed in place since
        is seen changed."""
        numpy = sys.modules.get("numpy")
        if numpy is None or depth > _DEPTH:
            return obj
        kind = type(obj)
        if kind is numpy.ndarray:
            if obj.nbytes < STORE_MIN_BYTES:
                return obj
            key = id(obj)
            if key not in seen:
                held = stored.get(key)
                if held is None:
                    held = stored[key] = (obj, self._put(obj))  # (holding it: its id stays its own)
                seen[key] = len(handles)
                handles.append(held[1])
            return task.Stored(seen[key])
        if kind is tuple or kind is list:
            out = [self.externalize(x, handles, seen, stored, depth + 1) for x in obj]
            return obj if all(a is b for a, b in zip(out, obj)) else kind(out)
        if kind is dict:
            new = {k: self.externalize(v, handles, seen, stored, depth + 1) for k, v in obj.items()}
            return obj if all(new[k] is v for k, v in obj.items()) else new
        if kind is functools.partial:
            func = self.externalize(obj.func, handles, seen, stored, depth + 1)
            args = self.externalize(obj.args, handles, seen, stored, depth + 1)
            keywords = self.externalize(obj.keywords, handles, seen, stored, depth + 1)
            if func is obj.func and args is obj.args and keywords is obj.keywords:
                return obj
            return functools.partial(func, *args, **keywords)
        return obj

    def _counted(self, future: Future) -> Future:
        """`future`, its outcome counted in the workers' figures when it comes, and a
        worker lost under it turned into paralelo's `WorkerLostError`."""
        out: Future = Future()
        out.remote = getattr(future, "remote", None)  # type: ignore[attr-defined]

        def done(f: Future) -> None:
            deliver(settle, f)

        def settle(f: Future) -> None:
            # The engine's own future goes: it would hold the result in the cluster's
            # memory for as long as the caller holds ours.
            f.remote = out.remote = None  # type: ignore[attr-defined]
            try:
                outcomes, where, busy = f.result()
            except BaseException as e:  # noqa: BLE001 - the cluster's own failure
                error = self.lost(e)
                if not out.set_running_or_notify_cancel():
                    return
                out.set_exception(error)
                return
            with self.lock:
                figures = self.figures.get(where)
                if figures is None:
                    # (First seen now: when it started, and its start-up, are the cluster's.)
                    figures = self.figures[where] = Figures(f"{self.backend} {where}", self.since)
                    figures.pid = int(where.rpartition(":")[2] or 0)
                figures.tasks += len(outcomes)
                figures.busy_ns += busy
            if out.set_running_or_notify_cancel():
                out.set_result(outcomes)

        future.add_done_callback(done)
        return out

    def lost(self, e: BaseException) -> BaseException:
        """The error a task's caller gets when the cluster failed to run it: a worker that
        died is a `WorkerLostError`, as with the local engine; anything else as it is."""
        if type(e).__name__ in _LOST:
            err = WorkerLostError(f"the {self.backend} worker running this task died: {e}")
            err.__cause__ = e
            return err
        return e

    def insights(self) -> Insights:
        with self.lock:
            return report(list(self.figures.values()), self.since)

    def reset_insights(self) -> None:
        with self.lock:
            self.since = time.monotonic()
            for figures in self.figures.values():
                figures.restart()

    def close(self) -> None:
        """Lets go of the cluster (stops it if the pool started it)."""
        if self.closed:
            return
        self.closed = True
        self._close()


class _Delivery:
    """The one thread of this process that settles what the clusters' tasks return: a
    result's callbacks, a future's done-callbacks, a lazy map's next item. Never the
    engine's own threads (Dask runs its callbacks one at a time on one thread, Ray on
    its core worker's), which a callback that waits would stall; a wait on this thread
    for another result raises instead (`paralelo._imap.not_in_callback`)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def __call__(self, fn: Callable, *args: Any) -> None:
        self.queue.put((fn, args))
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="paralelo-cluster-results", daemon=True)
                    self.thread.start()

    def _run(self) -> None:
        import logging

        while True:
            fn, args = self.queue.get()
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a callback's failure is the callback's
                logging.getLogger("paralelo").exception("a cluster result's callback raised")
            fn = args = None


#: The results' thread (see `_Delivery`).
deliver = _Delivery()


def _forget_delivery_after_fork() -> None:
    global deliver
    deliver = _Delivery()  # (the parent's thread and queue are not the child's)


os.register_at_fork(after_in_child=_forget_delivery_after_fork)


class DaskCluster(Cluster):
    """A Dask distributed cluster: the scheduler at the address (or Dask's own
    ``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` of `workers` processes (one
    thread each) on 127.0.0.1, stopped at `close`: no dashboard (the scheduler's HTTP
    routes on a free port of 127.0.0.1, not on 8787, which another cluster may hold)."""

    backend = "dask"

    def __init__(self, choice: Choice, workers: int | None, retries: int) -> None:
        super().__init__(choice, retries)
        from distributed import Client, LocalCluster

        import dask

        self.local: Any = None
        #: Results still to be fetched (settled by `_close` if the loop drops them).
        self.pending: set[Future] = set()
        address = choice.address or dask.config.get("scheduler-address", None)  # (DASK_SCHEDULER_ADDRESS)
        if address is None:
            # A task whose worker died runs again `retries` times, no more (Dask's
            # default is 3); a scheduler elsewhere keeps its own setting.
            with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
                self.local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                          host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                          worker_dashboard_address=None, scheduler_kwargs={"dashboard": False})
            try:
                self.client = Client(self.local, set_as_default=False)
            except BaseException:
                self.local.close()
                raise
        else:
            self.client = Client(address, set_as_default=False)

    def workers(self) -> int:
        info = self.client.scheduler_info(n_workers=-1) if _takes_n_workers(self.client) else self.client.scheduler_info()
        return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def _submit(self, fn: Callable, args: tuple, handles: list) -> Future:
        # (No `retries=`: Dask retries a task that raised, and ours never raise; a task
        # whose worker died is run again up to the scheduler's allowed-failures.)
        remote = self.client.submit(fn, *args, *handles, pure=False)
        out: Future = Future()
        out.remote = remote  # type: ignore[attr-defined]

        async def fetch() -> None:
            try:
                value = (await self.client.gather([remote], asynchronous=True))[0]
            except BaseException as e:  # noqa: BLE001 - (KilledWorker, CancelledError...)
                _settle(out, error=e)
            else:
                _settle(out, value)
            finally:
                self.pending.discard(out)

        # Awaited on the client's event loop, not in a done-callback: Dask runs every
        # client's callbacks on one thread of the process, so a user's callback that waits
        # there, or a fetch that stalls there (a key cancelled mid-gather is waited for
        # again, for ever), would hold back every later result of every pool on Dask.
        self.pending.add(out)
        if not self._on_loop(fetch()):
            self.pending.discard(out)
            _settle(out, error=RuntimeError("the Dask client closed before the task was sent"))
        return out

    def _on_loop(self, coroutine: Any) -> bool:
        """Runs `coroutine` on the client's event loop, not waiting for it; False (and
        the coroutine closed) if that loop has closed."""
        loop: Any = self.client.loop
        try:
            asyncio.run_coroutine_threadsafe(coroutine, loop.asyncio_loop)
        except RuntimeError:
            coroutine.close()
            return False
        return True

    def _put(self, obj: Any) -> Any:
        return self.client.scatter(obj, hash=False)

    def _cancel(self, remotes: list) -> None:
        # Sent from the client's loop, not waited for: a blocking cancel on the results'
        # thread waits for ever if the loop stops under it (a closing client).
        self._on_loop(self.client.cancel(remotes, asynchronous=True))

    def _close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                self.local.close()
            # (A fetch the closing loop dropped would leave its task waiting for ever.)
            for out in list(self.pending):
                _settle(out, error=RuntimeError("the Dask cluster closed before the task's result came"))


def _settle(out: Future, value: Any = None, error: BaseException | None = None) -> None:
    """Gives `out` its outcome unless it has one (from `_close`, or cancelled)."""
    try:
        if error is None:
            out.set_result(value)
        else:
            out.set_exception(error)
    except InvalidStateError:
        pass


def _takes_n_workers(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


class RayCluster(Cluster):
    """A Ray cluster: the one this process is connected to already, the one at the
    address (or Ray's own ``RAY_ADDRESS``), else a local one of `workers` CPUs on
    127.0.0.1 (`loopback_only`, dashboard off), stopped when the last pool that uses it
    closes."""

    backend = "ray"
    #: Pools using a Ray runtime (or connection) that paralelo started in this process.
    _users = 0
    _lock = threading.Lock()
    #: ``PYTHONBREAKPOINT`` before Ray set its own (in this process, for good): put back
    #: when paralelo stops the Ray it started.
    _breakpoint_before: str | None = None

    def __init__(self, choice: Choice, workers: int | None, retries: int) -> None:
        super().__init__(choice, retries)
        import logging

        import ray

        self.ray = ray
        with RayCluster._lock:
            self.owned = False
            self.attached = ray.is_initialized()  # (its size is the cluster's, whatever the pool asked)
            if self.attached and choice.address is not None:
                raise ValueError(f"this process is connected to a Ray cluster already "
                                 f"({ray.get_runtime_context().gcs_address}), and Ray allows one a process: "
                                 f"address={choice.address!r} cannot be joined too")
            if not ray.is_initialized():
                RayCluster._breakpoint_before = os.environ.get("PYTHONBREAKPOINT")
                self.owned = True  # (a runtime or a connection of paralelo's: ended with its last pool)
                if choice.address is None and not os.environ.get("RAY_ADDRESS"):
                    # Its workers import what this process imports: the same machine, the
                    # same module path (a test's or a project's own modules).
                    path = os.pathsep.join(p for p in sys.path if p)
                    with loopback_only(ray):
                        ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False,
                                 logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path}})
                else:  # (no address: Ray's own RAY_ADDRESS)
                    address = choice.address or os.environ["RAY_ADDRESS"]
                    with loopback_only(ray) if _on_loopback(address) else contextlib.nullcontext():
                        ray.init(address=choice.address, logging_level=logging.WARNING)
            if self.owned or RayCluster._users:
                RayCluster._users += 1
                self.owned = True
        self.remote_chunk = ray.remote(num_cpus=1, max_retries=retries)(task.run_chunk)
        self.remote_call = ray.remote(num_cpus=1, max_retries=retries)(task.run_call)

    def workers(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def _submit(self, fn: Callable, args: tuple, handles: list) -> Future:
        remote_fn = self.remote_chunk if fn is task.run_chunk else self.remote_call
        ref = remote_fn.remote(*args, *handles)
        out = ref.future()
        out.remote = ref  # type: ignore[attr-defined]
        return out

    def _put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def _cancel(self, remotes: list) -> None:
        for ref in remotes:
            self.ray.cancel(ref)

    def _close(self) -> None:
        with RayCluster._lock:
            if self.owned:
                RayCluster._users -= 1
                if RayCluster._users == 0:
                    self.ray.shutdown()
                    _restore_env("PYTHONBREAKPOINT", RayCluster._breakpoint_before)


#: Ray's switch for clusters of several machines (off by default on macOS and Windows,
#: where a node is at 127.0.0.1 and its servers listen there only).
_RAY_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def loopback_only(ray: Any) -> Iterator[None]:
    """Starts Ray as one machine's: its node at 127.0.0.1 and every server it starts (GCS,
    raylet, workers' gRPC, agents) listening on 127.0.0.1 only. On Linux Ray takes a
    node at 127.0.0.1 for the machine's outward address, and listens on every interface:
    only its single-machine mode keeps to the loopback. (Its processes inherit the
    variable as they start; the constant is what this process's Ray reads.)"""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved = os.environ.get(_RAY_CLUSTERS), getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_RAY_CLUSTERS] = "0"
    if saved[1] is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        _restore_env(_RAY_CLUSTERS, saved[0])
        if saved[1] is not None:
            constants.ENABLE_RAY_CLUSTER = saved[1]  # type: ignore[union-attr]


def _on_loopback(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``) is this machine's
    loopback: a cluster that `loopback_only` started, which a driver joins only in that
    mode too."""
    import ipaddress

    host = address.rpartition("://")[2].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(choice: Choice, workers: int | None, retries: int = 0) -> Cluster:
    """A connection to the cluster `choice` names (see `_cluster.choice`)."""
    install = _choice.missing(choice.backend)
    if install is not None:
        raise ImportError(f"backend={choice.backend!r} needs {choice.backend.capitalize()}, which is not installed: "
                          f"{install}")
    if choice.backend == "dask":
        return DaskCluster(choice, workers, retries)
    if choice.backend == "ray":
        return RayCluster(choice, workers, retries)
    raise ValueError(f"no cluster for backend {choice.backend!r}")
