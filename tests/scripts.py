"""Running a user's script, its functions in ``__main__``, beside the standard library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any


def run_group(args: list[str], timeout: float, input: str | None = None,  # noqa: A002 - subprocess's name
              **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` in a process group of its
    own. Past `timeout`, the whole group is ended, not only the script: SIGTERM first, so
    that a hung rival's children die and multiprocessing's resource tracker (which
    ignores it) sees them gone and unlinks their semaphores, then SIGKILL for what is
    left. (A script killed alone left its pool's children, and their /dev/shm
    semaphores, behind.) `input`: what the script reads on its standard input."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.communicate(timeout=grace)
                    time.sleep(0.5)  # (the tracker unlinks once the last child is gone)
                except subprocess.TimeoutExpired:
                    pass
            raise
        return subprocess.CompletedProcess(args, proc.returncode, out, err)


def side_by_side(tmp_path, code: str, libs: tuple[str, ...] = ("paralelo", "multiprocessing"),
                 timeout: float = 60, env: dict[str, str] | None = None) -> list[str]:
    """Runs `code` as a script (its functions in `__main__`) once per library named in
    its first argument (with `env`, in that environment); returns each run's stdout,
    stripped."""
    script = tmp_path / "script.py"
    script.write_text(code)
    outs = []
    for lib in libs:
        out = run_group([sys.executable, str(script), lib], timeout, cwd=tmp_path, env=env)
        assert out.returncode == 0, (lib, out.stderr)
        outs.append(out.stdout.strip())
    return outs
