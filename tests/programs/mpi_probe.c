/* mpi_probe: the MPI program of the MPI and Slurm end-to-end tests (tests/mpi.rs,
 * tests/slurm.rs). Built with Debian's `mpicc` and bundled with its library closure.
 *
 *   mpi_probe ns                 no MPI: print "ns user=INO mnt=INO pid=PID host=NAME"
 *                                (the namespaces this process is in)
 *   mpi_probe status             no MPI: print the Uid, CapEff, CapBnd and NoNewPrivs lines
 *                                of /proc/self/status
 *   mpi_probe exit N             no MPI: exit with status N
 *   mpi_probe run [OPTIONS]      MPI_Init, then rank 0 prints, in this order:
 *       size N
 *       rank R host=NAME pid=PID user=INO mnt=INO rdv=ok|missing|unset tmpdir=DIR|unset
 *                                                      (one line per rank, by rank; rdv:
 *                                                      can it reach PMIX_SERVER_TMPDIR;
 *                                                      tmpdir: its TMPDIR)
 *       cma R ok|EPERM|error=ERRNO|mismatch            (rank R read rank (R+1)%N's buffer
 *                                                      with process_vm_readv, one per rank)
 *       allreduce ok|wrong                             (sum of 1..N over MPI_SUM)
 *       ring ok|wrong                                  (a token sent once round the ranks,
 *                                                      rank R to (R+1)%N, each adding 1)
 *       latency_us X                                   (ping-pong 8 B, half round trip)
 *       bandwidth_MBps X                               (ping-pong 1 MiB, 10^6 bytes/s)
 *     options:
 *       --iters L:B     ping-pong iterations for latency and bandwidth (default 2000:100)
 *       --no-pingpong   skip the ping-pong
 *       --exit R:N      after MPI_Finalize, rank R exits with status N
 *       --hang          after the report every rank sleeps forever (a test kills one)
 *       --term MARKER   after the report every rank waits for SIGTERM; its handler
 *                       appends "rank R pid PID SIGTERM" to MARKER.R and the rank exits
 *                       with 64+15
 *       --ready DIR     with --hang or --term: once waiting, every rank writes its pid
 *                       to DIR/ready.R (so a test knows whom to signal, and when)
 *
 * The CMA check is the direct one: each rank publishes the address of a buffer it filled
 * with its rank number, and its neighbour reads it with process_vm_readv. The kernel
 * allows that only between processes of one user namespace (with ptrace rights), which is
 * what Open MPI's vader BTL needs for its single-copy (CMA) transfers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LINE 256
#define CMA_LEN 4096
#define BW_LEN (1 << 20)

static unsigned long long ns_inode(const char *which) {
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/self/ns/%s", which);
    return stat(path, &st) == 0 ? (unsigned long long)st.st_ino : 0ULL;
}

static void host_name(char *buf, size_t len) {
    if (gethostname(buf, len) != 0) snprintf(buf, len, "?");
    buf[len - 1] = 0;
}

static int print_ns(void) {
    char host[128];
    host_name(host, sizeof host);
    printf("ns user=%llu mnt=%llu pid=%d host=%s\n", ns_inode("user"), ns_inode("mnt"), (int)getpid(), host);
    return 0;
}

static const char *rendezvous(void) {
    const char *d = getenv("PMIX_SERVER_TMPDIR");
    struct stat st;
    if (!d || !*d) return "unset";
    return stat(d, &st) == 0 && S_ISDIR(st.st_mode) ? "ok" : "missing";
}

static int print_status(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        perror("mpi_probe: /proc/self/status");
        return 1;
    }
    char line[LINE];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Uid:", 4) || !strncmp(line, "CapEff:", 7) || !strncmp(line, "CapBnd:", 7) ||
            !strncmp(line, "NoNewPrivs:", 11))
            fputs(line, stdout);
    }
    fclose(f);
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Ping-pong between ranks 0 and 1; returns seconds per round trip. */
static double pingpong(char *buf, int len, int iters, int rank) {
    const int warmup = iters / 10 + 1;
    double start = 0;
    for (int i = 0; i < warmup + iters; i++) {
        if (i == warmup) start = now();
        if (rank == 0) {
            MPI_Send(buf, len, MPI_CHAR, 1, 7, MPI_COMM_WORLD);
            MPI_Recv(buf, len, MPI_CHAR, 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, len, MPI_CHAR, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, len, MPI_CHAR, 0, 7, MPI_COMM_WORLD);
        }
    }
    return (now() - start) / iters;
}

static char marker_path[4096];
static int my_rank;

static void on_term(int sig) {
    char path[4200], text[128];
    snprintf(path, sizeof path, "%s.%d", marker_path, my_rank);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        int n = snprintf(text, sizeof text, "rank %d pid %d SIGTERM\n", my_rank, (int)getpid());
        if (write(fd, text, (size_t)n) < 0) {
        }
        close(fd);
    }
    _exit(64 + sig);
}

static int usage(void) {
    fputs("usage: mpi_probe ns | status | exit N | run [--iters L:B] [--no-pingpong] [--exit R:N] [--hang] "
          "[--term MARKER] [--ready DIR]\n",
          stderr);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    if (!strcmp(argv[1], "ns")) return print_ns();
    if (!strcmp(argv[1], "status")) return print_status();
    if (!strcmp(argv[1], "exit") && argc > 2) return atoi(argv[2]);
    if (strcmp(argv[1], "run")) return usage();

    int lat_iters = 2000, bw_iters = 100, do_pingpong = 1, exit_rank = -1, exit_code = 0, hang = 0;
    const char *term = NULL, *ready = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            if (sscanf(argv[++i], "%d:%d", &lat_iters, &bw_iters) != 2) return usage();
        } else if (!strcmp(argv[i], "--no-pingpong")) {
            do_pingpong = 0;
        } else if (!strcmp(argv[i], "--exit") && i + 1 < argc) {
            if (sscanf(argv[++i], "%d:%d", &exit_rank, &exit_code) != 2) return usage();
        } else if (!strcmp(argv[i], "--hang")) {
            hang = 1;
        } else if (!strcmp(argv[i], "--term") && i + 1 < argc) {
            term = argv[++i];
        } else if (!strcmp(argv[i], "--ready") && i + 1 < argc) {
            ready = argv[++i];
        } else {
            return usage();
        }
    }

    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    my_rank = rank;

    /* Who and where each rank is. */
    char host[128], line[LINE];
    host_name(host, sizeof host);
    const char *tmpdir = getenv("TMPDIR");
    snprintf(line, sizeof line, "rank %d host=%s pid=%d user=%llu mnt=%llu rdv=%s tmpdir=%s", rank, host,
             (int)getpid(), ns_inode("user"), ns_inode("mnt"), rendezvous(), tmpdir ? tmpdir : "unset");
    char *lines = rank == 0 ? calloc((size_t)size, LINE) : NULL;
    MPI_Gather(line, LINE, MPI_CHAR, lines, LINE, MPI_CHAR, 0, MPI_COMM_WORLD);

    /* CMA: read the neighbour's buffer directly. */
    static char mine[CMA_LEN], theirs[CMA_LEN];
    memset(mine, 'A' + rank % 26, sizeof mine);
    long long info[2] = {(long long)getpid(), (long long)(uintptr_t)mine};
    long long *all = malloc(sizeof info * (size_t)size);
    MPI_Allgather(info, 2, MPI_LONG_LONG, all, 2, MPI_LONG_LONG, MPI_COMM_WORLD);
    int peer = (rank + 1) % size;
    struct iovec local = {theirs, sizeof theirs};
    struct iovec remote = {(void *)(uintptr_t)all[2 * peer + 1], sizeof theirs};
    ssize_t got = process_vm_readv((pid_t)all[2 * peer], &local, 1, &remote, 1, 0);
    int err = got < 0 ? errno : 0;
    char cma[LINE];
    if (got == (ssize_t)sizeof theirs) {
        int same = 1;
        for (size_t i = 0; i < sizeof theirs; i++) same &= theirs[i] == (char)('A' + peer % 26);
        snprintf(cma, sizeof cma, "cma %d %s", rank, same ? "ok" : "mismatch");
    } else if (err == EPERM) {
        snprintf(cma, sizeof cma, "cma %d EPERM", rank);
    } else {
        snprintf(cma, sizeof cma, "cma %d error=%d", rank, got < 0 ? err : -1);
    }
    char *cmas = rank == 0 ? calloc((size_t)size, LINE) : NULL;
    MPI_Gather(cma, LINE, MPI_CHAR, cmas, LINE, MPI_CHAR, 0, MPI_COMM_WORLD);

    /* Allreduce: the sum of 1..size. */
    long long one = rank + 1, sum = 0;
    MPI_Allreduce(&one, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    int sum_ok = sum == (long long)size * (size + 1) / 2;

    /* Ring: point-to-point from every rank to the next (across nodes, when there are
     * several). Rank 0 starts the token at 1; every other rank adds 1 and passes it on. */
    long long token = 1;
    if (size > 1) {
        int next = (rank + 1) % size, prev = (rank + size - 1) % size;
        if (rank == 0) {
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 9, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += 1;
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 9, MPI_COMM_WORLD);
        }
    }
    int ring_ok = token == size;

    /* Ping-pong between ranks 0 and 1 (the others wait at the barrier). */
    double lat = 0, bw = 0;
    if (do_pingpong && size > 1 && rank < 2) {
        char *buf = malloc(BW_LEN);
        memset(buf, rank, BW_LEN);
        lat = pingpong(buf, 8, lat_iters, rank) / 2;
        double rt = pingpong(buf, BW_LEN, bw_iters, rank);
        bw = 2.0 * BW_LEN / rt / 1e6;
        free(buf);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    if (rank == 0) {
        printf("size %d\n", size);
        for (int r = 0; r < size; r++) printf("%s\n", lines + (size_t)r * LINE);
        for (int r = 0; r < size; r++) printf("%s\n", cmas + (size_t)r * LINE);
        printf("allreduce %s\n", sum_ok ? "ok" : "wrong");
        printf("ring %s\n", ring_ok ? "ok" : "wrong");
        if (do_pingpong && size > 1) {
            printf("latency_us %.3f\n", lat * 1e6);
            printf("bandwidth_MBps %.1f\n", bw);
        }
        fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    if (hang || term) {
        if (term) {
            snprintf(marker_path, sizeof marker_path, "%s", term);
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_term;
            sigemptyset(&sa.sa_mask);
            sigaction(SIGTERM, &sa, NULL);
        }
        if (ready) {
            char path[4200], tmp[4300];
            snprintf(path, sizeof path, "%s/ready.%d", ready, rank);
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *f = fopen(tmp, "w");
            if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
                perror("mpi_probe: ready file");
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        for (;;) pause();
    }

    MPI_Finalize();
    free(lines);
    free(cmas);
    free(all);
    return rank == exit_rank ? exit_code : 0;
}
