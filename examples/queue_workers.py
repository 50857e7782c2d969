"""The guide's queue example: four processes take items from a shared queue until each
gets None (multiprocessing's Queue API, with `import paralelo as multiprocessing`)."""

import paralelo as multiprocessing


def worker(cola):
    while True:
        elemento = cola.get()
        if elemento is None:
            break
        print(f"Procesando elemento: {elemento}")


if __name__ == "__main__":
    cola = multiprocessing.Queue()
    procesos = []
    for _ in range(4):
        p = multiprocessing.Process(target=worker, args=(cola,))
        procesos.append(p)
        p.start()

    for elemento in range(10):
        cola.put(elemento)

    for _ in range(4):
        cola.put(None)

    for p in procesos:
        p.join()
