"""The guide's examples in examples/ run with paralelo and print what the guide says."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "pool_map.py": "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n",
    "map_reduce.py": "Suma de cuadrados: 285\nmap_reduce: 285\n",
    "futures_as_completed.py": "".join(f"Resultado: {n * n}\n" for n in range(4)),
    "pipe_ping.py": "recibido: hola\nrecibido: [1, 2, 3]\n",
}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(name: str) -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if name in EXPECTED:
        assert out.stdout == EXPECTED[name]
    if name == "process_workers.py":  # (four at once: lines may interleave, as with multiprocessing)
        names = re.findall(r"Proceso de trabajo: (Process-\d)", out.stdout)
        assert sorted(names) == [f"Process-{i}" for i in range(1, 5)]
    if name == "queue_workers.py":  # (four takers at once: any order)
        items = re.findall(r"Procesando elemento: (\d+)", out.stdout)
        assert sorted(map(int, items)) == list(range(10))
    if name == "executor_submit.py":
        # Four processes print at once: their lines may interleave, their words may not.
        lines = re.findall(r"Trabajador \d: (?:Iniciando|Finalizado)", out.stdout)
        assert sorted(lines) == sorted(
            [f"Trabajador {i}: Iniciando" for i in range(8)] + [f"Trabajador {i}: Finalizado" for i in range(8)]
        )


def test_the_readme_demo_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "paralelo", "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Suma de cuadrados: 285" in out.stdout
    assert "Queue + 2 Processes, sum of squares: 285" in out.stdout
    assert "Pipe round trip to a child process:" in out.stdout
