"""The guide's first example: four processes, each printing its name (multiprocessing's
Process API, with `import paralelo as multiprocessing`)."""

import paralelo as multiprocessing


def worker():
    print(f"Proceso de trabajo: {multiprocessing.current_process().name}")


if __name__ == "__main__":
    processes = []
    for _ in range(4):
        p = multiprocessing.Process(target=worker)
        processes.append(p)
        p.start()

    for p in processes:
        p.join()
