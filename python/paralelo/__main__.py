"""Command line: ``paralelo`` (or ``python -m paralelo``).

    paralelo demo                      the guide's examples, and speed-ups, on this machine
    paralelo scaling SCRIPT [--workers 1,2,4] [-- ARGS...]
                                       Amdahl's law measured for a script (see paralelo.amdahl)
    paralelo trace SCRIPT [-o FILE] [-- ARGS...]
                                       a timeline of the script's parallel work (see paralelo.trace)
    paralelo info                      this machine and what paralelo can use on it
    paralelo run -n N SCRIPT [ARGS...] N ranks of an mpi4py-style script (see paralelo.comm)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paralelo`` command."""
    parser = argparse.ArgumentParser(prog="paralelo", description="parallel processing for Python, on a Rust engine")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the guide's pool and executor examples, then a speed-up table")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    scaling = _script_command(
        sub, "scaling", "run a script at several worker counts: speed-up, efficiency, Amdahl's serial fraction",
        "Runs SCRIPT with PARALELO_WORKERS set to each count (the default worker count of paralelo's pools and "
        "executors), times each run, and fits Amdahl's law speedup = 1 / (S + P/N) to the times.")
    scaling.add_argument("--workers", default=None,
                         help="worker counts, comma-separated (default: 1, 2, 4... up to the CPUs)")
    scaling.add_argument("--repeats", type=int, default=3, help="runs per count; the median counts (default 3)")
    scaling.add_argument("--chart", default="scaling.png",
                         help="where to write the chart, a PNG (default scaling.png; needs matplotlib; "
                              "'' for none)")
    tracing = _script_command(
        sub, "trace", "run a script and write a timeline of its parallel work (Chrome trace-event JSON)",
        "Runs SCRIPT in this process, as python would, under paralelo.trace(): every task of every paralelo "
        "worker, the parent's pickling, and the workers' births and deaths go to FILE, which ui.perfetto.dev "
        "and chrome://tracing open.")
    tracing.add_argument("-o", "--output", default="paralelo-trace.json", help="the file to write "
                         "(default paralelo-trace.json)")
    sub.add_parser("info", help="cores, start method, versions, the optional back ends and GPUs found")
    running = sub.add_parser(
        "run", help="run N ranks of a script that uses paralelo.comm (mpi4py's API), as mpiexec does",
        description="Starts N processes of SCRIPT, each with paralelo.comm.COMM_WORLD set to its rank, talking "
                    "through shared memory. A rank that fails ends the job, and the launcher says which and how.")
    running.add_argument("-n", "-np", dest="ranks", type=int, default=None,
                         help="how many ranks (default: the CPUs)")
    running.add_argument("--tag-output", action="store_true", help="prefix each line of output with [rank]")
    running.add_argument("--mpi", action="store_true",
                         help="run under the installed MPI's mpiexec instead (paralelo.comm is then mpi4py's)")
    running.add_argument("script", help="the Python script to run")
    running.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scaling"] or argv[:1] == ["trace"]:
        argv = _script_args_apart(argv, scaling if argv[0] == "scaling" else tracing)
    script_args: list[str] | None = None  # (run: all that follows SCRIPT, as mpiexec passes it, "--" too)
    if argv[:1] == ["run"]:
        at = _script_at(argv, running)
        if at is not None:
            argv, script_args = argv[:at + 1], argv[at + 1:]
    passed: list[str] = []  # after "--": the script's own, even those that start with -
    if "--" in argv and argv[:1] != ["run"]:
        argv, passed = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if passed and args.command not in ("scaling", "trace"):
        parser.error("arguments after -- are for a script: paralelo scaling SCRIPT -- ARGS")
    if args.command in ("scaling", "trace"):
        args.args = [*args.args, *passed]
    if script_args is not None:
        args.args = script_args
    if args.command == "demo":
        from . import _demo

        _demo.run(args.workers)
    elif args.command == "scaling":
        return _scaling(parser, args)
    elif args.command == "trace":
        return _trace(parser, args)
    elif args.command == "run":
        return _run(parser, args)
    elif args.command == "info":
        from . import _info

        print(_info.report())
    return 0


def _script_args_apart(argv: list[str], command: argparse.ArgumentParser) -> list[str]:
    """``[NAME, options, SCRIPT, options, ARGS...]`` with a ``--`` put before ARGS: the
    first word after SCRIPT that is not one of the command's options starts the script's
    own arguments, as ``python SCRIPT ARGS`` takes them (so ``paralelo trace s.py --size 3``
    passes ``--size 3`` to s.py). Left as it is when it has a ``--`` already."""
    if "--" in argv:
        return argv
    at = _script_at(argv, command)
    if at is None:
        return argv
    i = at + 1
    while i < len(argv) and _option_width(argv[i], command):
        i += _option_width(argv[i], command)
    if i >= len(argv):
        return argv
    return [*argv[:i], "--", *argv[i:]]


def _option_width(word: str, command: argparse.ArgumentParser) -> int:
    """How many words `word`, an option of `command`, takes (0: not one of its options)."""
    options = command._option_string_actions  # (argparse's table of the command's options)
    name = word.split("=", 1)[0]
    if name not in options:
        return 0
    return 1 if "=" in word or options[name].nargs == 0 else 2


def _script_at(argv: list[str], command: argparse.ArgumentParser) -> int | None:
    """Where SCRIPT is in ``[NAME, options, SCRIPT, ...]`` (None: not there, or after an
    option the command does not know, for argparse to refuse)."""
    i = 1
    while i < len(argv):
        width = _option_width(argv[i], command)
        if width:
            i += width
        elif argv[i] == "--" and i + 1 < len(argv):
            return i + 1
        elif argv[i].startswith("-"):
            return None
        else:
            return i
    return None


def _script_command(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A command that runs a script: ``paralelo NAME SCRIPT [options] [-- ARGS]``."""
    command = sub.add_parser(name, help=help, description=description)
    command.add_argument("script", help="the Python script to run")
    command.add_argument("args", nargs="*", help="its arguments: everything after SCRIPT that is not one of "
                         "this command's options (after --, everything)")
    return command


def _scaling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .amdahl import scaling_of_script

    try:
        counts = None if args.workers is None else [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--workers takes counts separated by commas, not {args.workers!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be 1 or more, not {args.repeats}")
    print(f"timing {args.script} at each worker count, {args.repeats} run{'' if args.repeats == 1 else 's'} "
          "each...", file=sys.stderr)
    try:
        result = scaling_of_script(args.script, args.args, counts, args.repeats)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    except subprocess.CalledProcessError as e:
        print(f"paralelo scaling: {e}", file=sys.stderr)
        return 1
    print(result)
    if args.chart:
        try:
            print(f"chart: {result.chart(args.chart)}")
        except ImportError as e:
            print(f"no chart: {e}", file=sys.stderr)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import os

    from ._launch import run

    ranks = (os.cpu_count() or 1) if args.ranks is None else args.ranks
    if ranks < 1:
        parser.error(f"-n must be at least 1, not {ranks}")
    if not os.path.isfile(args.script):
        parser.error(f"no script at {args.script!r}")
    try:
        return run(args.script, args.args, ranks, args.tag_output, args.mpi)
    except FileNotFoundError as e:
        print(f"paralelo run: {e}", file=sys.stderr)
        return 127


def _trace(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import os
    import runpy

    from ._tracing import trace

    if not os.path.isfile(args.script):
        parser.error(f"no script at {args.script!r}")
    sys.argv = [args.script, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))  # (as python puts it)
    code = 0
    with trace(args.output) as result:
        try:
            runpy.run_path(args.script, run_name="__main__")
        except SystemExit as e:  # (the script's own exit: its status is ours, after the file)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    print(f"paralelo trace: {result.events} events, {result.workers} workers: {os.path.abspath(result.path)} "
          f"(open it in ui.perfetto.dev or chrome://tracing)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
