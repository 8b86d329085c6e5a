/*
 * callback: when and how job notifications are delivered.
 *
 * The notification center decides, for events posted by its owner (the
 * agent), when each is delivered and to whom: to a client registered for
 * the job, or by running the job's notify command line as the job's user.
 * It knows nothing of jobs or storage: the owner describes each event,
 * answers "is a client registered, and will it take this now?", and hears
 * when an event is delivered for good.
 *
 * The rules, after BITS:
 *  - JobTransferred is delivered again, with a growing interval, until a
 *    client's callback says it succeeded; if the callback fails and the job
 *    has a command line, the command runs instead and the event is done.
 *    Other events are delivered once.
 *  - JobModification is coalesced: at most one pending per job, and not
 *    more often than once per `modification_interval_ms`.
 *  - At most `per_user` notifications of one user are outstanding (handed to
 *    a client, or a command running) at once; the rest of that user's wait,
 *    and other users are not held up.
 *  - A command line runs without a shell (argv as given), as the job's
 *    user, with DOPA_JOB_ID and DOPA_EVENT in its environment, in a session
 *    of its own, and is killed with all it started after
 *    `command_timeout_ms`.
 *  - An event with no client and no command line waits (parked, costing
 *    nothing) until the job gets either: cb_kick.
 *
 * Everything runs on the owner's thread; cb_step does the work and says
 * when it wants to run again.
 */
#ifndef DOPA_CALLBACK_H
#define DOPA_CALLBACK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Events. */
enum cb_kind {
    CB_JOB_TRANSFERRED = 1,
    CB_JOB_ERROR = 2,
    CB_JOB_MODIFICATION = 3,
    CB_FILE_TRANSFERRED = 4,
};

/* Notify flags of a job (BITS's BG_NOTIFY_*). */
#define CB_NOTIFY_JOB_TRANSFERRED  0x1u
#define CB_NOTIFY_JOB_ERROR        0x2u
#define CB_NOTIFY_DISABLE          0x4u
#define CB_NOTIFY_JOB_MODIFICATION 0x8u
#define CB_NOTIFY_FILE_TRANSFERRED 0x10u
#define CB_NOTIFY_DEFAULT          (CB_NOTIFY_JOB_TRANSFERRED | CB_NOTIFY_JOB_ERROR)
#define CB_NOTIFY_ALL              0x1fu

/* Does a job with these flags want this kind of event? */
int cb_wanted(uint32_t flags, int kind);

/* The name of an event kind ("JobTransferred", ...). */
const char *cb_kind_name(int kind);

typedef struct cb_event {
    uint64_t id;       /* unique, never 0; kept by the owner across restarts */
    uint8_t job[16];   /* the job's id */
    uint32_t user;     /* whose notification it is (the per-user limit, the command) */
    int kind;          /* enum cb_kind */
    int32_t file;      /* the file of a FileTransferred, else -1 */
    uint32_t attempts; /* deliveries tried so far */
} cb_event;

/* How the center reaches its owner. All callbacks run inside cb_* calls. */
typedef struct cb_owner {
    void *ctx;
    int64_t (*now_ms)(void *ctx); /* monotonic */
    /* Hands the event to a client registered for its job: returns 1 when
     * it was taken (the owner later calls cb_done), 0 when no client is
     * registered, -1 when the client can take no more now (asked again
     * shortly). */
    int (*offer)(void *ctx, const cb_event *ev);
    /* Fills argv (at most max - 1 strings and a NULL) with the job's notify
     * command line; returns 0 when the job has none. The strings must stay
     * valid until the next call. */
    size_t (*command)(void *ctx, const cb_event *ev, const char **argv, size_t max);
    /* The event is delivered for good (or can never be): forget it. */
    void (*finished)(void *ctx, const cb_event *ev);
    /* Optional: a command line could not start, failed or was killed. */
    void (*command_failed)(void *ctx, const cb_event *ev, const char *why);
} cb_owner;

typedef struct cb_config {
    unsigned per_user;                /* outstanding per user; 0 means 4 */
    int64_t modification_interval_ms; /* 0 means 1000 */
    int64_t retry_first_ms;           /* first redelivery of JobTransferred; 0 means 5 s */
    int64_t retry_max_ms;             /* longest interval; 0 means 10 min */
    int64_t command_timeout_ms;       /* 0 means 5 min */
    int64_t offer_timeout_ms;         /* a client that does not answer; 0 means 5 min */
} cb_config;

typedef struct cb_center cb_center;

int cb_center_new(const cb_config *cfg, const cb_owner *owner, cb_center **out);
/* Kills running commands (and reaps them) and frees everything. */
void cb_center_free(cb_center *c);

/* A new event (or one restored after a restart). An event of the same
 * kind, job and file that is still to be delivered makes it redundant:
 * then it is dropped and 1 returned (the coalescing of JobModification).
 * Returns 0 when queued, -1 out of memory. */
int cb_post(cb_center *c, const cb_event *ev);

/* An event kept across a restart: queued as it is (no coalescing), not
 * delivered for delay_ms (or until cb_kick), so that clients have time to
 * register again before the command line takes it. */
int cb_restore(cb_center *c, const cb_event *ev, int64_t delay_ms);

/* Would cb_post drop this event as redundant? */
int cb_has(const cb_center *c, const uint8_t job[16], int kind, int32_t file);

/* A client's callback for an offered event returned: ok or not. */
void cb_done(cb_center *c, uint64_t id, int ok);

/* The job is gone: drop its pending events (running commands go on). */
void cb_forget_job(cb_center *c, const uint8_t job[16]);

/* An event of this kind and file is no news any more: drop it unless its
 * command runs. */
void cb_cancel(cb_center *c, const uint8_t job[16], int kind, int32_t file);

/* The client an event was offered to is gone without answering: the event
 * waits again, as if never offered (no failure, no backoff). */
void cb_requeue(cb_center *c, uint64_t id);

/* The job got a client or a command line: its events that had nobody to
 * go to, or wait after a restart, are tried now. */
void cb_kick(cb_center *c, const uint8_t job[16]);

/* Delivers what may be delivered now, reaps and times out commands.
 * Returns the ms until it wants to run again (-1: not before a new event). */
int64_t cb_step(cb_center *c);

/* Events known (pending or outstanding), for tests and monitoring. */
size_t cb_pending(const cb_center *c);

/* Starts argv as `user` (from root: a child that takes the user's groups,
 * gid and uid first), with `env` added to a minimal environment, stdin on
 * /dev/null, stdout on out_fd (or /dev/null when it is -1). argv[0] must be
 * an absolute path. Returns the pid or -1 with errno set. */
pid_t cb_spawn_as(uint32_t user, const char *const *argv, const char *const *env, int out_fd);

#endif
