"""Command line: ``python -m paralelo demo`` (or ``paralelo demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paralelo`` command."""
    parser = argparse.ArgumentParser(prog="paralelo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the guide's pool and executor examples, then a speed-up table")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import _demo

        _demo.run(args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
