"""The parent's engine, by concept:

- ``jobs``: the job model (units, calls, maps) and reading the user's input;
- ``chunking``: how big a map's chunks are;
- ``sink``: the typed protocol a map delivers its outcomes through;
- ``slot``: a worker slot and what it holds;
- ``engine``: workers, dispatch and the collector thread;
- ``deaths``: what a worker's death fails, retries or breaks.
"""

from .engine import MAX_INFLIGHT, Engine, check_limits, run_or_defer
from .jobs import CallJob, Job, MapJob, Unit
from .sink import MapSink

__all__ = ["MAX_INFLIGHT", "CallJob", "Engine", "Job", "MapJob", "MapSink", "Unit", "check_limits", "run_or_defer"]
