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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "callback.h"

#define MAX_ARGS   64
#define MAX_GROUPS 256

enum item_state {
    WAITING, /* to be delivered, not before not_before */
    PARKED,  /* nobody to deliver to: waits for cb_kick */
    OFFERED, /* handed to a client, waiting for cb_done */
    RUNNING, /* its command runs */
};

typedef struct item {
    cb_event ev;
    enum item_state state;
    int64_t not_before; /* WAITING: not tried before this */
    int64_t deadline;   /* OFFERED, RUNNING: given up on at this time */
    pid_t pid;          /* RUNNING */
    int killed;         /* RUNNING: killed for its time, to be reaped */
    int by_command;     /* a failed JobTransferred goes to the command next */
    int restored;       /* waits a while for clients to register again */
    struct item *prev, *next;
} item;

/* When the last JobModification of a job was delivered (for the interval). */
typedef struct modtime {
    uint8_t job[16];
    int64_t at;
    struct modtime *next;
} modtime;

/* Outstanding notifications of one user, counted afresh by each cb_step. */
typedef struct busy {
    uint32_t user;
    unsigned n;
} busy;

struct cb_center {
    cb_config cfg;
    cb_owner o;
    item *first, *last;
    modtime *mods;
    busy *busy;
    size_t n_busy, cap_busy;
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

/* Kills a running command with everything it started (its session). */
static void kill_command(item *it)
{
    kill(-it->pid, SIGKILL);
    kill(it->pid, SIGKILL);
    it->killed = 1;
}

void cb_center_free(cb_center *c)
{
    if (c == NULL)
        return;
    while (c->first != NULL) {
        item *it = c->first;
        c->first = it->next;
        if (it->state == RUNNING && it->pid > 0) {
            kill_command(it);
            while (waitpid(it->pid, NULL, 0) < 0 && errno == EINTR)
                ;
        }
        free(it);
    }
    while (c->mods != NULL) {
        modtime *m = c->mods;
        c->mods = m->next;
        free(m);
    }
    free(c->busy);
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
    /* One event of a kind per job (and file) still to be delivered: a
     * second is the same news. One handed out already does not cover a
     * new one: the news may have changed since. */
    for (const item *it = c->first; it != NULL; it = it->next)
        if (same_job(it->ev.job, job) && it->ev.kind == kind && it->ev.file == file &&
            (it->state == WAITING || it->state == PARKED))
            return 1;
    return 0;
}

static item *append(cb_center *c, const cb_event *ev, int64_t not_before)
{
    item *it = calloc(1, sizeof *it);
    if (it == NULL)
        return NULL;
    it->ev = *ev;
    it->state = WAITING;
    it->not_before = not_before;
    it->prev = c->last;
    if (c->last != NULL)
        c->last->next = it;
    else
        c->first = it;
    c->last = it;
    return it;
}

int cb_post(cb_center *c, const cb_event *ev)
{
    if (cb_has(c, ev->job, ev->kind, ev->file))
        return 1;
    int64_t not_before = 0;
    if (ev->kind == CB_JOB_MODIFICATION) {
        modtime *m = modtime_of(c, ev->job);
        if (m != NULL)
            not_before = m->at + c->cfg.modification_interval_ms;
    }
    return append(c, ev, not_before) != NULL ? 0 : -1;
}

int cb_restore(cb_center *c, const cb_event *ev, int64_t delay_ms)
{
    item *it = append(c, ev, c->o.now_ms(c->o.ctx) + delay_ms);
    if (it != NULL)
        it->restored = 1;
    return it != NULL ? 0 : -1;
}

static void unlink_item(cb_center *c, item *it)
{
    if (it->prev != NULL)
        it->prev->next = it->next;
    else
        c->first = it->next;
    if (it->next != NULL)
        it->next->prev = it->prev;
    else
        c->last = it->prev;
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
            (kind == 0 || (it->ev.kind == kind && it->ev.file == file)))
            finish(c, it);
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

void cb_kick(cb_center *c, const uint8_t job[16])
{
    for (item *it = c->first; it != NULL; it = it->next) {
        if (!same_job(it->ev.job, job))
            continue;
        if (it->state == PARKED || (it->state == WAITING && it->restored)) {
            it->state = WAITING;
            it->not_before = 0;
        }
        it->restored = 0;
    }
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

/* The counter of a user's outstanding notifications (NULL: out of memory). */
static busy *busy_of(cb_center *c, uint32_t user)
{
    for (size_t i = 0; i < c->n_busy; i++)
        if (c->busy[i].user == user)
            return &c->busy[i];
    if (c->n_busy == c->cap_busy) {
        size_t cap = c->cap_busy ? 2 * c->cap_busy : 16;
        busy *grown = realloc(c->busy, cap * sizeof *grown);
        if (grown == NULL)
            return NULL;
        c->busy = grown;
        c->cap_busy = cap;
    }
    c->busy[c->n_busy] = (busy){.user = user};
    return &c->busy[c->n_busy++];
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

static void command_failed(cb_center *c, const item *it, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void command_failed(cb_center *c, const item *it, const char *fmt, ...)
{
    if (c->o.command_failed == NULL)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    c->o.command_failed(c->o.ctx, &it->ev, why);
}

/* Starts the job's command for an event: 0 if it runs, 1 if the job has
 * none, -1 if it could not start (the owner is told why). */
static int run_command(cb_center *c, item *it, int64_t now)
{
    const char *argv[MAX_ARGS];
    if (c->o.command(c->o.ctx, &it->ev, argv, MAX_ARGS) == 0)
        return 1;
    char id[40], idvar[64], event[64];
    hex(it->ev.job, 16, id);
    snprintf(idvar, sizeof idvar, "DOPA_JOB_ID=%.8s-%.4s-%.4s-%.4s-%.12s", id, id + 8, id + 12,
             id + 16, id + 20);
    snprintf(event, sizeof event, "DOPA_EVENT=%s", cb_kind_name(it->ev.kind));
    const char *env[] = {idvar, event, NULL};
    pid_t pid = cb_spawn_as(it->ev.user, argv, env, -1);
    if (pid < 0) {
        command_failed(c, it, "cannot start %s: %s", argv[0], strerror(errno));
        return -1;
    }
    it->state = RUNNING;
    it->pid = pid;
    it->killed = 0;
    it->deadline = now + c->cfg.command_timeout_ms;
    it->ev.attempts++;
    return 0;
}

/* Moves a running command on: reaped, or killed when its time is up.
 * Returns the ms until it wants looking at again, or -1 once finished. */
static int64_t step_running(cb_center *c, item *it, int64_t now)
{
    int status;
    pid_t r = waitpid(it->pid, &status, WNOHANG);
    if (r == it->pid || (r < 0 && errno == ECHILD)) {
        if (r == it->pid && !it->killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            command_failed(c, it, WIFEXITED(status) ? "exit status %d" : "killed by signal %d",
                           WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        finish(c, it); /* the command ran: delivered */
        return -1;
    }
    if (!it->killed && now >= it->deadline) {
        /* Too slow: killed, and counted as delivered once reaped. */
        command_failed(c, it, "killed after %lld s", (long long)(c->cfg.command_timeout_ms / 1000));
        kill_command(it);
    }
    return it->killed || it->deadline - now > 100 ? 100 : it->deadline - now;
}

/* Delivers one due event: to a client, else to the command, else it waits
 * to be kicked. Returns the ms until it wants looking at again (-1: none). */
static int64_t deliver(cb_center *c, item *it, busy *b, int64_t now)
{
    if (it->by_command) {
        if (run_command(c, it, now) == 0) {
            b->n++;
            return 100;
        }
        /* The callback failed and the command is gone or broken: the
         * callback is asked again, later. */
        it->by_command = 0;
        it->not_before = now + backoff(c, it->ev.attempts);
        return it->not_before - now;
    }
    int taken = c->o.offer(c->o.ctx, &it->ev);
    if (taken > 0) {
        it->state = OFFERED;
        it->ev.attempts++;
        it->deadline = now + c->cfg.offer_timeout_ms;
        b->n++;
        return c->cfg.offer_timeout_ms;
    }
    if (taken < 0) {
        it->not_before = now + 1000; /* its client is full: soon */
        return 1000;
    }
    if (run_command(c, it, now) == 0) {
        b->n++;
        return 100;
    }
    if (it->ev.kind == CB_JOB_MODIFICATION)
        finish(c, it); /* nobody to tell: it is old news by the next one */
    else
        it->state = PARKED; /* for a client that registers, or a command set */
    return -1;
}

int64_t cb_step(cb_center *c)
{
    int64_t now = c->o.now_ms(c->o.ctx), wake = -1;
#define WAKE(t) (wake = (t) >= 0 && (wake < 0 || (t) < wake) ? (t) : wake)
    c->n_busy = 0;
    for (item *it = c->first; it != NULL; it = it->next) {
        if (it->state == OFFERED || it->state == RUNNING) {
            busy *b = busy_of(c, it->ev.user);
            if (b != NULL)
                b->n++;
        }
    }
    item *it = c->first;
    while (it != NULL) {
        item *next = it->next;
        if (it->state == RUNNING) {
            int64_t w = step_running(c, it, now);
            WAKE(w);
        } else if (it->state == OFFERED) {
            if (now >= it->deadline)
                cb_done(c, it->ev.id, 0); /* the client never answered */
            else
                WAKE(it->deadline - now);
        } else if (it->state == WAITING) {
            busy *b = busy_of(c, it->ev.user);
            if (now < it->not_before) {
                WAKE(it->not_before - now);
            } else if (b == NULL || b->n >= c->cfg.per_user) {
                WAKE(1000); /* this user's limit: when one of them is done */
            } else {
                int64_t w = deliver(c, it, b, now);
                WAKE(w);
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

    /* The child starts clean: no blocked or ignored signals of ours, a
     * session of its own (a timeout kills all it started), stdin and
     * stderr on /dev/null, and no other descriptor of ours (sockets, the
     * database). */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (geteuid() != 0 || user == geteuid()) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        posix_spawn_file_actions_init(&fa);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                            POSIX_SPAWN_SETSID);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (out_fd >= 0)
            posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
        else
            posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
        pid_t pid;
        int err = posix_spawn(&pid, args[0], &fa, &attr, args, vars);
        posix_spawnattr_destroy(&attr);
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
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* (fails harmlessly for KILL and STOP) */
    sigprocmask(SIG_SETMASK, &none, NULL);
    int in = open("/dev/null", O_RDONLY);
    int null = open("/dev/null", O_WRONLY);
    int out = out_fd >= 0 ? out_fd : null;
    if (in < 0 || null < 0 || setsid() < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
        dup2(null, 2) < 0 || close_range(3, ~0u, 0) != 0)
        _exit(126);
    if (setgroups((size_t)n_groups, groups) != 0 || setgid(pw.pw_gid) != 0 || setuid(user) != 0 ||
        getuid() != user)
        _exit(126);
    if (chdir(pw.pw_dir) != 0 && chdir("/") != 0)
        _exit(126);
    execve(args[0], args, vars);
    _exit(127);
}
