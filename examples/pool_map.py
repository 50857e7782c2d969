"""The guide's "Bucles paralelos con multiprocessing.Pool" example, with paralelo."""

import paralelo


def worker(n):
    return n * n


if __name__ == "__main__":
    with paralelo.Pool(processes=4) as pool:
        results = pool.map(worker, range(10))
        print(results)
