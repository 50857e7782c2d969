"""The guide's pipe: a child process receives through one end of a Pipe and answers
through it (multiprocessing's Pipe API, with `import paralelo as multiprocessing`)."""

import paralelo as multiprocessing


def hijo(conn):
    while (mensaje := conn.recv()) is not None:
        conn.send(f"recibido: {mensaje}")
    conn.close()


if __name__ == "__main__":
    padre, extremo_hijo = multiprocessing.Pipe()
    p = multiprocessing.Process(target=hijo, args=(extremo_hijo,))
    p.start()
    for mensaje in ("hola", [1, 2, 3]):
        padre.send(mensaje)
        print(padre.recv())
    padre.send(None)
    p.join()
