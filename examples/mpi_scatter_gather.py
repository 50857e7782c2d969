"""The guide's second mpi4py example (scatter, then gather), with paralelo:

    paralelo run -n 4 examples/mpi_scatter_gather.py
"""

from paralelo import comm as MPI


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    size = comm.Get_size()

    if rank == 0:
        data = [i + 1 for i in range(size)]
    else:
        data = None

    data = comm.scatter(data, root=0)
    result = data * data

    result = comm.gather(result, root=0)

    if rank == 0:
        print(f"Result: {result}")


if __name__ == "__main__":
    main()
