"""``paralelo info``: this machine, and what paralelo can use on it."""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys

#: Optional packages paralelo works with, and what each is for.
OPTIONAL = {
    "numpy": "arrays out of band, SharedArray",
    "tqdm": "progress=",
    "matplotlib": "scaling charts",
    "uvloop": "a faster asyncio loop",
    "aiohttp": "the asyncio example",
    "mpi4py": "MPI",
    "dask": "Dask",
    "distributed": "a Dask cluster",
    "ray": "Ray",
    "joblib": "joblib's API",
    "cupy": "GPU arrays",
    "numba": "compiled kernels",
    "torch": "GPU tensors",
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """The NVIDIA GPUs this machine shows (by the driver's files, or nvidia-smi)."""
    found = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("Model")), None)
        except OSError:
            model = None
        found.append(model or os.path.basename(os.path.dirname(info)))
    if not found and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            found = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def _backends() -> list[str]:
    """Where pools can run: the back ends, whether each can, and the default."""
    from ._cluster import choice

    lines = ["back ends (Pool(backend=...), ProcessPoolExecutor(backend=...)):"]
    for name, ready in choice.available().items():
        if name == "local":
            state = "ready: paralelo's own engine, on this machine"
        elif ready:
            state = "ready: a local cluster on 127.0.0.1, or address=... / PARALELO_BACKEND=" \
                    f"{name}://host:port"
        else:
            state = f"not installed: {choice.missing(name)}"
        lines.append(f"  {name:<6} {state}")
    joblib = importlib.util.find_spec("joblib") is not None
    lines.append(f"  joblib {'ready: ' if joblib else 'not installed: '}"
                 + ("joblib.parallel_config(backend='paralelo')" if joblib else "pip install joblib"))
    try:
        default = choice.chosen(None, None)
        shown = default.backend + ("" if default.address is None else f" at {default.address}")
    except ValueError as e:
        shown = f"none: {e}"
    lines.append(f"  default: {shown}" + (" (PARALELO_BACKEND)" if os.environ.get("PARALELO_BACKEND") else ""))
    return lines


def report() -> str:
    """What ``paralelo info`` prints."""
    from . import __version__
    from .context import default_workers, get_start_method

    try:
        n = default_workers()
        workers = f"pools get {n} worker{'' if n == 1 else 's'} by default"
    except ValueError as e:
        workers = str(e)
    lines = [
        f"paralelo {__version__} on Python {platform.python_version()} ({sys.executable})",
        f"system: {platform.system()} {platform.release()} {platform.machine()}, memory {_memory()}",
        f"CPUs: {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process); {workers}",
        f"start method: {get_start_method()}",
        "",
        "optional packages:",
    ]
    width = max(map(len, OPTIONAL))
    for name, use in OPTIONAL.items():
        installed = importlib.util.find_spec(name) is not None
        version = _version(name) if installed else None
        state = f"{version or 'installed'}" if installed else "not installed"
        lines.append(f"  {name.ljust(width)}  {state:<15} {use}")
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    lines.append(f"  {'MPI runtime'.ljust(width)}  {mpiexec or 'not found'}")
    lines += ["", *_backends()]
    gpus = _gpus()
    lines += ["", "GPUs: " + ("; ".join(gpus) if gpus else "none visible")]
    return "\n".join(lines)
