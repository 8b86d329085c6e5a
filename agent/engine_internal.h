/*
 * What engine.c (transfers, timers, the store) and requests.c (control
 * requests) share. Not part of the agent module's interface.
 */
#ifndef DOPA_AGENT_ENGINE_INTERNAL_H
#define DOPA_AGENT_ENGINE_INTERNAL_H

#include <pthread.h>

#include "agent.h"

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

/* The result of a whole-file check run on a helper thread. */
typedef struct hash_result {
    dopa_id job;
    uint32_t file;
    uint64_t generation;
    pthread_t thread;
    int ok;  /* the hash matched */
    int err; /* errno of a read failure, 0 if none */
    struct hash_result *next;
} hash_result;

struct agent_engine {
    engine_config cfg;
    char *state_dir;
    agent_clock clock;
    store *db;
    origin *origin;
    control *control;
    agent_job **jobs; /* in seq order */
    size_t n_jobs, cap_jobs;
    uint64_t next_seq;
    validate_public_key *keys;
    size_t n_keys;
    engine_wait *waits;
    pthread_t *threads; /* whole-file checks running */
    size_t n_threads;
    int64_t last_commit;
    int commit_now;       /* a file waits only for its pieces' commit */
    uint64_t generation;  /* tells stale background results apart */
    pthread_mutex_t lock; /* guards results */
    hash_result *results;
};

int64_t engine_now(const agent_engine *e);  /* wall ms */
int64_t engine_mono(const agent_engine *e); /* monotonic ms */

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

#endif
