"""Property tests: paralelo's maps and reductions equal the builtin ones on random input."""

from __future__ import annotations

import functools
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paralelo

T = 30

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    # The per-test checks in conftest.py (leftover processes) are function-scoped on
    # purpose: they run once around all the examples, which is what they should do.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ints = st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=300)
chunksizes = st.one_of(st.none(), st.integers(min_value=1, max_value=50))


def f(x):
    return x * 3 - 7


def g(a, b):
    return a * b - a


def concat(a, b):
    return a + b


def matmul(a, b):
    """2x2 integer matrices as ((a, b), (c, d)): associative, not commutative."""
    (a11, a12), (a21, a22) = a
    (b11, b12), (b21, b22) = b
    return ((a11 * b11 + a12 * b21, a11 * b12 + a12 * b22),
            (a21 * b11 + a22 * b21, a21 * b12 + a22 * b22))


small = st.integers(min_value=-3, max_value=3)
matrices = st.tuples(st.tuples(small, small), st.tuples(small, small))


@pytest.fixture(scope="module")
def mpool():
    p = paralelo.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


@SETTINGS
@given(xs=ints, chunksize=chunksizes)
def test_map(mpool, xs, chunksize):
    assert mpool.map(f, xs, chunksize) == list(map(f, xs))
    assert mpool.map_async(f, iter(xs), chunksize).get(T) == list(map(f, xs))


@SETTINGS
@given(xs=ints, chunksize=chunksizes)
def test_imap(mpool, xs, chunksize):
    assert list(mpool.imap(f, xs, chunksize)) == list(map(f, xs))
    assert list(mpool.imap(f, iter(xs), chunksize)) == list(map(f, xs))


@SETTINGS
@given(xs=ints, chunksize=chunksizes)
def test_imap_unordered(mpool, xs, chunksize):
    assert sorted(mpool.imap_unordered(f, xs, chunksize)) == sorted(map(f, xs))


@SETTINGS
@given(pairs=st.lists(st.tuples(st.integers(), st.integers()), max_size=300), chunksize=chunksizes)
def test_starmap(mpool, pairs, chunksize):
    assert mpool.starmap(g, pairs, chunksize) == list(itertools.starmap(g, pairs))
    assert mpool.starmap_async(g, iter(pairs), chunksize).get(T) == list(itertools.starmap(g, pairs))


@SETTINGS
@given(words=st.lists(st.text(max_size=5), min_size=1, max_size=300))
def test_reduce_string_concatenation(mpool, words):
    assert mpool.reduce(concat, words) == functools.reduce(concat, words) == "".join(words)


@SETTINGS
@given(words=st.lists(st.text(max_size=5), max_size=100), start=st.text(max_size=5))
def test_reduce_string_concatenation_with_initializer(mpool, words, start):
    assert mpool.reduce(concat, words, start) == functools.reduce(concat, words, start)


@SETTINGS
@given(ms=st.lists(matrices, min_size=1, max_size=200))
def test_reduce_matrix_product(mpool, ms):
    assert mpool.reduce(matmul, ms) == functools.reduce(matmul, ms)


@SETTINGS
@given(xs=st.lists(st.integers(min_value=-50, max_value=50), min_size=1, max_size=300),
       chunksize=chunksizes)
def test_map_reduce(mpool, xs, chunksize):
    def to_matrix(x):
        return ((1, x), (0, 1)) if x % 2 else ((x, 1), (1, 0))

    assert mpool.map_reduce(to_matrix, matmul, xs, chunksize=chunksize) == functools.reduce(
        matmul, map(to_matrix, xs))
    assert mpool.map_reduce(str, concat, xs, chunksize=chunksize) == "".join(map(str, xs))
