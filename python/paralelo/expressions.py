"""``paralelo.evaluate``: numexpr's array expressions, compiled in paralelo's Rust engine
and run on every core with the GIL released.

    import numpy as np, paralelo
    x = np.random.rand(10_000_000)
    paralelo.evaluate("sum(x*x)")                      # the guide's sum of squares
    paralelo.evaluate("where(a > 0.5, sin(a)**2, cos(b))")

The language is numexpr's: arithmetic (``+ - * / // % **``), comparisons, ``& | ^ ~``
(logical on booleans, bitwise on integers), ``<< >>``, ``where(c, a, b)``, numexpr's math
functions (``sin`` … ``arctan2``, ``log1p``, ``expm1``, ``abs``, ``round``, ``real``,
``imag``, ``conj``, ``complex``, ``isnan`` …), complex numbers, and one reduction
(``sum``, ``prod``, ``min``, ``max``, with ``axis``) as the last operation. Types follow
numexpr's rules (bool, int32, int64, float32, float64, complex128; smaller integers widen
to int32, uint32 to int64, float16 to float32, complex64 to complex128), and so do its
errors. Names are read from the caller's frame unless ``local_dict``/``global_dict``
say otherwise. Expressions are parsed and typed once per expression and input kinds,
then cached. Inputs broadcast, may be strided, non-contiguous or unaligned.

Where it differs from numexpr: a reduction over an empty array gives numpy's identity
(``sum``: 0) rather than an empty array, and ``min``/``max`` of one raise numpy's
ValueError; ``min``/``max`` return NaN when an element is NaN, as numpy's do; float32
sums accumulate in double; integer powers wrap as numpy's do; strings are not
supported; expressions longer than 100,000 characters are refused; expressions are
never passed to Python's ``eval``, whatever ``sanitize`` says.

``device="cuda"`` runs the same expression on an NVIDIA GPU (see ``_device``);
``cuda_available()`` says whether it can here.
"""

from __future__ import annotations

import itertools
import operator
import os
import re
import sys
import threading
import weakref
from collections import OrderedDict
from typing import Any

from . import _native, _recycled

__all__ = ["cuda_available", "evaluate", "re_evaluate", "validate"]

#: numexpr's keyword arguments and what they may be.
_OPTIONS = {"optimization": ("none", "moderate", "aggressive"), "truediv": (False, True, "auto")}
_DEFAULTS = {"optimization": "aggressive", "truediv": "auto"}
_ORDERS = ("C", "F", "A", "K")
_OPTIMIZED = 0x1  # (inspect.CO_OPTIMIZED: a function's frame, whose f_locals is a snapshot)
_CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")
#: Compiled expressions kept, most recently used last.
_CACHE_SIZE = 256

_lock = threading.Lock()
#: Whether this process's threads were set, or read from its environment: a forked
#: worker reads its own (a joblib worker's OMP_NUM_THREADS=1), whatever its parent ran on.
_threads_read = False


def _after_fork() -> None:
    # A forked child must not inherit the lock held (another thread compiling at the
    # fork), and reads its own environment for its threads.
    global _lock, _threads_read
    _lock = threading.Lock()
    _threads_read = False


os.register_at_fork(after_in_child=_after_fork)
#: numexpr's NUMEXPR_SANITIZE, read when the module is imported, as numexpr documents it.
_SANITIZE = os.environ.get("NUMEXPR_SANITIZE", "1") != "0"
_names: OrderedDict[tuple, list[str]] = OrderedDict()
_compiled: OrderedDict[tuple, Any] = OrderedDict()
#: Per expression, its names and, per tuple of its inputs' dtypes, what the common call
#: needs (`_quickly`): a program run over numpy arrays of one shape, each read as it is,
#: into a new result, every option at its default.
_quick: dict[str, tuple[list[str], dict[tuple, tuple]]] = {}
#: What `re_evaluate` runs with after such a call.
_QUICK_OPTIONS = {"out": None, "order": "K", "casting": "same_kind", "device": None, "returns": None}


class _Last(threading.local):
    """What this thread's last `evaluate` or `validate` compiled, for `re_evaluate`."""

    compiled: Any = None
    names: list[str] = []
    kwargs: dict = {}
    #: What the last `validate` refused, raised by `re_evaluate` (not the expression
    #: before it, run again).
    refused: Exception | None = None


_last = _Last()

# What numexpr's sanitizer refuses: statement separators, subscripts and slices, dunder
# names, and attribute access other than .real and .imag (a dot in a number is no
# attribute: 1.5, 1.e3, 1.E-3, 2.j).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_FORBIDDEN = re.compile(r"[;\[:]|(?<![\w])__\w+__(?![\w])|\.(?!(real|imag)\b)(?![eE][+-]?\d)(?!j\b)(?=[A-Za-z_])")


def _numpy() -> Any:
    global _np
    try:
        import numpy
    except ImportError:
        raise ImportError("paralelo.evaluate needs numpy: pip install numpy") from None
    _np = numpy
    return numpy


_np: Any = None


def _cached(cache: OrderedDict, key: Any, make: Any) -> Any:
    hit = cache.get(key)  # (a dict lookup is atomic: no lock on a hit)
    if hit is not None:
        try:
            cache.move_to_end(key)
        except KeyError:
            pass  # (evicted meanwhile by another thread: it is still ours to use)
        return hit
    value = make()
    with _lock:
        cache[key] = value
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def _names_of(ex: str, sanitize: bool) -> list[str]:
    if not isinstance(ex, str):
        raise ValueError("must specify expression as a string")
    return _cached(_names, (ex, sanitize), lambda: _parsed_names(ex, sanitize))


def _parsed_names(ex: str, sanitize: bool) -> list[str]:
    if sanitize and _FORBIDDEN.search(_QUOTED.sub("", re.sub(r"\s+", "", ex))):
        raise ValueError(f"Expression {ex} has forbidden control characters.")
    return _native.expression_names(ex)


#: Per dtype: its kernel kind, and whether the array can be used as it is (else it is
#: converted: a widened dtype, or not in native byte order). (`dtype.name` costs
#: microseconds a call.)
_kinds: dict[Any, tuple[str, str | None]] = {}


def _as_kernels_take(np: Any, arrays: list, casting: str, convert: bool) -> tuple[list[str], list[str | None]]:
    """The kernel kind of each array, as numexpr widens dtypes it lacks, which `casting`
    must allow (as numexpr casts its inputs: uint64 to int64 is not 'safe'), and how the
    engine reads it: None as it is, else its numpy type string ('|u1', '>f8') for the
    engine to convert a block at a time. With `convert` (for a device), or for a type the
    engine does not read, the array is replaced in `arrays` by its conversion instead."""
    kinds, stored = [], []
    for i, a in enumerate(arrays):
        kind, how = _kind_of(np, a.dtype)
        if how is not None:
            if not np.can_cast(a.dtype, kind, casting):
                raise TypeError(f"Cannot cast array data from {a.dtype!r} to {np.dtype(kind)!r} according to the "
                                f"rule {casting!r}")
            if convert or how == _ASTYPE:
                arrays[i], how = a.astype(kind), None
        kinds.append(kind)
        stored.append(how)
    return kinds, stored


def _kind_of(np: Any, dt: Any) -> tuple[str, str | None]:
    known = _kinds.get(dt)
    if known is None:
        kind = _widened(dt)
        usable = dt == np.dtype(kind) and dt.isnative
        how = None if usable else dt.str if dt.str[1:] in _ENGINE_READS else _ASTYPE
        known = _kinds[dt] = (kind, how)
    return known


#: The numpy types the engine reads and converts itself, in either byte order; others
#: (a long double) are converted whole first.
_ENGINE_READS = frozenset(("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"))
_ASTYPE = "astype"


def _widened(dt: Any) -> str:
    size = dt.itemsize
    if dt.kind == "b":
        return "bool"
    if dt.kind == "i" and size <= 8:
        return "int32" if size <= 4 else "int64"
    if dt.kind == "u" and size <= 8:
        return "int32" if size <= 2 else "int64"
    if dt.kind == "f":  # (a long double is cut to a double, as numexpr does)
        return "float32" if size <= 4 else "float64"
    if dt.kind == "c":
        return "complex128"
    if dt.kind == "S":  # (a TypeError, as numexpr's when strings meet numbers)
        raise TypeError(f"paralelo.evaluate takes no byte-string arrays ({dt}): numexpr's string comparisons "
                        f"are not supported")
    raise ValueError(f"unknown type {dt}: paralelo.evaluate has no kernels for {dt} arrays")  # (as numexpr)


def _context(kwargs: dict) -> dict:
    context = dict(_DEFAULTS)
    for name, value in kwargs.items():
        if name not in _OPTIONS:
            raise ValueError(f"Unknown keyword argument '{name}'")
        if value not in _OPTIONS[name]:
            raise ValueError(f"'{name}' must be one of {_OPTIONS[name]}")
        context[name] = value
    return context


def _looked_up(names: list[str], local_dict: Any, global_dict: Any, depth: int) -> list:
    """The values `names` have: in `local_dict`, else `global_dict` (by default those of
    the frame `depth` up)."""
    frame = sys._getframe(depth)
    # A function's f_locals (before Python 3.13) is a snapshot the frame keeps until it
    # returns: every array the function had, even one it deleted since, stays alive
    # through it. Emptied after the read, as numexpr does (not a class body's namespace,
    # nor a module's, which are the real ones).
    snapshot = local_dict is None and bool(frame.f_code.co_flags & _OPTIMIZED)
    local_dict = frame.f_locals if local_dict is None else local_dict
    global_dict = frame.f_globals if global_dict is None else global_dict
    del frame
    try:
        values = []
        for name in names:
            try:
                values.append(local_dict[name])
            except KeyError:
                values.append(global_dict[name])  # (KeyError naming it, as numexpr)
        return values
    finally:
        if snapshot and type(local_dict) is dict:
            local_dict.clear()


def _values(np: Any, names: list[str], values: list, device: int | None) -> list:
    """The operands, as numpy arrays (device arrays as `_device.Input`s for a device)."""
    out = []
    for name, value in zip(names, values):
        if device is not None and hasattr(value, "__cuda_array_interface__"):
            from ._device import Input

            out.append(Input.of(np, value))
            continue
        try:
            array = np.asarray(value)
        except TypeError as e:
            if hasattr(value, "__cuda_array_interface__"):
                raise TypeError(f"'{name}' is a GPU array: evaluate with device='cuda'") from e
            raise
        if array.dtype.kind == "O" and hasattr(value, "__cuda_array_interface__"):
            raise TypeError(f"'{name}' is a GPU array: evaluate with device='cuda'")
        out.append(array)
    return out


def _prepare(ex: str, local_dict: Any, global_dict: Any, out: Any, order: str, casting: str, sanitize: Any,
             kwargs: dict, depth: int, device: int | None = None, values: list | None = None) -> tuple:
    np = _numpy()
    if not _threads_read:
        _threads_from_environment()
    if sanitize is None:
        sanitize = _SANITIZE
    context = _context(kwargs) if kwargs else _DEFAULTS
    if order is None:
        order = "K"  # (as numexpr takes it)
    elif order not in _ORDERS:
        if not (isinstance(order, str) and order.upper() in _ORDERS):
            raise ValueError(f"order must be one of {_ORDERS}, not {order!r}")
        order = order.upper()  # (as numpy, numexpr takes 'c')
    if casting not in _CASTINGS:
        raise ValueError(f"casting must be one of {_CASTINGS}, not {casting!r}")
    names = _names_of(ex, bool(sanitize))
    if values is None:
        values = _looked_up(names, local_dict, global_dict, depth + 1)
    arrays = _values(np, names, values, device)
    kinds, stored = _as_kernels_take(np, arrays, casting, device is not None)
    compiled = _compile(ex, names, kinds, context["optimization"])
    return compiled, names, arrays, kinds, stored, {"out": out, "order": order, "casting": casting}


def _compile(ex: str, names: list[str], kinds: list[str], optimization: str) -> Any:
    typed = tuple(zip(names, kinds))
    return _cached(_compiled, (ex, optimization, typed), lambda: _native.Expression(ex, list(typed), optimization))


def evaluate(ex: str, local_dict: dict | None = None, global_dict: dict | None = None, out: Any = None,
             order: str = "K", casting: str = "same_kind", sanitize: bool | None = None, _frame_depth: int = 3,
             disable_cache: bool = False, device: str = "cpu", returns: str | None = None, **kwargs: Any) -> Any:
    """Evaluates the array expression `ex` (numexpr's ``evaluate``), on every core or a GPU.

    Names in `ex` are looked up in `local_dict`, then `global_dict` (by default the
    caller's locals and globals). `out`: an array to write the result into (its shape
    the result's, or one the result broadcasts to; its dtype one the result casts to
    under `casting`). A new result of 32 MiB or more lives in memory that is reused for
    a later result once it and its views are dropped (its ``base`` is that memory, not
    ``None``); up to ``PARALELO_KEEP_RESULTS_MB`` (256) MiB of it is kept, 0 turns this
    off. `order`: 'K'
    keeps the inputs' memory order (a Fortran-ordered input gives a Fortran-ordered
    result), 'C' and 'F' force one. `optimization` ('none', 'moderate', 'aggressive',
    the default) and `truediv` are numexpr's. `disable_cache`: as numexpr's, keeps
    nothing of the call for `re_evaluate` (compiled programs, which hold no arrays, are
    still cached).

    `device`: 'cpu', or 'cuda' / 'cuda:N' to compile the expression into CUDA kernels and
    run it on that GPU. Inputs may then be numpy arrays (copied) or device arrays (cupy,
    torch, anything with ``__cuda_array_interface__``: read in place). `returns`:
    'numpy' or 'device'; by default a device array when an input is one, else numpy."""
    values = None
    common = (type(ex) is str and out is None and device == "cpu" and returns is None and not kwargs and sanitize is None
              and order == "K" and casting == "same_kind" and _threads_read and not disable_cache)
    if common:
        known = _quick.get(ex)
        if known is not None:
            values = _looked_up(known[0], local_dict, global_dict, _frames_up(_frame_depth, 3) + 1)
            result = _quickly(known, values)
            if result is not None:
                return result
    on = None if device == "cpu" else _device_ordinal(device)
    compiled, names, arrays, kinds, stored, options = _prepare(ex, local_dict, global_dict, out, order, casting, sanitize,
                                                       kwargs, _frames_up(_frame_depth, 3) + 1, on, values)
    if not disable_cache:
        _remember(compiled, names, options, on, returns)
    result = _dispatch(compiled, arrays, kinds, stored, options, on, returns)
    if common and not disable_cache and not any(stored) and all(compiled.reads):
        _remember_quick(ex, names, arrays, compiled)
    return result


def _quickly(known: tuple, values: list) -> Any:
    """`evaluate`'s result for the common call (`_quick`), or None where the call is not
    that (a scalar, another shape, a Fortran-ordered input, dtypes not seen yet, an empty
    reduction or one along another axis than the last): the general path then takes it."""
    np = _np or _numpy()
    ndarray = np.ndarray
    shape = values[0].shape if values and type(values[0]) is ndarray else ()
    for v in values:
        if type(v) is not ndarray or v.shape != shape:
            return None
    plan = known[1].get(tuple([v.dtype for v in values]))
    if plan is None or (len(shape) > 1 and walk_order(values, "K", len(shape)) is not None):
        return None
    compiled, takes, dtype, kind, reduction = plan
    if reduction is None:
        target = _recycled.empty(np, shape, dtype, "C")
        strides = target.strides
    elif 0 in shape:
        return None
    elif reduction[1] is None:
        target = _new(np, (), dtype, None)
        strides = (0,) * len(shape)
    elif reduction[1] == len(shape) - 1:
        target = _new(np, shape[:-1], dtype, None)  # (in recycled memory when large, as `_run`'s)
        strides = target.strides + (0,)
    else:
        return None
    _last.compiled, _last.names, _last.kwargs, _last.refused = compiled, known[0], _QUICK_OPTIONS, None
    # (none is converted: each is read as it is)
    compiled.run_arrays(list(zip(values, takes, itertools.repeat(None))), list(shape), (target, kind, strides))
    return target


def _remember_quick(ex: str, names: list[str], arrays: list, compiled: Any) -> None:
    np = _np or _numpy()
    if len(_quick) >= _CACHE_SIZE and ex not in _quick:
        try:
            del _quick[next(iter(_quick))]  # (the first remembered)
        except (KeyError, RuntimeError, StopIteration):
            pass  # (another thread's change: the next call tries again)
    known = _quick.setdefault(ex, (names, {}))
    if known[0] == names and len(known[1]) < _QUICK_DTYPES:
        known[1][tuple([a.dtype for a in arrays])] = (compiled, compiled.kinds, np.dtype(compiled.out), compiled.out,
                                                      compiled.reduction)


#: Combinations of dtypes remembered per expression for `_quickly`.
_QUICK_DTYPES = 8


def _frames_up(depth: int, caller: int) -> int:
    """numexpr's `_frame_depth` (`caller` for the function's own caller, one more per
    wrapper between) as frames above the function: wrappers written for numexpr pass
    their own count."""
    if type(depth) is not int or depth < caller:
        raise ValueError(f"_frame_depth counts as numexpr's: at least {caller} (the caller), not {depth!r}")
    return depth - caller + 1


def _device_ordinal(device: str) -> int | None:
    from ._device import ordinal

    return ordinal(device)


def _check_returns(returns: Any) -> None:
    if returns not in (None, "numpy", "device"):
        raise ValueError(f"returns must be 'numpy' or 'device', not {returns!r}")


def _dispatch(compiled: Any, arrays: list, kinds: list[str], stored: list[str | None], options: dict,
              device: int | None, returns: str | None) -> Any:
    _check_returns(returns)
    if device is None:
        if returns not in (None, "numpy"):
            raise ValueError(f"returns={returns!r} needs a device: device='cuda'")
        return _run(compiled, arrays, kinds, stored, **options)
    from . import _device

    return _device.run(_numpy(), compiled, arrays, kinds, returns=returns, device=device, **options)


def validate(ex: str, local_dict: dict | None = None, global_dict: dict | None = None, out: Any = None,
             order: str = "K", casting: str = "safe", _frame_depth: int = 2, sanitize: bool | None = None,
             device: str = "cpu", returns: str | None = None, **kwargs: Any) -> Exception | None:
    """Checks and compiles `ex` as `evaluate` would, for `re_evaluate`; returns None, or
    the exception `evaluate` would raise (numexpr's ``validate``)."""
    try:
        _check_returns(returns)
        on = None if device == "cpu" else _device_ordinal(device)
        if on is None and returns == "device":
            raise ValueError("returns='device' needs a device: device='cuda'")
        compiled, names, _, _, _, options = _prepare(ex, local_dict, global_dict, out, order, casting, sanitize,
                                                  kwargs, _frames_up(_frame_depth, 2) + 1, on)
    except Exception as e:  # noqa: BLE001 - returned, as numexpr's validate does
        _last.compiled, _last.refused = None, e
        return e
    _remember(compiled, names, options, on, returns)
    return None


def _remember(compiled: Any, names: list[str], options: dict, device: int | None, returns: str | None) -> None:
    """Keeps what `re_evaluate` runs: `out` by a weak reference, as numexpr keeps it (a
    dropped output is not held alive until the thread's next call)."""
    out = options["out"]
    kwargs = dict(options, out=None if out is None else weakref.ref(out), device=device, returns=returns)
    _last.compiled, _last.names, _last.kwargs, _last.refused = compiled, names, kwargs, None


def set_num_threads(nthreads: int) -> int:
    """Runs `evaluate` on `nthreads` threads from now on; returns how many it ran on
    (numexpr's ``set_num_threads``). By default, one per CPU this process may run on;
    ``NUMEXPR_NUM_THREADS`` or ``OMP_NUM_THREADS`` say otherwise, read in each process
    at its first `evaluate`, as numexpr reads them at import. At most
    ``NUMEXPR_MAX_THREADS`` (64, or the CPUs where there are more), which caps the
    default too."""
    n = operator.index(nthreads)
    if n < 1:
        raise ValueError(f"the number of threads must be at least 1, not {n}")
    most = _most_threads()
    if n > most:
        raise ValueError(f"at most {most} threads (NUMEXPR_MAX_THREADS), not {n}")
    global _threads_read
    _threads_read = True  # (set here: the environment no longer decides)
    return _native.set_expression_threads(n)


def _most_threads() -> int:
    value = os.environ.get("NUMEXPR_MAX_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else max(64, os.cpu_count() or 1)


def get_num_threads() -> int:
    """How many threads `evaluate` runs on (numexpr's ``get_num_threads``)."""
    if not _threads_read:
        _threads_from_environment()
    return _native.expression_threads()


def detect_number_of_cores() -> int:
    """The CPUs of this machine (numexpr's ``detect_number_of_cores``)."""
    return os.cpu_count() or 1


#: This machine's CPUs (numexpr's ``ncores``).
ncores = detect_number_of_cores()


def _threads_from_environment() -> None:
    global _threads_read
    _threads_read = True
    for name in ("NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                set_num_threads(int(value))
            except (ValueError, TypeError) as e:
                import warnings

                warnings.warn(f"{name}={value!r} ignored: {e}", RuntimeWarning, stacklevel=3)
            return
    if os.environ.get("NUMEXPR_MAX_THREADS", "").strip():
        # (a cap below this process's CPUs caps the default too, as in numexpr)
        most = _most_threads()
        if most < _native.expression_threads():
            set_num_threads(most)


def cuda_available() -> bool:
    """Whether ``evaluate(..., device="cuda")`` can run here: this build has CUDA support,
    the NVIDIA driver loads and it sees a GPU. (NVRTC is looked for when a kernel is first
    compiled; ``pip install paralelo[cuda]`` brings one.)"""
    if _native.cuda_missing() is not None:
        return False
    try:
        return _native.cuda_device_count() > 0
    except RuntimeError:
        return False


def re_evaluate(local_dict: dict | None = None, global_dict: dict | None = None, _frame_depth: int = 2) -> Any:
    """Evaluates again the expression this thread last evaluated or validated, with the
    operands' current values (numexpr's ``re_evaluate``)."""
    if _last.compiled is None:
        if _last.refused is not None:
            raise _last.refused
        raise RuntimeError("A previous evaluate() execution was not found, please call `validate` or `evaluate` "
                           "once before `re_evaluate`")
    np = _numpy()
    options = dict(_last.kwargs)
    device, returns = options.pop("device"), options.pop("returns")
    if options["out"] is not None:
        options["out"] = options["out"]()  # (None once dropped: a new result, as numexpr's)
    names = _last.names
    arrays = _values(np, names, _looked_up(names, local_dict, global_dict, _frames_up(_frame_depth, 2) + 1), device)
    kinds, stored = _as_kernels_take(np, arrays, options["casting"], device is not None)
    compiled_for = _last.compiled.kinds
    if kinds != compiled_for:
        # The program stays as compiled: inputs of other dtypes are cast to its own under
        # the call's `casting`, as numexpr's re_evaluate casts them.
        casting = options["casting"]
        for i, (have, want) in enumerate(zip(kinds, compiled_for)):
            if have != want:
                if not np.can_cast(have, want, casting=casting):
                    raise TypeError(f"Cannot cast array data from dtype('{have}') to dtype('{want}') according to "
                                    f"the rule '{casting}'")
                arrays[i], stored[i] = arrays[i].astype(want), None
        kinds = list(compiled_for)
    return _dispatch(_last.compiled, arrays, kinds, stored, options, device, returns)


def _run(compiled: Any, arrays: list, kinds: list[str], stored: list[str | None], out: Any, order: str,
         casting: str) -> Any:
    """Runs `compiled` over `arrays` (of the kernel `kinds`, read as `stored` says:
    `_as_kernels_take`)."""
    np = _numpy()
    # An input the expression folded away (`where(1 > 0, 2, x)`) plays no part in the
    # shape, as in numexpr; it is passed as one element, never read.
    reads = compiled.reads
    if not all(reads):
        arrays = [a if used else a[(slice(0, 1),) * a.ndim].reshape(()) if a.size else np.zeros((), a.dtype)
                  for a, used in zip(arrays, reads)]
    shapes = {a.shape for a in arrays}
    shape = shapes.pop() if len(shapes) == 1 else np.broadcast_shapes(*shapes) if shapes else ()
    result_dtype = np.dtype(compiled.out)
    reduction = compiled.reduction
    if reduction is None and isinstance(out, np.ndarray) and out.shape != shape:
        # A larger out= takes the result broadcast to its shape, as numexpr writes it.
        if _broadcasts(np, shape, out.shape):
            shape = out.shape  # (else refused by `_target`, naming both shapes)
    views = arrays if all(a.shape == shape for a in arrays) else [np.broadcast_to(a, shape) for a in arrays]
    ndim = len(shape)
    if reduction is None:
        out_shape = shape
    else:
        name, axis = reduction
        if axis is not None and axis >= ndim:
            raise ValueError("reduction axis is out of bounds")
        out_shape = () if axis is None else shape[:axis] + shape[axis + 1:]
        if axis is not None:
            views = [np.moveaxis(v, axis, -1) for v in views]
        if 0 in shape:
            return _empty_reduction(np, name, out_shape, result_dtype, out, casting)
        if isinstance(out, np.ndarray) and out.shape != out_shape and axis is None:
            # (`sum(x)` into an array of shape (1,), as numexpr writes it)
            if out.size != 1:
                raise ValueError("out argument must have size 1 for a full reduction")  # (as numexpr)
            _target(np, out, out.shape, result_dtype, casting, [], None)
            np.copyto(out, _run(compiled, arrays, kinds, stored, None, order, casting), casting="unsafe")
            return out
    if reduction is None:
        # A new result lies in memory as the inputs do (numpy's order 'K'), and the walk
        # goes in that order, the result's and the inputs' dimensions then merging (a
        # transposed input once cost twice numexpr's time, walked in C's order).
        perm = walk_order(views, order, ndim)
        target = _target(np, out, out_shape, result_dtype, casting, arrays, perm)
        run_on = target if perm is None else target.transpose(perm)
        views = views if perm is None else [v.transpose(perm) for v in views]
        iteration, out_strides = run_on.shape, run_on.strides
    else:
        if reduction[1] is None:
            # (a whole reduction walks its inputs in their memory order too)
            perm = walk_order(views, "K", ndim)
            views = views if perm is None else [v.transpose(perm) for v in views]
            perm = None
        else:
            # (the result of a reduction over an axis lies as its inputs do, that axis aside)
            perm = walk_order([v[..., 0] for v in views], order, ndim - 1)
        target = _target(np, out, out_shape, result_dtype, casting, arrays, perm)
        # (a reduction writes through the result's strides as they are)
        iteration = views[0].shape if views else shape
        out_strides = (0,) * len(iteration) if reduction[1] is None else target.strides + (0,)
    compiled.run_arrays(list(zip(views, kinds, stored)), list(iteration), (target, compiled.out, out_strides))
    if out is not None and target is not out:
        np.copyto(out, target, casting="unsafe")
        return out
    return target


def _broadcasts(np: Any, shape: tuple, to: tuple) -> bool:
    try:
        return np.broadcast_shapes(shape, to) == to
    except ValueError:
        return False


def walk_order(views: list, order: str, ndim: int) -> tuple | None:
    """The axes of `views` (arrays of one shape, of `ndim` dimensions), outermost first,
    in the order a new result lies in memory: `order`'s; for 'A' Fortran's where every
    input lies in it, else C's; for 'K' the inputs' own where every input that tells
    agrees (an axis lies outside another where its stride is the larger, of axes longer
    than 1, neither broadcast), else C's, as numpy's iterator orders them (axes of
    length 1, which tell nothing, outermost); None for C's order."""
    if ndim < 2 or order == "C" or not views:
        return None
    if order == "F":
        return _reversed(ndim)
    if all(v.flags.c_contiguous for v in views):
        return None
    if order == "A":
        return _reversed(ndim) if all(v.flags.f_contiguous for v in views) else None
    shape = views[0].shape
    strides = [[abs(s) if n > 1 else 0 for s, n in zip(v.strides, shape)] for v in views]

    def outside(a: int, b: int) -> bool:
        told = False
        for st in strides:
            if st[a] and st[b]:
                if st[a] <= st[b]:
                    return False
                told = True
        return told

    axes = [d for d in range(ndim) if shape[d] != 1]
    for i in range(1, len(axes)):
        ax, at = axes[i], i
        while at > 0 and outside(ax, axes[at - 1]):
            at -= 1
        axes.insert(at, axes.pop(i))
    if axes == sorted(axes):
        return None
    return tuple(d for d in range(ndim) if shape[d] == 1) + tuple(axes)


def _reversed(ndim: int) -> tuple:
    return tuple(range(ndim - 1, -1, -1))


def _target(np: Any, out: Any, shape: tuple, dtype: Any, casting: str, arrays: list, perm: tuple | None) -> Any:
    """The array the engine writes: `out` itself when it can, else a new one (copied into
    `out` afterwards), its axes in memory in `perm`'s order (outermost first; None: C's)."""
    if out is None:
        return _new(np, shape, dtype, perm)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"output array has shape {out.shape}, the result has {tuple(shape)}")
    if not out.flags.writeable:
        raise ValueError("output array is read-only")
    if not np.can_cast(dtype, out.dtype, casting=casting):
        raise TypeError(f"Iterator requested dtype could not be cast from dtype('{dtype}') to dtype('{out.dtype}'), "
                        f"the operand 0 dtype, according to the rule '{casting}'")
    if (out.dtype != dtype or not out.dtype.isnative or any(np.may_share_memory(out, a) for a in arrays)
            or any(s == 0 and n > 1 for s, n in zip(out.strides, out.shape))):
        # (an output that is also an input, or whose elements are one another (a stride of
        # 0: threads would write them at once), is written once the result is whole)
        return _new(np, shape, dtype, perm)
    return out


def _new(np: Any, shape: tuple, dtype: Any, perm: tuple | None) -> Any:
    if perm is None:
        return _recycled.empty(np, shape, dtype, "C")
    back = [0] * len(perm)
    for i, axis in enumerate(perm):
        back[axis] = i
    return _recycled.empty(np, tuple(shape[axis] for axis in perm), dtype, "C").transpose(back)


def _empty_reduction(np: Any, name: str, shape: tuple, dtype: Any, out: Any, casting: str) -> Any:
    if name in ("min", "max"):
        raise ValueError(f"zero-size array to reduction operation {name}imum which has no identity")
    result = (np.zeros if name == "sum" else np.ones)(shape, dtype)
    if out is None:
        return result
    _target(np, out, shape, dtype, casting, [], None)
    np.copyto(out, result, casting="unsafe")
    return out
