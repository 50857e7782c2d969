"""``evaluate(..., device="cuda")``: the expression compiled into CUDA kernels (NVRTC) and
run on a GPU.

Inputs may be numpy arrays (copied to the device for the call) or any array with
``__cuda_array_interface__`` (cupy, torch, numba: read in place, any layout). The result
is a device array when an input or ``out`` is one, or ``returns="device"`` asks; numpy
otherwise, or when ``returns="numpy"`` asks. A device result comes back as the inputs'
library has it (cupy, torch) or as a :class:`DeviceArray`.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import threading
from typing import Any

__all__ = ["DeviceArray"]

_RETURNS = (None, "numpy", "device")
_nvrtc_lock = threading.Lock()
_nvrtc_tried = False


#: `ordinal("cuda")`: the device the inputs are on, or the first.
INPUTS_DEVICE = -1


def ordinal(device: str) -> int | None:
    """The CUDA device `device` names ('cuda:N'; 'cuda': `INPUTS_DEVICE`); None for 'cpu'."""
    if device == "cpu":
        return None
    m = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return INPUTS_DEVICE if m.group(1) is None else int(m.group(1))


_ready: Any = None


def _native_cuda() -> Any:
    """The native module, once CUDA is known usable here (else a clear RuntimeError)."""
    global _ready
    if _ready is None:
        from . import _native

        missing = _native.cuda_missing()
        if missing is not None:
            raise RuntimeError(missing)
        _preload_nvrtc()
        _ready = _native
    return _ready


def _preload_nvrtc() -> None:
    """Loads NVRTC from a pip wheel (``nvidia-cuda-nvrtc-cu12``, which cupy and torch
    install) when the system has none on its library path: the engine asks the dynamic
    loader for ``libnvrtc.so.12``, which then finds the one already loaded."""
    global _nvrtc_tried
    with _nvrtc_lock:
        if _nvrtc_tried:
            return
        _nvrtc_tried = True
        try:
            spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
        except (ImportError, ValueError):
            return
        for folder in list(spec.submodule_search_locations or []) if spec else []:
            for lib in sorted(glob.glob(os.path.join(folder, "lib", "libnvrtc.so.*"))):
                if ".alt." in lib or "builtins" in lib:
                    continue
                try:
                    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                    return
                except OSError:
                    pass


class DeviceArray:
    """An array in GPU memory that paralelo allocated: what ``evaluate(device="cuda")``
    returns when asked for a device result and no input came from cupy or torch.

    It has ``__cuda_array_interface__``, so ``cupy.asarray(a)``, ``torch.as_tensor(a,
    device="cuda")`` and numba take it without a copy; ``get()`` (or ``numpy.asarray``)
    copies it to the host. The memory is freed with the last reference to it."""

    __slots__ = ("_buffer", "shape", "dtype", "strides", "__weakref__")

    def __init__(self, buffer: Any, shape: tuple, dtype: Any, strides: tuple) -> None:
        self._buffer = buffer
        self.shape = tuple(shape)
        self.dtype = dtype
        self.strides = tuple(strides)

    @property
    def device(self) -> str:
        return f"cuda:{self._buffer.device}"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self._buffer.ptr, False),
                "strides": self.strides, "version": 3}

    def get(self) -> Any:
        """A numpy copy, on the host."""
        import numpy as np

        fortran = self.ndim > 1 and self.strides == _contiguous_strides(self.shape, self.dtype.itemsize, True)
        host = np.empty(self.shape, self.dtype, order="F" if fortran else "C")
        _download(self._buffer.device, self._buffer.ptr, host)
        return host

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        host = self.get()
        return host if dtype is None else host.astype(dtype)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


def _download(device: int, ptr: int, host: Any) -> None:
    """Copies device memory at `ptr` into the contiguous numpy array `host`."""
    if host.nbytes:
        _native_cuda().cuda_copy(device, ptr, host.__array_interface__["data"][0], host.nbytes, False)


def _upload(native: Any, device: int, host: Any, buffer: Any = None) -> Any:
    """A device copy of the contiguous numpy array `host` (into `buffer` if given)."""
    if buffer is None:
        buffer = native.DeviceBuffer.empty(device, host.nbytes)
    if host.nbytes:
        native.cuda_copy(device, buffer.ptr, host.__array_interface__["data"][0], host.nbytes, True)
    return buffer


class Input:
    """A device array given to ``evaluate``: where its elements are, read from its
    ``__cuda_array_interface__``; `owner` keeps it alive for the call."""

    __slots__ = ("owner", "ptr", "shape", "strides", "dtype", "stream", "readonly")

    def __init__(self, owner: Any, ptr: int, shape: tuple, strides: tuple, dtype: Any, stream: Any = None,
                 readonly: bool = False) -> None:
        self.owner, self.ptr, self.shape, self.strides, self.dtype = owner, ptr, shape, strides, dtype
        self.stream, self.readonly = stream, readonly

    @classmethod
    def of(cls, np: Any, obj: Any) -> Input:
        iface = obj.__cuda_array_interface__
        if iface.get("mask") is not None:
            raise ValueError("masked device arrays are not supported: fill the masked elements first")
        dtype = np.dtype(iface["typestr"])
        shape = tuple(iface["shape"])
        strides = iface.get("strides")
        if strides is None:
            strides = _contiguous_strides(shape, dtype.itemsize)
        ptr = iface["data"][0] or 0
        if ptr % dtype.alignment or any(s % dtype.alignment for s in strides):
            raise ValueError(f"a device array of {dtype} is not aligned: paralelo's GPU kernels read aligned "
                             f"elements (copy it first)")
        return cls(obj, ptr, shape, tuple(strides), dtype, iface.get("stream"), bool(iface["data"][1]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def layout_vote(self) -> int:
        """1 if it lies in Fortran's order only, -1 in C's only, 0 both or neither (as
        numpy's flags would say)."""
        size = self.dtype.itemsize

        def matches(want: tuple) -> bool:
            # (a dimension of one element has no say, as in numpy's relaxed strides)
            return all(n == 1 or s == w for n, s, w in zip(self.shape, self.strides, want))

        f = matches(_contiguous_strides(self.shape, size, True))
        c = matches(_contiguous_strides(self.shape, size))
        return int(f) - int(c)

    def astype(self, kind: str) -> Any:
        raise TypeError(f"paralelo's GPU kernels take bool, int32, int64, float32, float64 and complex128 device "
                        f"arrays, not {self.dtype} (convert it with .astype first)")


def _contiguous_strides(shape: tuple, itemsize: int, fortran: bool = False) -> tuple:
    strides = []
    step = itemsize
    for n in (shape if fortran else reversed(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(strides if fortran else reversed(strides))


def _broadcast_strides(shape: tuple, strides: tuple, target: tuple) -> tuple:
    """`strides` for an array of `shape` read as `target` (numpy's broadcasting: 0 where
    it repeats)."""
    lead = len(target) - len(shape)
    return tuple(0 if i < lead or shape[i - lead] == 1 and target[i] != 1 else strides[i - lead]
                 for i in range(len(target)))


def _span(ptr: int, shape: tuple, strides: tuple, itemsize: int) -> tuple[int, int]:
    """The bytes [lo, hi) an array's elements lie in."""
    lo = hi = ptr
    for n, s in zip(shape, strides):
        if n == 0:
            return ptr, ptr
        if s > 0:
            hi += s * (n - 1)
        else:
            lo += s * (n - 1)
    return lo, hi + itemsize


def run(np: Any, compiled: Any, arrays: list, kinds: list[str], out: Any, order: str, casting: str,
        returns: str | None, device: int) -> Any:
    """Runs `compiled` on GPU `device` over `arrays` (numpy arrays or `Input`s, already of
    the kernel `kinds`), as `expressions._run` does on the CPU."""
    if returns not in _RETURNS:
        raise ValueError(f"returns must be 'numpy' or 'device', not {returns!r}")
    native = _native_cuda()
    # `out` read once, as a device array, if it is one.
    out_input = Input.of(np, out) if hasattr(out, "__cuda_array_interface__") else None
    if out_input is not None and returns == "numpy":
        raise ValueError("returns='numpy' with a device out=: the result is written into out")
    on_device = out_input is not None or any(isinstance(a, Input) for a in arrays)
    to_device = returns == "device" or (returns is None and on_device)
    device_arrays = [a for a in [*arrays, out_input] if isinstance(a, Input)]
    device = _device_of(native, device_arrays, device)
    reads = compiled.reads
    shape = np.broadcast_shapes(*(a.shape for a, used in zip(arrays, reads) if used)) if any(reads) else ()
    result_dtype = np.dtype(compiled.out)
    reduction = compiled.reduction
    out_shape = shape
    if reduction is not None:
        axis = reduction[1]
        if axis is not None and axis >= len(shape):
            raise ValueError("reduction axis is out of bounds")
        out_shape = () if axis is None else shape[:axis] + shape[axis + 1:]
        if 0 in shape:
            from .expressions import _empty_reduction

            host = _empty_reduction(np, reduction[0], out_shape, result_dtype, None, casting)
            return _deliver_host(np, native, host, out, out_input, casting, to_device, arrays, device)
    # Each input on the device: its address, and its strides over the iteration shape.
    keep = []
    described: list[list] = []
    for a, kind, used in zip(arrays, kinds, reads):
        if isinstance(a, Input):
            ptr, a_shape, a_strides = a.ptr, a.shape, a.strides
        else:
            # (uploaded as it lies when it is one block of memory, C's or Fortran's order)
            whole = a.flags.c_contiguous or a.flags.f_contiguous
            host = (a if whole else np.ascontiguousarray(a)) if used else np.zeros((), a.dtype)
            buffer = _upload(native, device, host)
            keep.append(buffer)
            ptr, a_shape, a_strides = buffer.ptr, host.shape, host.strides
        strides = _broadcast_strides(a_shape, a_strides, shape) if used else (0,) * len(shape)
        described.append([ptr, kind, strides])
    fortran = _keeps_fortran(arrays, order, len(out_shape))
    # Work queued on another library's stream, on an input or on `out`, is waited for (the
    # legacy and per-thread default streams, 1 and 2, are ordered with ours already).
    streams = {a.stream for a in device_arrays if isinstance(a.stream, int) and a.stream > 2}
    for stream in sorted(streams):
        native.cuda_wait_stream(device, stream)
    target, target_ptr, target_strides = _device_target(np, native, out, out_input, out_shape, result_dtype,
                                                        fortran, device, arrays, reduction is None)
    iteration = list(shape)
    if reduction is None:
        out_strides = target_strides
    elif reduction[1] is None:
        out_strides = (0,) * len(shape)
    else:
        axis = reduction[1]
        iteration = list(shape[:axis] + shape[axis + 1:] + shape[axis:axis + 1])
        for d in described:
            s = d[2]
            d[2] = s[:axis] + s[axis + 1:] + s[axis:axis + 1]
        out_strides = tuple(target_strides) + (0,)
    _launch(compiled, device, [tuple(d) for d in described], iteration, (target_ptr, compiled.out, out_strides))
    del keep
    if target is out:
        return out
    result = DeviceArray(target, out_shape, result_dtype, target_strides)
    if out is not None:  # (a numpy out=)
        _copy_into(np, result.get(), out, casting)
        return out
    return _wrapped(result, arrays, device) if to_device else result.get()


def _device_of(native: Any, device_arrays: list, device: int) -> int:
    """The device to run on: the one asked for, which every device array (inputs and
    `out`) must be on; for plain 'cuda', theirs (or the first device)."""
    where: dict[int, Input] = {}
    for a in device_arrays:
        if a.ptr:
            where.setdefault(native.cuda_pointer_device(a.ptr), a)
    if device == INPUTS_DEVICE:
        if len(where) > 1:
            raise ValueError(f"the device arrays are on different GPUs ({sorted(where)}): copy them to one")
        return next(iter(where), 0)
    for d in where:
        if d != device:
            raise ValueError(f"a device array is on cuda:{d}, not cuda:{device}: pass device='cuda:{d}' or "
                             f"copy it")
    return device


def _launch(compiled: Any, device: int, inputs: list, shape: list, out: tuple) -> None:
    """Runs the kernels (the one step the tests' host stand-in for a GPU replaces)."""
    compiled.run_cuda(device, inputs, shape, out)


def _device_target(np: Any, native: Any, out: Any, target: Input | None, shape: tuple, dtype: Any, fortran: bool,
                   device: int, arrays: list, elementwise: bool) -> tuple:
    """The device memory the kernels write: `out` itself when it is a device array
    (`target`, its dtype the result's), else a new buffer; with its address and strides."""
    if target is not None:
        if target.shape != tuple(shape):
            raise ValueError(f"output array has shape {target.shape}, the result has {tuple(shape)}")
        if target.dtype != dtype:
            raise TypeError(f"a device out= must have the result's dtype {dtype}, not {target.dtype}")
        if target.readonly:
            raise ValueError("output array is read-only")
        if any(s == 0 and n > 1 for s, n in zip(target.strides, target.shape)):
            raise ValueError("output array repeats elements (a stride of 0): give one with its own memory")
        lo, hi = _span(target.ptr, target.shape, target.strides, dtype.itemsize)
        for a in arrays:
            if isinstance(a, Input):
                a_lo, a_hi = _span(a.ptr, a.shape, a.strides, a.dtype.itemsize)
                same = elementwise and a.ptr == target.ptr and a.shape == target.shape and a.strides == target.strides
                if a_lo < hi and lo < a_hi and not same:
                    raise ValueError("out= overlaps an input in another layout on the device: give a separate array")
        return out, target.ptr, target.strides
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy or device array, not {type(out).__name__}")
        if out.shape != tuple(shape):
            raise ValueError(f"output array has shape {out.shape}, the result has {tuple(shape)}")
    strides = _contiguous_strides(tuple(shape), dtype.itemsize, fortran)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    buffer = native.DeviceBuffer.empty(device, nbytes)
    return buffer, buffer.ptr, strides


def _copy_into(np: Any, result: Any, out: Any, casting: str) -> None:
    from .expressions import _target

    _target(np, out, result.shape, result.dtype, casting, [], None)
    np.copyto(out, result, casting="unsafe")


def _deliver_host(np: Any, native: Any, host: Any, out: Any, target: Input | None, casting: str, to_device: bool,
                  arrays: list, device: int) -> Any:
    """A result computed on the host (an empty reduction) where the call wants it (`target`:
    `out` as a device array, if it is one)."""
    if out is not None and target is None:
        _copy_into(np, host, out, casting)
        return out
    if out is None and not to_device:
        return host
    host = np.ascontiguousarray(host)
    if out is None:
        return _wrapped(DeviceArray(_upload(native, device, host), host.shape, host.dtype, host.strides), arrays,
                        device)
    assert target is not None  # (out is a device array)
    if target.shape != host.shape or target.dtype != host.dtype:
        raise ValueError(f"output array has shape {target.shape} and dtype {target.dtype}, the result has "
                         f"{host.shape} and {host.dtype}")
    if target.strides != host.strides:
        raise ValueError("an empty reduction into a device out= array needs a C-contiguous one")
    _upload(native, device, host, target)
    return out


def _wrapped(result: DeviceArray, arrays: list, device: int) -> Any:
    """`result` as the inputs' library has device arrays: cupy's, torch's, else itself."""
    for a in arrays:
        if not isinstance(a, Input):
            continue
        module = type(a.owner).__module__.split(".")[0]
        if module == "cupy":
            import cupy

            return cupy.asarray(result)
        if module == "torch":
            import torch

            return torch.as_tensor(result, device=f"cuda:{device}")
    return result


def _layout(a: Any) -> int:
    """1 if `a` lies in Fortran's order only, -1 in C's only, 0 both or neither."""
    vote = getattr(a, "layout_vote", None)  # (a device array's)
    if vote is not None:
        return int(vote)
    flags = a.flags
    return int(flags.f_contiguous) - int(flags.c_contiguous)


def _keeps_fortran(arrays: list, order: str, ndim: int) -> bool:
    """Whether a device result of `ndim` dimensions is made in Fortran's order: asked
    for, or ('K', 'A') some input with dimensions lies in it and none in C's (an input
    that is both, a column, has no say). (A device array tells its layout by a vote, not
    by strides the host's `expressions.walk_order` could sort.)"""
    if order == "F":
        return True
    if order not in "KA" or ndim < 2:
        return False
    votes = {_layout(a) for a in arrays if a.ndim > 1}
    return 1 in votes and -1 not in votes
