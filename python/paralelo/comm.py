"""``paralelo.comm``: mpi4py's ``MPI`` module, for programs written with mpi4py.

``from paralelo import comm as MPI`` (or ``MPI = paralelo.comm`` in place of ``from mpi4py
import MPI``), then ``MPI.COMM_WORLD``, ``comm.bcast``, ``comm.Allreduce``... as with
mpi4py. Which engine runs the calls depends on how the program was started:

* ``paralelo run -n 4 script.py``: four ranks on this machine, talking through shared
  memory (``paralelo._communicator``): objects pickled once, buffers through the arena;
* under ``mpiexec`` (or ``paralelo run --mpi``): the names here are mpi4py's own, on the
  installed MPI library, so the program scales past one machine unchanged;
* plainly (``python script.py``): a world of one rank, as mpi4py without mpiexec.

``paralelo.comm.BACKEND`` says which: ``"shm"`` or ``"mpi"``.
"""

from __future__ import annotations

import os
from typing import Any

#: Environment variables a real MPI launcher sets for its processes (MPICH's Hydra, Open
#: MPI, PMIx, Slurm's PMI).
_MPI_LAUNCHED = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDI_CONTROL_FD", "MPI_LOCALNRANKS")


def _under_mpi() -> bool:
    if os.environ.get("PARALELO_RANK") is not None:
        return False  # (a rank of `paralelo run`)
    return any(name in os.environ for name in _MPI_LAUNCHED)


if _under_mpi():
    try:
        from mpi4py import MPI as _MPI
    except ImportError as e:
        raise ImportError("this program runs under an MPI launcher (mpiexec), so paralelo.comm hands its calls "
                          "to mpi4py, which cannot be imported: pip install mpi4py (built against the MPI "
                          f"library mpiexec belongs to): {e}") from e
    globals().update({name: getattr(_MPI, name) for name in dir(_MPI) if not name.startswith("__")})
    BACKEND = "mpi"
else:
    from ._communicator import *  # noqa: F401,F403 - the module's API is the communicator's
    from ._communicator import __all__ as _names

    BACKEND = "shm"
    __all__ = [*_names, "BACKEND"]


def __getattr__(name: str) -> Any:
    raise AttributeError(f"paralelo.comm has no {name!r} (mpi4py names it the same: is it an MPI feature "
                         "paralelo does not offer?)")
