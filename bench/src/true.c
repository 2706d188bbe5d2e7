/* The smallest entrypoint: a static `true`. Built with `gcc -static -O2`, so its own
 * start-up (no dynamic loader, no libraries) is a few tens of microseconds and a bundle's
 * start-up overhead shows clearly against it.
 *
 *   true [MS]    sleep MS milliseconds first (the 64-rank row uses this: Open MPI 4.1's
 *                mpirun sometimes hangs when dozens of ranks exit before all are launched) */
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc > 1) {
        long ms = atol(argv[1]);
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&t, NULL);
    }
    return 0;
}
