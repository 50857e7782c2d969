"""Running a user's script, its functions in ``__main__``, beside the standard library."""

from __future__ import annotations

import subprocess
import sys


def side_by_side(tmp_path, code: str, libs: tuple[str, ...] = ("paralelo", "multiprocessing"),
                 timeout: float = 60, env: dict[str, str] | None = None) -> list[str]:
    """Runs `code` as a script (its functions in `__main__`) once per library named in
    its first argument (with `env`, in that environment); returns each run's stdout,
    stripped."""
    script = tmp_path / "script.py"
    script.write_text(code)
    outs = []
    for lib in libs:
        out = subprocess.run([sys.executable, str(script), lib], capture_output=True, text=True,
                             timeout=timeout, cwd=tmp_path, env=env)
        assert out.returncode == 0, (lib, out.stderr)
        outs.append(out.stdout.strip())
    return outs
