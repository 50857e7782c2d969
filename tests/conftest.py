"""Shared fixtures: a paralelo Pool and ProcessPoolExecutor per test, and a check that
no test leaves worker processes behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest

import paralelo

#: How long a test's processes get to exit after it ends before they count as leaked.
LEAK_GRACE_SECONDS = 5.0


def _live_processes() -> dict[int, list[int]]:
    """ppid -> [pid] for every process that is not a zombie."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:  # it exited while we looked
            continue
        # "pid (comm) state ppid ..."; comm may itself contain spaces and parentheses.
        fields = data.rsplit(b")", 1)[-1].split()
        if len(fields) < 2 or fields[0] in (b"Z", b"X"):
            continue
        children[int(fields[1])].append(int(entry))
    return children


def descendants(root: int | None = None) -> set[int]:
    """Pids of the live processes whose parent chain leads to ``root`` (default: us)."""
    root = os.getpid() if root is None else root
    children = _live_processes()
    out: set[int] = set()
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), ()):
            if pid not in out:
                out.add(pid)
                stack.append(pid)
    return out


def _long_lived_helpers() -> set[int]:
    """Helper processes started once per test process and meant to live as long as it:
    multiprocessing's forkserver and resource tracker (paralelo's zygotes end with their
    pools)."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver

        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        if pid:
            pids.add(pid)
    except Exception:  # noqa: BLE001 - private details of the stdlib; best effort
        pass
    try:
        from multiprocessing import resource_tracker

        pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        if pid:
            pids.add(pid)
    except Exception:  # noqa: BLE001
        pass
    return pids


@pytest.fixture(autouse=True)
def no_leaked_processes(request):
    """Fails the test if it leaves processes behind (workers that never exited).

    Processes that existed before the test (e.g. a module-scoped pool's workers, set up
    before this function-scoped fixture) and the long-lived helpers are allowed.
    """
    before = descendants()
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        leaked = descendants() - before - _long_lived_helpers()
        if request.node.fspath.basename in _LAST:  # (clusters start workers when they please)
            leaked = _started_by_us(leaked, before)
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"processes left running after the test: {sorted(leaked)}"


def _started_by_us(pids: set[int], before: set[int]) -> set[int]:
    """Those of `pids` whose parent chain does not pass through a process that was there
    before the test: a module-scoped cluster's processes (Ray's raylet, a Dask nanny)
    start workers of their own when they please."""
    parents = {child: ppid for ppid, children in _live_processes().items() for child in children}
    out = set()
    for pid in pids:
        up = parents.get(pid)
        while up is not None and up != os.getpid() and up not in before:
            up = parents.get(up)
        if up is None or up == os.getpid():
            out.add(pid)
    return out


@pytest.fixture
def pool():
    p = paralelo.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


@pytest.fixture
def executor():
    ex = paralelo.ProcessPoolExecutor(2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


class Isolated:
    """Runs a Python snippet in a fresh interpreter (with faulthandler on), for behaviour
    that can crash the process running it: a crash then fails one test instead of
    killing the whole test session."""

    def __call__(self, code: str, *args: object, timeout: float = 40) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @staticmethod
    def result(proc: subprocess.CompletedProcess) -> object:
        """The JSON the snippet printed last, after checking that neither it nor any of
        its workers crashed or printed a traceback."""
        report = f"exit status {proc.returncode}; stderr:\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, report
        assert "Fatal Python error" not in proc.stderr, report
        assert "Traceback" not in proc.stderr, report
        return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def isolated() -> Isolated:
    return Isolated()


#: Modules that start clusters (Dask, Ray) and import their libraries into this process,
#: which changes it for good (``distributed`` installs tblib's exception pickling): run
#: last, so that every other test sees a process as a user's plain program is.
_LAST = ("test_backends.py", "test_joblib.py")


def pytest_collection_modifyitems(items: list) -> None:
    items.sort(key=lambda item: item.fspath.basename in _LAST)
