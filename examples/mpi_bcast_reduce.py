"""The guide's first mpi4py example (bcast, then reduce), with paralelo:

    paralelo run -n 4 examples/mpi_bcast_reduce.py
"""

from paralelo import comm as MPI


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    size = comm.Get_size()

    if rank == 0:
        data = [i for i in range(size)]
    else:
        data = None

    # The data goes to every process.
    data = comm.bcast(data, root=0)

    # Some work on it.
    result = data[rank] * 2

    # The results are summed at the root.
    total = comm.reduce(result, op=MPI.SUM, root=0)

    if rank == 0:
        print(f"Total: {total}")


if __name__ == "__main__":
    main()
