"""The guide's "Objetos Future y ejecución asincrónica" example, on worker processes:
paralelo.ProcessPoolExecutor in place of concurrent.futures' executors."""

import time

import paralelo


def worker(n):
    time.sleep(n / 10)
    return n * n


if __name__ == "__main__":
    with paralelo.ProcessPoolExecutor(max_workers=4) as executor:
        futures = [executor.submit(worker, i) for i in range(4)]

        for future in paralelo.as_completed(futures):
            result = future.result()
            print(f"Resultado: {result}")
