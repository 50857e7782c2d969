"""What a pool leaves in the processes around it, side by side with multiprocessing: no
zombies (even for a subreaper, as PID 1 in a container is), every line a worker printed
and nothing printed twice, and a forked child that ends its copy of a pool at once. Each
case is a `__main__` script run in a fresh interpreter, stdout a pipe."""

from __future__ import annotations

import os
import textwrap

import pytest
from scripts import side_by_side

POOLS = ("paralelo", "multiprocessing")


#: In every script: a process's children, and which of them are zombies.
HELPERS = textwrap.dedent(
    """
    import os, time

    def children(root="self"):
        kids = set()
        for t in os.listdir(f"/proc/{root}/task"):
            with open(f"/proc/{root}/task/{t}/children") as f:
                kids |= {int(x) for x in f.read().split()}
        return kids

    def zombies(root="self"):
        found = []
        for kid in children(root):
            try:
                with open(f"/proc/{kid}/stat") as s:
                    if s.read().rsplit(")", 1)[1].split()[0] == "Z":
                        found.append(kid)
            except FileNotFoundError:
                pass
        return found

    def settle(*roots):
        end = time.monotonic() + 10
        while any(zombies(r) for r in roots or ["self"]) and time.monotonic() < end:
            time.sleep(0.01)
        return sum(len(zombies(r)) for r in roots or ["self"])
    """
)


def run(body: str, lib: str, tmp_path) -> str:
    """`body` as a script run with `lib` (`scripts.side_by_side`), stdout a pipe and block
    buffered, as when a program's output is captured."""
    code = "import sys\nlib = __import__(sys.argv[1])\n" + HELPERS + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return side_by_side(tmp_path, code, (lib,), timeout=120, env=env)[0] + "\n"


@pytest.mark.parametrize("lib", POOLS)
def test_a_subreaper_is_left_no_zombies(lib: str, tmp_path) -> None:
    # PID 1 in a container, or a process that made itself a subreaper, adopts orphans: a
    # pool's processes must all be reaped before they could become its zombies.
    out = run(
        """
        import ctypes
        PR_SET_CHILD_SUBREAPER = 36
        assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

        def double(x):
            return 2 * x

        if __name__ == "__main__":
            for _ in range(3):
                with lib.Pool(3) as p:
                    assert p.map(double, range(50)) == [2 * x for x in range(50)]
                p.join()
                p = lib.Pool(2, maxtasksperchild=1)
                p.map(double, range(6), chunksize=1)
                p.close()
                p.join()
            print(settle())
        """,
        lib,
        tmp_path,
    )
    assert out.split() == ["0"]


def test_workers_left_after_maxtasks_are_reaped_while_the_pool_idles(tmp_path) -> None:
    out = run(
        """
        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            with lib.Pool(2, maxtasksperchild=1) as p:
                for i in range(10):
                    p.apply(pid, (i,))
                print(settle(os.getpid(), p._engine.zygote.pid))
        """,
        "paralelo",
        tmp_path,
    )
    assert out.split() == ["0"]


@pytest.mark.parametrize("ending", ["with", "terminate", "close"])
def test_every_line_a_worker_printed_is_written(ending: str, tmp_path) -> None:
    # multiprocessing's workers lose buffered lines to terminate() at random; paralelo's
    # flush before they wait for more, so ending a pool loses none.
    out = run(
        f"""
        def show(x):
            print("worker-line", x)
            return x

        if __name__ == "__main__":
            p = lib.Pool(2)
            p.map(show, range(20), chunksize=1)
            ending = {ending!r}
            if ending == "with":
                with p:
                    pass
            elif ending == "terminate":
                p.terminate()
                p.join()
            else:
                p.close()
                p.join()
        """,
        "paralelo",
        tmp_path,
    )
    assert sorted(out.split("\n")[:-1]) == sorted(f"worker-line {i}" for i in range(20))


@pytest.mark.parametrize("lib", POOLS)
@pytest.mark.parametrize("executor", [False, True])
def test_what_the_parent_printed_before_is_printed_once(lib: str, executor: bool, tmp_path) -> None:
    out = run(
        f"""
        import concurrent.futures

        def show(x):
            return x

        if __name__ == "__main__":
            print("HELLO-before-the-pool")
            if {executor!r}:
                make = getattr(lib, "ProcessPoolExecutor", None) or concurrent.futures.ProcessPoolExecutor
                with make(2) as ex:
                    list(ex.map(show, range(4)))
            else:
                p = lib.Pool(2, maxtasksperchild=2)
                p.map(show, range(8), chunksize=1)
                p.close()
                p.join()
        """,
        lib,
        tmp_path,
    )
    assert out.count("HELLO-before-the-pool") == 1, out


@pytest.mark.parametrize("lib", POOLS)
@pytest.mark.parametrize("ending", ["terminate", "with", "close"])
def test_a_forked_child_ends_its_copy_of_a_pool_at_once(lib: str, ending: str, tmp_path) -> None:
    out = run(
        f"""
        def square(x):
            return x * x

        if __name__ == "__main__":
            p = lib.Pool(2)
            assert p.map(square, range(4)) == [0, 1, 4, 9]
            pid = os.fork()
            if pid == 0:
                import faulthandler
                faulthandler.dump_traceback_later(20, exit=True)
                ending = {ending!r}
                if ending == "with":
                    p.__exit__(None, None, None)
                elif ending == "terminate":
                    p.terminate()
                else:
                    p.close()
                os._exit(0)
            t = time.monotonic()
            _, status = os.waitpid(pid, 0)
            took = time.monotonic() - t
            assert p.map(square, range(3)) == [0, 1, 4]  # the parent's pool is untouched
            p.close()
            p.join()
            print(os.waitstatus_to_exitcode(status), took < 10)
        """,
        lib,
        tmp_path,
    )
    assert out.split() == ["0", "True"]


def test_the_owners_own_first_worker_never_lingers_as_a_zombie(tmp_path) -> None:
    """The first worker (forked by the owner itself, on the main thread) is reaped when it
    leaves after maxtasks, when it is told to exit and when it is killed; a pool made on
    another thread has its every worker from its zygote."""
    out = run(
        """
        import threading

        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            with lib.Pool(2, maxtasksperchild=1) as p:
                own = set(p._engine.own_children)
                assert len(own) == 1 and own <= children()
                seen = set(p.map(pid, range(12), chunksize=1))  # every worker leaves after one
                assert len(seen) == 12, seen
                assert settle() == 0, "a worker that left is a zombie"
                assert not own & children()
            for end in ("close", "terminate"):
                p = lib.Pool(2)
                p.map(pid, range(4))
                getattr(p, end)()
                p.join()  # ...returns once every process of the pool is reaped
                assert children() == set(), (end, children())
            made = []
            t = threading.Thread(target=lambda: made.append(lib.Pool(1)))
            t.start(); t.join()
            with made[0] as p:
                assert not p._engine.own_children
                assert p.apply(abs, (-3,)) == 3
            print("ok")
        """,
        "paralelo",
        tmp_path,
    )
    assert out.split() == ["ok"]


def test_a_program_whose_pools_all_ended_holds_no_fd_of_theirs(tmp_path) -> None:
    out = run(
        """
        import gc

        def fds():
            # (The program's arena stays: one memfd for the program's life, not a pool's.)
            return sorted(link for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")
                          and "paralelo-arena" not in (link := os.readlink(f"/proc/self/fd/{fd}")))

        if __name__ == "__main__":
            before = fds()
            for _ in range(2):
                with lib.Pool(2) as p:
                    p.map(abs, range(10))
                ex = lib.ProcessPoolExecutor(2)
                ex.submit(abs, -1).result()
                ex.shutdown()
            del p, ex
            gc.collect()
            end = time.monotonic() + 10
            while fds() != before and time.monotonic() < end:
                time.sleep(0.02)  # the death watch's thread lets go as it ends
            print(fds() == before or (before, fds()))
        """,
        "paralelo",
        tmp_path,
    )
    assert out.split() == ["True"], out


def test_ctrl_c_while_a_pool_is_made_leaves_no_process(tmp_path) -> None:
    # The Ctrl-C lands while the first worker is being forked (held off until the pool
    # holds the child): Pool() raises it, and kills and reaps what it had started.
    out = run(
        """
        import signal

        armed = [True]

        def once():
            if armed[0]:
                armed[0] = False
                os.kill(os.getpid(), signal.SIGINT)

        if __name__ == "__main__":
            os.register_at_fork(after_in_parent=once)
            try:
                lib.Pool(2)
            except KeyboardInterrupt:
                print("interrupted")
            end = time.monotonic() + 10
            while children() and time.monotonic() < end:
                time.sleep(0.02)
            print(sorted(children()))
        """,
        "paralelo",
        tmp_path,
    )
    assert out.split("\n")[:2] == ["interrupted", "[]"], out
