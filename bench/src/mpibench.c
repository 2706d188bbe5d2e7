/* MPI micro-benchmarks for two ranks, in the manner of the OSU benchmarks:
 *   - latency: ping-pong of 8 bytes, half the round-trip time;
 *   - bandwidth: rank 0 streams windows of 1 MiB messages to rank 1 (non-blocking
 *     sends, one acknowledgement per window);
 *   - allreduce: MPI_Allreduce (sum of doubles) of 8 bytes and of 1 MiB.
 *
 *   mpibench [SCALE]     SCALE divides the iteration counts (1: full, 10: quick)
 *
 * Rank 0 prints one line:
 *   lat_us=L bw_MBps=B allreduce8_us=A allreduce1M_us=C ranks=N */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIG (1 << 20)
#define WINDOW 16

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1)
        scale = 1;
    if (size < 2) {
        if (rank == 0)
            fprintf(stderr, "mpibench: needs 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char *buf = malloc(BIG * WINDOW);
    double *red_in = malloc(BIG), *red_out = malloc(BIG);
    memset(buf, 1, BIG * WINDOW);
    for (size_t i = 0; i < BIG / sizeof(double); i++)
        red_in[i] = (double)i;
    MPI_Request req[WINDOW];
    int peer = rank == 0 ? 1 : 0;

    /* latency */
    int warm = 1000 / scale, iters = 20000 / scale;
    double t0 = 0;
    for (int i = 0; i < warm + iters; i++) {
        if (i == warm) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
        }
        if (rank == 0) {
            MPI_Send(buf, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
        }
    }
    double lat = (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);

    /* bandwidth */
    int bwarm = 5, biters = 200 / scale;
    for (int i = 0; i < bwarm + biters; i++) {
        if (i == bwarm) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
        }
        if (rank == 0) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Isend(buf + (size_t)w * BIG, BIG, MPI_CHAR, 1, 2, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Recv(buf, 4, MPI_CHAR, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            for (int w = 0; w < WINDOW; w++)
                MPI_Irecv(buf + (size_t)w * BIG, BIG, MPI_CHAR, 0, 2, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            MPI_Send(buf, 4, MPI_CHAR, 0, 3, MPI_COMM_WORLD);
        }
    }
    double bw = (double)BIG * WINDOW * biters / (MPI_Wtime() - t0) / 1e6;

    /* allreduce */
    double ar[2];
    int counts[2] = {1, BIG / (int)sizeof(double)};
    int ariters[2] = {20000 / scale, 200 / scale};
    for (int k = 0; k < 2; k++) {
        int n = ariters[k] > 0 ? ariters[k] : 1;
        for (int i = 0; i < n / 10 + 1; i++)
            MPI_Allreduce(red_in, red_out, counts[k], MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (int i = 0; i < n; i++)
            MPI_Allreduce(red_in, red_out, counts[k], MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        ar[k] = (MPI_Wtime() - t0) * 1e6 / n;
    }
    if (rank == 0)
        printf("lat_us=%.3f bw_MBps=%.1f allreduce8_us=%.3f allreduce1M_us=%.1f ranks=%d\n", lat, bw, ar[0], ar[1],
               size);
    MPI_Finalize();
    return 0;
}
