"""``paralelo.Process``: multiprocessing's Process API on paralelo's fork, side by side with
the standard library on the same scripts, plus what paralelo adds (pidfd sentinels, no
child outliving a killed parent)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import paralelo
from scripts import side_by_side

HEAD = """
import os, sys, time, logging
os.dup2(1, 2)  # the children's tracebacks are compared too
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s", stream=sys.stdout)
LIB = sys.argv[1]
if LIB == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
"""


def _same(outs: list[str]) -> None:
    # Pids, ids and counters differ between runs; everything else must not.
    norm = [re.sub(r"\d{3,}", "N", out) for out in outs]
    assert norm[0] == norm[1], "\n---\n".join(outs)


def test_the_process_api_matches_multiprocessing(tmp_path) -> None:
    _same(side_by_side(tmp_path, HEAD + """
SETTING = "import time"
def work(n):
    logging.info("working %s", n)
    print("child", n, mp.current_process().name, mp.parent_process().name, SETTING, flush=True)
def boom():
    raise ValueError("bad")
def exits(code):
    sys.exit(code)
class Sub(mp.Process):
    def __init__(self, word):
        super().__init__(name="custom")
        self.word = word
    def run(self):
        print("subclass run", self.name, self.word, flush=True)
if __name__ == "__main__":
    SETTING = "set at run time"  # a forked child sees it
    for i in range(3):
        p = mp.Process(target=work, args=(i,))
        p.start(); p.join()
        print(p.exitcode, p.is_alive(), p.name)
    b = mp.Process(target=boom, name="Boomer"); b.start(); b.join(); print("boom", b.exitcode)
    for code in (0, 3, None, "message"):
        e = mp.Process(target=exits, args=(code,)); e.start(); e.join(); print("exit", code, e.exitcode)
    s = Sub("word"); s.start(); s.join(); print("sub", s.exitcode, s.is_alive())
    t = mp.Process(target=time.sleep, args=(10,), daemon=True); t.start()
    print("alive", t.is_alive(), t.daemon, len(mp.active_children()))
    t.terminate(); t.join(5); print("terminated", t.exitcode, mp.active_children())
    k = mp.Process(target=time.sleep, args=(10,)); k.start(); k.kill(); k.join(); print("killed", k.exitcode)
    k.close()
    try:
        k.is_alive()
    except ValueError as e:
        print("closed:", e)
    j = mp.Process(target=time.sleep, args=(0.5,)); j.start(); j.join(0.05)
    print("join timed out", j.exitcode, j.is_alive()); j.join(); print("joined", j.exitcode)
    print(mp.current_process().name, mp.parent_process(), mp.cpu_count() == os.cpu_count())
    from multiprocessing.connection import wait
    w = mp.Process(target=time.sleep, args=(0.1,)); w.start()
    print("sentinel", wait([w.sentinel], 10) == [w.sentinel]); w.join()
    lam = mp.Process(target=lambda: print("lambda ran", flush=True)); lam.start(); lam.join(); print("lambda", lam.exitcode)
    try:
        lam.start()
    except AssertionError as e:
        print("restart:", e)
    for method in ("fork", "spawn", "forkserver"):
        ctx = mp.get_context(method)
        c = ctx.Process(target=work, args=(method,)); c.start(); c.join(); print(method, c.exitcode, type(c).__name__)
    print("main ends")
    mp.Process(target=print, args=("a non-daemon child finishes after the end",)).start()
"""))


def test_exit_waits_for_children_and_terminates_daemons(tmp_path) -> None:
    _same(side_by_side(tmp_path, HEAD + """
def late(word):
    time.sleep(0.3)
    print(word, flush=True)
if __name__ == "__main__":
    mp.Process(target=late, args=("joined at exit",)).start()
    mp.Process(target=late, args=("never printed: a daemon is terminated at exit",), daemon=True).start()
    print("main ends")
"""))


def _gone(pid: int, within: float = 10) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":
                    return True  # (a zombie of init's: exited)
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_child_never_outlives_a_killed_parent(tmp_path) -> None:
    script = tmp_path / "killed.py"
    script.write_text("""
import os, signal, sys, time, threading
import paralelo
def nap():
    time.sleep(60)
if __name__ == "__main__":
    p = paralelo.Process(target=nap); p.start()
    print(p.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL
    assert _gone(int(out.stdout.split()[0]))


def test_a_process_started_from_a_thread_outlives_that_thread(tmp_path) -> None:
    # The kernel would kill a child tied to its forking thread when that thread ends.
    got = {}

    def start() -> None:
        p = paralelo.Process(target=time.sleep, args=(0.5,))
        p.start()
        got["p"] = p

    import threading

    t = threading.Thread(target=start)
    t.start()
    t.join()
    p = got["p"]
    time.sleep(0.1)
    assert p.is_alive()
    p.join(30)
    assert p.exitcode == 0


def test_a_joined_process_is_reaped_and_its_pidfd_closed_on_close() -> None:
    p = paralelo.Process(target=os._exit, args=(7,))
    p.start()
    sentinel = p.sentinel
    assert os.readlink(f"/proc/self/fd/{sentinel}") == "anon_inode:[pidfd]"
    p.join(30)
    assert p.exitcode == 7
    assert not os.path.exists(f"/proc/{p.pid}")  # reaped: no zombie
    p.close()
    assert not os.path.exists(f"/proc/self/fd/{sentinel}")


def test_signals_reach_only_the_process_not_a_reused_pid() -> None:
    p = paralelo.Process(target=time.sleep, args=(30,))
    p.start()
    p.terminate()
    p.join(30)
    assert p.exitcode == -signal.SIGTERM
    p.terminate()  # ended and reaped: nothing to signal, no error
    p.kill()


def test_contexts_name_their_process_classes() -> None:
    from paralelo.process import ForkProcess, ForkServerProcess, SpawnProcess

    assert paralelo.get_context("fork").Process is ForkProcess
    assert paralelo.get_context("spawn").Process is SpawnProcess
    assert paralelo.get_context("forkserver").Process is ForkServerProcess
    assert paralelo.get_context().Process is paralelo.Process
    assert paralelo.get_context().current_process() is paralelo.current_process()
    assert paralelo.get_context().active_children() == []
    with pytest.raises(ValueError, match="cannot find context"):
        paralelo.get_context("threads")


def test_ctrl_c_as_start_ends_leaves_no_child(monkeypatch) -> None:
    # Ctrl-C pending while paralelo holds it off; it lands as start() restores the mask.
    me, real, made = os.getpid(), os.pidfd_open, []

    def pidfd_open(pid, *args):
        fd = real(pid, *args)
        if os.getpid() == me and not made:
            made.append(pid)
            signal.raise_signal(signal.SIGINT)
        return fd

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    p = paralelo.Process(target=time.sleep, args=(60,))
    with pytest.raises(KeyboardInterrupt):
        p.start()
    monkeypatch.undo()
    assert made and p._popen is None and paralelo.active_children() == []
    assert not os.path.exists(f"/proc/{made[0]}")  # killed and reaped
