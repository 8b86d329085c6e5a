/*
 * The notification center (callback.h): a list of events, each waiting,
 * offered to a client, or being delivered by a running command; cb_step
 * moves them along under the per-user limit and the retry and coalescing
 * rules.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "callback.h"

#define MAX_ARGS   64
#define MAX_GROUPS 256

enum item_state { WAITING, OFFERED, RUNNING };

typedef struct item {
    cb_event ev;
    enum item_state state;
    int64_t not_before; /* WAITING: not tried before this */
    int64_t deadline;   /* OFFERED, RUNNING: given up on at this time */
    pid_t pid;          /* RUNNING */
    int by_command;     /* a failed JobTransferred goes to the command next */
    struct item *next;
} item;

/* When the last JobModification of a job was delivered (for the interval). */
typedef struct modtime {
    uint8_t job[16];
    int64_t at;
    struct modtime *next;
} modtime;

struct cb_center {
    cb_config cfg;
    cb_owner o;
    item *first, *last;
    modtime *mods;
};

int cb_wanted(uint32_t flags, int kind)
{
    if (flags & CB_NOTIFY_DISABLE)
        return 0;
    switch (kind) {
    case CB_JOB_TRANSFERRED:
        return (flags & CB_NOTIFY_JOB_TRANSFERRED) != 0;
    case CB_JOB_ERROR:
        return (flags & CB_NOTIFY_JOB_ERROR) != 0;
    case CB_JOB_MODIFICATION:
        return (flags & CB_NOTIFY_JOB_MODIFICATION) != 0;
    case CB_FILE_TRANSFERRED:
        return (flags & CB_NOTIFY_FILE_TRANSFERRED) != 0;
    default:
        return 0;
    }
}

const char *cb_kind_name(int kind)
{
    switch (kind) {
    case CB_JOB_TRANSFERRED:
        return "JobTransferred";
    case CB_JOB_ERROR:
        return "JobError";
    case CB_JOB_MODIFICATION:
        return "JobModification";
    case CB_FILE_TRANSFERRED:
        return "FileTransferred";
    default:
        return "Unknown";
    }
}

int cb_center_new(const cb_config *cfg, const cb_owner *owner, cb_center **out)
{
    cb_center *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -1;
    c->cfg = cfg != NULL ? *cfg : (cb_config){0};
    if (c->cfg.per_user == 0)
        c->cfg.per_user = 4;
    if (c->cfg.modification_interval_ms <= 0)
        c->cfg.modification_interval_ms = 1000;
    if (c->cfg.retry_first_ms <= 0)
        c->cfg.retry_first_ms = 5000;
    if (c->cfg.retry_max_ms <= 0)
        c->cfg.retry_max_ms = 600000;
    if (c->cfg.command_timeout_ms <= 0)
        c->cfg.command_timeout_ms = 300000;
    if (c->cfg.offer_timeout_ms <= 0)
        c->cfg.offer_timeout_ms = 300000;
    c->o = *owner;
    *out = c;
    return 0;
}

static void reap(item *it, int wait_for_it)
{
    if (it->state != RUNNING || it->pid <= 0)
        return;
    if (wait_for_it) {
        kill(it->pid, SIGKILL);
        while (waitpid(it->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    it->pid = 0;
}

void cb_center_free(cb_center *c)
{
    if (c == NULL)
        return;
    while (c->first != NULL) {
        item *it = c->first;
        c->first = it->next;
        reap(it, 1);
        free(it);
    }
    while (c->mods != NULL) {
        modtime *m = c->mods;
        c->mods = m->next;
        free(m);
    }
    free(c);
}

static int same_job(const uint8_t a[16], const uint8_t b[16])
{
    return memcmp(a, b, 16) == 0;
}

static modtime *modtime_of(cb_center *c, const uint8_t job[16])
{
    for (modtime *m = c->mods; m != NULL; m = m->next)
        if (same_job(m->job, job))
            return m;
    return NULL;
}

int cb_has(const cb_center *c, const uint8_t job[16], int kind, int32_t file)
{
    /* One pending event of a kind per job (and file): a second is the same
     * news. A JobModification already handed out does not cover a new one. */
    for (const item *it = c->first; it != NULL; it = it->next)
        if (same_job(it->ev.job, job) && it->ev.kind == kind && it->ev.file == file &&
            (it->state == WAITING || kind != CB_JOB_MODIFICATION))
            return 1;
    return 0;
}

int cb_post(cb_center *c, const cb_event *ev)
{
    if (cb_has(c, ev->job, ev->kind, ev->file))
        return 1;
    item *it = calloc(1, sizeof *it);
    if (it == NULL)
        return -1;
    it->ev = *ev;
    it->state = WAITING;
    if (ev->kind == CB_JOB_MODIFICATION) {
        modtime *m = modtime_of(c, ev->job);
        if (m != NULL)
            it->not_before = m->at + c->cfg.modification_interval_ms;
    }
    if (c->last != NULL)
        c->last->next = it;
    else
        c->first = it;
    c->last = it;
    return 0;
}

static void unlink_item(cb_center *c, item *it)
{
    item *prev = NULL;
    for (item *p = c->first; p != NULL; prev = p, p = p->next) {
        if (p != it)
            continue;
        if (prev != NULL)
            prev->next = p->next;
        else
            c->first = p->next;
        if (c->last == p)
            c->last = prev;
        return;
    }
}

/* Delivered for good: tell the owner, forget it. */
static void finish(cb_center *c, item *it)
{
    if (it->ev.kind == CB_JOB_MODIFICATION) {
        modtime *m = modtime_of(c, it->ev.job);
        if (m == NULL && (m = calloc(1, sizeof *m)) != NULL) {
            memcpy(m->job, it->ev.job, 16);
            m->next = c->mods;
            c->mods = m;
        }
        if (m != NULL)
            m->at = c->o.now_ms(c->o.ctx);
    }
    unlink_item(c, it);
    cb_event ev = it->ev;
    free(it);
    c->o.finished(c->o.ctx, &ev);
}

static item *find(cb_center *c, uint64_t id)
{
    for (item *it = c->first; it != NULL; it = it->next)
        if (it->ev.id == id)
            return it;
    return NULL;
}

/* The wait before JobTransferred is offered again: doubling, capped. */
static int64_t backoff(const cb_center *c, uint32_t attempts)
{
    int64_t d = c->cfg.retry_first_ms;
    for (uint32_t i = 1; i < attempts && d < c->cfg.retry_max_ms; i++)
        d *= 2;
    return d < c->cfg.retry_max_ms ? d : c->cfg.retry_max_ms;
}

void cb_done(cb_center *c, uint64_t id, int ok)
{
    item *it = find(c, id);
    if (it == NULL || it->state != OFFERED)
        return;
    if (ok || it->ev.kind != CB_JOB_TRANSFERRED) {
        finish(c, it);
        return;
    }
    /* A failed JobTransferred: the command line if there is one (and the
     * callback is not called again), else another offer later. */
    const char *argv[MAX_ARGS];
    it->state = WAITING;
    if (c->o.command(c->o.ctx, &it->ev, argv, MAX_ARGS) > 0) {
        it->by_command = 1;
        it->not_before = 0;
    } else {
        it->not_before = c->o.now_ms(c->o.ctx) + backoff(c, it->ev.attempts);
    }
}

/* Drops the job's events that are not running: all of them (kind 0), or
 * those of one kind and file. */
static void drop(cb_center *c, const uint8_t job[16], int kind, int32_t file)
{
    item *it = c->first;
    while (it != NULL) {
        item *next = it->next;
        if (same_job(it->ev.job, job) && it->state != RUNNING &&
            (kind == 0 || (it->ev.kind == kind && it->ev.file == file))) {
            unlink_item(c, it);
            cb_event ev = it->ev;
            free(it);
            c->o.finished(c->o.ctx, &ev);
        }
        it = next;
    }
}

void cb_cancel(cb_center *c, const uint8_t job[16], int kind, int32_t file)
{
    drop(c, job, kind, file);
}

void cb_requeue(cb_center *c, uint64_t id)
{
    item *it = find(c, id);
    if (it == NULL || it->state != OFFERED)
        return;
    it->state = WAITING;
    it->not_before = 0;
    it->ev.attempts--; /* not an attempt that failed */
}

void cb_forget_job(cb_center *c, const uint8_t job[16])
{
    drop(c, job, 0, 0);
    for (modtime **p = &c->mods; *p != NULL; p = &(*p)->next) {
        if (same_job((*p)->job, job)) {
            modtime *m = *p;
            *p = m->next;
            free(m);
            break;
        }
    }
}

size_t cb_pending(const cb_center *c)
{
    size_t n = 0;
    for (const item *it = c->first; it != NULL; it = it->next)
        n++;
    return n;
}

static unsigned outstanding(const cb_center *c, uint32_t user)
{
    unsigned n = 0;
    for (const item *it = c->first; it != NULL; it = it->next)
        n += it->ev.user == user && (it->state == OFFERED || it->state == RUNNING);
    return n;
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Starts the job's command for an event; 0 if it runs, -1 if there is none
 * or it could not start (then the event waits for a client). */
static int run_command(cb_center *c, item *it, int64_t now)
{
    const char *argv[MAX_ARGS];
    if (c->o.command(c->o.ctx, &it->ev, argv, MAX_ARGS) == 0)
        return -1;
    char id[40], idvar[64], event[64];
    hex(it->ev.job, 16, id);
    snprintf(idvar, sizeof idvar, "DOPA_JOB_ID=%.8s-%.4s-%.4s-%.4s-%.12s", id, id + 8, id + 12,
             id + 16, id + 20);
    snprintf(event, sizeof event, "DOPA_EVENT=%s", cb_kind_name(it->ev.kind));
    const char *env[] = {idvar, event, NULL};
    pid_t pid = cb_spawn_as(it->ev.user, argv, env, -1);
    if (pid < 0)
        return -1;
    it->state = RUNNING;
    it->pid = pid;
    it->deadline = now + c->cfg.command_timeout_ms;
    it->ev.attempts++;
    return 0;
}

int64_t cb_step(cb_center *c)
{
    int64_t now = c->o.now_ms(c->o.ctx), wake = -1;
#define WAKE(t) (wake = (wake < 0 || (t) < wake) ? (t) : wake)
    item *it = c->first;
    while (it != NULL) {
        item *next = it->next;
        if (it->state == RUNNING) {
            int status;
            pid_t r = waitpid(it->pid, &status, WNOHANG);
            if (r == it->pid || (r < 0 && errno == ECHILD)) {
                it->pid = 0;
                finish(c, it); /* the command ran: delivered */
            } else if (now >= it->deadline) {
                reap(it, 1); /* too slow: killed, and counted as delivered */
                finish(c, it);
            } else {
                WAKE(it->deadline - now < 100 ? it->deadline - now : 100);
            }
        } else if (it->state == OFFERED) {
            if (now >= it->deadline)
                cb_done(c, it->ev.id, 0); /* the client never answered */
            else
                WAKE(it->deadline - now);
        } else if (now < it->not_before) {
            WAKE(it->not_before - now);
        } else if (outstanding(c, it->ev.user) < c->cfg.per_user) {
            if (it->by_command) {
                if (run_command(c, it, now) != 0)
                    finish(c, it); /* nothing left to try */
                else
                    WAKE(100);
            } else if (c->o.offer(c->o.ctx, &it->ev)) {
                it->state = OFFERED;
                it->ev.attempts++;
                it->deadline = now + c->cfg.offer_timeout_ms;
                WAKE(c->cfg.offer_timeout_ms);
            } else if (run_command(c, it, now) == 0) {
                WAKE(100);
            } else if (it->ev.kind == CB_JOB_MODIFICATION) {
                finish(c, it); /* nobody to tell: it is old news by the next one */
            } else {
                /* Nobody to tell yet: kept for a client that registers. */
                it->not_before = now + 1000;
                WAKE(1000);
            }
        }
        it = next;
    }
#undef WAKE
    return wake;
}

pid_t cb_spawn_as(uint32_t user, const char *const *argv, const char *const *env, int out_fd)
{
    const char *envp[16];
    size_t n = 0;
    envp[n++] = "PATH=/usr/local/bin:/usr/bin:/bin";
    for (size_t i = 0; env != NULL && env[i] != NULL && n < 15; i++)
        envp[n++] = env[i];
    envp[n] = NULL;
    char *args[MAX_ARGS + 1], *vars[16];
    size_t a = 0;
    while (argv[a] != NULL && a < MAX_ARGS) {
        memcpy(&args[a], &argv[a], sizeof args[a]); /* exec's prototypes lack const */
        a++;
    }
    args[a] = NULL;
    for (size_t i = 0; i <= n; i++)
        memcpy(&vars[i], &envp[i], sizeof vars[i]);
    if (argv[0] == NULL || argv[0][0] != '/') {
        errno = EINVAL; /* no PATH search: the program is named in full */
        return -1;
    }

    if (geteuid() != 0 || user == geteuid()) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (out_fd >= 0)
            posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
        else
            posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        /* Nothing of the owner's (sockets, the database) goes along. */
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
        pid_t pid;
        int err = posix_spawn(&pid, args[0], &fa, NULL, args, vars);
        posix_spawn_file_actions_destroy(&fa);
        if (err != 0) {
            errno = err;
            return -1;
        }
        return pid;
    }
    /* Another user: look everything up before fork, then only system
     * calls in the child. */
    struct passwd pw, *found = NULL;
    char buf[4096];
    gid_t groups[MAX_GROUPS];
    int n_groups = MAX_GROUPS;
    if (getpwuid_r(user, &pw, buf, sizeof buf, &found) != 0 || found == NULL) {
        errno = ESRCH;
        return -1;
    }
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n_groups) < 0) {
        n_groups = 1;
        groups[0] = pw.pw_gid;
    }
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int in = open("/dev/null", O_RDONLY);
    int out = out_fd >= 0 ? out_fd : open("/dev/null", O_WRONLY);
    if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || close_range(3, ~0u, 0) != 0)
        _exit(126);
    if (setgroups((size_t)n_groups, groups) != 0 || setgid(pw.pw_gid) != 0 || setuid(user) != 0 ||
        getuid() != user)
        _exit(126);
    if (chdir(pw.pw_dir) != 0 && chdir("/") != 0)
        _exit(126);
    execve(args[0], args, vars);
    _exit(127);
}
