"""The guide's "Aceleración de GPU con numba y cupy" example, with paralelo: the numba
kernel becomes one expression, compiled once and run on every core."""

import numpy as np

import paralelo

arr = np.random.rand(10_000_000)
resultado = paralelo.evaluate("sum(arr * arr)")
print(f"Suma de cuadrados: {resultado}")
# The same sum, serially, to compare (it differs in the last digits: another order).
assert abs(resultado - np.dot(arr, arr)) <= 1e-9 * resultado
