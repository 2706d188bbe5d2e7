/* ring: a small MPI program to bundle (examples/mpi).
 *
 * Every rank says where it runs and which user namespace it is in (ranks of one node
 * share one container, so they print the same number), a token travels once around the
 * ring of ranks, and an allreduce adds up the rank numbers. Exits 0 when all is well.
 *
 * Started without a launcher (`./ring.sif` in the serial part of a job script), it only
 * says where it runs and does not start MPI: a launcher-less ("singleton") MPI_Init of
 * Open MPI 4 would start an `orted` from the image, with ssh or rsh, which this bundle
 * does not carry.
 *
 *   mpicc -O2 -o ring ring.c
 *   mpirun -n 4 ./ring.sif    srun --mpi=pmix ./ring.sif    ./ring.sif
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned long long user_namespace(void) {
    struct stat ns;
    return stat("/proc/self/ns/user", &ns) == 0 ? (unsigned long long)ns.st_ino : 0;
}

int main(int argc, char **argv) {
    /* mpirun and srun --mpi=pmix both set PMIX_RANK. */
    if (!getenv("PMIX_RANK") && !getenv("OMPI_COMM_WORLD_SIZE")) {
        char host[256] = "?";
        gethostname(host, sizeof host - 1);
        printf("serial run on %s, pid %d, user namespace %llu%s%s\n", host, (int)getpid(), user_namespace(),
               argc > 1 ? ", argument " : "", argc > 1 ? argv[1] : "");
        return 0;
    }
    MPI_Init(&argc, &argv);
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    printf("rank %d of %d on %s, pid %d, user namespace %llu\n", rank, size, host, (int)getpid(), user_namespace());
    fflush(stdout);

    /* The token: rank 0 sends 0, every rank adds its number and passes it on. */
    int token = 0;
    if (size > 1) {
        int next = (rank + 1) % size, prev = (rank + size - 1) % size;
        if (rank == 0) {
            MPI_Send(&token, 1, MPI_INT, next, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_INT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_INT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += rank;
            MPI_Send(&token, 1, MPI_INT, next, 0, MPI_COMM_WORLD);
        }
    }
    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int ok = sum == size * (size - 1) / 2 && (rank != 0 || size == 1 || token == sum);
    if (rank == 0) printf("ring: token %d, allreduce %d: %s\n", token, sum, ok ? "ok" : "WRONG");
    MPI_Finalize();
    return ok ? 0 : 1;
}
