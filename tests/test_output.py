"""What workers log reaches the parent's own handlers, named and numbered as the worker;
what they print arrives whole lines at a time, even unbuffered; the terminal shows the
same lines as with multiprocessing."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
import time

import pytest

import paralelo

from scripts import run_group, side_by_side

T = 30


def log_and_return(x):
    log = logging.getLogger("paralelo-tests.worker")
    log.info("item %d", x)
    if x == 2:
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("failed on %s", x)
    log.debug("not shown: below the level")
    return os.getpid()


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def kept():
    keep = Keep()
    root = logging.getLogger()
    level = root.level
    root.addHandler(keep)
    root.setLevel(logging.INFO)
    try:
        yield keep
    finally:
        root.removeHandler(keep)
        root.setLevel(level)


@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_worker_records_reach_the_parents_handlers_with_the_workers_name_and_pid(kept, kind):
    if kind == "pool":
        with paralelo.Pool(2) as pool:
            pids = pool.map(log_and_return, range(4), chunksize=1)
    else:
        with paralelo.ProcessPoolExecutor(2) as ex:
            pids = list(ex.map(log_and_return, range(4)))
    records = [r for r in kept.records if r.name == "paralelo-tests.worker"]
    assert sorted(r.getMessage() for r in records) == ["failed on 2", "item 0", "item 1", "item 2", "item 3"]
    # Plain arguments stay arguments, as a forked handler would see them.
    assert sorted(r.args for r in records if r.msg == "item %d") == [(0,), (1,), (2,), (3,)]
    for r in records:
        assert r.process in pids and r.process != os.getpid()
        assert r.processName.startswith("ForkPoolWorker-" if kind == "pool" else "ForkProcess-")
    failed = next(r for r in records if r.levelno == logging.ERROR)
    assert "ZeroDivisionError" in failed.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(failed)


def test_caplog_sees_what_workers_log(caplog):
    caplog.set_level(logging.INFO)
    with paralelo.Pool(2) as pool:
        pool.map(log_and_return, range(3))
    assert sorted(r.getMessage() for r in caplog.records if r.name == "paralelo-tests.worker") == [
        "failed on 2", "item 0", "item 1", "item 2"]


def _add_file_handler(path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(processName)s %(message)s"))
    logging.getLogger().addHandler(handler)


def test_a_handler_the_initializer_adds_stays_the_workers(kept, tmp_path):
    path = tmp_path / "worker.log"
    with paralelo.Pool(1, initializer=_add_file_handler, initargs=(str(path),)) as pool:
        pool.map(log_and_return, [0, 1])
    lines = path.read_text().splitlines()  # written by the worker's own handler
    assert [line.split(" ", 1)[1] for line in lines] == ["item 0", "item 1"]
    assert all(line.startswith("ForkPoolWorker-") for line in lines)
    assert [r.getMessage() for r in kept.records if r.name == "paralelo-tests.worker"] == ["item 0", "item 1"]


#: The head of a script run with paralelo and with multiprocessing's fork (see
#: `side_by_side`): `mp` is whichever its first argument names; numpy is imported first.
_SCRIPT_HEAD = textwrap.dedent("""
    import logging, sys
    import numpy
    if sys.argv[1] == "paralelo":
        import paralelo as mp
    else:
        import multiprocessing
        mp = multiprocessing.get_context("fork")
""")


def test_the_terminal_shows_what_multiprocessing_shows(tmp_path):
    """As users write it: logging configured, functions in __main__, numpy imported."""
    code = _SCRIPT_HEAD + textwrap.dedent("""
        logging.basicConfig(level=logging.INFO, format="%(processName)s %(levelname)s %(message)s",
                            stream=sys.stdout)

        def work(x):
            logging.getLogger("work").info("item %d", x)
            return x

        if __name__ == "__main__":
            with mp.Pool(2) as pool:
                pool.map(work, range(6), chunksize=1)
    """)
    ours, theirs = side_by_side(tmp_path, code)
    strip = lambda out: sorted(" ".join(line.split()[1:]) for line in out.splitlines())  # noqa: E731
    assert strip(ours) == strip(theirs) == sorted(f"INFO item {i}" for i in range(6))
    assert all(line.startswith("ForkPoolWorker-") for line in ours.splitlines())


def test_prints_arrive_whole_lines_even_unbuffered(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys, paralelo

        def shout(x):
            for i in range(400):
                print(str(x) * 30, str(x) * 30, str(x) * 30, str(i))  # four writes, unbuffered
            return x

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool:
                pool.map(shout, range(1, 5), chunksize=1)
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1600
    for line in lines:
        words = line.split()
        assert len(words) == 4 and words[0] == words[1] == words[2] and len(set(words[0])) == 1, line


def test_a_process_prints_whole_lines_too(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import paralelo

        def shout(x):
            for i in range(400):
                print(str(x) * 30, str(x) * 30, str(x) * 30, str(i))

        if __name__ == "__main__":
            procs = [paralelo.Process(target=shout, args=(x,)) for x in (1, 2, 3)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1200
    assert all(len(set(line.split()[:3])) == 1 and len(line.split()) == 4 for line in lines)


def test_a_handler_that_raises_breaks_nothing(tmp_path, capfd):
    class Boom(logging.Handler):
        def emit(self, record):
            raise RuntimeError("handler blew up")

    boom = Boom()
    root = logging.getLogger()
    root.addHandler(boom)
    try:
        with paralelo.Pool(2) as pool:
            assert len(pool.map(log_and_return, range(4))) == 4
            assert len(pool.map(log_and_return, range(4))) == 4  # still running
    finally:
        root.removeHandler(boom)
    assert "handler blew up" in capfd.readouterr().err  # (reported as a failing handler is)


def _picky_record(x):
    logging.getLogger("paralelo-tests.extra").warning("with extras", extra={
        "user": {"id": x}, "lock": threading.Lock()})
    try:
        {}[x]
    except KeyError:
        logging.getLogger("paralelo-tests.extra").exception("lookup")
    return x


def test_extras_and_exceptions_arrive_as_handlers_read_them(kept):
    with paralelo.Pool(1) as pool:
        pool.map(_picky_record, [7])
    extra, failed = [r for r in kept.records if r.name == "paralelo-tests.extra"]
    assert extra.user == {"id": 7}  # a value that pickles arrives as it was
    assert isinstance(extra.lock, str) and "lock" in extra.lock  # one that does not: its repr
    assert failed.exc_info[0] is KeyError and failed.exc_info[1].args == (7,)
    assert "KeyError: 7" in failed.exc_text


def test_records_still_reach_a_handler_the_parent_replaced(tmp_path):
    """As with multiprocessing's fork: workers keep the handlers of the pool's making."""
    code = _SCRIPT_HEAD + textwrap.dedent("""
        logging.basicConfig(level=logging.INFO, format="OLD %(message)s", stream=sys.stdout)

        def task(x):
            logging.warning("worker says %d", x)
            return x

        if __name__ == "__main__":
            with mp.Pool(1) as pool:
                pool.map(task, [1])
                logging.basicConfig(format="NEW %(message)s", stream=sys.stdout, force=True)
                import gc; gc.collect()
                pool.map(task, [2])
    """)
    ours, theirs = side_by_side(tmp_path, code)
    assert ours.splitlines() == theirs.splitlines() == ["OLD worker says 1", "OLD worker says 2"]


def _talk_after_returning(x):
    def talk():
        time.sleep(0.05)
        for k in range(200):
            logging.getLogger("paralelo-tests.late").info("late %d %d", x, k)

    threading.Thread(target=talk).start()
    return x


def test_a_worker_that_leaves_while_its_threads_log_corrupts_nothing(kept):
    """After maxtasksperchild, a worker's slot is its successor's: what the leaving
    worker's threads log then goes to its own handlers, never into that slot."""
    with paralelo.Pool(1, maxtasksperchild=1) as pool:
        for i in range(5):
            assert pool.apply_async(_talk_after_returning, (i,)).get(T) == i
            assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))  # the successor is sound


def _fork_and_log(x):
    import multiprocessing

    def child():
        for i in range(500):
            logging.getLogger("paralelo-tests.grandchild").info("grandchild %d", i)

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    for i in range(500):
        logging.getLogger("paralelo-tests.worker").info("item %d", i)
    p.join()
    return p.exitcode


def test_a_process_a_task_forks_logs_through_its_own_handlers(kept):
    with paralelo.ProcessPoolExecutor(1) as ex:
        assert [ex.submit(_fork_and_log, i).result(T) for i in range(2)] == [0, 0]
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    names = [r.name for r in kept.records]
    assert names.count("paralelo-tests.worker") == 1000  # the task's own records, all of them
    assert names.count("paralelo-tests.grandchild") == 0  # (the grandchild's went to its copies)


_PARENT = os.getpid()


def _only_in_workers():
    if os.getpid() == _PARENT:
        raise RuntimeError("cannot load here")
    return "ok"


class _LoadsOnlyInWorkers:
    def __reduce__(self):
        return (_only_in_workers, ())


def _log_odd_extra(x):
    logging.getLogger("paralelo-tests.odd").info("odd", extra={"thing": _LoadsOnlyInWorkers()})
    return x


def test_a_record_that_does_not_load_in_the_parent_says_so(kept):
    with paralelo.Pool(1) as pool:
        assert pool.map(_log_odd_extra, range(3)) == [0, 1, 2]
        assert pool.map(abs, [-1]) == [1]  # the pool goes on
    told = [r.getMessage() for r in kept.records if r.name == "paralelo"]
    assert len(told) == 3 and all("could not be unpickled here" in m for m in told)


def test_the_parent_handlers_level_now_decides(kept):
    with paralelo.Pool(1) as pool:
        kept.setLevel(logging.WARNING)  # after the pool was made
        pool.map(log_and_return, range(3))
    assert [r.getMessage() for r in kept.records if r.name == "paralelo-tests.worker"] == ["failed on 2"]


def _child_logs(i):
    for k in range(100):
        logging.getLogger("paralelo-tests.child").info("child %d record %d", i, k)


def _child_dies():
    logging.getLogger("paralelo-tests.child").info("about to die")
    os.kill(os.getpid(), 9)


def test_a_process_child_logs_to_the_parents_handlers_before_its_join_returns(kept):
    procs = [paralelo.Process(target=_child_logs, args=(i,)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(T)
        assert p.exitcode == 0
    records = [r for r in kept.records if r.name == "paralelo-tests.child"]
    assert len(records) == 300  # all there as join() returned
    assert {r.processName for r in records} == {p.name for p in procs}
    assert {r.process for r in records} == {p.pid for p in procs}
    killed = paralelo.Process(target=_child_dies)
    killed.start()
    killed.join(T)  # (a killed child sends no end: its join does not wait for one)
    assert killed.exitcode == -9


def test_each_streamed_result_comes_after_the_records_its_task_logged(tmp_path):
    """As users write it (a script, its handler in __main__): imap, imap_unordered and an
    executor's map yield no result before the parent's handler had its task's record."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import logging
        import numpy
        import paralelo

        class Seen(logging.Handler):
            def __init__(self):
                super().__init__()
                self.items = set()

            def emit(self, record):
                self.items.add(record.args[0])  # (plain arguments arrive as they were)

        seen = Seen()
        logging.basicConfig(level=logging.INFO, handlers=[seen])

        def work(x):
            logging.info("item %d", x)
            return x

        if __name__ == "__main__":
            early = 0
            with paralelo.Pool(2) as pool:
                for results in (pool.imap(work, range(3000)), pool.imap_unordered(work, range(3000, 6000))):
                    early += sum(r not in seen.items for r in results)
            with paralelo.ProcessPoolExecutor(2) as ex:
                early += sum(r not in seen.items for r in ex.map(work, range(6000, 9000), chunksize=50))
            print(early)
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]
