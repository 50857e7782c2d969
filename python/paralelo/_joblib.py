"""joblib on paralelo's engine: ``with joblib.parallel_config(backend="paralelo"):``
runs ``joblib.Parallel(...)(delayed(f)(x) for x in ...)`` on a paralelo
``ProcessPoolExecutor``.

The back end is registered with joblib as soon as both are imported, whichever comes
first (`install`). joblib's own machinery does the rest as with loky: auto-batching,
``return_as="generator"`` and ``"generator_unordered"``, ``timeout``, callbacks. As
loky's, the executor outlives a ``Parallel`` call, so the next one finds its workers
running; one that fails kills the tasks still running (`abort_everything`). Large numpy
arguments travel through paralelo's shared-memory arena, where loky memory-maps them
to files.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable

__all__ = ["install", "register", "shutdown"]

NAME = "paralelo"

_executors: dict[tuple, Any] = {}  # by worker count and limits: reused by the next Parallel call
_lock = threading.Lock()


def _backend_class() -> type:
    from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend, ParallelBackendBase,
                                           SequentialBackend)

    class ParaleloBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc, valid-type]
        """joblib's back end on paralelo's process pool (see `paralelo._joblib`)."""

        supports_retrieve_callback = True
        supports_inner_max_num_threads = True
        default_n_jobs = 1

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._executor: Any = None
            self._futures: weakref.WeakSet[Future] = weakref.WeakSet()

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                return 1
            if n_jobs < 0:  # (the CPUs this process may use, as joblib counts them: affinity, cgroups)
                from joblib import cpu_count

                return max(cpu_count() + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                      **backend_kwargs: Any) -> int:
            n = self.effective_n_jobs(n_jobs)
            if n == 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
            self._executor = _executor(n, self._prepare_worker_env(n_jobs=n))
            self.parallel = parallel
            return n

        def submit(self, func: Callable, callback: Callable | None = None) -> Future:
            future = self._executor.submit(func)
            self._futures.add(future)
            if callback is not None:
                future.add_done_callback(callback)
            return future

        def retrieve_result_callback(self, future: Future) -> Any:
            return future.result()

        def terminate(self) -> None:
            self._executor = None  # (kept for the next Parallel call: see `_executor`)
            self.reset_batch_stats()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            # A task failed: the rest are not wanted, the running ones included.
            for future in list(self._futures):
                future.cancel()
            executor, self._executor = self._executor, None
            if executor is not None:
                _discard(executor)
            if ensure_ready:
                self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    return ParaleloBackend


def _executor(workers: int, env: dict[str, str]) -> Any:
    """The executor of `workers` processes, their thread pools limited by `env`, that
    joblib calls share (made on first use)."""
    from .futures import ProcessPoolExecutor

    key = (workers, tuple(sorted(env.items())))
    with _lock:
        executor = _executors.get(key)
        if executor is None or executor._shutdown:
            for other in _executors.values():
                other.shutdown(wait=False)  # (other settings: its workers go)
            _executors.clear()
            # (The local engine whatever PARALELO_BACKEND says: joblib's batches are its own.)
            executor = _executors[key] = ProcessPoolExecutor(workers, backend="local", initializer=_limit_threads,
                                                             initargs=(env,))
        return executor


def _limit_threads(env: dict[str, str]) -> None:
    """In a worker: limits the thread pools of BLAS, OpenMP and the like to joblib's
    share of the CPUs (``OMP_NUM_THREADS`` and its kin, from joblib's
    ``_prepare_worker_env``), as loky does, so that n workers do not each run a pool the
    size of the machine. loky sets the variables before its workers start; a forked
    worker has numpy's BLAS loaded already, so its pools are limited through
    threadpoolctl, and the variables serve what loads later."""
    import os

    os.environ.update(env)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # (`paralelo[joblib]` brings it)
        return
    threads = env.get("OMP_NUM_THREADS")
    if threads is not None and threads.isdigit():
        threadpool_limits(limits=int(threads))


def _discard(executor: Any) -> None:
    with _lock:
        for key, value in list(_executors.items()):
            if value is executor:
                del _executors[key]
    executor._interrupt()  # its workers are killed: the tasks they run are not wanted


def shutdown() -> None:
    """Ends the workers joblib calls share (they are otherwise kept for the next call,
    as loky keeps its own, until the program ends)."""
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=True)


def register() -> None:
    """Registers the ``"paralelo"`` back end with joblib."""
    from joblib import register_parallel_backend

    register_parallel_backend(NAME, _backend_class())


class _Registering:
    """joblib's own loader, registering the back end once joblib has run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # (joblib's module names its own loader, as if never wrapped.)
        module.__loader__ = module.__spec__.loader = self.inner
        self.inner.exec_module(module)
        _register_or_warn()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _WhenJoblib:
    """Waits for ``import joblib`` (see `install`): a meta path finder (not derived from
    ``importlib.abc``'s, whose import costs a program 13 ms)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "joblib":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Registering(spec.loader)  # type: ignore[assignment]
        return spec


def _register_or_warn() -> None:
    # A joblib whose API changed must not break ``import joblib`` (or paralelo's).
    try:
        register()
    except Exception as e:  # noqa: BLE001
        import warnings

        warnings.warn(f"paralelo could not register its joblib back end: {e!r}", RuntimeWarning, stacklevel=2)


def install() -> None:
    """Registers the back end now if joblib is loaded, else as soon as it is."""
    if "joblib" in sys.modules:
        if hasattr(sys.modules["joblib"], "register_parallel_backend"):  # (not half-imported)
            _register_or_warn()
    elif not any(isinstance(f, _WhenJoblib) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenJoblib())
