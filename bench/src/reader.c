/* The one reader every row of the I/O benchmark runs (bare on the host, inside a
 * bundle, over squashfuse_ll or a loop mount), so that the rows differ only in the file
 * system underneath.
 *
 *   reader walk DIR   lstat every entry of the tree (a metadata walk, like `find`)
 *   reader read DIR   the same walk, and read every regular file to its end
 *
 * It prints one line: `files=N dirs=N bytes=N seconds=S` (S from CLOCK_MONOTONIC,
 * around the walk only). Built with `gcc -static`, so it needs nothing from the image. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned long long files, dirs, bytes, errors;
static int do_read;
static char *buf;
#define BUF (1 << 20)

static void walk(int dfd, const char *path) {
    DIR *d = fdopendir(dfd);
    if (!d) {
        errors++;
        close(dfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            errors++;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            dirs++;
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                errors++;
                continue;
            }
            walk(sub, e->d_name);
        } else {
            files++;
            if (do_read && S_ISREG(st.st_mode)) {
                int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) {
                    errors++;
                    continue;
                }
                ssize_t n;
                while ((n = read(fd, buf, BUF)) > 0)
                    bytes += (unsigned long long)n;
                if (n < 0)
                    errors++;
                close(fd);
            }
        }
    }
    closedir(d);
    (void)path;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "walk") && strcmp(argv[1], "read"))) {
        fprintf(stderr, "usage: reader walk|read DIR\n");
        return 2;
    }
    do_read = !strcmp(argv[1], "read");
    buf = malloc(BUF);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int fd = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "reader: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    walk(fd, argv[2]);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("files=%llu dirs=%llu bytes=%llu errors=%llu seconds=%.6f\n", files, dirs, bytes, errors, s);
    return errors ? 1 : 0;
}
