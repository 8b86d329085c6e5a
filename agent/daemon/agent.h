/*
 * agent: the job engine and everything dopad is made of.
 *
 *  - the job model (jobs, files, ranges, pieces) and its BITS state machine;
 *  - the SQLite store that makes it survive a kill -9 (store_*);
 *  - file operations done with the rights of a job's owner (fileops_*);
 *  - the engine: one thread that owns the jobs, the store and the origin
 *    loop, runs the transfers, the timers and the control requests
 *    (engine_*);
 *  - the control server on an nng ipc socket (control_*);
 *  - the metrics endpoint, Prometheus text over nng's HTTP server
 *    (metrics_*).
 *
 * dopad's settings, from dopa.conf and its command line to an
 * engine_config, have their own header: config.h (config_*).
 *
 * libdopa (dopa.h) is the client side; proto.h is the wire format both use.
 * Everything here runs on the engine thread unless it says otherwise.
 */
#ifndef DOPA_AGENT_H
#define DOPA_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "callback.h"
#include "dopa.h"
#include "origin.h"
#include "peer.h"
#include "pieces.h"

#include "proto.h"
#include "validate.h"

#define AGENT_VERSION DOPA_VERSION

/* ------------------------------------------------------------------ */
/* The job model                                                      */

typedef struct agent_job agent_job;

#define AGENT_JOB_STATES (DOPA_STATE_CANCELLED + 1) /* the values of enum dopa_state */

/* The identity of a temporary file and its directory (fileops_*). */
typedef struct fileops_ident {
    uint64_t dir_dev, dir_ino;   /* the directory of the temporary file */
    uint64_t file_dev, file_ino; /* the temporary file */
} fileops_ident;

struct agent_engine;

/* The origin's transfer of a file (fetch.c): one range request at a time,
 * its bytes checked piece by piece as they come. Not stored. */
typedef struct file_fetch {
    struct agent_engine *engine; /* for the origin's callbacks, which carry the file */
    origin_file *origin;
    uint64_t request;                              /* running origin request, 0 if none */
    int probing;                                   /* it only asks the file's size */
    uint64_t req_remote, req_local, req_end_local; /* its remote and local start, local end */
    uint64_t req_first, req_last;                  /* the pieces it covers */
    uint64_t fill_piece;                           /* piece being filled, fill bytes of it so far */
    uint32_t fill;
    validate_blake2b_state piece_hash;
    int abort_reason; /* why on_data refused (for on_done) */
    int abort_errno;
    int64_t rest_until; /* monotonic ms: the origin failed, peers go on alone */
    int64_t backoff_ms; /* the last rest beside peers; 0 once bytes come again */
    int64_t started_at; /* monotonic ms: the running request began */
    int64_t data_at;    /* monotonic ms: its last bytes came */
    unsigned changes;   /* times the origin's file changed under it (this run) */
} file_fetch;

/* A file's checks once every piece is here (validation.c, and the
 * whole-file SHA-256 in engine.c). Not stored. */
typedef struct file_check {
    int hashing;              /* a whole-file check runs in the background */
    uint64_t hash_generation; /* which check is the current one */
    int hash_passed;          /* the whole-file SHA-256 matched */
    int plugins_passed;       /* the validator plugins said valid */
    int plugin_pid;           /* the plugin helper judging the file, or 0 */
    int plugin_fd;            /* its output, or -1 */
    int64_t plugin_deadline;  /* monotonic ms: killed after this */
    char plugin_out[512];     /* what it said so far */
    size_t plugin_out_len;
    int64_t verdict_deadline; /* monotonic ms: the default verdict applies after this */
} file_check;

/* A file's peering (peers.c). Not stored. */
typedef struct file_peer {
    struct agent_engine *engine;            /* for the swarm's callbacks, which carry the file */
    uint8_t cid[VALIDATE_CONTENT_ID_BYTES]; /* the content id, when has_cid */
    int has_cid;
    peer_swarm *swarm;    /* fetching from peers, or NULL */
    int offered;          /* its verified pieces are offered to peers */
    int write_err;        /* errno of a peer piece that could not be written */
    unsigned writing;     /* pieces handed to the writers, results not taken */
    uint64_t upload_seen; /* bytes its offer had sent at the last look */
} file_peer;

/* One file of a job. The local file is the remote file, or the
 * concatenation of its ranges; it is cut into pieces (pieces.h), and a
 * piece counts as done (DURABLE) once its bytes are on disk (fdatasync)
 * and its row is committed. */
typedef struct agent_file {
    agent_job *job;
    uint32_t index;

    /* What the client asked for and what is known of it (stored). */
    char *url;
    char *path;     /* destination */
    char *tmp_path; /* temporary file beside it, until Complete */
    int64_t remote_size;
    char etag[256];
    char last_modified[64];
    dopa_range *ranges;
    size_t n_ranges;
    uint8_t sha256[32];
    int has_sha256;
    uint8_t *manifest_bytes;
    size_t manifest_len;
    validate_manifest *manifest;
    uint64_t size;       /* local size, DOPA_SIZE_UNKNOWN until known */
    piece_map pieces;    /* once the size is known; its DURABLE pieces are stored */
    int transferred;     /* every piece done and whole-file checks passed */
    int completed;       /* moved to its destination by Complete */
    fileops_ident ident; /* of the temporary file and its directory */
    uint32_t bad_pieces; /* hash failures of pieces from the origin */
    uint64_t from_origin, from_peers, from_cache; /* bytes received, by source */
    int validation;                               /* enum dopa_validation: the client's verdict */
    int origin_only; /* fetch only from the origin (peer content failed validation) */

    /* The temporary file while the job runs (not stored). */
    int fd;
    uint64_t write_gen;     /* bumped when the file starts over: older results are void */
    uint64_t progress_mark; /* the most bytes it has held since dopad started: only
                             * bytes beyond it are progress (not those fetched again) */

    file_fetch fetch;
    file_check check;
    file_peer peer;
} agent_file;

struct agent_job {
    dopa_id id;
    uint32_t owner;     /* who may see and change the job */
    uint32_t file_user; /* whose rights its file operations use: its creator */
    int type, state, priority;
    char name[DOPA_NAME_MAX + 1];
    char description[DOPA_DESCRIPTION_MAX + 1];
    int64_t created, modified, completed; /* wall clock, ms */
    uint32_t error_count;
    int has_error;
    dopa_job_error error;
    uint32_t retry_delay, no_progress_timeout; /* seconds */
    int proxy_usage;
    char proxy[DOPA_PROXY_MAX + 1];
    char bypass[DOPA_PROXY_MAX + 1];
    uint64_t from_origin, from_peers, from_cache;
    uint64_t uploaded;        /* bytes of its content sent to peers */
    uint64_t seq;             /* creation order */
    int64_t no_progress_wall; /* wall ms when progress stopped (kept across restarts), or 0 */
    uint64_t version;         /* bumped on every change */
    uint32_t notify_flags;    /* DOPA_NOTIFY_* */
    char *notify_cmd;         /* the notify command line: arguments, each ending in NUL */
    size_t notify_cmd_len;
    uint32_t validation_timeout;  /* seconds a file waits for SetValidationState */
    int validation_default_valid; /* the verdict when no answer comes */
    agent_file **files;
    size_t n_files;

    /* Engine state (not stored). */
    int running;
    int64_t retry_at;             /* monotonic ms: when TRANSIENT_ERROR retries */
    int64_t no_progress_since;    /* monotonic ms, 0 while progressing */
    int64_t touched;              /* monotonic ms of the last change, for inactivity */
    int64_t purge_at;             /* monotonic ms: when a final job is forgotten */
    struct engine_client *client; /* registered for the job's notifications, or NULL */
};

agent_job *agent_job_new(void);
void agent_job_free(agent_job *j);
agent_file *agent_file_new(void);
void agent_file_free(agent_file *f);
/* Sets the size and the piece map (every piece missing) once the local
 * size is known. */
int agent_file_set_size(agent_file *f, uint64_t size);
/* The file starts over: no piece is written or done (claims stay). */
void agent_file_clear_pieces(agent_file *f);
/* The local size from the ranges and the remote size (-1 if unknown);
 * DOPA_EINVAL when it cannot be known yet or the ranges do not fit. */
int agent_file_local_size(const agent_file *f, int64_t remote_size, uint64_t *size);
/* Ranges in order, not overlapping, not empty, not overflowing, only the
 * last to the end of the file; DOPA_EINVAL with the reason otherwise. */
int agent_ranges_check(const dopa_range *ranges, size_t n, validate_error *why);
/* The number of arguments in a notify command line (arguments each ending
 * in NUL, at most DOPA_MAX_NOTIFY_ARGS of at most DOPA_NOTIFY_ARG_MAX bytes,
 * the first an absolute path), or 0 when it is not one. */
size_t agent_notify_cmd_count(const char *cmd, size_t len);
/* Fills the public views. */
void agent_job_info(const agent_job *j, dopa_job_info *out);
void agent_file_info(const agent_file *f, dopa_file_info *out);

/* ------------------------------------------------------------------ */
/* The store (SQLite, WAL)                                            */

typedef struct store store;

#define STORE_SCHEMA_VERSION 3

int store_open(const char *path, store **out, validate_error *why);
void store_close(store *s);

/* Loads every job with its files, ranges and done pieces. Rows that fail
 * their checks are skipped and counted in *damaged; running out of memory
 * fails the whole load (DOPA_ENOMEM), never leaves a job out. */
int store_load(store *s, agent_job ***jobs, size_t *n, size_t *damaged, validate_error *why);

int store_begin(store *s);
int store_commit(store *s);
void store_rollback(store *s);

int store_put_job(store *s, const agent_job *j);   /* insert or update the job row */
int store_delete_job(store *s, const dopa_id *id); /* with its files and pieces */
int store_put_file(store *s, const agent_file *f); /* insert or replace file + ranges */
int store_add_pieces(store *s, const agent_file *f, const uint64_t *pieces, size_t n);
int store_clear_pieces(store *s, const agent_file *f);
/* Notifications not yet delivered (kind and file as in callback.h). */
int store_add_notification(store *s, uint64_t id, const dopa_id *job, int kind, int32_t file);
int store_delete_notification(store *s, uint64_t id);
typedef void (*store_notification_fn)(void *ctx, uint64_t id, const dopa_id *job, int kind,
                                      int32_t file);
int store_load_notifications(store *s, store_notification_fn fn, void *ctx, validate_error *why);
const char *store_error(const store *s);

/* ------------------------------------------------------------------ */
/* File operations with the user's rights                             */

/* When dopad runs as root and the files' user is not root, each of these
 * runs in a short-lived child process that has taken that user's uid, gid
 * and groups, so that a job can only create, replace or remove what its
 * user could. They never follow a symlink at the temporary or destination
 * name, and they check the identity (device, inode) of the directory and
 * of the temporary file recorded when it was made. On failure they return
 * an errno value, and why says what failed (its code a DOPA_E*, as errno
 * values are no module's). */

/* Opens the temporary file for writing: creates it (it must not exist;
 * fills *ident, checking the directory if ident has one) or reopens it
 * (it must be the file *ident names). *fd is O_RDWR. */
int fileops_open_temp(uint32_t user, const char *tmp_path, int create, fileops_ident *ident,
                      int *fd, validate_error *why);
/* Removes the temporary file if it is the one *ident names (missing is fine). */
int fileops_remove_temp(uint32_t user, const char *tmp_path, const fileops_ident *ident,
                        validate_error *why);
/* Checks the temporary file (identity, `size` bytes), makes it readable,
 * fsyncs it, renames it to the destination and fsyncs the directory. If it
 * is already at the destination (an earlier Complete that did not finish
 * recording) that is success. */
int fileops_commit(uint32_t user, const char *tmp_path, const char *dest_path,
                   const fileops_ident *ident, uint64_t size, validate_error *why);
/* The temporary name for file `index` of a job: ".dopa-<id>-<index>.part"
 * beside dest. */
int fileops_temp_name(const char *dest, const dopa_id *id, uint32_t index, char *out, size_t len);

/* ------------------------------------------------------------------ */
/* The engine                                                         */

typedef struct agent_engine agent_engine;

/* Time, for tests to replace. */
typedef struct agent_clock {
    int64_t (*wall_ms)(void *ctx);
    int64_t (*mono_ms)(void *ctx);
    void *ctx;
} agent_clock;

typedef struct engine_config {
    const char *state_dir;      /* holds dopa.db */
    unsigned max_running;       /* jobs transferring at once; 0 means 4 */
    uint64_t inactivity_ms;     /* JobInactivityTimeout; 0 means 90 days */
    unsigned max_jobs_per_user; /* 0 means 10000 */
    const validate_public_key *trusted_keys;
    size_t n_trusted_keys;
    const agent_clock *clock; /* NULL: the real clocks */
    origin_config origin;
    cb_config notify;             /* notification timing and limits (zeros: defaults) */
    const char *plugin_dir;       /* validator plugins, or NULL for none */
    const char *validate_helper;  /* the dopa-validate program, an absolute path */
    uint32_t plugin_timeout_ms;   /* a plugin's time for one file; 0 means 60 s */
    const peer_node_config *peer; /* the peer group to join, or NULL for origin only */
    uint64_t cache_bytes;         /* content kept for peers after its job; 0: none */
    uint64_t cache_age_ms;        /* removed when unused this long; 0 means 14 days */
} engine_config;

/* Opens the engine on cfg: 0, or the code of the module that failed, as it
 * gave it (DOPA_E* from the engine and its store, PEER_E* from joining the
 * peer group), with why saying what failed. */
int engine_open(const engine_config *cfg, agent_engine **out, validate_error *why);
void engine_close(agent_engine *e);
/* Makes durable what the engine has written (the pieces on disk are
 * synced and committed) and waits for it: after it, a process that stops
 * at once loses nothing. dopad calls it first when it stops, before
 * anything that could hang. */
void engine_flush(agent_engine *e);

/* One turn of the loop: waits up to timeout_ms for network activity or a
 * wakeup, then moves transfers, timers and queued control requests on. */
int engine_step(agent_engine *e, int timeout_ms);
/* Makes engine_step return early; callable from any thread. */
void engine_wakeup(agent_engine *e);
/* The same, for a callback's context pointer (the engine). */
void engine_wake(void *engine);

/* A control request waiting for its reply (owned by the control server). */
typedef struct engine_call engine_call;
/* How the engine answers a call it deferred (PROTO_WAIT). */
typedef void (*engine_reply_fn)(engine_call *call, const proto_reply *reply);

#define ENGINE_DEFERRED 1
/* Handles a decoded request from `uid`. Returns 0 with *reply filled, or
 * ENGINE_DEFERRED when the reply will come later through reply_fn. */
int engine_handle(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply,
                  engine_call *call, engine_reply_fn reply_fn);
/* Forgets a deferred call (its client went away). */
void engine_drop_call(agent_engine *e, engine_call *call);

/* The peer listener's address ("" without peers). */
const char *engine_peer_url(const agent_engine *e);

/* For tests and tools: jobs known now, and one by id. */
size_t engine_job_count(const agent_engine *e);
agent_job *engine_find(agent_engine *e, const dopa_id *id);

/* ------------------------------------------------------------------ */
/* The control server                                                 */

typedef struct control control;

/* Listens on `socket_path` (its directory is created with `dir_mode`;
 * the socket gets `sock_mode`). Requests are queued for the engine thread,
 * which runs them in control_run_queued (called from engine_step). */
int control_open(agent_engine *e, const char *socket_path, unsigned dir_mode, unsigned sock_mode,
                 control **out, validate_error *why);
void control_close(control *c);

/* Set by engine_open's caller so engine_step drains the control queue. */
void engine_set_control(agent_engine *e, control *c);
void control_run_queued(control *c);

/* ------------------------------------------------------------------ */
/* The metrics endpoint                                               */

typedef struct metrics metrics;

#define METRICS_LISTEN_MAX 63 /* the longest "ADDRESS:PORT" */

/* Checks a listen address: "ADDRESS:PORT", the address numeric (IPv4, or
 * IPv6 in brackets), the port from 0 (any free one) to 65535. Fills host
 * (the address as written, brackets kept), *port and *is_loopback; -1 when
 * it is not such an address. */
int metrics_parse_listen(const char *listen, char *host, size_t host_len, unsigned *port,
                         int *is_loopback);

/* Serves the agent's counters at http://LISTEN/metrics (Prometheus text;
 * other paths get 404). Requests come on nng's threads and are answered by
 * the engine thread in metrics_run_queued, which must be called after each
 * engine_step. started_ms is when dopad started (wall clock). With
 * retry_in_use, an address in use is tried again for a moment (a server
 * just closed on it lets go of it a little later). Fails with why set when
 * the address cannot be listened on. */
int metrics_open(agent_engine *e, const char *listen, int64_t started_ms, int retry_in_use,
                 metrics **out, validate_error *why);
/* Stops serving: requests still waiting are dropped (their connections
 * close). Engine thread. */
void metrics_close(metrics *m);
/* "ADDRESS:PORT" as it listens (the port found when 0 was asked). */
const char *metrics_address(const metrics *m);
/* Answers the requests that came since the last call (NULL: none). */
void metrics_run_queued(metrics *m);
/* The text it serves, for these counters and jobs in each state (indexed
 * by enum dopa_state), into buf: its length, or 0 when it does not fit in
 * len bytes. */
size_t metrics_render(const dopa_agent_stats *st, const uint64_t states[AGENT_JOB_STATES],
                      int64_t started_ms, char *buf, size_t len);

/* Logging: one line to stderr with a timestamp and level. */
void agent_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
