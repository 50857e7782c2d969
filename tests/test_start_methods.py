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


@pytest.mark.parametrize(("method", "imports"), [("spawn", 4), ("forkserver", 1)])
def test_what_a_worker_lacks_goes_by_value_and_the_script_is_imported_as_multiprocessing_does(
        tmp_path, method: str, imports: int) -> None:
    # What a fresh interpreter lacks (functions made in the main block, lambdas) goes by
    # value, where the standard library fails. 'spawn' imports the script in every
    # worker, respawns too (3 workers, then one more for the 8 tasks at 2 a worker, from
    # the first worker to finish: 4 at least); 'forkserver' once, in the pool's zygote.
    [out] = side_by_side(tmp_path, HEAD + textwrap.dedent(f"""
        os.write(1, f"imported as {{__name__}}\\n".encode())  # (one write: workers print at once)
        if __name__ == "__main__":
            def cube(x):
                return x ** 3
            ctx = mp.get_context("{method}")
            with ctx.Pool(3, maxtasksperchild=2) as p:
                print(p.map(cube, range(8), chunksize=1), p.apply(lambda: 42))
    """), libs=("paralelo",))
    lines = out.splitlines()
    assert lines[0] == "imported as __main__" and lines[-1] == "[0, 1, 8, 27, 64, 125, 216, 343] 42"
    assert set(lines[1:-1]) == {"imported as __mp_main__"}
    assert len(lines) - 2 >= imports if method == "spawn" else len(lines) - 2 == imports


def test_spawn_workers_build_their_own_module_state(tmp_path) -> None:
    # Threads started and random numbers drawn while the script is imported are each
    # worker's own, as with multiprocessing's spawn (a fork of one import would share
    # the draws and lose the threads).
    ours, theirs = side_by_side(tmp_path, HEAD + textwrap.dedent("""
        import random, threading, time
        import numpy as np
        beats = []
        threading.Thread(target=lambda: [(beats.append(1), time.sleep(0.01)) for _ in iter(int, 1)],
                         daemon=True).start()
        def probe(_):
            n = len(beats)
            time.sleep(0.2)
            return threading.active_count(), len(beats) > n, float(np.random.rand()), random.random()
        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(3) as p:
                rows = p.map(probe, range(3), chunksize=1)
            print([r[:2] for r in rows], len({r[2] for r in rows}), len({r[3] for r in rows}))
    """))
    assert ours == theirs == "[(2, True), (2, True), (2, True)] 3 3"


SHARED = HEAD + textwrap.dedent("""
    from multiprocessing import shared_memory
    import helper
    if __name__ == "__main__":
        method, kind = sys.argv[2], sys.argv[3]
        ctx = mp.get_context(method)
        # multiprocessing's queue or pipe, or the library's own, handed to an initializer
        # from an importable module (so the setup names no __main__ at all).
        if kind == "queue":
            obj = reader = ctx.Queue()
        else:
            reader, obj = ctx.Pipe()
        seg = shared_memory.SharedMemory(create=True, size=16)
        with ctx.Pool(2, initializer=helper.keep, initargs=(obj,)) as p:
            print(sorted(p.map(helper.use, [kind] * 2, chunksize=1)))
            got = sorted(reader.get(timeout=10) if kind == "queue" else reader.recv() for _ in range(2))
            print(got)
            print(p.starmap(helper.touch, [(seg.name, 0), (seg.name, 1)], chunksize=1))
        # The workers' exits leave the parent's segment alone (they share its resource
        # tracker, as spawned children do).
        again = shared_memory.SharedMemory(name=seg.name)
        print("segment", again.buf[0] + again.buf[1])
        again.close()
        seg.close()
        seg.unlink()
""")

HELPER = textwrap.dedent("""
    from multiprocessing import shared_memory
    HELD = None
    def keep(obj):
        global HELD
        HELD = obj
    def use(kind):
        (HELD.put if kind == "queue" else HELD.send)(kind)
        return "sent"
    def touch(name, i):
        # (a byte each: two workers adding to one byte at once may both read 0)
        s = shared_memory.SharedMemory(name=name)
        s.buf[i] = 1
        s.close()
        return "touched"
""")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["queue", "pipe"])
@pytest.mark.parametrize("lib", ["paralelo", "multiprocessing"])
def test_queues_pipes_and_shared_memory_reach_fresh_workers(tmp_path, method: str, kind: str, lib: str) -> None:
    (tmp_path / "helper.py").write_text(HELPER)
    script = tmp_path / "script.py"
    script.write_text(SHARED)
    # `lib` is whose queue or pipe the paralelo pool is given; the standard library's
    # own pool runs the same script for comparison.
    runs = []
    for pool in ("paralelo", "multiprocessing"):
        code = SHARED if pool == lib else SHARED.replace("ctx.Queue()", "OTHER.Queue()").replace("ctx.Pipe()",
                                                                                                  "OTHER.Pipe()")
        script.write_text(code.replace("import helper", f"import helper\nimport {lib} as _lib\n"
                                                        f"OTHER = _lib.get_context(sys.argv[2])"))
        out = run_group([sys.executable, str(script), pool, method, kind], 120, cwd=tmp_path)
        assert out.returncode == 0, (pool, out.stderr)
        runs.append(out.stdout.strip())
    assert runs[0] == runs[1] == f"['sent', 'sent']\n['{kind}', '{kind}']\n['touched', 'touched']\nsegment 2"


def test_multiprocessing_set_start_method_chooses_the_method(tmp_path) -> None:
    # As torch.multiprocessing.set_start_method("spawn") does: paralelo's pools follow.
    ours, theirs = side_by_side(tmp_path, HEAD + textwrap.dedent("""
        def name(_):
            return mp.current_process().name.rsplit("-", 1)[0]
        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            with mp.Pool(1) as p:
                print(p.apply(name, (0,)))
            with ProcessPoolExecutor(1) as ex:
                print(ex.submit(name, 0).result())
    """))
    assert ours == theirs == "SpawnPoolWorker\nSpawnProcess"


SCRIPT_FAILS = HEAD + """
def f(x):
    return x
{module_level}
if __name__ == "__main__":
    mp.set_start_method("{method}")
    try:
        with mp.Pool(2) as p:
            print(p.map(f, range(3)))
    except Exception as e:
        import traceback
        print(type(e).__name__)
        print("".join(traceback.format_exception(e)))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize(("module_level", "says"), [
    # No main guard: the import makes a pool too, as a spawned child's would.
    ("if __name__ != '__main__':\n    mp.get_context('spawn').Pool(2)",
     "current process has finished its bootstrapping phase"),
    # The same with the method set in the main block, which the import runs with.
    ("if __name__ != '__main__':\n    mp.Pool(2)", "current process has finished its bootstrapping phase"),
    ("if __name__ != '__main__':\n    1 / 0", "ZeroDivisionError: division by zero"),
    ("if __name__ != '__main__':\n    os._exit(3)", "exited with code 3"),
])
def test_a_script_that_cannot_be_imported_breaks_the_pool_with_its_traceback(tmp_path, method: str,
                                                                             module_level: str, says: str) -> None:
    # multiprocessing's spawn pool starts workers for ever; this one stops, saying why.
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FAILS.format(module_level=module_level, method=method))
    out = run_group([sys.executable, str(script), "paralelo"], 60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "BrokenProcessPool", out.stdout
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
                mp.get_context("forkserver").Pool(2)  # (it waits for the zygote's import)
            except KeyboardInterrupt:
                me = os.getpid()
                with open(f"/proc/{me}/task/{me}/children") as f:
                    kids = f.read().split()
                zygotes = []  # (multiprocessing's resource tracker, which it started, stays)
                for kid in kids:
                    with open(f"/proc/{kid}/cmdline", "rb") as f:
                        if b"paralelo._fresh" in f.read():
                            zygotes.append(kid)
                print("interrupted", time.monotonic() - t < 10, repr(zygotes))
    """))
    out = run_group([sys.executable, str(script)], 60, cwd=tmp_path)
    assert out.stdout.strip() == "interrupted True []", out.stderr


def test_bad_contexts_are_refused() -> None:
    import paralelo

    with pytest.raises(TypeError, match="context must be a multiprocessing or paralelo context"):
        paralelo.Pool(1, context="spawn")
    with pytest.raises(TypeError, match="context must be"):
        paralelo.ProcessPoolExecutor(1, mp_context=object())
