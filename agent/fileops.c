/*
 * File operations with the rights of a job's owner.
 *
 * dopad may run as root on behalf of every user. It must not let a job
 * create, replace or remove anything its owner could not, and it must not
 * follow a symlink someone planted at a temporary or destination name. So
 * when dopad is root and the owner is not, each operation runs in a child
 * process that first takes the owner's groups, gid and uid; the child passes
 * back an errno value and, when the operation opens a file, the descriptor
 * (SCM_RIGHTS). Between fork and _exit the child only makes system calls, as
 * a child of a threaded process must.
 *
 * A temporary file is reopened only if it is still a regular file with one
 * link, owned by the identity that opens it (its owner; root's own jobs
 * excepted), so a name replaced by someone else is not written into.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

#define MAX_GROUPS 256

enum op { OP_OPEN_NEW, OP_OPEN_OLD, OP_REMOVE, OP_COMMIT };

struct request {
    enum op op;
    uid_t owner;
    const char *tmp;
    const char *dest;
};

/* The directory part of path into dir, the last component into *base. */
static int split(const char *path, char *dir, size_t len, const char **base)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL || slash[1] == '\0')
        return EINVAL;
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= len)
        return ENAMETOOLONG;
    memcpy(dir, path, n);
    dir[n] = '\0';
    *base = slash + 1;
    return 0;
}

/* The operation itself, in whatever process has the right identity.
 * Returns 0 or an errno value; *fd_out gets an opened file for OPEN_*. */
static int perform(const struct request *rq, int *fd_out)
{
    char dir[PATH_MAX];
    const char *base;
    int err = split(rq->tmp, dir, sizeof dir, &base);
    if (err != 0)
        return err;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return errno;
    int fd = -1;
    struct stat st;
    switch (rq->op) {
    case OP_OPEN_NEW:
        fd = openat(dfd, base, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
            err = errno;
        break;
    case OP_OPEN_OLD:
        fd = openat(dfd, base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            err = errno;
        else if (fstat(fd, &st) != 0)
            err = errno;
        else if (!S_ISREG(st.st_mode))
            err = EINVAL;
        else if (st.st_nlink != 1 || (geteuid() != 0 && st.st_uid != geteuid()))
            err = EPERM; /* not the file we made */
        else if (fcntl(fd, F_SETFL, 0) != 0)
            err = errno;
        break;
    case OP_REMOVE:
        if (unlinkat(dfd, base, 0) != 0 && errno != ENOENT)
            err = errno;
        break;
    case OP_COMMIT: {
        char dest_dir[PATH_MAX];
        const char *dest_base;
        err = split(rq->dest, dest_dir, sizeof dest_dir, &dest_base);
        if (err == 0 && strcmp(dest_dir, dir) != 0)
            err = EXDEV; /* the temporary file always lives beside its destination */
        if (err != 0)
            break;
        fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
            err = errno;
            break;
        }
        if (fstat(fd, &st) != 0)
            err = errno;
        else if (!S_ISREG(st.st_mode) || st.st_nlink != 1 ||
                 (geteuid() != 0 && st.st_uid != geteuid()))
            err = EPERM;
        else if (fsync(fd) != 0)
            err = errno;
        else if (renameat(dfd, base, dfd, dest_base) != 0)
            err = errno;
        else if (fsync(dfd) != 0)
            err = errno;
        close(fd);
        fd = -1;
        break;
    }
    }
    close(dfd);
    if (err != 0 && fd >= 0) {
        close(fd);
        fd = -1;
    }
    *fd_out = fd;
    return err;
}

/* Sends an errno value and maybe a descriptor over a socket. */
static void send_result(int sock, int err, int fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &err, .iov_len = sizeof err};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(cbuf, 0, sizeof cbuf);
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static int receive_result(int sock, int *err, int *fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = err, .iov_len = sizeof *err};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t n;
    while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    *fd = -1;
    if (n != (ssize_t)sizeof *err)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof *fd);
    return 0;
}

/* Runs the operation as the owner: directly when that is who we are (or
 * when we may not change identity), else in a child. */
static int as_owner(const struct request *rq, int *fd, char *why, size_t why_len)
{
    *fd = -1;
    if (geteuid() != 0 || rq->owner == 0 || rq->owner == geteuid())
        return perform(rq, fd);

    /* Everything the child needs is looked up here: getpwuid_r and
     * getgrouplist are not safe after fork in a threaded process. */
    struct passwd pw, *found = NULL;
    char buf[4096];
    gid_t groups[MAX_GROUPS];
    int n_groups = MAX_GROUPS;
    if (getpwuid_r(rq->owner, &pw, buf, sizeof buf, &found) != 0 || found == NULL) {
        snprintf(why, why_len, "uid %u has no passwd entry", (unsigned)rq->owner);
        return EPERM;
    }
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n_groups) < 0) {
        n_groups = 1;
        groups[0] = pw.pw_gid;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    if (pid == 0) {
        close(sv[0]);
        int cfd = -1, err = 0;
        if (setgroups((size_t)n_groups, groups) != 0 || setgid(pw.pw_gid) != 0 ||
            setuid(rq->owner) != 0 || getuid() != rq->owner || geteuid() != rq->owner)
            err = EPERM;
        else
            err = perform(rq, &cfd);
        send_result(sv[1], err, cfd);
        _exit(0);
    }
    close(sv[1]);
    int err = 0;
    if (receive_result(sv[0], &err, fd) != 0)
        err = EIO;
    close(sv[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return err;
}

static int finish(int err, const char *what, const char *path, char *why, size_t why_len)
{
    if (err != 0 && why != NULL && why_len > 0 && why[0] == '\0') {
        const char *msg = err == EPERM && strcmp(what, "create") != 0
                              ? "not the temporary file dopa made (owner, type or links changed)"
                              : strerror(err);
        snprintf(why, why_len, "cannot %s %s: %s", what, path, msg);
    }
    return err;
}

int fileops_open_temp(uint32_t owner, const char *tmp_path, int create, int *fd, char *why,
                      size_t why_len)
{
    struct request rq = {create ? OP_OPEN_NEW : OP_OPEN_OLD, owner, tmp_path, NULL};
    if (why_len > 0)
        why[0] = '\0';
    return finish(as_owner(&rq, fd, why, why_len), create ? "create" : "reopen", tmp_path, why,
                  why_len);
}

int fileops_remove_temp(uint32_t owner, const char *tmp_path, char *why, size_t why_len)
{
    struct request rq = {OP_REMOVE, owner, tmp_path, NULL};
    int fd;
    if (why_len > 0)
        why[0] = '\0';
    return finish(as_owner(&rq, &fd, why, why_len), "remove", tmp_path, why, why_len);
}

int fileops_commit(uint32_t owner, const char *tmp_path, const char *dest_path, char *why,
                   size_t why_len)
{
    struct request rq = {OP_COMMIT, owner, tmp_path, dest_path};
    int fd;
    if (why_len > 0)
        why[0] = '\0';
    return finish(as_owner(&rq, &fd, why, why_len), "move into place", tmp_path, why, why_len);
}

int fileops_temp_name(const char *dest, const dopa_id *id, uint32_t index, char *out, size_t len)
{
    char dir[PATH_MAX];
    const char *base;
    if (dest == NULL || dest[0] != '/' || split(dest, dir, sizeof dir, &base) != 0)
        return EINVAL;
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", id->bytes[i]);
    int n = snprintf(out, len, "%s%s.dopa-%s-%u.part", dir, strcmp(dir, "/") == 0 ? "" : "/", hex,
                     index);
    return n < 0 || (size_t)n >= len ? ENAMETOOLONG : 0;
}
