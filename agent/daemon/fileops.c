/*
 * File operations with the rights of the user a job's files belong to.
 *
 * dopad may run as root on behalf of every user. It must not let a job
 * create, replace or remove anything that user could not, and it must not
 * follow a symlink someone planted at a temporary or destination name. So
 * when dopad is root and the user is not, each operation runs in a child
 * process that first takes the user's groups, gid and uid; the child passes
 * back an errno value, the identity of what it touched and, when the
 * operation opens a file, the descriptor (SCM_RIGHTS). Between fork and
 * _exit the child only makes system calls, as a child of a threaded process
 * must.
 *
 * Identity: when a temporary file is made, the device and inode of its
 * directory and of the file are recorded (fileops_ident). Every later
 * operation checks them, and that the file still belongs to the identity
 * that made it (an inode number is given again as soon as its file is
 * deleted): a directory swapped for a symlink or for another directory, or
 * a temporary file swapped for anything else, is refused with EXDEV or
 * EPERM instead of being written, moved or removed. This holds for root's
 * own jobs too, where the identity switch protects nothing.
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
    uid_t user;
    const char *tmp;
    const char *dest;
    fileops_ident expect; /* for all but OP_OPEN_NEW */
    int64_t size;         /* OP_COMMIT: the size the file must have */
};

/* What the operation passes back besides the descriptor. */
struct result {
    int err;
    fileops_ident ident;
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

static int same(const struct stat *st, uint64_t dev, uint64_t ino)
{
    return (uint64_t)st->st_dev == dev && (uint64_t)st->st_ino == ino;
}

/* Whether an opened file may be the temporary file we made: a regular
 * file of the identity that made it (root too: a file someone else made
 * where ours was deleted may get its inode number again, so the number
 * alone does not tell) with the recorded device and inode. */
static int is_ours(const struct stat *st, const fileops_ident *expect)
{
    return S_ISREG(st->st_mode) && st->st_uid == geteuid() &&
           same(st, expect->file_dev, expect->file_ino);
}

/* Checks an opened temporary file: ours, and with one link (a second
 * name would see every byte written). */
static int check_temp(int fd, const fileops_ident *expect)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return errno;
    if (!is_ours(&st, expect) || st.st_nlink != 1)
        return EPERM; /* not the file we made */
    return 0;
}

/* The operation itself, in whatever process has the right identity.
 * Returns 0 or an errno value; *fd_out gets an opened file for OPEN_*. */
static int perform(const struct request *rq, int *fd_out, fileops_ident *ident)
{
    char dir[PATH_MAX];
    const char *base;
    struct stat st;
    int err = split(rq->tmp, dir, sizeof dir, &base);
    *fd_out = -1;
    if (err != 0)
        return err;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return errno;
    if (fstat(dfd, &st) != 0) {
        err = errno;
        close(dfd);
        return err;
    }
    if ((rq->op != OP_OPEN_NEW || rq->expect.dir_ino != 0) &&
        !same(&st, rq->expect.dir_dev, rq->expect.dir_ino)) {
        close(dfd);
        return EXDEV; /* the directory is not the one the job was given */
    }
    ident->dir_dev = (uint64_t)st.st_dev;
    ident->dir_ino = (uint64_t)st.st_ino;

    int fd = -1;
    switch (rq->op) {
    case OP_OPEN_NEW:
        /* Private while it fills; Complete makes it readable. */
        fd = openat(dfd, base, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            err = errno;
        else if (fstat(fd, &st) != 0)
            err = errno;
        else {
            ident->file_dev = (uint64_t)st.st_dev;
            ident->file_ino = (uint64_t)st.st_ino;
        }
        break;
    case OP_OPEN_OLD:
        fd = openat(dfd, base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            err = errno;
        else if ((err = check_temp(fd, &rq->expect)) == 0 && fcntl(fd, F_SETFL, 0) != 0)
            err = errno;
        ident->file_dev = rq->expect.file_dev;
        ident->file_ino = rq->expect.file_ino;
        break;
    case OP_REMOVE:
        /* Only the file we made: a name someone else put there stays. */
        fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0 && errno == ELOOP) {
            /* A symlink planted at our name: removing it touches nothing else. */
            if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) &&
                unlinkat(dfd, base, 0) != 0 && errno != ENOENT)
                err = errno;
        } else if (fd < 0) {
            err = errno == ENOENT ? 0 : errno;
        } else if (fstat(fd, &st) == 0 && is_ours(&st, &rq->expect)) {
            if (unlinkat(dfd, base, 0) != 0 && errno != ENOENT)
                err = errno;
        } else {
            err = EPERM;
        }
        if (fd >= 0)
            close(fd);
        fd = -1;
        break;
    case OP_COMMIT: {
        char dest_dir[PATH_MAX];
        const char *dest_base;
        err = split(rq->dest, dest_dir, sizeof dest_dir, &dest_base);
        if (err == 0 && strcmp(dest_dir, dir) != 0)
            err = EXDEV; /* the temporary file always lives beside its destination */
        if (err != 0)
            break;
        fd = openat(dfd, base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0 && errno == ENOENT) {
            /* Moved already, by a Complete that did not live to record it:
             * done if the destination is that very file. */
            if (fstatat(dfd, dest_base, &st, AT_SYMLINK_NOFOLLOW) == 0 && is_ours(&st, &rq->expect))
                err = 0;
            else
                err = ENOENT;
            break;
        }
        if (fd < 0) {
            err = errno;
            break;
        }
        if ((err = check_temp(fd, &rq->expect)) != 0)
            ;
        else if (fstat(fd, &st) != 0)
            err = errno;
        else if (st.st_size != rq->size)
            err = EFBIG; /* not what the job transferred: never shown */
        else if (fchmod(fd, 0644) != 0 || fsync(fd) != 0)
            err = errno;
        else if (renameat(dfd, base, dfd, dest_base) != 0)
            err = errno;
        else if (fstatat(dfd, dest_base, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                 !is_ours(&st, &rq->expect)) {
            /* In a directory others may write, the temporary name can be
             * swapped (for a link, say) between the check above and the
             * rename, which then moved their thing into place. It must not
             * stay there as if it were the job's file. */
            unlinkat(dfd, dest_base, 0);
            err = EPERM;
        } else if (fsync(dfd) != 0) {
            err = errno;
        }
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

/* Sends the result and maybe a descriptor over a socket. */
static void send_result(int sock, const struct result *res, int fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = (void *)(uintptr_t)res, .iov_len = sizeof *res};
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

static int receive_result(int sock, struct result *res, int *fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = res, .iov_len = sizeof *res};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t n;
    while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    *fd = -1;
    if (n != (ssize_t)sizeof *res)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof *fd);
    return 0;
}

/* Runs the operation as the user: directly when that is who we are (or
 * when we may not change identity), else in a child. */
static int as_user(const struct request *rq, int *fd, fileops_ident *ident, validate_error *why)
{
    *fd = -1;
    if (geteuid() != 0 || rq->user == 0 || rq->user == geteuid())
        return perform(rq, fd, ident);

    /* Everything the child needs is looked up here: getpwuid_r and
     * getgrouplist are not safe after fork in a threaded process. */
    struct passwd pw, *found = NULL;
    char buf[4096];
    gid_t groups[MAX_GROUPS];
    int n_groups = MAX_GROUPS;
    if (getpwuid_r(rq->user, &pw, buf, sizeof buf, &found) != 0 || found == NULL) {
        validate_error_set(why, DOPA_EACCESS, "uid %u has no passwd entry", (unsigned)rq->user);
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
        struct result res = {0};
        int cfd = -1;
        if (setgroups((size_t)n_groups, groups) != 0 || setgid(pw.pw_gid) != 0 ||
            setuid(rq->user) != 0 || getuid() != rq->user || geteuid() != rq->user)
            res.err = EPERM;
        else
            res.err = perform(rq, &cfd, &res.ident);
        send_result(sv[1], &res, cfd);
        _exit(0);
    }
    close(sv[1]);
    struct result res = {.err = EIO};
    if (receive_result(sv[0], &res, fd) != 0)
        res.err = EIO;
    close(sv[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    *ident = res.ident;
    return res.err;
}

static int finish(int err, const char *what, const char *path, validate_error *why)
{
    if (err != 0 && why != NULL && why->text[0] == '\0') {
        const char *msg = strerror(err);
        if (err == EPERM && strcmp(what, "create") != 0)
            msg = "not the temporary file dopa made (replaced, linked or changed owner)";
        else if (err == EXDEV)
            msg = "its directory is no longer the one the job was given";
        else if (err == EFBIG)
            msg = "its size is not what was transferred";
        validate_error_set(why, err == EACCES || err == EPERM ? DOPA_EACCESS : DOPA_EIO,
                           "cannot %s %s: %s", what, path, msg);
    }
    return err;
}

int fileops_open_temp(uint32_t user, const char *tmp_path, int create, fileops_ident *ident,
                      int *fd, validate_error *why)
{
    struct request rq = {create ? OP_OPEN_NEW : OP_OPEN_OLD, user, tmp_path, NULL, *ident, 0};
    fileops_ident got = *ident;
    if (why != NULL)
        *why = (validate_error){0};
    int err = as_user(&rq, fd, &got, why);
    if (err == 0)
        *ident = got;
    return finish(err, create ? "create" : "reopen", tmp_path, why);
}

int fileops_remove_temp(uint32_t user, const char *tmp_path, const fileops_ident *ident,
                        validate_error *why)
{
    struct request rq = {OP_REMOVE, user, tmp_path, NULL, *ident, 0};
    fileops_ident got;
    int fd;
    if (why != NULL)
        *why = (validate_error){0};
    return finish(as_user(&rq, &fd, &got, why), "remove", tmp_path, why);
}

int fileops_commit(uint32_t user, const char *tmp_path, const char *dest_path,
                   const fileops_ident *ident, uint64_t size, validate_error *why)
{
    struct request rq = {OP_COMMIT, user, tmp_path, dest_path, *ident, (int64_t)size};
    fileops_ident got;
    int fd;
    if (why != NULL)
        *why = (validate_error){0};
    return finish(as_user(&rq, &fd, &got, why), "move into place", tmp_path, why);
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
