"""paralelo.evaluate against numexpr (and numpy) on the same expressions and inputs:
results, result types, layouts (strided, broadcast, Fortran, unaligned, 0-d), `out=`,
reductions, errors, and the caller's names."""

from __future__ import annotations

import re
import textwrap
import threading

import pytest

np = pytest.importorskip("numpy")
ne = pytest.importorskip("numexpr")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import paralelo  # noqa: E402
from scripts import side_by_side  # noqa: E402

KINDS = {
    "b": np.array([True, False, True, True]),
    "i": np.array([1, -2, 3, 7], np.int32),
    "l": np.array([1, -2, 3, 7], np.int64),
    "f": np.array([1.5, -2, 3, 0.25], np.float32),
    "d": np.array([1.5, -2, 3, 0.25], np.float64),
    "c": np.array([1 + 2j, -2, 3j, 0.5 - 1j]),
}


def outcome(f, ex, env):
    """What `f(ex)` gives: its dtype and values, or its exception's type."""
    try:
        r = f(ex, local_dict=env)
    except Exception as e:  # noqa: BLE001 - compared
        return type(e).__name__
    return np.dtype(r.dtype).str, np.asarray(r).tolist()


BINARY = ["+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=", ">", ">=", "&", "|", "^", "<<", ">>"]
FUNCS1 = ["sqrt", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "arcsinh", "arccosh",
          "arctanh", "log", "log1p", "log10", "log2", "exp", "expm1", "abs", "ceil", "floor", "round", "trunc", "sign",
          "real", "imag", "conj", "isnan", "isfinite", "isinf", "signbit", "copy", "ones_like", "sum", "prod"]
FUNCS2 = ["arctan2", "fmod", "hypot", "nextafter", "copysign", "maximum", "minimum", "complex"]


def same(ours, theirs, exact=True):
    if isinstance(theirs, str) or isinstance(ours, str):
        assert ours == theirs
        return
    assert ours[0] == theirs[0]
    a, b = np.array(ours[1]), np.array(theirs[1])
    if exact:
        np.testing.assert_array_equal(a, b)
    else:  # (complex functions: num-complex's and numexpr's formulas round differently)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("power", ["0.5", "2", "3", "1", "0", "-1", "1.5", "2.5", "-2"])
@pytest.mark.parametrize("optimization", ["aggressive", "moderate", "none"])
def test_constant_powers_of_booleans_as_numexpr(power, optimization):
    # numexpr rewrites them into products (`&` for booleans) and square roots, which it has
    # no boolean kernel for (a square root of booleans once panicked here).
    env = {"a": np.array([True, False, True])}
    ex = f"a ** {power}"
    ours = outcome(lambda e, local_dict: paralelo.evaluate(e, local_dict=local_dict, optimization=optimization),
                   ex, env)
    theirs = outcome(lambda e, local_dict: ne.evaluate(e, local_dict=local_dict, optimization=optimization), ex, env)
    same(ours, theirs)


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_operators_type_and_compute_as_numexpr(op, kind):
    env = {"x": KINDS[kind], "y": KINDS[kind][::-1].copy()}
    same(outcome(paralelo.evaluate, f"x {op} y", env), outcome(ne.evaluate, f"x {op} y", env))


@pytest.mark.parametrize("func", FUNCS1 + ["-", "~"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_functions_type_and_compute_as_numexpr(func, kind):
    ex = f"{func}x" if func in "-~" else f"{func}(x)"
    env = {"x": KINDS[kind]}
    ours, theirs = outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env)
    try:
        same(ours, theirs, exact=kind != "c")
    except AssertionError:
        # On a branch cut (arctan(3j)) numexpr's own complex formulas pick the other
        # side from C99's, which numpy and paralelo follow.
        assert kind == "c" and func in dir(np)
        same(ours, (theirs[0], getattr(np, func)(KINDS[kind]).tolist()), exact=False)


@pytest.mark.parametrize("func", FUNCS2)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_argument_functions_as_numexpr(func, kind):
    env = {"x": KINDS[kind], "y": KINDS[kind][::-1].copy()}
    same(outcome(paralelo.evaluate, f"{func}(x, y)", env), outcome(ne.evaluate, f"{func}(x, y)", env))


@pytest.mark.parametrize("left", sorted(KINDS))
@pytest.mark.parametrize("right", sorted(KINDS))
def test_mixed_kinds_meet_as_in_numexpr(left, right):
    env = {"x": KINDS[left], "y": KINDS[right], "c": KINDS["b"]}
    for ex in ("x + y", "x * y", "x > y", "where(c, x, y)", "x + 2", "x * 2.5", "x - 2**40", "y + 1j"):
        same(outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "uint32", "uint64", "float16", "complex64",
                                   ">f8", ">i4"])
def test_other_dtypes_widen_as_in_numexpr(dtype):
    x = (np.arange(-40, 60) * (3 if "f" in dtype or "c" in dtype else 1)).astype(dtype)
    for env in ({"x": x}, {"x": x[::-3]}, {"x": x[7].reshape(())}, {"x": np.broadcast_to(x, (4, 100))},
                {"x": x.reshape(25, 4)}, {"x": x.reshape(4, 25).T}):
        for ex in ("x + x", "x * 3 - 1", "sum(x)", "where(x > 3, x, -x)", "x", "sum(x, axis=0)"):
            if "axis" in ex and env["x"].ndim == 0:
                continue
            same(outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float16", ">f8", "complex64"])
def test_other_dtypes_are_converted_a_block_at_a_time_not_copied(dtype):
    import tracemalloc

    x = np.ones(4_000_000, dtype)  # (a whole conversion would take 16 MB or more)
    tracemalloc.start()
    try:
        assert paralelo.evaluate("sum(where(x != 0, 1, 0))") == x.size
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_integer_constants_past_64_bits_as_numexpr(kind):
    # Folded exactly, as Python does; a double, float or complex beside floats, refused
    # (OverflowError) beside integers; -2**63 and 2**63 - 1 still fit. Functions of
    # constants as numpy computes them (int64 wraps; past 64 bits, Python ints).
    env = {"x": KINDS[kind]}
    for ex in ("x + 18446744073709551616", "x - 2**70", "x * 0x10000000000000000", "x + (2**64 - 1)",
               "x + -9223372036854775808", "x + (2**63 - 1)", "x > 2**70", "x + (2**100 // 3)",
               f"x + {2**60 + 2**36 + 1}", "x + (2**70 + 1 == 2**70)", "where(x > 1, 2**70, x)",
               "x + abs(-2**70)", "x + (2**64 % 7)", "x + (1 << 70)", "x + 123456789012345678901234567890",
               "x + (-2**126*2)%-1", "x + abs(-2**126)", "abs(-2**63)", "x + abs(-2**63)", "x + sign(2**70)",
               "x + (2**70 + 1 > 2.0**70)", "x + (2**53 + 1 == 2.0**53)", "x + (2.5 > 2)", "x + (2 >= 2.5)",
               "x + 9007199254740993/3", "x + 810363810364860548331533/4971", "x + (0 << 200)", "x + 1**(2**40)",
               "x + (-1)**(2**70+1)", "x + maximum(3, 2**40)", "x + (-7 // 2)", "x + (-7 % 3)"):
        same(outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env))


def test_integer_constants_past_128_bits_are_refused_by_name():
    with pytest.raises(OverflowError, match="1" * 45):
        paralelo.evaluate("x + " + "1" * 45, local_dict={"x": KINDS["d"]})
    for folded in ("2**127", "(-2**126*2)//-1", "-(-2**126*2)"):
        with pytest.raises(OverflowError, match="past 128 bits.*write it as a float"):
            paralelo.evaluate(f"x + {folded}", local_dict={"x": KINDS["d"]})
    with pytest.raises(OverflowError):
        paralelo.evaluate("2**70 + 1")  # (a constant alone is an integer: numexpr's error)


@pytest.mark.parametrize("ex", ["1 + 2", "2 ** 40", "1 / 2", "-7 // 2", "7 % -2", "3.5 * 2", "1j * 1j", "True & False",
                                "where(1, 2, 3)", "sin(1.0)", "2 ** -1", "~5", "(1 + 2j).real"])
def test_constant_expressions_as_numexpr(ex):
    same(outcome(paralelo.evaluate, ex, {}), outcome(ne.evaluate, ex, {}))


@pytest.mark.parametrize(("ex", "error"), [
    ("x +", SyntaxError), ("x y", SyntaxError), ("", SyntaxError),
    ("x and y", TypeError), ("not x", TypeError), ("x if y else x", TypeError), ("x < y < x", TypeError),
    ("x, y", TypeError), ("unknown(x)", TypeError),
    ("x;y", ValueError), ("x[0]", ValueError), ("x.__class__", ValueError), ("__import__('os')", ValueError),
    ("sum(x, axis=-1)", ValueError), ("i ** -1", ValueError), ("1 // 0", ZeroDivisionError),
    ("sum(x) + 1", RuntimeError), ("b - b", NotImplementedError), ("x < 1j", NotImplementedError),
    ("where(x, x, x)", NotImplementedError), ("z + 1", KeyError),
    ("sin(x, x)", NotImplementedError), ("arctan2(x)", NotImplementedError), ("sin()", TypeError),
    ("sin(x, x, x)", NotImplementedError), ("sin(1, 2)", TypeError), ("where(x)", TypeError),
    ("contains(x, y)", NotImplementedError), ("contains(x)", TypeError),
    ("x + None", TypeError), ("None", TypeError), ("x + 'abc'", TypeError), ("x + s", TypeError), ("'abc'", ValueError),
    ("sum(2.5, axis=0)", ValueError),
])
def test_bad_expressions_raise_what_numexpr_raises(ex, error):
    env = {"x": KINDS["d"], "y": KINDS["d"], "b": KINDS["b"], "i": KINDS["i"], "s": np.array([b"abc"])}
    with pytest.raises(error):
        ne.evaluate(ex, local_dict=env)
    with pytest.raises(error):
        paralelo.evaluate(ex, local_dict=env)


@pytest.mark.parametrize("casting", ["no", "equiv", "safe", "same_kind", "unsafe"])
@pytest.mark.parametrize("dtype", ["int8", "uint64", ">f8", "float16", "complex64", "uint32"])
def test_inputs_are_widened_under_the_calls_casting_as_numexpr(casting, dtype):
    env = {"x": np.array([2**63 + 5 if dtype == "uint64" else 3]).astype(dtype)}
    for ex in ("x + 1", "x"):
        ours = outcome(lambda e, **kw: paralelo.evaluate(e, casting=casting, **kw), ex, env)
        theirs = outcome(lambda e, **kw: ne.evaluate(e, casting=casting, **kw), ex, env)
        same(ours, theirs)


def test_order_takes_numpys_letters_in_either_case():
    x = np.arange(6.0).reshape(2, 3)
    for order in "cfak":
        r = paralelo.evaluate("x * 2", order=order)
        np.testing.assert_array_equal(r, ne.evaluate("x * 2", order=order))
        assert r.flags.f_contiguous == (order == "f")


def test_a_class_bodys_namespace_is_not_emptied_as_a_functions_frame_is():
    # (a function's own arrays, dropped: the __main__ script beside numexpr below)
    class Body:  # (a class body's namespace is the real one: left alone)
        y = np.arange(3.0)
        z = paralelo.evaluate("y * 2")

    np.testing.assert_array_equal(Body.z, [0, 2, 4])
    np.testing.assert_array_equal(Body.y, [0, 1, 2])


def _wrapped(module, ex):
    return module.evaluate(ex, _frame_depth=4)  # (numexpr's count: the wrapper's caller)


def test_frame_depth_counts_as_numexprs_so_its_wrappers_work():
    x = np.arange(3.0)
    np.testing.assert_array_equal(_wrapped(paralelo, "x * 2"), _wrapped(ne, "x * 2"))

    def validated(module):
        x = np.arange(3.0)  # noqa: F841 - read by name
        assert module.validate("x + 1", _frame_depth=2) is None
        return module.re_evaluate(_frame_depth=2)

    np.testing.assert_array_equal(validated(paralelo), [1, 2, 3])
    with pytest.raises(ValueError, match="_frame_depth"):
        paralelo.evaluate("x", _frame_depth=2)


@pytest.mark.parametrize("shape", [(5, 1), (3000, 2), (1025, 3), (2, 700, 3), (40, 33, 16), (300_000, 3), (4, 17)])
def test_short_rows_are_walked_in_tiles_with_the_same_results(shape):
    # Rows of 16 or fewer go down a tile's columns (across rows, across the next
    # dimension up, across the threads' chunks): values as numexpr's, reductions along
    # the short axis as a row folded alone (bit for bit: ints, NaN and -0.0 included).
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    p = rng.random(shape)
    p.reshape(-1)[::7] = np.nan
    p.reshape(-1)[::11] = -0.0
    s = rng.random(shape[-1])
    i = rng.integers(-50, 50, shape)
    env = {"p": p, "s": s, "i": i, "f": p.astype(np.float32), "z": p + 1j * s, "t": np.swapaxes(p, -1, -2)}
    for ex in ("p * s", "where(p > 0.5, sin(p), p * s)", "i * 3 - 1", "f * 2"):
        np.testing.assert_array_equal(paralelo.evaluate(ex, local_dict=env), ne.evaluate(ex, local_dict=env))
    axis = len(shape) - 1
    rows = p.size // shape[-1]
    # (every row of the small ones; of the large, those about tiles' and chunks' edges)
    edges = {e + d for e in (0, 1024, 8192, 65536, 131072, rows - 1) for d in (-1, 0, 1)}
    picked = sorted(r for r in (range(rows) if rows <= 3000 else edges) if 0 <= r < rows)
    for red in ("sum", "prod", "min", "max"):
        for name in ("p", "i", "f", "z"):
            if name == "z" and red in ("min", "max"):
                continue
            ours = paralelo.evaluate(f"{red}({name}, axis={axis})", local_dict=env)
            flat, by_row = ours.reshape(-1), env[name].reshape(rows, shape[-1])
            alone = [paralelo.evaluate(f"{red}(r)", local_dict={"r": by_row[k]}) for k in picked]
            np.testing.assert_array_equal(flat[picked], alone)
            assert ours.dtype == alone[0].dtype
            assert flat[picked].tobytes() == np.array(alone).tobytes()  # (the signs of zeros too)
        np.testing.assert_allclose(paralelo.evaluate(f"{red}(t, axis={axis - 1})", local_dict=env),
                                   getattr(np, red)(env["t"], axis=axis - 1), rtol=1e-12)


@pytest.mark.parametrize("shape, axis", [((20, 5000), 0), ((17, 300), 0), ((1000, 40), 0), ((3, 7, 200), 0),
                                         ((40, 30, 9), 1), ((600, 1100), 0), ((3, 300_000), 1), ((300_000, 2), 0),
                                         ((2000, 50), 0), ((1030, 40), 0), ((140_000, 9), 0), ((131_100, 16), 0)])
def test_reductions_across_rows_far_apart_are_the_rows_own(shape, axis):
    # A reduction along an axis whose elements lie farther apart in memory than the
    # rows do (axis 0 of a C-ordered array) goes down tiles of rows, and rows past a
    # parallel chunk are cut into chunks as a whole reduction is: each result as the
    # row folded alone, bit for bit, and as numpy's within rounding.
    rng = np.random.default_rng(sum(shape))
    p = rng.random(shape) - 0.5
    if shape[axis] < 1000:  # (a long row would hold a NaN whatever its order of sums)
        p.reshape(-1)[::13] = np.nan
    p.reshape(-1)[::17] = -0.0
    env = {"p": p, "i": rng.integers(-50, 50, shape), "f": p.astype(np.float32), "z": p + 1j * p[::-1]}
    for red in ("sum", "prod", "min", "max"):
        for name in ("p", "i", "f", "z"):
            if name == "z" and red in ("min", "max"):
                continue
            a = env[name]
            ours = paralelo.evaluate(f"{red}({name}, axis={axis})", local_dict=env)
            rows = np.moveaxis(a, axis, -1).reshape(-1, shape[axis])
            picked = sorted({0, 1, 7, 8, 63, 64, 65, len(rows) // 2, len(rows) - 1} & set(range(len(rows))))
            alone = [paralelo.evaluate(f"{red}(r)", local_dict={"r": np.ascontiguousarray(rows[k])}) for k in picked]
            assert ours.reshape(-1)[picked].tobytes() == np.array(alone).tobytes(), (red, name)
            with np.errstate(all="ignore"):  # (float32 summed in double, as numexpr sums it)
                want = getattr(np, red)(a.astype(np.float64) if name == "f" else a, axis=axis)
            np.testing.assert_allclose(ours, want, rtol=1e-6 if name == "f" else 1e-12, equal_nan=True)


def test_dtypes_met_for_the_first_time_after_a_conversion_run():
    # In a fresh interpreter: a dtype first seen as what an input was converted to (a
    # long double cut to a double, re_evaluate casting to the compiled kind).
    isolated("""
        r = paralelo.evaluate("a * 2", local_dict={"a": np.ones(3, np.longdouble)})
        assert r.dtype == np.float64 and r.tolist() == [2, 2, 2]
    """)
    isolated("""
        a = np.arange(3, dtype=">f8")
        assert paralelo.validate("a * 2", local_dict={"a": a}) is None
        assert paralelo.re_evaluate({"a": np.arange(3, dtype=np.float32)}).tolist() == [0, 2, 4]
    """)


def test_float16_nans_keep_their_bits_as_astype_keeps_them():
    h = np.array([0x7C01, 0xFE01, 0x7E00, 0x3C00, 0x0001, 0xFC00], np.uint16).view(np.float16)
    ours = paralelo.evaluate("a", local_dict={"a": h})
    np.testing.assert_array_equal(ours.view(np.uint32), h.astype(np.float32).view(np.uint32))
    swapped = h.astype(">f2")
    np.testing.assert_array_equal(paralelo.evaluate("a", local_dict={"a": swapped}).view(np.uint32),
                                  h.astype(np.float32).view(np.uint32))


def test_a_folded_constant_reduced_along_an_axis_is_itself_as_in_numexpr():
    x = np.ones((4, 5))
    for ex in ("sum(where(1 > 0, 2.5, x), axis=1)", "max(where(1 < 0, x, 3), axis=0)"):
        same(outcome(paralelo.evaluate, ex, {"x": x}), outcome(ne.evaluate, ex, {"x": x}))


def test_the_engine_refuses_elements_of_another_size_than_it_is_told():
    from paralelo import _native

    compiled = _native.Expression("a * 2", [("a", "complex128")], "aggressive")
    a, out = np.ones(4, np.uint8), np.empty(4, np.complex128)
    with pytest.raises(ValueError, match="1 bytes, not the 8"):
        compiled.run_arrays([(a, "complex128", "<c8")], [4], (out, "complex128", out.strides))


def test_the_engines_threads_are_set_as_numexprs():
    import os

    x = np.random.default_rng(3).random(3_000_000)
    before = paralelo.get_num_threads()
    try:
        assert paralelo.set_num_threads(1) == before and paralelo.get_num_threads() == 1
        one = paralelo.evaluate("sum(x * 2)")
        assert paralelo.set_num_threads(2) == 1
        assert paralelo.evaluate("sum(x * 2)") == one  # (the same sum whatever the threads)
        for bad in (0, -1):
            with pytest.raises(ValueError, match="at least 1"):
                paralelo.set_num_threads(bad)
        with pytest.raises(TypeError):
            paralelo.set_num_threads(1.5)  # type: ignore[arg-type]
    finally:
        paralelo.set_num_threads(before)
    assert paralelo.ncores == paralelo.detect_number_of_cores() == os.cpu_count()


def test_numexprs_thread_variables_are_honoured():
    import os
    import subprocess
    import sys

    script = ("import os, numpy as np, paralelo\n"
              "paralelo.evaluate('sum(x * 2)', local_dict={'x': np.ones(3_000_000)})\n"
              "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
              "print(paralelo.get_num_threads(), sum(n.startswith('paralelo-expr') for n in names))\n")
    for env, want in (({"NUMEXPR_NUM_THREADS": "1"}, "1 1"), ({"OMP_NUM_THREADS": "1"}, "1 1")):
        done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=60)
        assert done.stdout.split() == want.split(), done.stderr


def test_thread_counts_are_bounded_and_switching_them_leaves_no_threads_behind():
    isolated("""
        import os, time, warnings
        def engine_threads():
            count = 0
            for t in os.listdir("/proc/self/task"):
                try:
                    count += open(f"/proc/self/task/{t}/comm").read().startswith("paralelo-expr")
                except FileNotFoundError:
                    pass  # (a thread ending as it is counted)
            return count
        for bad in (3000, 2**63):
            try:
                paralelo.set_num_threads(bad)
                raise AssertionError("accepted")
            except ValueError as e:
                assert "NUMEXPR_MAX_THREADS" in str(e)
        x = np.random.default_rng(0).random(2_000_000)
        first = paralelo.evaluate("sum(x * x)")
        for n in range(1, 9):
            paralelo.set_num_threads(n)
            assert paralelo.evaluate("sum(x * x)") == first
        paralelo.set_num_threads(2)
        paralelo.evaluate("sum(x * x)")
        deadline = time.monotonic() + 10
        while engine_threads() > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine_threads() == 2, engine_threads()
        # A forked worker reads its own environment at its first call (joblib's
        # OMP_NUM_THREADS=1), whatever its parent ran on.
        pid = os.fork()
        if pid == 0:
            os.environ["OMP_NUM_THREADS"] = "1"
            paralelo.evaluate("sum(x * x)")
            os._exit(paralelo.get_num_threads())
        assert os.waitpid(pid, 0)[1] >> 8 == 1
        assert paralelo.get_num_threads() == 2
    """)


def test_a_bad_thread_variable_is_ignored_with_a_warning():
    import os
    import subprocess
    import sys

    script = "import paralelo; print(paralelo.evaluate('1 + 1'), paralelo.get_num_threads() >= 1)"
    for value in ("0", "-1", "abc"):
        done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": value},
                              capture_output=True, text=True, timeout=60)
        assert done.stdout.split() == ["2", "True"] and "OMP_NUM_THREADS" in done.stderr, done.stderr


def test_re_evaluate_after_a_refused_validate_raises_its_error():
    a, u, f = np.ones(3), np.array([2**63 + 5], np.uint64), np.ones(1)  # noqa: F841 - read by name
    paralelo.evaluate("a + 1")
    assert isinstance(paralelo.validate("u * f"), TypeError)
    with pytest.raises(TypeError):
        paralelo.re_evaluate()


def test_a_whole_reduction_walks_fortran_inputs_in_their_memory_order():
    rng = np.random.default_rng(5)
    v = np.asfortranarray(rng.random((300, 700)))
    w = np.asfortranarray(rng.random((300, 700)))
    for ex in ("sum(v * w)", "prod(v / w + 0.5)", "max(v - w)", "min(v)"):
        ours = paralelo.evaluate(ex, local_dict={"v": v, "w": w})
        # (bit for bit the reduction of the same memory seen in C's order)
        np.testing.assert_array_equal(ours, paralelo.evaluate(ex, local_dict={"v": v.T, "w": w.T}))
        np.testing.assert_allclose(ours, ne.evaluate(ex, local_dict={"v": v, "w": w}), rtol=1e-12)
    mixed = {"v": v, "c": np.ascontiguousarray(w)}
    np.testing.assert_allclose(paralelo.evaluate("sum(v * c)", local_dict=mixed),
                               ne.evaluate("sum(v * c)", local_dict=mixed), rtol=1e-12)


def test_sign_of_negative_zero_is_zero_as_numpys():
    x = np.array([-0.0, 0.0, -2.0, 3.0, np.nan])
    ours = paralelo.evaluate("sign(x)")
    np.testing.assert_array_equal(ours, np.sign(x))
    assert not np.signbit(ours[0])


def test_bad_options_raise_what_numexpr_raises():
    x = KINDS["d"]
    for kwargs in ({"foo": 1}, {"optimization": "max"}, {"truediv": 3}):
        with pytest.raises(ValueError):
            ne.evaluate("x + 1", **kwargs)
        with pytest.raises(ValueError):
            paralelo.evaluate("x + 1", **kwargs)
    with pytest.raises(ValueError, match="broadcast"):
        paralelo.evaluate("x + y", local_dict={"x": np.ones(3), "y": np.ones(4)})
    for odd in (np.array(["a"]), np.array([object()]), np.arange(3).astype("datetime64[s]")):
        with pytest.raises(ValueError):
            ne.evaluate("x + 1", local_dict={"x": odd})
        with pytest.raises(ValueError, match="no kernels"):
            paralelo.evaluate("x + 1", local_dict={"x": odd})
    with pytest.raises(ValueError, match="device must be"):
        paralelo.evaluate("x + 1", device="tpu")


def test_names_come_from_the_callers_frame():
    x = np.arange(4.0)
    scale = 3

    def inner():
        y = np.ones(4)
        return paralelo.evaluate("x * scale + y", global_dict={"x": x, "scale": scale})

    np.testing.assert_array_equal(inner(), x * 3 + 1)
    np.testing.assert_array_equal(paralelo.evaluate("x * scale"), x * 3)
    assert paralelo.validate("x * scale + 1") is None
    x[:] = 10  # re_evaluate reads the operands again
    np.testing.assert_array_equal(paralelo.re_evaluate(), np.full(4, 31.0))
    assert isinstance(paralelo.validate("x +"), SyntaxError)


ELEMENTWISE = ["2*a + 3*b", "where(a > 0.5, sin(a)**2, cos(b))", "a**3 - b**0.5 + a/3.0", "(a > b) & (b < 0.7) | (a == 0)",
               "arctan2(a, b) + fmod(a, 0.3) - abs(-b)", "exp(-a) * log1p(b) - expm1(a*b)", "a % 0.25 + b // 0.1"]


@pytest.mark.parametrize("ex", ELEMENTWISE)
def test_layouts_as_numexpr(ex):
    rng = np.random.default_rng(7)
    base = rng.random((40, 60))
    other = rng.random((60, 40)).T  # Fortran-ordered
    raw = np.frombuffer(b"\0" + base.tobytes(), np.float64, count=base.size, offset=1).reshape(base.shape)
    cases = [
        (base, other),  # C with Fortran
        (base[::2, ::3], other[::2, ::3]),  # strided views
        (np.asfortranarray(base), other),  # both Fortran: the result is Fortran too
        (raw, base),  # unaligned
        (base, base[0]),  # broadcast row
        (base[:, :1], base[0]),  # both broadcast
        (np.float64(0.3), base),  # 0-d
    ]
    for a, b in cases:
        ours, theirs = paralelo.evaluate(ex), ne.evaluate(ex)
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if np.ndim(a) == 2 and a.flags.f_contiguous and b.flags.f_contiguous:
            assert ours.flags.f_contiguous


@pytest.mark.parametrize("ex", ["where(a > 0.5, sin(a)**2, cos(b))", "where(c, exp(a), b)", "where(c, 2.0, log(b))",
                                "where(a > b, a ** b, sqrt(b) + a)", "sum(where(a < 0.3, tanh(a), arctan(b)))",
                                "where(a > 0.5, where(b > 0.5, sin(a), a), cos(b))", "where(a > 0.2, sin(a), a) * sin(a)",
                                # (a subtree both branches share, computed once)
                                "where(a > 0.5, sin(a)*2, sin(a))", "where(c, sin(a), sin(a))",
                                "where(c, exp(b), exp(b) + sin(a))", "where(c, cos(a) + 1, cos(a))"])
@pytest.mark.parametrize("kind", ["float64", "float32", "complex128"])
def test_where_runs_each_branch_where_it_is_picked(ex, kind):
    # A branch with a function runs only at the positions its condition picks (numexpr
    # computes both everywhere): the results are numexpr's, in every layout.
    if kind == "complex128" and ("<" in ex or ">" in ex):
        ex = ex.replace("a > 0.5", "a.real > 0.5").replace("b > 0.5", "b.real > 0.5").replace(
            "a > b", "a.real > b.real").replace("a < 0.3", "a.real < 0.3").replace("a > 0.2", "a.real > 0.2")
    rng = np.random.default_rng(5)
    base_a = (rng.random((50, 90)) + (0.1j if kind == "complex128" else 0)).astype(kind)
    base_b = rng.random((50, 90)).astype(kind) + 0.5
    cases = [(base_a, base_b), (base_a[::2, ::3], base_b[::2, ::3]), (base_a, base_b[0]), (base_a.T, base_b.T)]
    for a, b in cases:
        c = np.real(a) > 0.4
        with np.errstate(all="ignore"):
            ours, theirs = paralelo.evaluate(ex), ne.evaluate(ex)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12 if kind != "float32" else 1e-5)
        if kind == "float64" and not ex.startswith("sum"):
            np.testing.assert_array_equal(ours, theirs)
    from paralelo import _native

    lazy = _native.Expression("where(a > 0.5, sin(a)**2, cos(b))", [("a", "float64"), ("b", "float64")],
                              "aggressive")
    shared = _native.Expression("where(a > 0.2, sin(a), a) * sin(a)", [("a", "float64")], "aggressive")
    assert (lazy.lazy_wheres, shared.lazy_wheres) == (1, 0)  # (a sine read outside the branch: not lazy)


def test_out_as_numexpr():
    a = np.arange(12.0).reshape(3, 4)
    out = np.empty((3, 4))
    assert paralelo.evaluate("a * 2", out=out) is out
    np.testing.assert_array_equal(out, a * 2)
    as_float32 = np.empty((3, 4), np.float32)  # same_kind: float64 into float32
    assert paralelo.evaluate("a + 1", out=as_float32) is as_float32
    np.testing.assert_array_equal(as_float32, (a + 1).astype(np.float32))
    strided = np.empty((3, 8))[:, ::2]
    paralelo.evaluate("a - 1", out=strided)
    np.testing.assert_array_equal(strided, a - 1)
    b = a.copy()
    paralelo.evaluate("b * b + 1", out=b)  # in place
    np.testing.assert_array_equal(b, a * a + 1)
    transposed = np.empty((4, 3))
    assert paralelo.evaluate("u * 2", local_dict={"u": a.T}, out=transposed) is transposed
    np.testing.assert_array_equal(transposed, a.T * 2)
    for bad, error in ((np.empty(5), ValueError), (np.empty((3, 4), np.int32), TypeError), ([0] * 12, TypeError)):
        with pytest.raises(error):
            paralelo.evaluate("a + 1", out=bad)
    with pytest.raises(TypeError):
        ne.evaluate("a + 1", out=np.empty((3, 4), np.int32))
    # A larger out= takes the result broadcast into it; one it cannot broadcast to fails.
    row = np.arange(4.0)
    for wide in (np.empty((3, 4)), np.empty((2, 3, 4)), np.empty((3, 4), order="F")):
        theirs = np.empty_like(wide)
        ne.evaluate("row * 2 + a", local_dict={"row": row, "a": a}, out=theirs)
        assert paralelo.evaluate("row * 2", local_dict={"row": row}, out=wide) is wide
        np.testing.assert_array_equal(wide, np.broadcast_to(row * 2, wide.shape))
    mine, theirs = np.empty((3, 4)), np.empty((3, 4))
    ne.evaluate("row * 2", local_dict={"row": row}, out=theirs)
    paralelo.evaluate("row * 2", local_dict={"row": row}, out=mine)
    np.testing.assert_array_equal(mine, theirs)
    for bad in (np.empty((3, 1)), np.empty((4, 3))):
        with pytest.raises(ValueError):
            ne.evaluate("row * 2", local_dict={"row": row}, out=bad)
        with pytest.raises(ValueError):
            paralelo.evaluate("row * 2", local_dict={"row": row}, out=bad)


@pytest.mark.parametrize("red", ["sum", "prod", "min", "max"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32", "float64", "complex128"])
def test_reductions_as_numexpr(red, dtype):
    rng = np.random.default_rng(3)
    x = (rng.random((30, 7, 5)) * 4 + 0.5).astype(dtype)
    for axis in (None, 0, 1, 2):
        ex = f"{red}(x * 1)" if axis is None else f"{red}(x * 1, axis={axis})"
        ours, theirs = outcome(paralelo.evaluate, ex, {"x": x}), outcome(ne.evaluate, ex, {"x": x})
        if red in ("min", "max") and dtype in ("int32", "complex128"):
            continue  # (numexpr fails on these: SystemError, NotImplementedError)
        if isinstance(theirs, str) or dtype in ("int32", "int64"):
            same(ours, theirs)
        else:  # (summation order: within a few ulps, relative to the sum's size)
            assert ours[0] == theirs[0]
            tolerance = 1e-4 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(np.array(ours[1]), np.array(theirs[1]), rtol=tolerance)


@pytest.mark.parametrize("shape", [(5, 1), (1, 6), (5, 1, 3), (1, 1), (4, 1, 1), (1, 4, 1)])
def test_reductions_over_axes_of_length_one_as_numexpr(shape):
    # An axis of length 1 folds nothing: each row is one element (the engine once merged
    # such an axis away and folded every row into the first).
    x = np.arange(1.0, np.prod(shape) + 1).reshape(shape)
    for red in ("sum", "prod", "max"):
        for axis in range(len(shape)):
            ex = f"{red}(x, axis={axis})"
            np.testing.assert_array_equal(paralelo.evaluate(ex), ne.evaluate(ex), err_msg=f"{ex} over {shape}")


def test_large_reductions_and_maps_use_every_chunk():
    x = np.arange(3_000_001, dtype=np.float64)
    assert paralelo.evaluate("sum(x)") == x.sum()
    exact = sum(i * i for i in range(3_000_001))
    assert paralelo.evaluate("sum(x * x)") == pytest.approx(exact, rel=1e-15)
    assert paralelo.evaluate("max(x - 5)") == 2_999_995
    np.testing.assert_array_equal(paralelo.evaluate("x * 2 + 1"), x * 2 + 1)
    big = np.arange(6_000_000.0).reshape(2000, 3000)
    np.testing.assert_allclose(paralelo.evaluate("sum(big, axis=1)"), big.sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(paralelo.evaluate("sum(big, axis=0)"), big.sum(axis=0), rtol=1e-13)


def isolated(script: str) -> None:
    """Runs `script` (numpy as np and paralelo imported) in an interpreter of its own: the
    C library keeps the memory of large freed arrays and of a compile thread's heap, and
    the test process must stay small for the pool tests that fork from it."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", "import numpy as np, paralelo\n" + textwrap.dedent(script)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_large_outputs_are_whole():
    # Outputs past the caches, in every chunk: a bool, an output 8 bytes off a 16-byte
    # boundary, complex elements.
    isolated("""
        n = 17_000_001
        x = np.arange(n, dtype=np.float64)
        np.testing.assert_array_equal(paralelo.evaluate("x % 3 > 1"), x % 3 > 1)
        raw = np.empty(n + 1)
        out = raw[1:] if raw[1:].ctypes.data % 16 else raw[:-1]
        assert out.ctypes.data % 16 == 8
        paralelo.evaluate("where(x > 5, x, -x)", out=out)
        np.testing.assert_array_equal(out, np.where(x > 5, x, -x))
        z = paralelo.evaluate("complex(x, 1) * 2", local_dict={"x": x[: n // 8]})
        np.testing.assert_array_equal(z, (x[: n // 8] + 1j) * 2)
    """)


def test_a_large_dropped_result_lends_its_memory_to_the_next_and_never_while_in_use():
    isolated("""
        import os, pickle
        from paralelo import _recycled
        n = 5_000_000  # (40 MB: past the C library's 32 MiB, which maps each afresh)
        x = np.arange(n, dtype=np.float64)
        first = paralelo.evaluate("x * 2", local_dict={"x": x})
        address = first.ctypes.data
        view = first[10:20]
        del first
        second = paralelo.evaluate("x * 3", local_dict={"x": x})
        assert second.ctypes.data != address  # (a view holds the memory)
        np.testing.assert_array_equal(view, x[10:20] * 2)
        del view
        third = paralelo.evaluate("x + 1", local_dict={"x": x})
        assert third.ctypes.data == address  # (the memory came back: reused)
        np.testing.assert_array_equal(third, x + 1)
        np.testing.assert_array_equal(second, x * 3)
        assert third.flags.writeable and third.flags.c_contiguous
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(third)), x + 1)
        f = paralelo.evaluate("a * 2", local_dict={"a": np.asfortranarray(x.reshape(2500, 2000))})
        assert f.flags.f_contiguous and not f.flags.c_contiguous
        # Whatever still reaches the memory holds it: the result's base, a result
        # revived by a finalizer of the reference cycle it was collected with.
        base = third.base
        del third
        again = paralelo.evaluate("x - 1", local_dict={"x": x})
        assert again.ctypes.data != address
        del base, again
        import gc
        class Holder:
            def __init__(self, r):
                self.r, self.me = r, self
            def __del__(self):
                revived.append(self.r)
        revived = []
        Holder(paralelo.evaluate("x * 5", local_dict={"x": x}))
        gc.collect()
        fresh = paralelo.evaluate("x * 7", local_dict={"x": x})
        np.testing.assert_array_equal(revived[0], x * 5)
        # A forked child's writes are its own; kept memory is bounded; a child keeps
        # none of its parent's.
        pid = os.fork()
        if pid == 0:
            fresh[:] = 0
            os._exit(0 if _recycled.kept() == 0 else 1)
        assert os.waitpid(pid, 0)[1] == 0
        np.testing.assert_array_equal(fresh, x * 7)
        del second, f, fresh, revived
        assert 0 < _recycled.kept() <= _recycled.KEEP
        _recycled.release()
        assert _recycled.kept() == 0
        small = paralelo.evaluate("x * 2", local_dict={"x": x[:1000]})
        assert small.flags.owndata  # (small results are numpy's own)
    """)


def test_kept_memory_is_not_copied_by_a_fork_but_memory_still_held_is():
    isolated("""
        import os
        from paralelo import _recycled
        def vm_flags(address):
            inside = False
            with open("/proc/self/smaps") as f:
                for line in f:
                    head = line.split()[0]
                    if not head.endswith(":"):
                        low, high = (int(v, 16) for v in head.split("-"))
                        inside = low <= address < high
                    elif inside and head == "VmFlags:":
                        return line.split()[1:]
            raise AssertionError(f"nothing mapped at {address:#x}")
        n = 5_000_000
        x = np.arange(n, dtype=np.float64)
        dropped = paralelo.evaluate("x * 2", local_dict={"x": x})
        held = paralelo.evaluate("x * 3", local_dict={"x": x})
        address, kept_address, base = dropped.ctypes.data, held.ctypes.data, held.base
        del dropped, held
        assert _recycled.spared_at_fork() >= 8 * n  # (the dropped one: resident, alone)
        pid = os.fork()
        if pid == 0:  # (memory still reached from a result's base comes whole)
            os._exit(0 if np.frombuffer(base, np.float64)[n - 1] == 3 * (n - 1) else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert "wf" in vm_flags(address)  # (zeroed in the child: no page copied)
        assert "wf" not in vm_flags(kept_address)
        again = paralelo.evaluate("x + 1", local_dict={"x": x})
        assert again.ctypes.data == address and "wf" not in vm_flags(address)
        pid = os.fork()
        if pid == 0:  # (a result taken from the pool is a child's to read again)
            os._exit(0 if again[n - 1] == n else 1)
        assert os.waitpid(pid, 0)[1] == 0
    """)


def test_deep_and_long_expressions_compile_quickly_and_never_crash():
    # Nesting and chains as a generator writes them: each once overflowed the stack (a
    # segmentation fault), and a sum of a thousand terms took 1.6 s to compile.
    isolated("""
        import pytest
        x = np.arange(3.0)
        np.testing.assert_array_equal(paralelo.evaluate("(" * 3000 + "x" + ")" * 3000), x)
        np.testing.assert_array_equal(paralelo.evaluate("-" * 5001 + "x"), -x)
        np.testing.assert_array_equal(paralelo.evaluate("+".join(["x"] * 20_000)), x * 20_000)
        names = [f"v{i}" for i in range(300)]
        env = {n: np.full(2, i, dtype=np.int64) for i, n in enumerate(names)}
        got = paralelo.evaluate("+".join(names), local_dict=env)
        np.testing.assert_array_equal(got, [sum(range(300))] * 2)
        with pytest.raises(SyntaxError, match="at most 100000"):
            paralelo.evaluate("+".join(["x"] * 60_000))
    """)


def test_complex_tan_and_tanh_of_large_arguments_as_numpy():
    # (num-complex's formula divides an overflowed cosh by itself: NaN)
    z = np.array([360 + 0j, -1000 + 2j, 25 - 1j, 3 + 0.5j, 0.5 + 400j, 1 - 1000j])
    np.testing.assert_allclose(paralelo.evaluate("tanh(z)"), np.tanh(z), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(paralelo.evaluate("tan(z)"), np.tan(z), rtol=1e-14, atol=1e-300)
    assert paralelo.evaluate("tanh(z)")[3] == ne.evaluate("tanh(z)")[3]


def test_re_evaluate_casts_under_the_calls_casting_as_numexpr():
    # evaluate's default casting is 'same_kind': a float64 array may come back for a
    # program compiled for float32.
    a = np.arange(3, dtype=np.float32)
    b = np.ones(3, np.float32)
    paralelo.evaluate("a * 2 + b")
    ne.evaluate("a * 2 + b")
    a = np.arange(3.0)
    got, want = paralelo.re_evaluate(), ne.re_evaluate()
    assert got.dtype == want.dtype and got.tolist() == want.tolist()


def test_a_long_expression_on_a_thread_with_a_small_stack():
    isolated("""
        import threading
        threading.stack_size(512 << 10)
        a = np.arange(3.0)
        results = []
        def work():
            results.append(paralelo.evaluate("(" * 499 + "a" + ")" * 499))
            results.append(paralelo.evaluate("-" * 999 + "a"))
            results.append(paralelo.evaluate("+".join(["a"] * 600)))
        t = threading.Thread(target=work)
        t.start(); t.join()
        assert [r.tolist() for r in results] == [[0.0, 1.0, 2.0], [-0.0, -1.0, -2.0], [0.0, 600.0, 1200.0]], results
    """)


def test_constants_equal_but_for_their_sign_are_not_merged():
    # 0.0 and -0.0 compare equal, but 1/(a*0.0) and 1/(a*-0.0) are infinities of opposite
    # signs (numexpr merges the two and gives inf; numpy gives nan, as here).
    a = np.array([1.0, 2.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        want = 1 / (a * 0.0) + 1 / (a * -0.0)
    np.testing.assert_array_equal(paralelo.evaluate("1/(a*0.0) + 1/(a*-0.0)"), want)


def test_re_evaluate_casts_new_inputs_to_the_compiled_kinds_as_numexpr():
    a = np.arange(4.0)
    paralelo.evaluate("a * 2")
    got = paralelo.re_evaluate(local_dict={"a": np.ones(2, np.int32)})
    ne.evaluate("a * 2")
    want = ne.re_evaluate(local_dict={"a": np.ones(2, np.int32)})
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
    i = np.arange(3, dtype=np.int32)
    paralelo.evaluate("i + 1")
    with pytest.raises(TypeError, match="Cannot cast array data from dtype\\('float64'\\) to dtype\\('int32'\\) "
                                        "according to the rule 'same_kind'"):
        paralelo.re_evaluate(local_dict={"i": np.ones(3)})


@pytest.mark.parametrize("ex", ["1.e3*a", "1.E-3*a", "3.e+2+a", "2.j*a", "a.real*2.j", "a # a comment",
                                "0.0**-1", "0**-1.5", "0j**-1", "2**-1"])
def test_literals_comments_and_folded_powers_as_numexpr(ex):
    env = {"a": np.arange(3.0)}
    same(outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env))


def test_order_k_keeps_fortran_order_beside_columns_and_through_axis_reductions():
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    f3 = np.asfortranarray(np.arange(60.0).reshape(3, 4, 5))
    for ex, env in [("f + col", {"f": f, "col": np.ones((3, 1))}), ("sum(f3, axis=0)", {"f3": f3}),
                    ("prod(f3 / 50, axis=2)", {"f3": f3}), ("f + c", {"f": f, "c": np.ones((3, 4))})]:
        ours, theirs = paralelo.evaluate(ex, local_dict=env), ne.evaluate(ex, local_dict=env)
        np.testing.assert_allclose(ours, theirs, rtol=1e-14)
        assert (ours.flags.f_contiguous, ours.flags.c_contiguous) == (theirs.flags.f_contiguous,
                                                                      theirs.flags.c_contiguous), ex


def test_long_doubles_are_cut_to_doubles_as_numexpr():
    x = np.arange(3, dtype=np.longdouble)
    assert paralelo.evaluate("x * 2").dtype == ne.evaluate("x * 2").dtype == np.float64


def test_empty_inputs():
    e = np.ones((0, 3))
    assert paralelo.evaluate("e * 2").shape == (0, 3)
    assert paralelo.evaluate("sum(e)") == 0.0
    np.testing.assert_array_equal(paralelo.evaluate("prod(e, axis=0)"), np.ones(3))
    with pytest.raises(ValueError, match="no identity"):
        paralelo.evaluate("min(e)")


def test_the_gil_is_released_while_it_runs():
    # Another thread keeps running during one long evaluate (millions of its loops here),
    # where a held GIL lets it run only for one switch interval at the call's end (about
    # 45,000 loops here, measured with a C call that holds the GIL as long).
    x = np.random.default_rng(0).random(6_000_000)
    inside = [False, 0]
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            if inside[0]:
                inside[1] += 1

    t = threading.Thread(target=tick)
    t.start()
    try:
        inside[0] = True
        paralelo.evaluate("sin(x) ** 2 + cos(x) ** 2")
        inside[0] = False
    finally:
        stop.set()
        t.join()
    assert inside[1] > 400_000, inside[1]


small = st.floats(min_value=-4, max_value=4, allow_nan=False, width=64)
EXPRS = st.recursive(
    st.sampled_from(["a", "b", "c", "1.5", "2", "0.25"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(["sin", "cos", "exp", "abs", "sqrt", "tanh", "arctan", "floor"]), inner).map(
            lambda t: f"{t[0]}({t[1]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"where({t[0]} > {t[1]}, {t[1]}, {t[2]})"),
        inner.map(lambda s: f"({s})**2"),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(ex=EXPRS, values=st.lists(small, min_size=3, max_size=3), dtype=st.sampled_from(["float64", "float32"]),
       n=st.integers(1, 3000), reduce=st.booleans())
def test_random_expressions_equal_numexprs(ex, values, dtype, n, reduce):
    # numexpr folds a function of constants with numpy (whose tanh may differ from the C
    # library's in the last place, and whose float64 divides by zero without raising):
    # those are left to the cases above.
    assume(not re.search(r"\b[a-z]+\((?:[^abc()]|\([^abc()]*\))*\)", ex))
    rng = np.random.default_rng(abs(hash(ex)) % 2**32)
    env = {k: (rng.random(n) * v).astype(dtype) for k, v in zip("abc", values)}
    with np.errstate(all="ignore"):
        variables = re.search(r"\b[abc]\b", ex) is not None
        folded = np.ndim(ne.evaluate(ex, local_dict=env)) == 0  # (a constant, whatever it names)
        if reduce and variables and not folded:  # (numexpr's sum of a constant is odd)
            ex = f"sum({ex})"
        ours, theirs = outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env)
    if isinstance(theirs, str) or not reduce:
        same(ours, theirs)
    else:
        assert ours[0] == theirs[0]
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-4 if dtype == "float32" else 1e-10, equal_nan=True)


def test_a_script_gets_numexprs_results(tmp_path):
    # As a user writes it: names from the script's globals and a function's locals.
    ours, theirs = side_by_side(tmp_path, textwrap.dedent("""
        import sys
        import numpy as np
        if sys.argv[1] == "paralelo":
            from paralelo import evaluate
        else:
            from numexpr import evaluate
        x = np.linspace(0, 1, 100_001)
        def energy(scale):
            y = x[::-1]
            return evaluate("sum(where(x > y, scale * x**2, sin(y)))")
        if __name__ == "__main__":
            print(repr(float(energy(2.0))), evaluate("x * 2 + 1")[-3:].tolist())
    """), libs=("paralelo", "numexpr"))
    assert ours.split()[1:] == theirs.split()[1:]
    assert float(ours.split()[0]) == pytest.approx(float(theirs.split()[0]), rel=1e-12)


def test_a_script_looping_over_large_results_gets_numexprs(tmp_path):
    # A loop as users write one: results dropped and made again (paralelo reuses their
    # memory), a view of each kept, one result kept whole, a larger out= broadcast into.
    ours, theirs = side_by_side(tmp_path, textwrap.dedent("""
        import logging, sys
        import numpy as np
        logging.basicConfig(level=logging.INFO)
        if sys.argv[1] == "paralelo":
            from paralelo import evaluate
        else:
            from numexpr import evaluate
        a = np.linspace(0, 1, 5_000_001)  # (40 MB results)
        b = a[::-1].copy()
        heads, kept = [], None
        for step in range(6):
            r = evaluate("where(a > 0.5, sin(a)**2, cos(b)) + step")
            heads.append(r[:3])
            if step == 2:
                kept = r
        grid = np.empty((3, 4))
        evaluate("row * 2", local_dict={"row": np.arange(4.0)}, out=grid)
        if __name__ == "__main__":
            print(repr([h.tolist() for h in heads]), repr(float(kept.sum())), grid.tolist())
    """), libs=("paralelo", "numexpr"), timeout=60)
    assert ours == theirs


def test_a_script_on_points_images_and_big_constants_gets_numexprs(tmp_path):
    # As users write one: numpy first, logging on, functions in __main__ that drop their
    # arrays, the thread settings, (N, 3) points, a uint8 image, a constant past 2**64,
    # validate then re_evaluate.
    ours, theirs = side_by_side(tmp_path, textwrap.dedent("""
        import gc, logging, sys, weakref
        import numpy as np
        logging.basicConfig(level=logging.INFO)
        if sys.argv[1] == "paralelo":
            import paralelo as ne
        else:
            import numexpr as ne

        def scaled_norms(points, scale):
            return ne.evaluate("sum((p * s)**2, axis=1)", local_dict={"p": points, "s": scale})

        def bright(img):
            return int(ne.evaluate("sum(where(img > 100, 1, 0))"))

        def dropped():
            a = np.ones(1000)
            gone = weakref.ref(a)
            ne.evaluate("a * 2")
            del a
            gc.collect()
            return gone() is None

        if __name__ == "__main__":
            rng = np.random.default_rng(1)
            before = ne.set_num_threads(1)
            pts = rng.random((300_000, 3))
            norms = scaled_norms(pts, np.array([1.0, 2.0, 3.0]))
            img = (rng.random(3_000_000) * 255).astype(np.uint8)
            x = rng.random(5)
            big = ne.evaluate("x + 18446744073709551616")
            ne.validate("x * 2")
            x = x + 1
            again = ne.re_evaluate()
            print(ne.get_num_threads(), ne.ncores > 0, norms[:3].round(12).tolist(), bright(img),
                  big.tolist(), again.tolist(), dropped())
    """), libs=("paralelo", "numexpr"), timeout=60)
    assert ours == theirs


def test_one_expression_called_again_follows_its_inputs_as_numexpr(tmp_path):
    # A call like the last one takes a shorter path: it must still see each call's own
    # inputs (another dtype, shape, layout, a scalar, a subclass), set what re_evaluate
    # runs, and drop a function's arrays as the first call does.
    ours, theirs = side_by_side(tmp_path, textwrap.dedent("""
        import gc, sys, weakref
        import numpy as np
        if sys.argv[1] == "paralelo":
            import paralelo as ne
        else:
            import numexpr as ne

        def twice(a, b):
            return ne.evaluate("2*a + b")

        def sums(a):
            return ne.evaluate("sum(a * 2, axis=1)"), ne.evaluate("sum(a * a)"), ne.evaluate("prod(a, axis=0)")

        def dropped():
            a = np.ones(1000)
            gone = weakref.ref(a)
            for _ in range(3):
                ne.evaluate("a * 2")
            del a
            gc.collect()
            return gone() is None

        if __name__ == "__main__":
            d = np.arange(6.0)
            inputs = [(d, d), (d, d), (d.astype(np.float32), d.astype(np.float32)), (d, d.astype(np.int32)),
                      (d.reshape(2, 3), d.reshape(2, 3)), (np.asfortranarray(d.reshape(2, 3)),) * 2,
                      (d, 1.5), (np.float64(2.0), d), (np.array(3.0), np.array(1.0)), (d[:0], d[:0]),
                      (np.ma.masked_array(d), d), (d[::2], d[1::2]), (d, d), (d.reshape(3, 2), d[:2])]
            for a, b in inputs:
                r = twice(a, b)
                print(type(r).__name__, r.dtype, r.shape, r.flags.f_contiguous, np.asarray(r).tolist())
            m = np.arange(1.0, 13.0).reshape(4, 3)
            for a in (m, m, m.astype(np.int32), np.asfortranarray(m), m[::2], m[:, :2], m.T, m[None], m):
                print([(r.dtype, r.shape, np.asarray(r).tolist()) for r in sums(a)])
            t = np.arange(120.0).reshape(4, 5, 6).transpose(2, 0, 1)
            for _ in range(2):  # (the layouts a result takes, and an axis-0 reduction's)
                print(ne.evaluate("t * 2").strides, ne.evaluate("sum(t, axis=0)").strides,
                      ne.evaluate("sum(w, axis=0)", local_dict={"w": m.reshape(-1, 2)}).tolist())
            x = d
            ne.evaluate("x * 3")
            ne.evaluate("x * 3")
            x = d + 1
            print(ne.re_evaluate().tolist(), dropped())
    """), libs=("paralelo", "numexpr"), timeout=60)
    assert ours == theirs


def test_a_forked_child_evaluates_after_its_parent_did(tmp_path):
    # The parent's threads are not the child's: a pool worker (or any forked child)
    # evaluating after its parent did gets threads of its own instead of waiting for ever.
    [out] = side_by_side(tmp_path, textwrap.dedent("""
        import os, sys
        import numpy as np
        import paralelo
        x = np.arange(1_000_000, dtype=np.float64)
        def work(i):
            return float(paralelo.evaluate("sum(x * 2)")) + i
        if __name__ == "__main__":
            first = float(paralelo.evaluate("sum(x * 2)"))
            with paralelo.Pool(2) as p:
                print(p.map(work, range(2)) == [first, first + 1])
            pid = os.fork()
            if pid == 0:
                os._exit(0 if float(paralelo.evaluate("sum(x * 2)")) == first else 1)
            print(os.waitpid(pid, 0)[1] == 0)
    """), libs=("paralelo",), timeout=60)
    assert out.split() == ["True", "True"]


def test_numexpr_calls_found_in_use_run_as_numexprs():
    # disable_cache (numexpr's ninth argument), order=None, a whole reduction into an
    # array of shape (1,), a float floor division of constants folded as Python's.
    x = np.arange(3.0)
    for f in (paralelo.evaluate, ne.evaluate):
        assert f("x + 1", {"x": x}, None, None, "K", "same_kind", None, 3, True).tolist() == [1, 2, 3]
    for call in (lambda f: f("x + 1", local_dict={"x": x}, order=None),
                 lambda f: f("sum(x)", local_dict={"x": x}, out=np.zeros(1)),
                 lambda f: f("x * 0 + 1 // 0.1", local_dict={"x": x})):
        ours, theirs = call(paralelo.evaluate), call(ne.evaluate)
        assert ours.dtype == theirs.dtype and ours.tolist() == theirs.tolist()


def test_an_output_is_not_kept_alive_for_re_evaluate():
    # As numexpr keeps it: by a weak reference (a function's dropped output once stayed
    # alive until its thread's next call); re_evaluate writes it while it lives.
    import gc
    import weakref

    def job():
        x = np.ones(1000)
        out = np.empty_like(x)
        paralelo.evaluate("x * 2", out=out)
        return weakref.ref(out)

    gone = job()
    gc.collect()
    assert gone() is None
    x, out = np.arange(3.0), np.zeros(3)
    paralelo.evaluate("x * 2", out=out)
    x = x + 10  # noqa: F841 - read by name
    assert paralelo.re_evaluate() is out and out.tolist() == [20, 22, 24]
    paralelo.evaluate("x * 2", disable_cache=True)  # (keeps nothing: the last is as it was)
    assert paralelo.re_evaluate() is out


def test_integer_powers_and_remainders_past_half_the_range_as_numpy():
    # A power over the whole 64-bit exponent (once cut to 32 bits: an odd power), a
    # remainder whose sum with the divisor overflows (numexpr's is wrong there too).
    a = np.array([-1, 3, -1, 7], np.int64)
    e = np.array([2**40, 2**40, 2**32, 2**33 + 1], np.int64)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(paralelo.evaluate("a ** e"), a ** e)
    for t in (np.int32, np.int64):
        top = np.iinfo(t).max
        m = np.array([top - 1, -(top - 1), top - 1, 5], t)
        d = np.array([top, top, -top, -3], t)
        np.testing.assert_array_equal(paralelo.evaluate("m % d"), m % d)


def test_complex_abs_is_numexprs_and_does_not_overflow():
    rng = np.random.default_rng(5)
    c = (rng.random(1000) - 0.5) * 10 + 1j * (rng.random(1000) - 0.5)
    assert paralelo.evaluate("abs(c)").tobytes() == ne.evaluate("abs(c)").tobytes()
    edge = np.array([1e300 + 1e300j, 1e-300 + 1e-300j, complex(np.inf, np.nan), 0j])
    np.testing.assert_allclose(paralelo.evaluate("abs(edge)").real, np.abs(edge), rtol=1e-15)  # (no inf, no 0)


def test_outputs_whose_elements_coincide_and_inputs_folded_away():
    # An out= with a stride of 0 is written once the result is whole (not by threads at
    # once); an input the expression folds away is not copied, however it is laid out.
    import tracemalloc

    from numpy.lib.stride_tricks import as_strided

    x = np.arange(300_000.0)
    one = np.zeros(1)
    paralelo.evaluate("x * 2", out=as_strided(one, x.shape, (0,)))
    assert one[0] == x[-1] * 2
    big = np.ones((2000, 4000))[:, :2000]
    tracemalloc.start()
    try:
        assert paralelo.evaluate("where(1 > 0, 2.0, big)").tolist() == 2.0
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_the_engine_refuses_a_shape_its_arrays_do_not_span():
    a = np.arange(4.0)
    paralelo.evaluate("a * 2")
    compiled = paralelo.expressions._last.compiled
    with pytest.raises(ValueError, match="do not span"):
        compiled.run_arrays([(a, "float64", None)], [64], (np.empty(64), "float64", (8,)))
    with pytest.raises(ValueError, match="do not span"):
        compiled.run_arrays([(a, "float64", None)], [4], (np.empty(2), "float64", (8,)))
    with pytest.raises(ValueError, match="do not span"):  # (a 0-d output, a reduction's)
        paralelo.evaluate("sum(a)")
        whole = paralelo.expressions._last.compiled
        whole.run_arrays([(np.ones((3, 4)), "float64", None)], [3, 4], (np.zeros(4)[:1].reshape(()), "float64", (8, 0)))
    with pytest.raises(ValueError, match="do not span"):  # (a reach past any address)
        compiled.run_arrays([(a, "float64", None)], [2**61 + 2], (np.empty(4), "float64", (8,)))
    with pytest.raises(ValueError, match="read-only"):
        compiled.run_arrays([(a, "float64", None)], [3], (np.frombuffer(bytes(24)), "float64", (8,)))


def test_environment_settings_with_bad_or_capping_values():
    # NUMEXPR_MAX_THREADS below the CPUs caps the default, as numexpr's; a bad
    # PARALELO_KEEP_RESULTS_MB is ignored with a warning instead of breaking every call.
    import os
    import subprocess
    import sys

    code = "import numpy as np, paralelo; paralelo.evaluate('x + 1', {'x': np.ones(2)}); print(paralelo.get_num_threads())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, NUMEXPR_MAX_THREADS="1", PARALELO_KEEP_RESULTS_MB="abc"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1"] and "PARALELO_KEEP_RESULTS_MB='abc' ignored" in run.stderr


def test_order_k_lays_results_out_as_the_inputs_lie_as_numexpr():
    # A new result lies in memory as the inputs do, axis by axis (numpy's iterator's
    # rule), transposed and permuted views included, where they agree; else C's order.
    a = np.arange(120.0).reshape(4, 5, 6)
    m = np.arange(30.0).reshape(5, 6)
    cases = [{"x": a.transpose(2, 0, 1), "y": 1.0}, {"x": a.transpose(1, 2, 0)[::2], "y": 2.0},
             {"x": np.asfortranarray(a), "y": a.T.T}, {"x": a.T, "y": a.T}, {"x": a.transpose(0, 2, 1), "y": a[0, :, 0]},
             {"x": m.T[::2], "y": m.T[::2]}, {"x": a[:, ::2].transpose(2, 1, 0), "y": a[:, ::2].transpose(2, 1, 0).copy()}]
    for env in cases:
        for ex in ("x * 2 + y", "where(x > 3, x, y)"):
            ours, theirs = paralelo.evaluate(ex, local_dict=env), ne.evaluate(ex, local_dict=env)
            np.testing.assert_array_equal(ours, theirs)
            assert ours.strides == theirs.strides, (ex, [v.strides for v in env.values() if hasattr(v, "strides")])
        ours, theirs = paralelo.evaluate("sum(x * 2)", local_dict=env), ne.evaluate("sum(x * 2)", local_dict=env)
        assert float(ours) == float(theirs)


def test_constants_fold_as_numexpr_folds_them_through_python():
    # A negative base to a fractional power is complex; a float power past the doubles
    # overflows; minimum of an int and a boolean is an int; numbers' underscores as
    # Python's.
    env = {"x": np.arange(3.0)}
    for ex in ("(-8)**(1/3) + x", "(-1)**0.5", "x * (-2.0)**0.25", "minimum(-1, False) & 3", "maximum(4, True) + x",
               "2.0**1024 + x", "x + 10.0**-400", "1_ + x", "1__0 + x", "x + 0x_1f", "x + 1_e5", "x + 0x1_",
               "minimum(True, False) | (x > 1)", "maximum(True, False) & (x > 1)", "(-10.0)**308.5 + x",
               "(-1e309)**0.5 + x", "(-1e300)**1.5 * x", "x * (-0.5)**-1500.5", "-where(True > -1, 0.5, -(x > 1))",
               "where(1 < 0, -(x > 1), x)"):
        same(outcome(paralelo.evaluate, ex, env), outcome(ne.evaluate, ex, env))
    for number in ("1_000.000_1", "1e1_0", "0b1_0", "0o_7"):  # (numexpr refuses some Python takes)
        assert paralelo.evaluate(number) == eval(number)


def test_results_of_reductions_and_orders_lie_as_numexprs():
    # A reduction over an axis lies as its inputs do, that axis aside; an axis of length
    # 1 does not stop the inputs' order; 'A' is Fortran's only where every input is; a
    # whole reduction's out has one element or is refused, as numexpr refuses it.
    a = np.arange(60.0).reshape(3, 4, 5)
    f = np.asfortranarray(np.arange(7 * 9 * 11.0).reshape(7, 9, 11))
    for x, ex in ((a.transpose(1, 2, 0), "sum(x, axis=0)"), (a.transpose(1, 2, 0), "max(x, axis=1)"),
                  (f[1:, :, 2:], "sum(x, axis=1)"), (f, "prod(x * 0 + 1, axis=2)")):
        ours, theirs = paralelo.evaluate(ex, local_dict={"x": x}), ne.evaluate(ex, local_dict={"x": x})
        np.testing.assert_array_equal(ours, theirs)
        assert ours.strides == theirs.strides, ex
    unit = np.asfortranarray(np.arange(2000.0).reshape(20, 1, 100))
    for x, order in ((unit, "K"), (unit[:, :1, :].T, "K"), (np.arange(35.0).reshape(5, 7)[:, ::-1].T, "A"),
                     (np.asfortranarray(a), "A")):
        ours = paralelo.evaluate("x * 2", local_dict={"x": x}, order=order)
        theirs = ne.evaluate("x * 2", local_dict={"x": x}, order=order)
        np.testing.assert_array_equal(ours, theirs)
        assert ours.flags.c_contiguous == theirs.flags.c_contiguous and ours.flags.f_contiguous == theirs.flags.f_contiguous
    for f_ in (paralelo.evaluate, ne.evaluate):
        with pytest.raises(ValueError, match="size 1"):
            f_("sum(x)", local_dict={"x": a}, out=np.zeros(2))


def test_complex_sqrt_and_float_extremes_are_numpys_to_the_bit():
    # C99's square root (numpy's): infinities, NaNs, tiny and huge values, and every other
    # element to the bit; maximum and minimum give the second of two equal values (0.0
    # and -0.0) as numpy's do.
    rng = np.random.default_rng(11)
    c = (rng.random(2000) - 0.5) * 10 + 1j * (rng.random(2000) - 0.5) * 10
    specials = [complex(np.inf, 1), complex(np.nan, 0), 5e-324 + 5e-324j, -4 + 0j, complex(-4, -0.0),
                complex(-np.inf, np.nan), complex(np.inf, np.nan), complex(1, np.inf), complex(np.nan, -np.inf),
                complex(-0.0, 0), 0j, complex(0, -2), complex(-np.inf, 2)]
    c = np.concatenate([c, c * 1e-310, c * 1e300, specials])
    ours, want = paralelo.evaluate("sqrt(c)"), np.sqrt(c)
    assert paralelo.evaluate("c ** 0.5").tobytes() == ours.tobytes()
    nan = np.isnan(ours) & np.isnan(want)
    np.testing.assert_array_equal(np.where(nan, 0, ours).view(np.uint64), np.where(nan, 0, want).view(np.uint64))
    a, b = np.array([-0.0, 0.0, 1.0, np.nan, 2.0]), np.array([0.0, -0.0, np.nan, 1.0, 2.0])
    for f in ("maximum", "minimum"):
        assert paralelo.evaluate(f"{f}(a, b)").tobytes() == getattr(np, f)(a, b).tobytes()


def test_long_rows_far_apart_fold_chunk_by_chunk_as_the_row_alone():
    # Rows past a parallel chunk whose elements lie farther apart than the rows: every
    # tile's chunks fold in parallel and merge in order, each row bit for bit its own.
    isolated("""
        rng = np.random.default_rng(3)
        a = rng.random((131_200, 64)) - 0.5
        a[::7, ::3] = -0.0
        env = {"a": a, "i": (a * 1000).astype(np.int32), "z": a[:, :16] + 1j}
        for red, name in [(r, "a") for r in ("sum", "prod", "min", "max")] + [("sum", "i"), ("max", "i"), ("sum", "z")]:
            ours = paralelo.evaluate(f"{red}({name}, axis=0)", local_dict=env)
            for k in (0, 1, 15):
                r = np.ascontiguousarray(env[name][:, k])
                alone = paralelo.evaluate(f"{red}(r)", local_dict={"r": r})
                assert ours[k:k + 1].tobytes() == np.asarray(alone).reshape(1).tobytes(), (red, name, k)
            want = getattr(np, red)(env[name], axis=0)
            assert np.allclose(ours, want, rtol=1e-9, atol=1e-9) or red == "prod", (red, name)
    """)


def test_whole_reductions_of_short_rows_cut_at_whole_rows():
    # A whole reduction of rows walked in tiles is cut into chunks of whole tiles (a
    # chunk ending inside a row tripped the walk's own check).
    a = np.random.default_rng(4).random((300_000, 10))[:, :3]
    for red in ("sum", "max", "min"):
        np.testing.assert_allclose(paralelo.evaluate(f"{red}(a)"), getattr(np, red)(a), rtol=1e-12)
    np.testing.assert_allclose(paralelo.evaluate("sum(a * 2 + 1)"), (a * 2 + 1).sum(), rtol=1e-12)
