"""``paralelo.evaluate(..., device="cuda")``.

Three layers, so that most of it is checked on machines without a GPU:

* the kernels themselves (source, launch plan, reductions) run on the CPU in the Rust
  tests (``crates/paralelo-expr/tests/cuda_emulated.rs``), and NVRTC compiles them there
  and here where it is installed;
* the Python side (uploads, broadcasting, axes, ``out=``, what comes back) runs here
  against a stand-in GPU whose memory is host memory and whose kernels are the CPU
  engine's, compared with numexpr;
* on a machine with a GPU, the real thing against the CPU engine (skipped elsewhere).
"""

from __future__ import annotations

import ctypes
import importlib.util

import numpy as np
import pytest

import paralelo
from paralelo import _device, _native

numexpr = pytest.importorskip("numexpr")


def _gpu() -> str | None:
    """Why there is no usable GPU here (None: there is one)."""
    try:
        paralelo.evaluate("x + 1", local_dict={"x": np.zeros(2)}, device="cuda")
    except (RuntimeError, ValueError) as e:
        return str(e)
    return None


_NO_GPU = _gpu()
needs_gpu = pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")


# --- Without a GPU ------------------------------------------------------------------------

@pytest.mark.skipif(_NO_GPU is None, reason="this machine has a GPU")
def test_without_a_gpu_the_error_says_what_is_missing():
    with pytest.raises((RuntimeError, ValueError)) as e:
        paralelo.evaluate("x * 2", local_dict={"x": np.ones(3)}, device="cuda")
    missing = _native.cuda_missing()
    if missing is not None:  # (no driver, or no CUDA in this build: that very reason)
        assert str(e.value) == missing
    else:  # (a driver without a device)
        assert "there is no CUDA device 0" in str(e.value)


def test_device_names_and_returns_are_checked():
    x = np.ones(3)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        paralelo.evaluate("x * 2", device="gpu")
    with pytest.raises(ValueError, match="needs a device"):
        paralelo.evaluate("x * 2", returns="device")
    assert paralelo.evaluate("x * 2", returns="numpy").tolist() == [2.0, 2.0, 2.0]
    assert _device.ordinal("cuda") == _device.INPUTS_DEVICE and _device.ordinal("cuda:3") == 3
    assert _device.ordinal("cpu") is None


def test_returns_validate_and_cuda_available():
    x = np.ones(3)
    with pytest.raises(ValueError, match="returns must be 'numpy' or 'device', not 'bogus'"):
        paralelo.evaluate("x * 2", returns="bogus")
    assert paralelo.validate("x * 2", device="cpu") is None
    assert isinstance(paralelo.validate("x * 2", returns="device"), ValueError)
    assert isinstance(paralelo.validate("x * 2", device="gpu"), ValueError)
    assert paralelo.cuda_available() is (_NO_GPU is None)


def test_a_plain_object_with_a_device_interface_on_the_cpu_names_the_device_keyword():
    class Plain:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f8", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="'g' is a GPU array: evaluate with device='cuda'"):
        paralelo.evaluate("g + 1", local_dict={"g": Plain()})


def test_a_gpu_array_given_to_the_cpu_names_the_device_keyword():
    class Unconvertible:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f8", "data": (0, False), "version": 3}

        def __array__(self, *a, **k):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    with pytest.raises(TypeError, match="'g' is a GPU array: evaluate with device='cuda'"):
        paralelo.evaluate("g + 1", local_dict={"g": Unconvertible()})


_HAS_NVRTC_WHEEL = importlib.util.find_spec("nvidia") is not None and (
    importlib.util.find_spec("nvidia.cuda_nvrtc") is not None)


NVRTC_SCRIPT = """
import sys
from paralelo import _device, _native

# The wheel cupy and torch install: found and loaded without LD_LIBRARY_PATH.
_device._preload_nvrtc()
for ex, kind in CASES:
    names = _native.expression_names(ex)
    compiled = _native.Expression(ex, [(n, kind) for n in names], "aggressive")
    for ndim in (1, 3):
        ptx = _native.cuda_compile(compiled.cuda_source(ndim), "sm_80")
        entry = "px_map" if compiled.reduction is None else "px_partial"
        assert f".entry {entry}" in ptx, (ex, kind)
        # What a GPU loads: machine code, which any driver of CUDA 12 runs (PTX from a
        # newer NVRTC than the driver would be refused).
        assert _native.cuda_compile_cubin(compiled.cuda_source(ndim), "sm_90")[:4] == b"\\x7fELF"
try:
    _native.cuda_compile('extern "C" __global__ void k() { undefined_thing(); }')
except RuntimeError as e:
    assert "NVRTC could not compile" in str(e) and "undefined_thing" in str(e), e
else:
    sys.exit("a bad kernel compiled")
print("compiled", len(CASES))
"""


@pytest.mark.skipif(not hasattr(_native, "cuda_compile"), reason="built without CUDA")
@pytest.mark.skipif(not _HAS_NVRTC_WHEEL, reason="NVRTC (nvidia-cuda-nvrtc-cu12) is not installed")
def test_nvrtc_from_a_pip_wheel_compiles_the_kernels():
    # In an interpreter of its own, as a user's first call would load it (and NVRTC's 70
    # MB of pages stay out of the test process, which pool tests fork from).
    import subprocess
    import sys

    cases = [("2*a + 3*b", "float64"), ("where(a > 0.5, sin(a)**2, cos(b))", "float64"), ("a*b + c", "float32"),
             ("sum(a*a)", "float64"), ("prod(a, axis=1)", "complex128"), ("a // b + a % b << 2", "int32"),
             ("max(a - b, axis=0)", "int64"), ("a & ~b | c", "bool"), ("arctanh(a) + expm1(b) ** c", "complex128")]
    run = subprocess.run([sys.executable, "-c", f"CASES = {cases!r}\n" + NVRTC_SCRIPT], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["compiled", str(len(cases))]


def test_the_kernel_source_is_cuda_for_each_program():
    compiled = _native.Expression("sum(x * y, axis=1)", [("x", "float32"), ("y", "float32")], "aggressive")
    src = compiled.cuda_source(2)
    for kernel in ("px_partial", "px_finish", "px_rows"):
        assert f'extern "C" __global__ void {kernel}(const px_args a)' in src
    assert "typedef double px_acc;" in src  # (float32 sums fold in double)
    assert "#define PX_NDIM 2" in src


# --- The Python side, on a stand-in GPU ---------------------------------------------------

class _HostBuffer:
    """Device memory stood in for by host memory."""

    def __init__(self, device: int, nbytes: int) -> None:
        self._mem = np.empty(max(nbytes, 1) + 16, np.uint8)
        self.ptr = self._mem.ctypes.data + (-self._mem.ctypes.data) % 16
        self.nbytes = nbytes
        self.device = device


class _HostNative:
    """The native module's device functions, on host memory: every pointer on device 0
    but those `elsewhere` names; streams waited for are recorded."""

    elsewhere: dict = {}
    waited: list = []

    class DeviceBuffer:
        empty = staticmethod(_HostBuffer)

    @classmethod
    def cuda_pointer_device(cls, ptr: int) -> int:
        return cls.elsewhere.get(ptr, 0)

    @classmethod
    def cuda_wait_stream(cls, device: int, stream: int) -> None:
        cls.waited.append((device, stream))

    @staticmethod
    def cuda_copy(device: int, device_addr: int, host: int, nbytes: int, upload: bool) -> None:
        if upload:
            ctypes.memmove(device_addr, host, nbytes)
        else:
            ctypes.memmove(host, device_addr, nbytes)


class FakeDeviceArray:
    """A 'device' array (host memory behind ``__cuda_array_interface__``)."""

    def __init__(self, array: np.ndarray, readonly: bool = False, **extra) -> None:
        self.array = array
        self.readonly = readonly
        self.extra = extra

    @property
    def __cuda_array_interface__(self) -> dict:
        a = self.array
        return {"shape": a.shape, "typestr": a.dtype.str, "data": (a.__array_interface__["data"][0], self.readonly),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3, **self.extra}


@pytest.fixture
def host_gpu(monkeypatch):
    """A GPU whose memory is host memory and whose kernels are the CPU engine's."""
    launches = []

    def launch(compiled, device, inputs, shape, out):
        launches.append((device, shape))
        # (a GPU thread reads its element before writing it; the CPU engine takes no input
        # at its output: an input there is read from a copy of its memory)
        keep = []
        for k, (addr, kind, strides) in enumerate(inputs):
            if addr == out[0]:
                low = sum(min(0, (n - 1) * st) for n, st in zip(shape, strides))
                high = sum(max(0, (n - 1) * st) for n, st in zip(shape, strides)) + np.dtype(kind).itemsize
                copy = np.empty(high - low, np.uint8)
                ctypes.memmove(copy.ctypes.data, addr + low, high - low)
                keep.append(copy)
                inputs[k] = (copy.ctypes.data - low, kind, strides)
        compiled.run(inputs, shape, out)

    monkeypatch.setattr(_device, "_native_cuda", lambda: _HostNative)
    monkeypatch.setattr(_device, "_launch", launch)
    monkeypatch.setattr(_HostNative, "elsewhere", {})
    monkeypatch.setattr(_HostNative, "waited", [])
    return launches


rng = np.random.default_rng(7)
A = rng.random((6, 5))
B = rng.random((6, 5))
EXPRESSIONS = ["2*a + 3*b", "where(a > 0.5, sin(a)**2, cos(b))", "sum(a*b)", "sum(a*b, axis=0)",
               "prod(a + 1, axis=1)", "a > b", "complex(a, b) * 2j"]


@pytest.mark.parametrize("ex", EXPRESSIONS)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "broadcast", "fortran", "transposed"])
def test_numpy_inputs_give_numexprs_results(host_gpu, ex, layout):
    a, b = A.copy(), B.copy()
    if layout == "strided":
        a = np.repeat(A, 2, axis=1)[:, ::2]
    elif layout == "broadcast":
        b = B[0]
    elif layout == "fortran":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    elif layout == "transposed":
        a = np.ascontiguousarray(A.T).T
    got = paralelo.evaluate(ex, local_dict={"a": a, "b": b}, device="cuda")
    want = numexpr.evaluate(ex, local_dict={"a": a, "b": b})
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert host_gpu and host_gpu[0][0] == 0


@pytest.mark.parametrize("ex", EXPRESSIONS)
def test_device_inputs_give_a_device_array(host_gpu, ex):
    a, b = FakeDeviceArray(A), FakeDeviceArray(np.asfortranarray(B))
    _HostNative.elsewhere = {a.array.ctypes.data: 1, b.array.ctypes.data: 1}
    got = paralelo.evaluate(ex, local_dict={"a": a, "b": b}, device="cuda:1")
    want = numexpr.evaluate(ex, local_dict={"a": A, "b": B})
    assert isinstance(got, _device.DeviceArray)
    assert got.shape == want.shape and got.dtype == want.dtype and got.device == "cuda:1"
    np.testing.assert_allclose(got.get(), want, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14)
    iface = got.__cuda_array_interface__
    assert iface["shape"] == want.shape and iface["typestr"] == want.dtype.str and iface["version"] == 3
    as_numpy = paralelo.evaluate(ex, local_dict={"a": a, "b": b}, device="cuda", returns="numpy")
    np.testing.assert_allclose(as_numpy, want, rtol=1e-14)


def test_numpy_inputs_can_ask_for_a_device_result(host_gpu):
    got = paralelo.evaluate("a * b", local_dict={"a": A, "b": B}, device="cuda", returns="device")
    assert isinstance(got, _device.DeviceArray) and got.size == A.size and got.ndim == 2 and len(got) == 6
    assert got.nbytes == A.nbytes and "DeviceArray(shape=(6, 5)" in repr(got)
    np.testing.assert_array_equal(got.get(), A * B)
    with pytest.raises(ValueError, match="returns must be"):
        paralelo.evaluate("a * b", local_dict={"a": A, "b": B}, device="cuda", returns="cupy")


def test_out_on_the_host_and_on_the_device(host_gpu):
    out = np.empty((6, 5), np.float32)
    assert paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=out, device="cuda") is out
    np.testing.assert_allclose(out, (A + B).astype(np.float32))
    with pytest.raises(TypeError, match="could not be cast"):
        paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=np.empty((6, 5), np.int32), device="cuda")
    dev_out = FakeDeviceArray(np.empty((6, 5)))
    assert paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=dev_out, device="cuda") is dev_out
    np.testing.assert_array_equal(dev_out.array, A + B)
    with pytest.raises(TypeError, match="must have the result's dtype float64"):
        paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=FakeDeviceArray(np.empty((6, 5), np.float32)),
                          device="cuda")
    with pytest.raises(ValueError, match="shape"):
        paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=FakeDeviceArray(np.empty(30)), device="cuda")
    with pytest.raises(ValueError, match="read-only"):
        paralelo.evaluate("a + b", local_dict={"a": A, "b": B}, out=FakeDeviceArray(np.empty((6, 5)), True),
                          device="cuda")


def test_out_may_be_an_input_itself_but_not_overlap_it_otherwise(host_gpu):
    x = np.arange(10.0)
    dx = FakeDeviceArray(x)
    paralelo.evaluate("x * 2", local_dict={"x": dx}, out=dx, device="cuda")
    np.testing.assert_array_equal(x, np.arange(10.0) * 2)
    with pytest.raises(ValueError, match="overlaps an input"):
        paralelo.evaluate("x * 2", local_dict={"x": FakeDeviceArray(x[1:])}, out=FakeDeviceArray(x[:-1]),
                          device="cuda")


def test_device_arrays_of_other_dtypes_or_unaligned_are_refused(host_gpu):
    with pytest.raises(TypeError, match="not int16 .*astype"):
        paralelo.evaluate("x + 1", local_dict={"x": FakeDeviceArray(np.arange(4, dtype=np.int16))}, device="cuda")
    raw = np.zeros(41, np.uint8)
    unaligned = raw[1:].view(np.float64)
    with pytest.raises(ValueError, match="not aligned"):
        paralelo.evaluate("x + 1", local_dict={"x": FakeDeviceArray(unaligned)}, device="cuda")
    # Host arrays of such dtypes widen as numexpr widens them.
    got = paralelo.evaluate("x + 1", local_dict={"x": np.arange(4, dtype=np.int16)}, device="cuda")
    assert got.dtype == np.int32 and got.tolist() == [1, 2, 3, 4]


def test_empty_reductions_scalars_and_folded_inputs(host_gpu):
    empty = np.zeros((0, 3))
    assert paralelo.evaluate("sum(e)", local_dict={"e": empty}, device="cuda") == 0.0
    np.testing.assert_array_equal(paralelo.evaluate("prod(e, axis=0)", local_dict={"e": empty}, device="cuda"),
                                  np.ones(3))
    dev_zero = paralelo.evaluate("sum(e, axis=0)", local_dict={"e": FakeDeviceArray(empty)}, device="cuda")
    np.testing.assert_array_equal(dev_zero.get(), np.zeros(3))
    assert paralelo.evaluate("x * 2 + 1", local_dict={"x": np.float64(3)}, device="cuda") == 7.0
    got = paralelo.evaluate("where(1 > 0, a, x)", local_dict={"a": A, "x": np.zeros(3)}, device="cuda")
    np.testing.assert_array_equal(got, A)
    with pytest.raises(ValueError, match="axis is out of bounds"):
        paralelo.evaluate("sum(a, axis=2)", local_dict={"a": A}, device="cuda")


def test_the_device_is_the_inputs_and_must_be_theirs(host_gpu):
    a, b = FakeDeviceArray(A), FakeDeviceArray(B)
    _HostNative.elsewhere = {a.array.ctypes.data: 2, b.array.ctypes.data: 2}
    paralelo.evaluate("a + b", device="cuda")
    assert host_gpu[-1][0] == 2  # ('cuda': where the inputs are)
    with pytest.raises(ValueError, match="on cuda:2, not cuda:0"):
        paralelo.evaluate("a + b", device="cuda:0")
    _HostNative.elsewhere = {a.array.ctypes.data: 1, b.array.ctypes.data: 2}
    with pytest.raises(ValueError, match="different GPUs"):
        paralelo.evaluate("a + b", device="cuda")


def test_work_on_another_librarys_stream_is_waited_for(host_gpu):
    a = FakeDeviceArray(A, stream=0xBEEF)
    b = FakeDeviceArray(B, stream=1)  # (the legacy default stream: ordered with ours)
    paralelo.evaluate("a + b", device="cuda")
    assert _HostNative.waited == [(0, 0xBEEF)]
    out = FakeDeviceArray(np.empty((6, 5)), stream=0xCAFE)
    paralelo.evaluate("a + b", device="cuda", out=out)
    assert _HostNative.waited[1:] == [(0, 0xBEEF), (0, 0xCAFE)]


def test_masks_repeated_outputs_and_contradictions_are_refused(host_gpu):
    with pytest.raises(ValueError, match="masked"):
        paralelo.evaluate("a + 1", local_dict={"a": FakeDeviceArray(A, mask=(0, False))}, device="cuda")
    repeated = FakeDeviceArray(np.broadcast_to(np.zeros(5), (6, 5)))
    with pytest.raises(ValueError, match="repeats elements"):
        paralelo.evaluate("a + 1", local_dict={"a": A}, out=repeated, device="cuda")
    with pytest.raises(ValueError, match="returns='numpy' with a device out="):
        paralelo.evaluate("a + 1", local_dict={"a": A}, out=FakeDeviceArray(np.empty((6, 5))), device="cuda",
                          returns="numpy")


def test_order_k_keeps_fortran_order_as_on_the_cpu(host_gpu):
    fa, fb = np.asfortranarray(A), np.asfortranarray(B)
    for inputs in ({"a": fa, "b": fb}, {"a": FakeDeviceArray(fa), "b": FakeDeviceArray(fb)}):
        got = paralelo.evaluate("a * b", local_dict=inputs, device="cuda", returns="numpy")
        assert got.flags.f_contiguous and not got.flags.c_contiguous
        np.testing.assert_array_equal(got, A * B)
    c = paralelo.evaluate("a * b", local_dict={"a": fa, "b": fb}, device="cuda", order="C")
    assert c.flags.c_contiguous
    # A column is both C's and Fortran's order, on the device as on the host.
    col = np.ones((6, 1))
    for inputs in ({"a": fa, "b": col}, {"a": FakeDeviceArray(fa), "b": FakeDeviceArray(col)}):
        got = paralelo.evaluate("a + b", local_dict=inputs, device="cuda", returns="numpy")
        assert got.flags.f_contiguous and not got.flags.c_contiguous


def test_re_evaluate_runs_on_the_device_again(host_gpu):
    a = FakeDeviceArray(A)
    first = paralelo.evaluate("a * 3", device="cuda")
    a = FakeDeviceArray(B)
    again = paralelo.re_evaluate()
    assert isinstance(first, _device.DeviceArray) and isinstance(again, _device.DeviceArray)
    np.testing.assert_array_equal(again.get(), B * 3)
    assert len(host_gpu) == 2


def test_a_main_script_on_the_stand_in_gpu_matches_numexpr(tmp_path):
    # As a user writes it: names in the script's own frame, numpy imported first.
    script = tmp_path / "gpu_script.py"
    script.write_text(
        "import ctypes, sys\n"
        "import numpy as np\n"
        "import paralelo\n"
        "from paralelo import _device\n"
        "sys.path.insert(0, %r)\n"
        "from test_expressions_cuda import _HostNative\n"
        "_device._native_cuda = lambda: _HostNative\n"
        "_device._launch = lambda c, d, i, s, o: c.run(i, s, o)\n"
        "def main():\n"
        "    x = np.linspace(0, 1, 10_001)\n"
        "    y = x[::-1].copy()\n"
        "    print(repr(float(paralelo.evaluate('sum(x*x)', device='cuda'))))\n"
        "    print(paralelo.evaluate('where(x > y, sin(x)**2, cos(y))', device='cuda').sum().round(9))\n"
        "if __name__ == '__main__':\n"
        "    main()\n" % str(__import__("pathlib").Path(__file__).parent))
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    x = np.linspace(0, 1, 10_001)
    y = x[::-1].copy()
    lines = run.stdout.split()
    assert float(lines[0]) == pytest.approx(float(numexpr.evaluate("sum(x*x)")), rel=1e-14)
    assert float(lines[1]) == numexpr.evaluate("where(x > y, sin(x)**2, cos(y))").sum().round(9)


# --- On a GPU -----------------------------------------------------------------------------

GPU_CASES = [("2*a + 3*b", "float64"), ("where(a > 0.5, sin(a)**2, cos(b))", "float64"), ("a*b + c", "float32"),
             ("sum(a*a)", "float64"), ("sum(a, axis=1)", "float32"), ("prod(a / 2 + 1, axis=0)", "complex128"),
             ("a // b + a % b", "int32"), ("max(a - b)", "int64"), ("a & ~b", "bool"), ("min(a, axis=1)", "float64")]


def _inputs(kind: str, shape: tuple) -> dict:
    r = np.random.default_rng(11)
    if kind == "bool":
        return {n: r.random(shape) > 0.5 for n in "abc"}
    if kind.startswith("int"):
        return {n: r.integers(-50, 50, shape).astype(kind) for n in "abc"}
    if kind == "complex128":
        return {n: r.random(shape) + 1j * r.random(shape) for n in "abc"}
    return {n: r.random(shape).astype(kind) for n in "abc"}


@needs_gpu
@pytest.mark.parametrize("ex,kind", GPU_CASES)
def test_gpu_matches_the_cpu(ex, kind):
    d = _inputs(kind, (300, 257))
    d["b"] = d["b"][:, :1]  # (broadcast)
    want = paralelo.evaluate(ex, local_dict=d)
    got = paralelo.evaluate(ex, local_dict=d, device="cuda")
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=1e-5 if want.dtype == np.float32 else 1e-12)
    else:
        np.testing.assert_array_equal(got, want)


@needs_gpu
def test_gpu_large_reduction_and_device_result():
    x = np.random.default_rng(3).random(10_000_000)
    assert paralelo.evaluate("sum(x*x)", device="cuda") == pytest.approx(float(x @ x), rel=1e-12)
    dev = paralelo.evaluate("x * 2", device="cuda", returns="device")
    np.testing.assert_array_equal(dev.get(), x * 2)


@needs_gpu
def test_gpu_cupy_arrays_in_place():
    cupy = pytest.importorskip("cupy")
    a = cupy.arange(1_000_000, dtype=cupy.float64)
    b = a[::-1]
    got = paralelo.evaluate("2*a + 3*b", device="cuda")
    assert isinstance(got, cupy.ndarray)
    cupy.testing.assert_allclose(got, 2 * a + 3 * b)
    assert float(paralelo.evaluate("sum(a*a)", device="cuda")) == pytest.approx(float((a * a).sum()))


@needs_gpu
def test_gpu_torch_tensors_in_place():
    torch = pytest.importorskip("torch")
    a = torch.rand(1000, 300, device="cuda", dtype=torch.float64)
    got = paralelo.evaluate("where(a > 0.5, a, -a)", device="cuda")
    assert isinstance(got, torch.Tensor) and got.is_cuda
    assert torch.equal(got, torch.where(a > 0.5, a, -a))
