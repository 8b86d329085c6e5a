/* Child processes for tests; see proc.h. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"

_Noreturn void test_exec(const char *const argv[])
{
    char *args[64];
    size_t n = 0;
    while (argv[n] != NULL && n < 63) {
        memcpy(&args[n], &argv[n], sizeof args[n]); /* execv's prototype lacks const */
        n++;
    }
    args[n] = NULL;
    execv(args[0], args);
    fprintf(stderr, "cannot run %s\n", args[0]);
    _exit(127);
}

pid_t test_spawn(const char *const argv[], const char *out_path, uid_t uid, gid_t gid)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = out_path ? open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0666)
                      : open("/dev/null", O_WRONLY);
    int in = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    if (in >= 0)
        dup2(in, 0);
    if (uid != TEST_AS_ME && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0))
        _exit(126);
    test_exec(argv);
}

int test_wait(pid_t pid, int timeout_s)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0 && errno != EINTR)
            return -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void test_print_stacks(pid_t pid)
{
    char id[24];
    snprintf(id, sizeof id, "%d", (int)pid);
    const char *gdb[] = {"/usr/bin/gdb",        "-p", id, "-batch", "-nx", "-ex",
                         "thread apply all bt", NULL};
    const char *eu_stack[] = {"/usr/bin/eu-stack", "-p", id, NULL};
    const char *const *argv = access(gdb[0], X_OK) == 0        ? gdb
                              : access(eu_stack[0], X_OK) == 0 ? eu_stack
                                                               : NULL;
    if (argv == NULL) {
        fprintf(stderr, "  (no gdb or eu-stack here to show the stacks of %d)\n", (int)pid);
        return;
    }
    fprintf(stderr, "  the stacks of %d:\n", (int)pid);
    fflush(stderr);
    pid_t tracer = fork();
    if (tracer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(2, 1);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        test_exec(argv);
    }
    if (tracer > 0)
        test_wait(tracer, 60);
}

int test_run(const char *const argv[], char *out, size_t len, int timeout_s, uid_t uid, gid_t gid)
{
    char path[] = "/tmp/dopa-test-out.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    fchmod(fd, 0666); /* a child running as another user appends to it */
    close(fd);
    int status = test_wait(test_spawn(argv, path, uid, gid), timeout_s);
    if (out != NULL && len > 0) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(out, 1, len - 1, f) : 0;
        out[n] = '\0';
        if (f)
            fclose(f);
    }
    unlink(path);
    return status;
}

void test_stop(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    if (test_wait(pid, 5) < 0)
        kill(pid, SIGKILL);
}

/* The second user's name: one per test program, since programs run side
 * by side and each removes the user it made. */
static const char *user_name(void)
{
    static char name[33];
    if (name[0] == '\0')
        snprintf(name, sizeof name, "dopa-%.27s", program_invocation_short_name);
    return name;
}

int test_user(uid_t *uid, gid_t *gid, int *created)
{
    *created = 0;
    struct passwd *pw = getpwnam(user_name());
    if (pw == NULL) {
        const char *argv[] = {
            "/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
            user_name(),         NULL};
        if (test_run(argv, NULL, 0, 30, TEST_AS_ME, 0) != 0)
            return -1;
        *created = 1;
        pw = getpwnam(user_name());
    }
    if (pw == NULL)
        return -1;
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

void test_user_remove(void)
{
    const char *argv[] = {"/usr/sbin/userdel", user_name(), NULL};
    test_run(argv, NULL, 0, 30, TEST_AS_ME, 0);
}

static char scratch[600];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_scratch(void)
{
    nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *test_scratch_dir(const char *tag)
{
    if (scratch[0] != '\0')
        return scratch;
    const char *base = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%.400s/dopa-%.64s.XXXXXX", base ? base : "/tmp", tag);
    if (mkdtemp(scratch) == NULL || chmod(scratch, 0755) != 0) {
        scratch[0] = '\0';
        return NULL;
    }
    atexit(remove_scratch);
    return scratch;
}
