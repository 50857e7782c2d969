"""``paralelo run -n N script.py [args]``: N ranks of a script, as ``mpiexec`` starts them.

The launcher makes every rank's inbox (`_mailbox`) and the job's abort event, then forks
the ranks: each runs the script as ``__main__`` with ``paralelo.comm.COMM_WORLD`` set to
its place (rank, size; ``PARALELO_RANK`` and ``PARALELO_SIZE`` in its environment), in a
process group of its own (the launcher alone hears the terminal's Ctrl-C and passes it
on), tied to the launcher's life (PR_SET_PDEATHSIG), its output line-buffered.

The launcher waits on the ranks' pidfds. A rank that fails (a non-zero exit, a signal)
ends the job as mpiexec does: the others are told (each inbox gets an ABORT naming the
rank and how it died: a rank waiting in a call raises ``MPI.Exception`` saying so), given
`GRACE` seconds to end, then killed; the launcher reports the first failure and exits
with its code (128 + the signal for a signal). Ctrl-C is passed to every rank, which then
have `GRACE` seconds; the launcher exits with 130. With ``--tag-output`` each rank's
stdout and stderr come through pipes, each line prefixed with ``[rank]``.
"""

from __future__ import annotations

import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

__all__ = ["run"]

#: Seconds the other ranks have to end once the job is over, before they are killed.
GRACE = 2.0
#: Bytes of each rank's inbox ring (a larger message streams through it; arrays go through
#: the arena).
INBOX_BYTES = 1 << 20


def run(script: str, args: list[str], ranks: int, tag_output: bool = False, mpi: bool = False) -> int:
    """Runs `ranks` ranks of `script` (a file; 1 or more ranks: the command checked)
    with `args`; the job's exit status."""
    if mpi:
        return _mpiexec(script, args, ranks, tag_output)
    from . import _arena
    from ._native import PostOffice
    from .synchronize import Event

    _arena.arena()  # (made before the fork: every rank maps it)
    office = PostOffice(ranks, INBOX_BYTES)
    aborted = Event()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pipes: dict[int, tuple[int, int]] = {}  # read end -> (rank, 1 or 2)
    pids: dict[int, int] = {}  # pid -> rank
    # Standard input goes to rank 0 only, as mpiexec does it. A terminal is read here and
    # passed on through a pipe: rank 0 is in a process group of its own, which the
    # terminal would stop (SIGTTIN) as it read.
    terminal = _is_terminal(0)
    feed = os.pipe() if terminal else None
    for rank in range(ranks):
        ends = [os.pipe() for _ in range(2)] if tag_output else []
        pid = os.fork()
        if pid == 0:
            try:
                for fd, (r, w) in zip((1, 2), ends):
                    os.dup2(w, fd)
                    os.close(r)
                    os.close(w)
                for fd in pipes:
                    os.close(fd)
                _stdin(rank, feed)
                _rank(script, args, rank, office, aborted)
            finally:
                os._exit(70)  # (only if the rank's own exit failed)
        pids[pid] = rank
        for fd, (r, w) in zip((1, 2), ends):
            os.close(w)
            pipes[r] = (rank, fd)
    if feed is not None:
        os.close(feed[0])
        os.set_blocking(feed[1], False)
    return _watch(pids, pipes, office, aborted, feed[1] if feed is not None else None)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _stdin(rank: int, feed: tuple[int, int] | None) -> None:
    """In a forked rank: rank 0 reads the job's standard input (through `feed` when the
    launcher passes a terminal on), the others an empty one."""
    if rank == 0 and feed is not None:
        os.dup2(feed[0], 0)
    if rank != 0:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if feed is not None:
        os.close(feed[0])
        os.close(feed[1])


def _rank(script: str, args: list[str], rank: int, office: Any, aborted: Any) -> None:
    """A forked rank: runs the script as ``__main__``, then exits with its status."""
    from . import _communicator, _native, _output
    from ._errors import MPIError

    os.setpgid(0, 0)
    _native.die_with_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["PARALELO_RANK"], os.environ["PARALELO_SIZE"] = str(rank), str(office.ranks)
    _output.whole_lines()
    _communicator.join(rank, office, aborted)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException as e:  # noqa: BLE001 - the rank's end: reported, as python would
        # A rank may hear of another's death (its death watch) just before the launcher,
        # reaping that rank, ends the job: an MPI error waits a moment for that verdict.
        if isinstance(e, MPIError) and aborted.wait(GRACE / 4):
            # (Ended because another rank failed: one line, so that the failing rank's own
            # traceback is the one that stands out.)
            print(f"paralelo run: rank {rank} stopped: {e}", file=sys.stderr)
        else:
            traceback.print_exception(type(e), e, _from_script(e.__traceback__, script))
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


def _from_script(tb: Any, script: str) -> Any:
    """`tb` from the script's own first frame on, as ``python script.py`` shows it (not
    the launcher's and runpy's); all of it if the script's frame is not in it."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename != script:
        first = first.tb_next
    return first or tb


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _watch(pids: dict[int, int], pipes: dict[int, tuple[int, int]], office: Any, aborted: Any,
           feed: int | None) -> int:
    """Waits for every rank, ends the job at the first failure or Ctrl-C, copies tagged
    output, passes the terminal's input on to rank 0 through `feed`: the job's exit
    status."""
    fds = {os.pidfd_open(pid): pid for pid in pids}
    interrupted = []
    # (A signal wakes the select through this pipe: select itself resumes after handlers.)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    failure: tuple[str, int] | None = None
    deadline = None
    partial: dict[int, bytes] = {}
    unfed = b""  # (read from the terminal, not yet taken by rank 0's pipe)
    try:
        while fds or pipes:
            if interrupted and deadline is None:
                failure = failure or ("interrupted (Ctrl-C): the ranks were stopped", 130)
                deadline = _end(pids, fds, office, aborted, "the job was interrupted (Ctrl-C)", signal.SIGINT)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and timeout == 0.0:
                for pid in fds.values():
                    _kill(pid, signal.SIGKILL)
                deadline = float("inf")
            reading = [*fds, *pipes, wake_r]
            if feed is not None and not unfed and deadline is None:
                reading.append(0)
            try:
                ready, writable, _ = select.select(reading, [feed] if unfed and feed is not None else [], [],
                                                   None if timeout is None else min(timeout, 1.0))
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 512)
                ready.remove(wake_r)
            if writable or 0 in ready:
                feed, unfed = _pass_input(feed, unfed, 0 in ready)
                if 0 in ready:
                    ready.remove(0)
            for fd in ready:
                if fd in pipes:
                    _copy_lines(fd, pipes, partial)
                    continue
                pid = fds.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                rank = pids[pid]
                code = os.waitstatus_to_exitcode(status)
                if code != 0 and failure is None:
                    how = (f"exited with code {code}" if code > 0 else
                           f"was killed by signal {-code} ({signal.Signals(-code).name})")
                    failure = (f"rank {rank} (pid {pid}) {how}", code if code > 0 else 128 - code)
                    if fds:
                        deadline = _end(pids, fds, office, aborted, failure[0], None)
            if not fds and deadline is not None and deadline != float("inf"):
                deadline = None
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        if feed is not None:
            os.close(feed)
        for fd in list(fds):
            _kill(fds[fd], signal.SIGKILL)
            os.waitpid(fds[fd], 0)
            os.close(fd)
    if failure is None:
        return 0
    print(f"paralelo run: {failure[0]}; the job was ended", file=sys.stderr, flush=True)
    return failure[1]


def _end(pids: dict[int, int], fds: dict[int, int], office: Any, aborted: Any, why: str,
         sig: int | None) -> float:
    """Tells the ranks still running that the job is over (and signals them `sig`): when
    they will be killed."""
    for pid in fds.values():
        try:
            office.abort(pids[pid], why)
        except OSError:
            pass
    # (After the messages: a rank's wait that the event ends finds why in its inbox.)
    aborted.set()
    if sig is not None:
        for pid in fds.values():
            _kill(pid, sig)
    return time.monotonic() + GRACE


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _pass_input(feed: int | None, unfed: bytes, readable: bool) -> tuple[int | None, bytes]:
    """Reads the terminal if `readable` and writes what it can of it to rank 0's pipe
    `feed` (closed at the terminal's end of input, or once rank 0 closed its end): the
    pipe still open, and what is left to write."""
    assert feed is not None
    if readable:
        unfed = os.read(0, 1 << 16)
        if not unfed:
            os.close(feed)
            return None, b""
    try:
        unfed = unfed[os.write(feed, unfed):]
    except BlockingIOError:
        pass
    except BrokenPipeError:  # (rank 0 reads no more)
        os.close(feed)
        return None, b""
    return feed, unfed


def _copy_lines(fd: int, pipes: dict[int, tuple[int, int]], partial: dict[int, bytes]) -> None:
    """Copies what a rank wrote to `fd`, whole lines prefixed with its rank."""
    rank, stream = pipes[fd]
    data = os.read(fd, 1 << 16)
    out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
    if not data:
        del pipes[fd]
        os.close(fd)
        rest = partial.pop(fd, b"")
        if rest:
            out.write(b"[%d] %s\n" % (rank, rest))
            out.flush()
        return
    lines = (partial.pop(fd, b"") + data).split(b"\n")
    if lines[-1]:
        partial[fd] = lines[-1]
    out.write(b"".join(b"[%d] %s\n" % (rank, line) for line in lines[:-1]))
    out.flush()


def _mpiexec(script: str, args: list[str], ranks: int, tag_output: bool) -> int:
    """``--mpi``: the job goes to the installed MPI's ``mpiexec``; paralelo.comm is mpi4py's."""
    import shutil

    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    if mpiexec is None:
        raise FileNotFoundError("paralelo run --mpi needs an MPI launcher (mpiexec): install MPICH "
                                "(apt-get install mpich) or Open MPI, and mpi4py")
    command = [mpiexec, "-n", str(ranks)]
    if tag_output:
        command.append("-prepend-rank")
    return subprocess.call([*command, sys.executable, script, *args])
