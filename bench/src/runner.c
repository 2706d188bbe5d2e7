/* Start-up timing driver: runs several variants of a command in alternation and prints
 * the wall time of every run, from just before fork() to the return of waitpid().
 *
 *   runner CONFIG
 *
 * CONFIG, one directive a line:
 *   rounds N          timed rounds (each runs every variant once)
 *   warmup N          untimed rounds first
 *   variant NAME      starts a variant; the lines below belong to it
 *   uid U / gid G     credentials of the child (set after fork, before exec; the driver
 *                     runs as root, so an unprivileged variant costs no extra exec)
 *   cwd DIR           working directory of the child
 *   env K=V           the child's environment (the whole of it)
 *   arg A             argv, in order; argv[0] is an absolute path
 *   pre A             argv of an untimed command run (as root, with the same env)
 *                     before each run of this variant, e.g. to empty a cache
 *   log FILE          the child's stderr is appended here (stdout goes to /dev/null)
 *
 * The order of the variants rotates from round to round, so none always runs right
 * after the same other one. Output, one line per variant:
 *   NAME FAILURES T1 T2 ...      (times in microseconds)
 * A run that exits non-zero is counted in FAILURES and its time is still printed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXV 32
#define MAXA 64

struct variant {
    char *name;
    uid_t uid;
    gid_t gid;
    char *cwd;
    char *log;
    char *argv[MAXA + 1];
    int argc;
    char *pre[MAXA + 1];
    int prec;
    char *env[MAXA + 1];
    int envc;
    double *times;
    int failures;
};

static struct variant vs[MAXV];
static int nv;

static void die(const char *m) {
    fprintf(stderr, "runner: %s\n", m);
    exit(2);
}

static pid_t spawn(struct variant *v, char **argv, int as_user) {
    pid_t pid = fork();
    if (pid < 0)
        die("fork failed");
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        if (v->log) {
            int l = open(v->log, O_WRONLY | O_APPEND | O_CREAT, 0644);
            if (l >= 0)
                dup2(l, 2);
        }
        if (as_user && v->uid != 0) {
            if (setgroups(1, &v->gid) || setgid(v->gid) || setuid(v->uid))
                _exit(126);
        }
        if (v->cwd && chdir(v->cwd))
            _exit(126);
        execve(argv[0], argv, v->env);
        fprintf(stderr, "runner: cannot execute %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static int wait_for(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid failed");
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static double run_once(struct variant *v, int *status) {
    if (v->prec) {
        int s = wait_for(spawn(v, v->pre, 0));
        if (s)
            fprintf(stderr, "runner: %s: pre-command exited %d\n", v->name, s);
    }
    double a = now_us();
    pid_t pid = spawn(v, v->argv, 1);
    *status = wait_for(pid);
    return now_us() - a;
}

int main(int argc, char **argv) {
    if (argc != 2)
        die("usage: runner CONFIG");
    FILE *f = fopen(argv[1], "r");
    if (!f)
        die("cannot open the config");
    int rounds = 10, warmup = 1;
    char line[4096];
    struct variant *v = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *sp = strchr(line, ' ');
        char *val = sp ? sp + 1 : "";
        if (sp)
            *sp = 0;
        if (!*line || *line == '#')
            continue;
        if (!strcmp(line, "rounds"))
            rounds = atoi(val);
        else if (!strcmp(line, "warmup"))
            warmup = atoi(val);
        else if (!strcmp(line, "variant")) {
            if (nv == MAXV)
                die("too many variants");
            v = &vs[nv++];
            v->name = strdup(val);
        } else if (!v)
            die("directive before the first variant");
        else if (!strcmp(line, "uid"))
            v->uid = (uid_t)atoi(val);
        else if (!strcmp(line, "gid"))
            v->gid = (gid_t)atoi(val);
        else if (!strcmp(line, "cwd"))
            v->cwd = strdup(val);
        else if (!strcmp(line, "log"))
            v->log = strdup(val);
        else if (!strcmp(line, "arg") && v->argc < MAXA)
            v->argv[v->argc++] = strdup(val);
        else if (!strcmp(line, "pre") && v->prec < MAXA)
            v->pre[v->prec++] = strdup(val);
        else if (!strcmp(line, "env") && v->envc < MAXA)
            v->env[v->envc++] = strdup(val);
        else
            die("unknown directive or too many values");
    }
    fclose(f);
    for (int i = 0; i < nv; i++) {
        if (!vs[i].argc)
            die("a variant has no arg");
        vs[i].times = calloc((size_t)rounds, sizeof(double));
    }
    int status;
    for (int r = 0; r < warmup; r++)
        for (int k = 0; k < nv; k++) {
            struct variant *w = &vs[(k + r) % nv];
            run_once(w, &status);
            if (status)
                fprintf(stderr, "runner: %s: warm-up run exited %d\n", w->name, status);
        }
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < nv; k++) {
            struct variant *w = &vs[(k + r) % nv];
            w->times[r] = run_once(w, &status);
            if (status) {
                if (w->failures++ < 3)
                    fprintf(stderr, "runner: %s: run exited %d\n", w->name, status);
            }
        }
    for (int i = 0; i < nv; i++) {
        printf("%s %d", vs[i].name, vs[i].failures);
        for (int r = 0; r < rounds; r++)
            printf(" %.1f", vs[i].times[r]);
        printf("\n");
    }
    return 0;
}
