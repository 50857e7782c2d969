"""The 'spawn' and 'forkserver' start methods: a pool's workers come from a fresh
interpreter that imported the script (see ``_fresh``), never from a fork of the parent.
Each case is a script whose functions live in ``__main__``, run beside the standard
library where the behaviour is claimed equal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from scripts import run_group, side_by_side

HEAD = """
import logging, os, sys
if sys.argv[1] == "paralelo":
    import paralelo as mp
    from paralelo import ProcessPoolExecutor
else:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
import multiprocessing
"""

SEEN = HEAD + textwrap.dedent("""
    METHOD = sys.argv[2]
    STATE = "as imported"
    _conn = None

    class Point:
        def __init__(self, x):
            self.x = x

    class Boom(Exception):
        pass

    def init(name, lock):
        global _conn
        with lock:
            _conn = f"connection-{name}"

    def look(x):
        me = mp.current_process()
        return (_conn, STATE, me.name.rsplit("-", 1)[0], len(me._identity),
                mp.parent_process().pid == int(os.environ["OWNER"]), sys.argv[2:], os.getcwd(),
                len(logging.getLogger().handlers), Point(x))

    def fail(x):
        raise Boom(x)

    def pid(_):
        return os.getpid()

    def show(rows):
        return [(c, s, kind, ident, parent, argv, cwd == os.getcwd(), handlers, type(p) is Point, p.x)
                for c, s, kind, ident, parent, argv, cwd, handlers, p in rows]

    if __name__ == "__main__":
        os.environ["OWNER"] = str(os.getpid())
        logging.basicConfig(level=logging.INFO)  # the parent's: a fresh worker has none
        STATE = "set by the main block"  # a fork would show it; a fresh interpreter does not
        ctx = mp.get_context(METHOD)
        lock = ctx.Lock()
        with ctx.Pool(2, initializer=init, initargs=("db", lock)) as p:
            print(show(p.map(look, range(3))))
            try:
                p.apply(fail, (7,))
            except Boom as e:
                print("raised", type(e).__name__, e.args, type(e.__cause__).__name__)
        with ctx.Pool(2, maxtasksperchild=1) as p:
            print("workers", len(set(p.map(pid, range(6), chunksize=1))))
        # A standard library context works too, as the executor's mp_context.
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(METHOD),
                                 initializer=init, initargs=("ex", lock)) as ex:
            print(show(ex.map(look, range(2))))
        mp.set_start_method(METHOD, force=True)  # the default for pools made without a context
        with mp.Pool(1) as p:
            print(p.apply(look, (9,))[2])
""")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_see_what_a_fresh_interpreter_sees(tmp_path, method: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SEEN)
    outs = []
    for lib in ("paralelo", "multiprocessing"):
        out = run_group([sys.executable, str(script), lib, method], 120, cwd=tmp_path)
        assert out.returncode == 0, (lib, out.stderr)
        outs.append(out.stdout.strip())
    ours, theirs = outs
    assert ours == theirs
    kind = {"spawn": "Spawn", "forkserver": "ForkServer"}[method]
    assert f"'{kind}PoolWorker'" in ours and f"'{kind}Process'" in ours
    assert "'connection-db', 'as imported'" in ours and "set by the main block" not in ours


def test_the_script_is_imported_once_per_pool_and_objects_go_by_value_where_it_lacks_them(tmp_path) -> None:
    # What a fresh interpreter lacks (functions made in the main block, lambdas) goes by
    # value, where the standard library fails; the script runs once in the pool's zygote.
    [out] = side_by_side(tmp_path, HEAD + textwrap.dedent("""
        print("imported as", __name__, flush=True)
        if __name__ == "__main__":
            def cube(x):
                return x ** 3
            ctx = mp.get_context("spawn")
            with ctx.Pool(3, maxtasksperchild=2) as p:
                print(p.map(cube, range(8), chunksize=1), p.apply(lambda: 42))
    """), libs=("paralelo",))
    assert out.splitlines() == ["imported as __main__", "imported as __mp_main__",
                                "[0, 1, 8, 27, 64, 125, 216, 343] 42"]


SCRIPT_FAILS = HEAD + """
def f(x):
    return x
{module_level}
if __name__ == "__main__":
    try:
        with mp.get_context("spawn").Pool(2) as p:
            print(p.map(f, range(3)))
    except Exception as e:
        print(type(e).__name__)
        print(e)
        print(e.__cause__)
"""


@pytest.mark.parametrize(("module_level", "says"), [
    # No main guard: the zygote's import makes a pool too, as a spawned child's would.
    ("if __name__ != '__main__':\n    mp.get_context('spawn').Pool(2)",
     "current process has finished its bootstrapping phase"),
    ("if __name__ != '__main__':\n    1 / 0", "ZeroDivisionError: division by zero"),
    ("if __name__ != '__main__':\n    os._exit(3)", "(it exited with code 3)"),
])
def test_a_script_that_cannot_be_imported_fails_the_pool_with_its_traceback(tmp_path, module_level: str,
                                                                           says: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FAILS.format(module_level=module_level))
    out = run_group([sys.executable, str(script), "paralelo"], 60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "BrokenProcessPool", out.stdout
    assert "fresh interpreter of the 'spawn' start method" in lines[1]
    assert says in out.stdout


def _gone(pids: list[int], within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_parent_leaves_no_zygote_or_worker(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        import paralelo as mp
        def nap(x):
            time.sleep(60)
        if __name__ == "__main__":
            p = mp.get_context("spawn").Pool(2)
            p.map_async(nap, range(2))
            print(p._engine.zygote.pid, *p._engine.pids(), flush=True)
            time.sleep(60)
    """))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            pids = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
            assert len(pids) == 3
            proc.kill()
            proc.wait(10)
            assert _gone(pids, 10)
        finally:
            proc.kill()


def test_ctrl_c_while_the_script_is_imported_ends_the_zygote(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, signal, threading, time
        import paralelo as mp
        if __name__ != "__main__":
            time.sleep(60)  # a slow import: the parent's Ctrl-C comes meanwhile
        if __name__ == "__main__":
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            t = time.monotonic()
            try:
                mp.get_context("spawn").Pool(2)
            except KeyboardInterrupt:
                me = os.getpid()
                with open(f"/proc/{me}/task/{me}/children") as f:
                    print("interrupted", time.monotonic() - t < 10, repr(f.read().strip()))
    """))
    out = run_group([sys.executable, str(script)], 60, cwd=tmp_path)
    assert out.stdout.strip() == "interrupted True ''", out.stderr


def test_bad_contexts_are_refused() -> None:
    import paralelo

    with pytest.raises(TypeError, match="context must be a multiprocessing or paralelo context"):
        paralelo.Pool(1, context="spawn")
    with pytest.raises(TypeError, match="context must be"):
        paralelo.ProcessPoolExecutor(1, mp_context=object())
