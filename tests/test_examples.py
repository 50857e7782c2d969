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
    # Run plainly: a world of one rank (as mpi4py without mpiexec); `paralelo run -n 4` in test_comm.
    "mpi_bcast_reduce.py": "Total: 0\n",
    "mpi_scatter_gather.py": "Result: [1]\n",
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


def test_the_readme_demo_runs(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "paralelo", "demo"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Suma de cuadrados: 285" in out.stdout
    assert "Queue + 2 Processes, sum of squares: 285" in out.stdout
    assert "Pipe round trip to a child process:" in out.stdout
    assert "49098 primes below 600,000" in out.stdout
    assert "primes: 100%" in out.stderr and "600/600" in out.stderr  # the bar
    assert "600 tasks in" in out.stdout and "ForkPoolWorker-" in out.stdout  # the insights
    assert "Amdahl: speedup = 1 / (S + P/N) with S = " in out.stdout
    chart = tmp_path / "paralelo-scaling.png"
    assert f"chart: {chart}" in out.stdout and chart.read_bytes()[:4] == b"\x89PNG"


def test_the_asyncio_example_fetches_from_a_local_server_and_parses_in_the_pool() -> None:
    # The guide's aiohttp example against a real HTTP server this test starts, bound to
    # 127.0.0.1: pages fetched concurrently, parsed in worker processes, collected.
    import http.server
    import importlib.util
    import threading

    pytest.importorskip("aiohttp")
    pages = {f"page{i}": "<p>" + " ".join(["uno"] * i + ["dos"] * (2 * i) + ["tres"]) + "</p>" for i in range(1, 6)}

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages[self.path.strip("/")].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        urls = [f"http://127.0.0.1:{server.server_address[1]}/{name}" for name in pages]
        out = subprocess.run([sys.executable, str(EXAMPLES / "aio_fetch_parse.py"), *urls],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    spec = importlib.util.spec_from_file_location("aio_fetch_parse", EXAMPLES / "aio_fetch_parse.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    expected = "".join(
        f"{name}: {n} palabras, la más común: {common!r} ({times})\n"
        for name, (n, common, times) in ((name, example.parse(page)) for name, page in pages.items())
    )
    assert out.stdout == expected
    assert "page5: 16 palabras, la más común: 'dos' (10)\n" in out.stdout
