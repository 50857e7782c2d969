"""The type stubs of the Rust extension match the built module (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_native_stubs_match_the_extension() -> None:
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases", "paralelo._native"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_package_type_checks() -> None:
    pytest.importorskip("mypy")
    import pathlib

    package = pathlib.Path(__file__).resolve().parent.parent / "python" / "paralelo"
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", str(package)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
