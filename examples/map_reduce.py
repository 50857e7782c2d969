"""The guide's "Operaciones de mapeo y reducción paralelas" example. multiprocessing has no
Pool.reduce; paralelo has, as a parallel tree reduction."""

import paralelo


def square(x):
    return x * x


def sum_squares(a, b):
    return a + b


if __name__ == "__main__":
    with paralelo.Pool(processes=4) as pool:
        numbers = range(10)
        squared = pool.map(square, numbers)
        result = pool.reduce(sum_squares, squared)
        print(f"Suma de cuadrados: {result}")
        # The same in one pass: each worker maps and folds its own share.
        print(f"map_reduce: {pool.map_reduce(square, sum_squares, numbers)}")
