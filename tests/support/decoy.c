/*
 * dopa-test-decoy: runs a test where every control socket that dopa and
 * libdopa fall back to is a decoy, so that a command of the test that does
 * not name a dopad of the test's own is caught, whatever dopads the
 * machine runs.
 *
 *   usage: dopa-test-decoy PROGRAM [ARG...]
 *
 * Told nothing, dopa and libdopa use $DOPA_SOCKET when it is set, else
 * (not root) $XDG_RUNTIME_DIR/dopa/control.sock when it exists, else the
 * system dopad's /run/dopa/control.sock (dopa_default_socket). PROGRAM
 * runs without DOPA_SOCKET, with XDG_RUNTIME_DIR in a scratch directory
 * where the decoy listens at dopa/control.sock; as root, it also runs in a
 * mount namespace of its own where /run/dopa is new and empty (a tmpfs
 * over it, or an overlay over /run when it does not exist) and the decoy
 * listens at /run/dopa/control.sock. The machine's mounts and files stay
 * as they were, and a system dopad of the machine is out of reach.
 *
 * The decoy serves nobody: it accepts a connection, says which process
 * made it, and closes it. When anything connected the test fails, whatever
 * PROGRAM's own status; otherwise the status is PROGRAM's (77, a skip,
 * included). Without a mount namespace (not root) the system socket is
 * not covered, and it says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"

#define SYSTEM_DIR    "/run/dopa"
#define SYSTEM_SOCKET SYSTEM_DIR "/control.sock"

static volatile sig_atomic_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0)
        kill(child_pid, sig);
}

/* Listens at path (mode 0666: a test's other users must reach it too).
 * Returns the socket, or -1 with the reason told. */
static int listen_at(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "decoy: %s: too long for a socket\n", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || chmod(path, 0666) != 0 ||
        listen(fd, 64) != 0) {
        fprintf(stderr, "decoy: cannot listen at %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* As root: a mount namespace where /run/dopa is empty and ours. The layer
 * directory (made here, empty) holds an overlay's upper layer when /run
 * itself has to be covered. 0, or -1 with the reason told. */
static int own_system_dir(const char *layer)
{
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        fprintf(stderr, "decoy: no mount namespace of its own: %s\n", strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(SYSTEM_DIR, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (mount("dopa-decoy", SYSTEM_DIR, "tmpfs", 0, "mode=0755") != 0)
            goto fail;
        return 0;
    }
    /* No /run/dopa to mount over: an overlay over /run makes it, leaving
     * what else is there in sight. */
    char upper[720], work[720], options[1600];
    snprintf(upper, sizeof upper, "%.700s/upper", layer);
    snprintf(work, sizeof work, "%.700s/work", layer);
    snprintf(options, sizeof options, "lowerdir=/run,upperdir=%s,workdir=%s", upper, work);
    if (mount("dopa-decoy", layer, "tmpfs", 0, "mode=0755") != 0 || mkdir(upper, 0755) != 0 ||
        mkdir(work, 0755) != 0 || mount("dopa-decoy", "/run", "overlay", 0, options) != 0)
        goto fail;
    unlink(SYSTEM_DIR); /* not a directory, or a dangling link */
    if (mkdir(SYSTEM_DIR, 0755) != 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "decoy: cannot make %s its own: %s\n", SYSTEM_DIR, strerror(errno));
    return -1;
}

/* Takes every connection waiting at fd and tells who made it. Returns how
 * many there were. */
static int take_connections(int fd, const char *path)
{
    int n = 0, c;
    while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        char command[512] = "?", proc[64];
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            snprintf(proc, sizeof proc, "/proc/%d/cmdline", (int)cred.pid);
            int in = open(proc, O_RDONLY | O_CLOEXEC);
            ssize_t got = in >= 0 ? read(in, command, sizeof command - 1) : -1;
            if (got > 0) {
                command[got] = '\0';
                for (ssize_t i = 0; i < got - 1; i++)
                    if (command[i] == '\0')
                        command[i] = ' ';
            }
            if (in >= 0)
                close(in);
        } else {
            cred.pid = 0;
        }
        fprintf(stderr,
                "decoy: FAIL: pid %d (%s) reached %s: a command of the test named no dopad "
                "of its own\n",
                (int)cred.pid, command, path);
        close(c);
        n++;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: dopa-test-decoy PROGRAM [ARG...]\n");
        return 2;
    }
    const char *dir = test_scratch_dir("decoy");
    if (dir == NULL) {
        perror("decoy: scratch directory");
        return 1;
    }
    /* test_scratch_dir gives a name of under 600 bytes. */
    char runtime[640], dopa_dir[660], user_socket[700], layer[640];
    snprintf(runtime, sizeof runtime, "%.600s/runtime", dir);
    snprintf(dopa_dir, sizeof dopa_dir, "%.640s/dopa", runtime);
    snprintf(user_socket, sizeof user_socket, "%.660s/control.sock", dopa_dir);
    snprintf(layer, sizeof layer, "%.600s/layer", dir);
    if (mkdir(runtime, 0755) != 0 || mkdir(dopa_dir, 0755) != 0 || mkdir(layer, 0755) != 0) {
        perror("decoy: scratch directory");
        return 1;
    }

    const char *paths[2] = {user_socket, SYSTEM_SOCKET};
    int fds[2] = {-1, -1}, n_fds = 0, rc = 1;
    int is_root = geteuid() == 0;
    if (is_root && own_system_dir(layer) != 0)
        goto out;
    if ((fds[n_fds++] = listen_at(user_socket)) < 0 ||
        (is_root && (fds[n_fds++] = listen_at(SYSTEM_SOCKET)) < 0))
        goto out;
    if (!is_root)
        printf("decoy: not root: %s is not covered, only %s\n", SYSTEM_SOCKET, user_socket);
    setenv("XDG_RUNTIME_DIR", runtime, 1);
    unsetenv("DOPA_SOCKET");

    signal(SIGINT, forward);
    signal(SIGTERM, forward);
    signal(SIGHUP, forward);
    fflush(stdout); /* said once, before PROGRAM says anything */
    pid_t pid = fork();
    if (pid < 0) {
        perror("decoy: fork");
        goto out;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "decoy: %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    child_pid = pid;

    int reached = 0, status = 0;
    for (;;) {
        struct pollfd p[2];
        for (int i = 0; i < n_fds; i++)
            p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        poll(p, (nfds_t)n_fds, 100);
        for (int i = 0; i < n_fds; i++)
            reached += take_connections(fds[i], paths[i]);
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            perror("decoy: waitpid");
            goto out;
        }
    }
    for (int i = 0; i < n_fds; i++) /* the last ones */
        reached += take_connections(fds[i], paths[i]);
    rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (reached > 0) {
        fprintf(stderr, "decoy: FAIL: %d connection%s to the decoy (the test's own status: %d)\n",
                reached, reached == 1 ? "" : "s", rc);
        rc = 1;
    }
out:
    for (int i = 0; i < n_fds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    unlink(user_socket);
    /* The namespace's mounts end with it; the layer must be free now, for
     * the scratch directory to be removed. */
    if (is_root)
        umount2(layer, MNT_DETACH);
    return rc;
}
