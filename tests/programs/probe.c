/* probe: the entrypoint of the end-to-end test bundles. A small static program that
 * reports what it sees, so the tests can check what the runtime passes through.
 *
 *   probe args A B ...   print each argument as [A] on its own line
 *   probe exit N         exit with status N
 *   probe env NAME       print $NAME (exit 3 when unset)
 *   probe cwd            print the working directory
 *   probe cat            copy stdin to stdout
 *   probe uid            print "uid gid"
 *   probe pid            print the process id
 *   probe wait-signal    handle SIGINT SIGTERM SIGHUP SIGUSR1 SIGUSR2: print "ready",
 *                        wait; on signal N print "signal N" and exit 64+N
 *   probe raise N        die by signal N (default action)
 *   probe exists PATH    print "yes" (exit 0) or "no" (exit 1)
 *   probe isatty         print isatty() of fds 0, 1 and 2
 *   probe sleep S        sleep S seconds
 *   probe err TEXT       print TEXT on stderr
 *   probe inode PATH...  print "ino nlink" of each path (lstat)
 *   probe libs           print the shared objects mapped into the process, one a line
 *   probe holes PATH     print each data range as "START END" (SEEK_DATA/SEEK_HOLE),
 *                        then "size SIZE"
 */
#define _GNU_SOURCE
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_signal(int s) { got = s; }

static int usage(void) {
    fputs("usage: probe args|exit N|env NAME|cwd|cat|uid|pid|wait-signal|raise N|"
          "exists PATH|isatty|sleep S|err TEXT\n",
          stderr);
    return 2;
}

static int wait_signal(void) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&block, sigs[i]);
    /* Blocked until sigsuspend: a signal sent right after "ready" is not lost. */
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    while (!got) sigsuspend(&old);
    printf("signal %d\n", (int)got);
    fflush(stdout);
    return 64 + got;
}

static int die_by(int n) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, n);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    signal(n, SIG_DFL);
    fflush(stdout);
    raise(n);
    fprintf(stderr, "probe: still alive after raise(%d)\n", n);
    return 1;
}

static int copy_stdin(void) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, (size_t)(n - off));
            if (w <= 0) return 1;
            off += w;
        }
    }
    return n < 0;
}

/* The shared objects in /proc/self/maps (each once, in the order first mapped). */
static int libs(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) {
        perror("/proc/self/maps");
        return 1;
    }
    char line[4096], last[4096] = "";
    while (fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (!path || !strstr(path, ".so")) continue;
        path[strcspn(path, "\n")] = 0;
        if (strcmp(path, last)) printf("%s\n", path);
        snprintf(last, sizeof last, "%s", path);
    }
    fclose(maps);
    return 0;
}

/* The data ranges of a file as lseek's SEEK_DATA and SEEK_HOLE report them. */
static int holes(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    off_t size = lseek(fd, 0, SEEK_END), pos = 0;
    while (pos < size) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0) break; /* ENXIO: only a hole follows */
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            perror("probe: SEEK_HOLE");
            return 1;
        }
        printf("%lld %lld\n", (long long)data, (long long)hole);
        pos = hole;
    }
    printf("size %lld\n", (long long)size);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    const char *arg = argc > 2 ? argv[2] : NULL;
    if (!strcmp(cmd, "args")) {
        for (int i = 2; i < argc; i++) printf("[%s]\n", argv[i]);
        return 0;
    }
    if (!strcmp(cmd, "exit") && arg) return atoi(arg);
    if (!strcmp(cmd, "env") && arg) {
        const char *v = getenv(arg);
        if (!v) return 3;
        printf("%s\n", v);
        return 0;
    }
    if (!strcmp(cmd, "cwd")) {
        char buf[PATH_MAX];
        if (!getcwd(buf, sizeof buf)) {
            perror("probe: getcwd");
            return 1;
        }
        printf("%s\n", buf);
        return 0;
    }
    if (!strcmp(cmd, "cat")) return copy_stdin();
    if (!strcmp(cmd, "uid")) {
        printf("%u %u\n", (unsigned)getuid(), (unsigned)getgid());
        return 0;
    }
    if (!strcmp(cmd, "pid")) {
        printf("%d\n", (int)getpid());
        return 0;
    }
    if (!strcmp(cmd, "wait-signal")) return wait_signal();
    if (!strcmp(cmd, "raise") && arg) return die_by(atoi(arg));
    if (!strcmp(cmd, "exists") && arg) {
        struct stat st;
        int yes = lstat(arg, &st) == 0;
        printf("%s\n", yes ? "yes" : "no");
        return !yes;
    }
    if (!strcmp(cmd, "isatty")) {
        printf("%d %d %d\n", isatty(0), isatty(1), isatty(2));
        return 0;
    }
    if (!strcmp(cmd, "sleep") && arg) {
        sleep((unsigned)atoi(arg));
        return 0;
    }
    if (!strcmp(cmd, "inode") && arg) {
        for (int i = 2; i < argc; i++) {
            struct stat st;
            if (lstat(argv[i], &st)) {
                perror(argv[i]);
                return 1;
            }
            printf("%llu %llu\n", (unsigned long long)st.st_ino, (unsigned long long)st.st_nlink);
        }
        return 0;
    }
    if (!strcmp(cmd, "holes") && arg) return holes(arg);
    if (!strcmp(cmd, "libs")) return libs();
    if (!strcmp(cmd, "err") && arg) {
        fprintf(stderr, "%s\n", arg);
        return 0;
    }
    return usage();
}
