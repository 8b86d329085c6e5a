/*
 * What the files of dopad's engine share: engine.c (jobs, timers, the
 * pump), the sources (fetch.c, peers.c), commit.c, validation.c,
 * requests.c, notify.c, cache.c and metrics.c. Not part of the agent
 * module's interface (agent.h).
 */
#ifndef DOPA_AGENT_ENGINE_INTERNAL_H
#define DOPA_AGENT_ENGINE_INTERNAL_H

#include <pthread.h>

#include "agent.h"
#include "callback.h"
#include "source.h"
#include "work.h"

/* A PROTO_WAIT request waiting for its job to change. */
typedef struct engine_wait {
    engine_call *call;
    engine_reply_fn reply;
    uint32_t uid;
    dopa_id id;
    uint64_t seen;
    int64_t deadline; /* monotonic ms */
    struct engine_wait *next;
} engine_wait;

/* A client (a libdopa manager) that takes notifications for its jobs. */
#define CLIENT_HELD_MAX 64 /* events handed to one client and not yet answered */
typedef struct engine_client {
    uint8_t token[16];
    uint32_t uid;
    int64_t last_seen;   /* monotonic ms */
    engine_call *parked; /* its PROTO_EVENTS call waiting for events, or NULL */
    engine_reply_fn reply;
    int64_t parked_until;
    cb_event held[CLIENT_HELD_MAX]; /* offered to it, not yet answered */
    size_t n_held;
    struct engine_client *next;
} engine_client;

struct agent_engine {
    engine_config cfg;
    validate_error error; /* engine_error(): what engine_reconfigure last failed at */
    char *state_dir;
    agent_clock clock;
    store *db;
    origin *origin;
    uint64_t origin_failures; /* origin requests that failed or stalled beside peers */
    uint64_t origin_peak;     /* most origin requests at once */
    control *control;
    agent_job **jobs; /* in seq order */
    size_t n_jobs, cap_jobs;
    uint64_t next_seq;
    validate_public_key *keys;
    size_t n_keys;
    engine_wait *waits;
    work_queue checks; /* whole-file SHA-256 checks */
    int64_t last_commit;
    int commit_now;      /* a file waits only for its pieces' commit */
    uint64_t generation; /* tells stale background results apart */
    char *plugin_dir, *validate_helper;
    cb_center *cb;       /* notifications */
    int64_t notify_wake; /* ms from the last notify_step until it wants to run, or -1 */
    pid_t *zombies;      /* killed children not reaped yet */
    size_t n_zombies;
    uint64_t next_event_id;
    engine_client *clients;
    peer_node *peers;          /* the peer group, or NULL */
    work_queue writers;        /* hash and write the pieces peers send (peers.c) */
    struct agent_cache *cache; /* verified content kept for peers, or NULL */
    int64_t peer_wake;         /* ms from the last peers_step until it wants to run, or -1 */
    uint64_t got_origin, got_peers, got_cache; /* bytes received since start, by source */
    struct sync_batch *sync;                   /* a commit's fdatasyncs running, or NULL */
    work_queue syncer;                         /* runs them */
};

int64_t engine_now(const agent_engine *e);  /* wall ms */
int64_t engine_mono(const agent_engine *e); /* monotonic ms */

/* A transaction for a change made of several writes: engine_begin says
 * whether it opened one (inside another, the writes join that one), and
 * engine_end commits it, or rolls it back when !ok. */
int engine_begin(agent_engine *e);
void engine_end(agent_engine *e, int own, int ok);
/* QUEUED, CONNECTING or TRANSFERRING: a state that asks to run. */
int engine_wants_to_run(int state);
/* Persists the job row (and bumps version and modified). */
int engine_touch(agent_engine *e, agent_job *j);
/* Moves a job to a state: stops or lets the scheduler start transfers. */
void engine_set_state(agent_engine *e, agent_job *j, int state);
/* Stops the job's transfers (requests, origin handles, open files). */
void engine_stop_job(agent_engine *e, agent_job *j);
/* Records an error on the job: ERROR, or TRANSIENT_ERROR with a retry
 * after MinimumRetryDelay (or the server's Retry-After, if longer). */
void engine_fail_job(agent_engine *e, agent_job *j, int transient, int context, int code, int file,
                     long http_status, const char *message);
void engine_fail_job_after(agent_engine *e, agent_job *j, int transient, int context, int code,
                           int file, long http_status, long retry_after, const char *message);
/* Adds a job (already stored) to the list. */
int engine_add_job(agent_engine *e, agent_job *j);
/* Forgets a job that reached a final state: deleted from the store now,
 * kept in memory a while so clients can see how it ended. Fails (and
 * changes nothing) when the store cannot delete it. */
int engine_finish_job(agent_engine *e, agent_job *j, int state);
/* Answers the waits whose job changed or whose time ran out. */
void engine_answer_waits(agent_engine *e, int all);

/* Commits (commit.c): written pieces become durable. Takes a finished
 * batch, then commits what is due; with `force` it first waits for the
 * running batch, then commits everything here and now, so that nothing
 * is left running when it returns. */
void commit_step(agent_engine *e, int force);
/* ms until a commit is due (or `limit`). */
int64_t commit_next_ms(const agent_engine *e, int64_t limit);

/* Notifications (notify.c). */
int notify_open(agent_engine *e, validate_error *why); /* after the jobs are loaded */
void notify_close(agent_engine *e);
/* An event of the job, if its notify flags want it. Events other than
 * JobModification are stored until delivered; to make one part of a change,
 * call this inside the change's transaction. */
void engine_notify(agent_engine *e, agent_job *j, int kind, int32_t file);
/* Delivers what is due; returns the ms until it wants to run again (-1: no timer). */
int64_t notify_step(agent_engine *e);
/* The job is gone, or has a new owner: its events and its client. */
void notify_forget_job(agent_engine *e, agent_job *j);
/* The job has a command line now: what had nobody to go to goes to it. */
void notify_kick(agent_engine *e, agent_job *j);
/* A FileTransferred of this file is no news any more. */
void notify_cancel(agent_engine *e, agent_job *j, int kind, int32_t file);
/* PROTO_REGISTER, PROTO_UNREGISTER, PROTO_EVENTS, PROTO_EVENT_DONE. */
int notify_handle(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply,
                  engine_call *call, engine_reply_fn reply_fn);
/* The call's client went away: forget its parked call. */
int notify_drop_call(agent_engine *e, engine_call *call);

/* Validation (validation.c): plugins, then the client's verdict. */
/* 1 when the file (every piece done, hashes checked) is valid, 0 while it
 * waits, -1 when it was rejected (the job failed or the file starts over). */
int validation_step(agent_engine *e, agent_file *f);
/* The client's SetValidationState for a file that waits for it. */
int validation_set(agent_engine *e, agent_file *f, int valid, validate_error *why);
/* Stops a running plugin helper. */
void validation_stop(agent_engine *e, agent_file *f);
/* A killed child to reap without waiting for it (engine_reap does, each
 * turn; with wait set, at the end). */
void engine_reap_later(agent_engine *e, pid_t pid);
void engine_reap(agent_engine *e, int wait);
/* ms until a validation timer wants the engine (or `limit`). */
int64_t validation_next_ms(agent_engine *e, int64_t limit);
/* Content failed validation: from peers, fetched again from the origin;
 * from the origin alone, the job fails and the file starts over. */
void engine_reject_file(agent_engine *e, agent_file *f, int code, const char *message);
/* Records in one transaction that a file starts over (no pieces). */
void engine_reset_file(agent_engine *e, agent_file *f);

/* Transfers (engine.c), for peers.c. */
int engine_write_all(int fd, const uint8_t *p, size_t len, uint64_t offset);
/* Bytes arrived for the job beyond what it held: progress. */
void engine_progress(agent_engine *e, agent_job *j);
/* Bytes arrived for the job (fetched again, maybe): it is transferring. */
void engine_data_arrived(agent_engine *e, agent_job *j);
/* Counts bytes a source delivered, by where they came from. */
enum { FROM_ORIGIN, FROM_PEERS, FROM_CACHE };
void engine_received(agent_engine *e, agent_file *f, int from, size_t len);
/* Closes a file's descriptor unless pieces still wait for it. */
void engine_release_fd(agent_file *f);

/* The agent's counters (peers.c). */
void engine_stats(agent_engine *e, dopa_agent_stats *out);
/* How many of the jobs engine_stats counts are in each state, indexed by
 * enum dopa_state (engine.c). Final jobs count while they stay visible. */
void engine_state_counts(const agent_engine *e, uint64_t out[AGENT_JOB_STATES]);

/* Settings changed while the engine runs (dopad's SIGHUP), on the engine
 * thread. Of cfg it applies max_running, inactivity_ms and
 * plugin_timeout_ms (0: the defaults, as for engine_open), the origin's
 * overall rate limit (cfg->origin.max_rate), the trusted keys
 * (for the files added from now on), cache_bytes and cache_age_ms, and
 * through peer_node_reconfigure what may change of cfg->peer; the rest of
 * cfg needs a new engine and is ignored. What could be applied is, even
 * when it fails (a peer that cannot be dialled, a cache directory that
 * cannot be made): then the first failure's code is returned as its
 * module gave it (PEER_E*, DOPA_E*), and engine_error() says what failed. */
int engine_reconfigure(agent_engine *e, const engine_config *cfg);
/* The engine's last failure (of engine_reconfigure): code 0 when none. */
const validate_error *engine_error(const agent_engine *e);

/* Peers (peers.c): a source of pieces (peer_source, source.h), and the
 * serving side. */
int peers_open(agent_engine *e, validate_error *why); /* 0 or PEER_E* / DOPA_ENOMEM */
void peers_close(agent_engine *e);
/* The node's turn; fails jobs whose peer pieces could not be written.
 * Returns ms until it wants to run again (-1: no peers). */
int64_t peers_step(agent_engine *e);
/* The file's content is gone or starts over: nothing of it is offered. */
void peers_forget_file(agent_engine *e, agent_file *f);
/* A piece was committed. */
void peers_piece_done(agent_engine *e, agent_file *f, uint64_t piece);
/* The file passed every check: offered whole. */
void peers_file_transferred(agent_engine *e, agent_file *f);
/* The content failed validation: the peers that sent unchecked pieces pay. */
void peers_blame(agent_engine *e, agent_file *f);

/* The content cache (cache.c); only with peers and a size limit. */
int cache_open(agent_engine *e, validate_error *why);
void cache_close(agent_engine *e);
/* Takes finished copies, ages entries out. */
void cache_step(agent_engine *e);
/* The file is valid: keep a copy of its content (made in the background). */
void cache_add(agent_engine *e, agent_file *f);
int cache_has(agent_engine *e, const uint8_t cid[VALIDATE_CONTENT_ID_BYTES]);
void cache_stats(agent_engine *e, uint64_t *entries, uint64_t *bytes, uint64_t *limit);
/* New size and age limits (0: none kept, 0: 14 days) while the engine runs:
 * entries beyond them leave now (or at the next cache_step); a cache that
 * was 0 starts (with peers only). A failure to start it leaves none. */
int cache_set_limits(agent_engine *e, uint64_t bytes, uint64_t age_ms, validate_error *why);

#endif
