"""Amdahl's law, measured (``paralelo.scaling``, ``paralelo scaling SCRIPT``): speed-ups,
efficiency, Karp–Flatt, the fitted serial fraction, predictions and the chart; and the
``paralelo`` command's ``info``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import paralelo
from paralelo.amdahl import Scaling

T = 120


def test_the_law_on_exact_times():
    r = Scaling((1, 2, 4), (1.0, 0.6, 0.4))  # T(N) = 0.2 + 0.8 / N
    assert r.speedups == pytest.approx((1.0, 1 / 0.6, 2.5))
    assert r.efficiencies == pytest.approx((1.0, 1 / 1.2, 0.625))
    assert r.karp_flatt[0] is None and r.karp_flatt[1:] == pytest.approx((0.2, 0.2))
    assert r.serial_fraction == pytest.approx(0.2)
    assert r.parallel_fraction == pytest.approx(0.8)
    assert r.predict(8) == pytest.approx(1 / (0.2 + 0.8 / 8))
    assert r.limit == pytest.approx(5.0)
    table = str(r)
    assert "S = 0.200" in table and "at most 5.0x" in table and "(predicted, on 8 CPUs)" in table
    assert Scaling((1, 2), (1.0, 0.5)).serial_fraction == 0.0  # perfect scaling
    assert Scaling((1, 2), (1.0, 1.2)).serial_fraction == 1.0  # slower with more: clamped


def _nap(seconds):
    time.sleep(seconds)


def _known_serial_part(workers):
    time.sleep(0.2)  # the serial part: 0.2 s of 1.0 s
    # The parallel part, 8 x 0.1 s, on threads: sleeps overlap whatever the cores, and no
    # process start blurs the serial part.
    with paralelo.ThreadPoolExecutor(workers) as ex:
        list(ex.map(_nap, [0.1] * 8))


def test_the_fit_recovers_a_known_serial_fraction():
    r = paralelo.scaling(_known_serial_part, workers=[2, 4, 8], repeats=1)
    assert r.workers == (1, 2, 4, 8)  # (one worker is always the baseline)
    assert r.times[0] == pytest.approx(1.0, abs=0.1)
    assert r.serial_fraction == pytest.approx(0.2, abs=0.05)
    assert r.predict(16) == pytest.approx(1 / (0.2 + 0.8 / 16), rel=0.2)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="workers must be counts of 1 or more"):
        paralelo.scaling(_nap, workers=[0, 2])
    with pytest.raises(ValueError, match="repeats must be 1 or more"):
        paralelo.scaling(_nap, workers=[2], repeats=0)


def test_the_chart_is_a_png(tmp_path):
    path = Scaling((1, 2, 4), (1.0, 0.6, 0.4)).chart(tmp_path / "s.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_chart_says_what_to_install(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # (as if not installed)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        Scaling((1, 2), (1.0, 0.6)).chart(tmp_path / "s.png")


def test_the_command_measures_a_script(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import paralelo

        def nap(x):
            time.sleep(0.1)

        if __name__ == "__main__":
            assert sys.argv[1:] == ["--size", "8"], sys.argv
            with paralelo.Pool() as pool:  # its worker count: PARALELO_WORKERS
                pool.map(nap, range(int(sys.argv[2])), chunksize=1)
    """))
    out = subprocess.run([sys.executable, "-m", "paralelo", "scaling", str(script), "--workers", "1,4",
                          "--repeats", "1", "--chart", "chart.png", "--", "--size", "8"],
                         capture_output=True, text=True, timeout=T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()[:1] in (["1"], ["4"])}
    assert float(rows["4"][2].rstrip("x")) > 1.0  # (8 naps of 0.1 s on 4 workers against 1: ≈ 2.7)
    assert "Amdahl: speedup = 1 / (S + P/N)" in out.stdout
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_the_command_says_what_went_wrong(tmp_path):
    failing = tmp_path / "fails.py"
    failing.write_text("raise SystemExit(3)\n")
    out = subprocess.run([sys.executable, "-m", "paralelo", "scaling", str(failing), "--repeats", "1"],
                         capture_output=True, text=True, timeout=T)
    assert out.returncode == 1 and "returned non-zero exit status 3" in out.stderr
    missing = subprocess.run([sys.executable, "-m", "paralelo", "scaling", str(tmp_path / "none.py")],
                             capture_output=True, text=True, timeout=T)
    assert missing.returncode == 2 and "no script at" in missing.stderr


def test_the_worker_count_comes_from_the_environment(tmp_path):
    code = "import paralelo\nwith paralelo.Pool() as p:\n    print(len(p._engine.slots))\n"
    env = {**os.environ, "PARALELO_WORKERS": "3"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=T).stdout.strip() == "3"
    env["PARALELO_WORKERS"] = "lots"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=T)
    assert bad.returncode != 0 and "PARALELO_WORKERS must be a count of 1 or more, not 'lots'" in bad.stderr


def test_info_names_the_machine_and_the_optional_packages():
    out = subprocess.run([sys.executable, "-m", "paralelo", "info"], capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"CPUs: {os.cpu_count()}" in text and "start method: fork" in text
    assert "numpy" in text and "tqdm" in text and "mpi4py" in text and "GPUs:" in text
