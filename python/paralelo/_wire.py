"""The messages between the parent and its workers: tags and what each carries.

Parent → worker: FUNC, TASK, TASKS, CALL, CALLS, DROP, PROBE, EXIT (the initializer is
inherited: see ``_worker.Setup``).
Worker → parent: READY, LOG, OK, OK_ARRAY, ERR, RESULTS, SPLIT, PROBED, BYE, INIT_ERR.

Every frame carries ``(tag, job, seq, aux)`` in its header (see the engine's ring
README); ``seq`` is a unit's *ticket*, unique in this process, which is also what a worker
records in its slot state while it runs the unit. Small units travel several to a message
(TASKS, RESULTS): each is still scheduled, run, timed and accounted on its own; only the
pickling and the wake-ups are shared. Payloads are pickles (see ``_pickling``); a big
chunk (``_pickling.ARRAY_MIN`` items or more) travels alone, and its items or results,
when only ints or only floats, as a machine array (TASK with ARRAY, OK_ARRAY: see
``_pickling.as_array``).
"""

from __future__ import annotations

FUNC = 2  # job: payload cloudpickle((function, star, each))
TASK = 3  # job, seq=ticket: payload pickle(items: a list, tuple or range), or with ARRAY a machine array
CALL = 4  # job, seq=ticket: payload _pickling.dumps_call((function, args, kwargs))
DROP = 5  # job: forget FUNC
EXIT = 6  # finish and exit
TASKS = 7  # job: payload pickle(([tickets], [items per ticket: a list, tuple or range])): several small units
PROBE = 9  # aux=kind << 1 | on, payload: the probe's settings (_engine.probes): start a probe between
#            tasks, or stop it and send PROBED
#: The kinds of PROBE: cProfile (paralelo.profile), timeline spans (paralelo.trace), line_profiler
#: (paralelo.profile(lines=...); settings: pickle of the functions' names, see _probing.LineProbe).
PROBE_PROFILE, PROBE_TRACE, PROBE_LINES = 1, 2, 3
CALLS = 8  # seq=first ticket: payload _pickling.dumps_calls(([tickets], [calls])): several calls, of any jobs

#: In the `aux` of TASK/TASKS: answer each unit at once, waking the parent (the job's unit
#: cost is not measured yet, so a slow unit may follow a quick one in the same message).
EAGER = 1
#: In the `aux` of TASK: the payload is the items as a machine array, not a pickle.
ARRAY = 2
#: The rest of a TASK's `aux` (aux >> COUNT_SHIFT) is its item count, which a worker
#: counts toward maxtasks even when the items cannot be unpickled.
COUNT_SHIFT = 2

#: (Answers are matched by ticket, `seq`; a call answered from a CALLS batch carries the
#: batch's job id, not its own.)
OK = 16  # job, seq, aux=ns busy: payload pickle(results list, or the call's result)
OK_ARRAY = 20  # as OK: payload the results as a machine array (_pickling.as_array)
ERR = 17  # job, seq: payload dump_error bytes
BYE = 18  # leaving after maxtasks; sends nothing after this
INIT_ERR = 19  # the initializer raised: payload as ERR
SPLIT = 22  # seq=a CALLS' first ticket: its payload did not unpickle; send its calls one by one
RESULTS = 21  # job: payload pickle(([tickets], pickle([(ticket, ok, value, busy_ns), ...])))
READY = 23  # its initializer ran: it waits for work (its start-up time, for insights)
LOG = 24  # aux=id of the parent's logging handler: payload a log record (_output)
PROBED = 25  # aux=kind: payload what the probe measured since it was switched on
