"""Workers see the parent as multiprocessing's fork shows it, as of their pool's creation:
globals and what the initializer set, objects that can only be inherited, cwd, environment,
``sys.path``, logging, seeds, and multiprocessing's own idea of who they are. Each case runs
a script (its functions in ``__main__``, threads already running as numpy starts them)
with paralelo and with the standard library, and compares what they print."""

from __future__ import annotations

import textwrap

from scripts import side_by_side

STATE = textwrap.dedent(
    """
    import logging, multiprocessing, os, random, re, sqlite3, sys, tempfile, threading
    import numpy as np  # starts OpenBLAS threads, as in most scientific scripts
    if sys.argv[1] == "paralelo":
        from paralelo import Pool, ProcessPoolExecutor
    else:
        from multiprocessing import Pool
        from concurrent.futures import ProcessPoolExecutor

    threading.Thread(target=threading.Event().wait, daemon=True).start()  # a live thread

    _conn = None
    calls = 0
    def init(name):
        global _conn
        _conn = f"connection-{name}"
    def work(_):
        global calls
        calls += 1
        return _conn, calls > 0
    def counted(_):
        global calls
        calls += 1
        return os.getpid(), calls
    def kept(first, second):
        seen = {}
        for pid, n in first + second:  # a worker's count only grows, across maps too
            if n <= seen.get(pid, 0):
                return False
            seen[pid] = n
        return True

    LOCK = multiprocessing.Lock()
    TLOCK = threading.Lock()
    TOTAL = multiprocessing.Value("i", 0)
    FILE = tempfile.TemporaryFile("w+")
    FILE.write("inherited file")
    FILE.flush()
    def read(f):  # the workers share the file's offset: read at a position, not from it
        return os.pread(f.fileno(), 100, 0).decode()
    DB = sqlite3.connect(":memory:")
    DB.execute("create table t (x)")
    DB.execute("insert into t values (42)")
    def bump(_):
        with LOCK, TLOCK:
            TOTAL.value += 1
        return read(FILE), DB.execute("select x from t").fetchone()[0]

    _given = None
    def keep(*objs):
        global _given
        _given = objs
    def use_given(_):
        lock, rlock, fh = _given
        with lock, rlock:
            return read(fh)

    CONFIG = {"k": 1}
    def where(_):
        return (os.getcwd(), os.environ.get("PARALELO_TEST_VAR"), sys.path[0], CONFIG["k"],
                logging.getLogger().level)
    def draw(_):
        return float(np.random.random()), random.random()
    def name(_):
        p = multiprocessing.current_process()
        return p.name, p._identity, p.daemon, multiprocessing.parent_process().pid == PARENT
    def log(x):
        logging.getLogger("worker").info("item %d", x)
        return x

    PARENT = os.getpid()

    def names_ok(got, prefix):
        ok = all(re.fullmatch(prefix + r"-(\\d+)", n) and ident == (int(n.rsplit("-", 1)[1]),) and parent
                 for n, ident, _, parent in got)
        return ok, sorted({d for _, _, d, _ in got})

    if __name__ == "__main__":
        logging.basicConfig(filename="log.txt", filemode="w", level=logging.INFO, format="%(processName)s %(message)s")
        with Pool(2, initializer=init, initargs=("db",)) as p:
            print("initializer", p.map(work, range(4), chunksize=1))
            print("globals kept across maps", kept(p.map(counted, range(4)), p.map(counted, range(4))))
        with Pool(2, initializer=init, initargs=("db",), maxtasksperchild=1) as p:
            print("respawned", p.map(work, range(6), chunksize=1))
        with Pool(2) as p:
            print("inherited", p.map(bump, range(5), chunksize=1), TOTAL.value)
        with Pool(2, initializer=keep, initargs=(multiprocessing.Lock(), threading.RLock(), FILE)) as p:
            print("initargs", p.map(use_given, range(3), chunksize=1))
        with ProcessPoolExecutor(2, initializer=keep, initargs=(multiprocessing.RLock(), TLOCK, FILE)) as ex:
            print("executor initargs", list(ex.map(use_given, range(3))))
        np.random.seed(7)
        random.seed(7)
        with Pool(2) as p:
            (np_draw, py_draw), = p.map(draw, [0])
        print("seeds", np_draw == np.random.random(), py_draw == random.random())
        with Pool(2) as p:
            first = p.apply(where, (0,))
            os.chdir(tempfile.gettempdir())
            os.environ["PARALELO_TEST_VAR"] = "later"
            sys.path.insert(0, "/later")
            CONFIG["k"] = 2
            same_pool = p.apply(where, (0,))
            with Pool(2) as later:
                print("state", first == same_pool, later.apply(where, (0,)))
        print("first state", first[1:])
        with Pool(2) as p:
            print("pool names", names_ok(p.map(name, range(6), chunksize=1), "ForkPoolWorker"))
            p.map(log, range(6), chunksize=1)
        with ProcessPoolExecutor(2) as ex:
            print("executor names", names_ok(list(ex.map(name, range(6))), "ForkProcess"))
        logging.shutdown()
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "log.txt")) as f:
            records = f.read().split("\\n")
        print("log", sum(bool(re.fullmatch(r"ForkPoolWorker-\\d+ item \\d", r)) for r in records))
    """
)


def test_workers_see_the_parent_state_as_with_multiprocessing_fork(tmp_path) -> None:
    ours, theirs = side_by_side(tmp_path, STATE, timeout=120)
    assert ours == theirs
    lines = dict(line.split(" ", 1) for line in ours.splitlines())
    assert lines["initializer"] == "[('connection-db', True), ('connection-db', True), " \
        "('connection-db', True), ('connection-db', True)]"
    assert lines["inherited"].endswith("5")
    assert lines["log"] == "6"


PROCESS_MAP = textwrap.dedent(
    """
    import concurrent.futures, io, sys, time
    from unittest import mock
    import tqdm.contrib.concurrent

    def slow_square(x):
        time.sleep(0.01)
        return x * x

    if __name__ == "__main__":
        # process_map imports concurrent.futures.ProcessPoolExecutor when called: run it on ours.
        executor = concurrent.futures.ProcessPoolExecutor
        if sys.argv[1] == "paralelo":
            import paralelo
            executor = paralelo.ProcessPoolExecutor
        bar = io.StringIO()
        with mock.patch.object(concurrent.futures, "ProcessPoolExecutor", executor):
            out = tqdm.contrib.concurrent.process_map(slow_square, range(20), max_workers=2, file=bar,
                                                      mininterval=0, miniters=1)
        print(out == [x * x for x in range(20)])
        frames = bar.getvalue().split("\\r")
        print("20/20" in frames[-1], sum("/20" in f for f in frames) > 10)  # the bar moved
    """
)


def test_tqdm_process_map_runs_on_our_executor_and_its_bar_moves(tmp_path) -> None:
    ours, theirs = side_by_side(tmp_path, PROCESS_MAP, ("paralelo", "stdlib"))
    assert ours == theirs == "True\nTrue True"


LATE_GLOBALS = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "paralelo":
        from paralelo import ProcessPoolExecutor
    else:
        from concurrent.futures import ProcessPoolExecutor

    def scaled(x):
        return x * SCALE

    if __name__ == "__main__":
        with ProcessPoolExecutor(2) as ex:
            SCALE = 10  # set after the executor, before its first use
            print(list(ex.map(scaled, range(4))))
    """
)


def test_an_executor_starts_its_workers_at_first_use_as_concurrent_futures_does(tmp_path) -> None:
    ours, theirs = side_by_side(tmp_path, LATE_GLOBALS, ("paralelo", "stdlib"))
    assert ours == theirs == "[0, 10, 20, 30]"
