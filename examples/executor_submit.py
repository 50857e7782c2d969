"""The guide's ThreadPoolExecutor example (eight submitted tasks, collected with
as_completed), on paralelo's process executor."""

import paralelo


def worker(n):
    print(f"Trabajador {n}: Iniciando", flush=True)
    # Realizar algún trabajo
    print(f"Trabajador {n}: Finalizado", flush=True)
    return n


if __name__ == "__main__":
    with paralelo.ProcessPoolExecutor(max_workers=4) as executor:
        futures = []
        for i in range(8):
            future = executor.submit(worker, i)
            futures.append(future)

        for future in paralelo.as_completed(futures):
            future.result()
