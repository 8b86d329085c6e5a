/*
 * The engine: one thread that owns every job, the store and the loop the
 * transfers run in. Each turn (engine_step) it lets libcurl and the peer
 * node move their transfers, takes what other threads handed back (work.h),
 * runs the control requests that arrived, commits written pieces
 * (commit.c), fires the timers (retry, no-progress, inactivity), decides
 * which jobs run, and pumps each running job: its files in order, each
 * through its sources (source.h: the origin in fetch.c, peers in peers.c)
 * until every piece is durable (pieces.h), then through its checks
 * (validation.c) to transferred.
 *
 * A file's walk: prepare (the temporary file opened, the origin asked for
 * the size) → fetch (each source claims pieces and delivers them: MISSING
 * → CLAIMED → WRITTEN) → commit (WRITTEN → SYNCING → DURABLE) → the
 * whole-file checks and the verdict → transferred (offered whole to peers,
 * copied into the cache) → Complete (moved to its destination).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine_internal.h"

#define FINAL_JOB_KEEP_MS         300000 /* final jobs stay visible this long */
#define DEFAULT_MAX_RUNNING       4
#define DEFAULT_INACTIVITY_MS     (90ull * 24 * 3600 * 1000)
#define DEFAULT_MAX_JOBS_PER_USER 10000
#define CHECK_THREADS             4 /* whole-file checks at once */

void agent_log(const char *level, const char *fmt, ...)
{
    char when[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s.%03ldZ dopad %s: ", when, ts.tv_nsec / 1000000, level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int64_t real_wall(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t real_mono(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t engine_now(const agent_engine *e)
{
    return e->clock.wall_ms(e->clock.ctx);
}

int64_t engine_mono(const agent_engine *e)
{
    return e->clock.mono_ms(e->clock.ctx);
}

int engine_wants_to_run(int state)
{
    return state == DOPA_STATE_QUEUED || state == DOPA_STATE_CONNECTING ||
           state == DOPA_STATE_TRANSFERRING;
}

int engine_touch(agent_engine *e, agent_job *j)
{
    j->version++;
    j->modified = engine_now(e);
    j->touched = engine_mono(e);
    if (j->purge_at != 0)
        return DOPA_OK; /* final: no longer stored */
    if (store_put_job(e->db, j) != DOPA_OK) {
        agent_log("error", "storing job: %s", store_error(e->db));
        return DOPA_EINTERNAL;
    }
    engine_notify(e, j, CB_JOB_MODIFICATION, -1);
    return DOPA_OK;
}

/* Persists the job and an event of it in one transaction, so that a crash
 * cannot keep the one without the other. (Inside a transaction already,
 * they simply become part of it.) */
static void touch_notify(agent_engine *e, agent_job *j, int kind, int32_t file)
{
    int own = engine_begin(e);
    engine_touch(e, j);
    engine_notify(e, j, kind, file);
    engine_end(e, own, 1);
}

int engine_begin(agent_engine *e)
{
    return store_begin(e->db) == DOPA_OK;
}

void engine_end(agent_engine *e, int own, int ok)
{
    if (ok && (!own || store_commit(e->db) == DOPA_OK))
        return;
    agent_log("error", "store: %s", store_error(e->db));
    if (own)
        store_rollback(e->db);
}

/* ------------------------------------------------------------------ */
/* Stopping and failing                                               */

/* Closes a file's descriptor unless pieces still wait for its fdatasync or
 * for a writer. */
void engine_release_fd(agent_file *f)
{
    if (f->fd >= 0 && f->pieces.n_written == 0 && f->peer.writing == 0) {
        close(f->fd);
        f->fd = -1;
    }
}

/* Where pieces come from (source.h), in the order they fetch. */
static const piece_source *const sources[] = {&peer_source, &origin_source};
#define N_SOURCES (sizeof sources / sizeof sources[0])

static void stop_sources(agent_engine *e, agent_file *f)
{
    for (size_t i = 0; i < N_SOURCES; i++)
        sources[i]->stop(e, f);
}

void engine_stop_job(agent_engine *e, agent_job *j)
{
    for (size_t i = 0; i < j->n_files; i++) {
        agent_file *f = j->files[i];
        stop_sources(e, f);
        /* A whole-file check still running is void now: its result must
         * not move the job (it is checked again when the job runs). */
        f->check.hashing = 0;
        f->check.hash_generation = 0;
        validation_stop(e, f);
        engine_release_fd(f);
    }
    j->running = 0;
}

void engine_set_state(agent_engine *e, agent_job *j, int state)
{
    if (!engine_wants_to_run(state))
        engine_stop_job(e, j);
    if (j->state == state)
        return;
    j->state = state;
    engine_touch(e, j);
}

void engine_fail_job(agent_engine *e, agent_job *j, int transient, int context, int code, int file,
                     long http_status, const char *message)
{
    engine_fail_job_after(e, j, transient, context, code, file, http_status, 0, message);
}

void engine_fail_job_after(agent_engine *e, agent_job *j, int transient, int context, int code,
                           int file, long http_status, long retry_after, const char *message)
{
    if (j->purge_at != 0)
        return; /* finished: nothing more happens to it */
    engine_stop_job(e, j);
    j->has_error = 1;
    j->error.context = context;
    j->error.code = code;
    j->error.file = file;
    j->error.http_status = http_status;
    snprintf(j->error.message, sizeof j->error.message, "%s", message);
    if (transient) {
        /* MinimumRetryDelay, or longer if the server asked for it. */
        int64_t delay = j->retry_delay;
        if (retry_after > delay && retry_after < 24 * 3600)
            delay = retry_after;
        j->error_count++;
        j->retry_at = engine_mono(e) + delay * 1000;
        if (j->no_progress_since == 0) {
            j->no_progress_since = engine_mono(e);
            j->no_progress_wall = engine_now(e);
        }
        j->state = DOPA_STATE_TRANSIENT_ERROR;
    } else {
        j->state = DOPA_STATE_ERROR;
    }
    agent_log("info", "job %02x%02x%02x%02x: %s: %s", j->id.bytes[0], j->id.bytes[1],
              j->id.bytes[2], j->id.bytes[3], transient ? "transient error" : "error", message);
    if (transient)
        engine_touch(e, j);
    else
        touch_notify(e, j, CB_JOB_ERROR, -1);
}

int engine_write_all(int fd, const uint8_t *p, size_t len, uint64_t offset)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno : EIO;
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

void engine_reset_file(agent_engine *e, agent_file *f)
{
    f->write_gen++;          /* what writers still do for it is void */
    peers_forget_file(e, f); /* what it offered is gone */
    int own = engine_begin(e);
    engine_end(e, own,
               store_clear_pieces(e->db, f) == DOPA_OK && store_put_file(e->db, f) == DOPA_OK);
}

void engine_received(agent_engine *e, agent_file *f, int from, size_t len)
{
    agent_job *j = f->job;
    switch (from) {
    case FROM_ORIGIN:
        f->from_origin += len;
        j->from_origin += len;
        e->got_origin += len;
        break;
    case FROM_PEERS:
        f->from_peers += len;
        j->from_peers += len;
        e->got_peers += len;
        break;
    default:
        f->from_cache += len;
        j->from_cache += len;
        e->got_cache += len;
        break;
    }
}

void engine_data_arrived(agent_engine *e, agent_job *j)
{
    j->touched = engine_mono(e);
    if (j->state == DOPA_STATE_CONNECTING) {
        j->state = DOPA_STATE_TRANSFERRING;
        engine_touch(e, j);
    }
}

void engine_progress(agent_engine *e, agent_job *j)
{
    j->no_progress_since = 0; /* new bytes are progress */
    j->no_progress_wall = 0;
    engine_data_arrived(e, j);
}

/* ------------------------------------------------------------------ */
/* Driving a running job                                              */

/* Opens the temporary file for writing, making it again (in the same
 * directory) if it vanished; then its pieces are gone too. */
static int open_temp(agent_engine *e, agent_file *f)
{
    validate_error why = {0};
    agent_job *j = f->job;
    int err = fileops_open_temp(j->file_user, f->tmp_path, 0, &f->ident, &f->fd, &why);
    if (err == ENOENT) {
        agent_file_clear_pieces(f);
        f->ident.file_dev = f->ident.file_ino = 0;
        err = fileops_open_temp(j->file_user, f->tmp_path, 1, &f->ident, &f->fd, &why);
        if (err == 0)
            engine_reset_file(e, f);
    }
    if (err != 0) {
        engine_fail_job(e, j, err == ENOSPC || err == EIO, DOPA_CONTEXT_LOCAL_FILE, err,
                        (int)f->index, 0, why.text);
        return -1;
    }
    return 0;
}

int sources_active(const agent_engine *e, const agent_file *f, int self)
{
    (void)e;
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->id != self && sources[i]->active != NULL && sources[i]->active(f))
            return 1;
    return 0;
}

int sources_hold_back(const agent_engine *e, const agent_file *f, int self)
{
    (void)e;
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->id != self && sources[i]->holds_back != NULL && sources[i]->holds_back(f))
            return 1;
    return 0;
}

int sources_keep(const agent_engine *e, const agent_file *f, uint64_t piece, int self)
{
    (void)e;
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->id != self && sources[i]->keeps != NULL && sources[i]->keeps(f, piece))
            return 1;
    return 0;
}

uint64_t sources_share_start(const agent_engine *e, const agent_file *f, int self)
{
    (void)e;
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->id != self && sources[i]->share_start != NULL)
            return sources[i]->share_start(f);
    return 0;
}

const piece_source *sources_can_finish(const agent_engine *e, const agent_file *f, int self)
{
    (void)e;
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->id != self && sources[i]->can_finish != NULL && sources[i]->can_finish(f))
            return sources[i];
    return NULL;
}

size_t sources_fetching(const agent_engine *e, const agent_file *f, int self, uint64_t runs[][2],
                        size_t max)
{
    (void)e;
    size_t n = 0;
    for (size_t i = 0; i < N_SOURCES && n < max; i++)
        if (sources[i]->id != self && sources[i]->fetching != NULL &&
            sources[i]->fetching(f, &runs[n][0], &runs[n][1]))
            n++;
    return n;
}

void sources_drain(agent_engine *e, agent_file *f)
{
    for (size_t i = 0; i < N_SOURCES; i++)
        if (sources[i]->drain != NULL)
            sources[i]->drain(e, f);
}

static void start_whole_file_check(agent_engine *e, agent_file *f);

/* Every byte of the file is here, checked and judged. */
static void file_done(agent_engine *e, agent_file *f)
{
    f->transferred = 1;
    if (f->fd < 0 && e->peers != NULL) {
        /* (Closed while it waited for a verdict.) */
        validate_error why = {0};
        if (fileops_open_temp(f->job->file_user, f->tmp_path, 0, &f->ident, &f->fd, &why) != 0)
            f->fd = -1;
    }
    peers_file_transferred(e, f); /* offered whole from now on */
    cache_add(e, f);              /* and kept after the job */
    stop_sources(e, f);
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (store_put_file(e->db, f) != DOPA_OK)
        agent_log("error", "storing file: %s", store_error(e->db));
}

/* Keeps a running job's work going: one file at a time, in order. */
static void pump_job(agent_engine *e, agent_job *j)
{
    int waiting = 0;
    for (size_t i = 0; i < j->n_files; i++) {
        agent_file *f = j->files[i];
        if (f->transferred)
            continue;
        if (f->validation == DOPA_VALIDATION_PENDING) {
            /* All here and checked: it waits for a verdict alone. */
            int valid = validation_step(e, f);
            if (valid < 0)
                return;
            if (valid > 0)
                file_done(e, f);
            waiting |= valid == 0;
            continue;
        }
        if (f->check.hashing)
            return; /* busy */
        for (size_t k = 0; k < N_SOURCES; k++)
            if (sources[k]->watch != NULL)
                sources[k]->watch(e, f);
        for (size_t k = 0; k < N_SOURCES; k++)
            if (sources[k]->busy != NULL && sources[k]->busy(f))
                return;
        if (f->fd < 0 && open_temp(e, f) != 0)
            return;
        for (size_t k = 0; k < N_SOURCES; k++)
            if (sources[k]->prepare != NULL && sources[k]->prepare(e, f) != SOURCE_READY)
                return;
        if (f->pieces.n[PIECE_DURABLE] < f->pieces.count) {
            /* Whatever was judged was another content. */
            f->check.hash_passed = 0;
            f->check.plugins_passed = 0;
            f->validation = DOPA_VALIDATION_NONE;
            for (size_t k = 0; k < N_SOURCES; k++)
                sources[k]->fetch(e, f);
            if (pieces_first_absent(&f->pieces) >= f->pieces.count)
                e->commit_now = 1; /* only the commit stands between it and done */
            /* else sources are bringing the rest */
            return;
        }
        /* Every piece is done: the whole-file check, if any, then the
         * validators and the client; a file that waits for them does not
         * hold up the next. */
        if (f->has_sha256 && f->manifest == NULL && !f->check.hash_passed) {
            start_whole_file_check(e, f);
            return;
        }
        int valid = validation_step(e, f);
        if (valid < 0)
            return;
        if (valid > 0) {
            file_done(e, f);
            continue;
        }
        if (f->validation == DOPA_VALIDATION_PENDING) {
            for (size_t k = 0; k < N_SOURCES; k++) /* nothing stays open while it waits */
                if (sources[k]->idle != NULL)
                    sources[k]->idle(e, f);
            engine_release_fd(f);
        }
        waiting = 1;
    }
    if (waiting)
        return;
    /* Every file is transferred. */
    engine_stop_job(e, j);
    j->completed = engine_now(e);
    j->has_error = 0;
    j->state = DOPA_STATE_TRANSFERRED;
    touch_notify(e, j, CB_JOB_TRANSFERRED, -1);
}

/* ------------------------------------------------------------------ */
/* Whole-file SHA-256 checks, on a helper thread                      */

typedef struct hash_task {
    work w;
    agent_engine *e;
    int fd;
    uint64_t size; /* bytes to hash: what the job transferred, not what the file holds */
    uint8_t want[32];
    dopa_id job; /* the file it checks, by job and index: it may be gone when it ends */
    uint32_t file;
    uint64_t generation; /* and which check of it */
    int ok;              /* the hash matched */
    int err;             /* errno of a read failure, 0 if none */
} hash_task;

static void hash_run(work *w)
{
    hash_task *t = (hash_task *)w;
    validate_sha256_state st;
    uint8_t buf[1 << 16], got[32];
    uint64_t off = 0;
    validate_sha256_init(&st);
    while (off < t->size) {
        size_t want = t->size - off < sizeof buf ? (size_t)(t->size - off) : sizeof buf;
        ssize_t n = validate_pread_full(t->fd, buf, want, off);
        if (n < 0) {
            t->err = errno;
            break;
        }
        if (n == 0)
            break; /* shorter than it should be: the hash tells */
        validate_sha256_update(&st, buf, (size_t)n);
        off += (uint64_t)n;
    }
    validate_sha256_final(&st, got);
    t->ok = t->err == 0 && off == t->size && sodium_memcmp(got, t->want, 32) == 0;
}

/* The check's result, on the engine thread (dropped when the engine
 * closes). */
static void hash_done(work *w, int status)
{
    hash_task *t = (hash_task *)w;
    agent_engine *e = t->e;
    close(t->fd);
    agent_job *j = status == WORK_RAN ? engine_find(e, &t->job) : NULL;
    agent_file *f = j != NULL && t->file < j->n_files ? j->files[t->file] : NULL;
    if (f != NULL && f->check.hashing && f->check.hash_generation == t->generation && j->running) {
        f->check.hashing = 0;
        if (t->err != 0) {
            char msg[512];
            snprintf(msg, sizeof msg, "reading %s: %s", f->tmp_path, strerror(t->err));
            engine_fail_job(e, j, 1, DOPA_CONTEXT_LOCAL_FILE, t->err, (int)f->index, 0, msg);
        } else if (!t->ok) {
            char msg[DOPA_MESSAGE_MAX + 1];
            snprintf(msg, sizeof msg, "%s: the file's SHA-256 is not the expected one", f->url);
            engine_reject_file(e, f, VALIDATE_EFILE_HASH, msg);
        } else {
            f->check.hash_passed = 1; /* the pump goes on to the validators */
        }
    }
    free(t);
}

static void start_whole_file_check(agent_engine *e, agent_file *f)
{
    hash_task *t = calloc(1, sizeof *t);
    if (t == NULL)
        return;
    t->fd = dup(f->fd);
    if (t->fd < 0) {
        free(t);
        return; /* tried again on the next turn */
    }
    t->w = (work){.run = hash_run, .done = hash_done};
    t->e = e;
    t->size = f->size;
    memcpy(t->want, f->sha256, 32);
    t->job = f->job->id;
    t->file = f->index;
    t->generation = ++e->generation;
    f->check.hashing = 1;
    f->check.hash_generation = t->generation;
    work_submit(&e->checks, &t->w);
}

/* ------------------------------------------------------------------ */
/* Timers and scheduling                                              */

int engine_finish_job(agent_engine *e, agent_job *j, int state)
{
    /* Gone from the store first: if that fails the job stays as it was. */
    if (store_delete_job(e->db, &j->id) != DOPA_OK) {
        agent_log("error", "deleting job: %s", store_error(e->db));
        return DOPA_EINTERNAL;
    }
    for (size_t i = 0; i < j->n_files; i++) {
        pieces_lose(&j->files[i]->pieces, 1); /* pieces of a finished job are never committed */
        j->files[i]->write_gen++;
    }
    engine_stop_job(e, j);
    notify_forget_job(e, j);
    j->state = state;
    j->purge_at = engine_mono(e) + FINAL_JOB_KEEP_MS;
    engine_touch(e, j);
    return DOPA_OK;
}

static void remove_job_at(agent_engine *e, size_t i)
{
    for (size_t k = 0; k < e->jobs[i]->n_files; k++)
        peers_forget_file(e, e->jobs[i]->files[k]);
    agent_job_free(e->jobs[i]);
    memmove(&e->jobs[i], &e->jobs[i + 1], (e->n_jobs - i - 1) * sizeof e->jobs[0]);
    e->n_jobs--;
}

static void run_timers(agent_engine *e)
{
    int64_t mono = engine_mono(e);
    for (size_t i = 0; i < e->n_jobs; i++) {
        agent_job *j = e->jobs[i];
        if (j->purge_at != 0) {
            if (mono >= j->purge_at) {
                remove_job_at(e, i);
                i--;
            }
            continue;
        }
        if (j->state == DOPA_STATE_TRANSIENT_ERROR) {
            if (j->no_progress_since != 0 &&
                mono - j->no_progress_since >= (int64_t)j->no_progress_timeout * 1000) {
                /* No progress for NoProgressTimeout: the transient error
                 * becomes final. */
                j->state = DOPA_STATE_ERROR;
                touch_notify(e, j, CB_JOB_ERROR, -1);
            } else if (mono >= j->retry_at) {
                j->state = DOPA_STATE_QUEUED;
                engine_touch(e, j);
            }
        }
        if (!j->running && j->state != DOPA_STATE_TRANSFERRING &&
            mono - j->touched >= (int64_t)e->cfg.inactivity_ms) {
            /* JobInactivityTimeout: neither completed nor cancelled. */
            validate_error why = {0};
            if (engine_finish_job(e, j, DOPA_STATE_CANCELLED) != DOPA_OK)
                continue;
            for (size_t k = 0; k < j->n_files; k++)
                if (!j->files[k]->completed &&
                    fileops_remove_temp(j->file_user, j->files[k]->tmp_path, &j->files[k]->ident,
                                        &why) != 0)
                    agent_log("warning", "%s", why.text);
            agent_log("info", "job inactive for too long: cancelled");
        }
    }
}

static int run_order(const void *a, const void *b)
{
    const agent_job *x = *(agent_job *const *)a, *y = *(agent_job *const *)b;
    if (x->priority != y->priority)
        return x->priority - y->priority;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* A job whose files are all here and some wait for a verdict, nothing
 * else: it takes no running slot, so clients that do not answer hold up
 * no transfer. */
static int awaiting_verdicts(const agent_job *j)
{
    int pending = 0;
    for (size_t i = 0; i < j->n_files; i++) {
        const agent_file *f = j->files[i];
        if (f->transferred)
            continue;
        if (f->validation != DOPA_VALIDATION_PENDING)
            return 0;
        pending = 1;
    }
    return pending;
}

/* Runs the max_running best jobs (priority, then age); stops the rest.
 * Jobs that only await verdicts run besides them. */
static void schedule(agent_engine *e)
{
    agent_job *chosen[64];
    size_t n = 0, cap = e->cfg.max_running < 64 ? e->cfg.max_running : 64;
    agent_job **want = malloc((e->n_jobs ? e->n_jobs : 1) * sizeof *want);
    if (want == NULL)
        return;
    size_t n_want = 0;
    for (size_t i = 0; i < e->n_jobs; i++) {
        agent_job *j = e->jobs[i];
        if (!engine_wants_to_run(j->state) || j->purge_at != 0)
            continue;
        if (!awaiting_verdicts(j)) {
            want[n_want++] = j;
            continue;
        }
        j->running = 1;
        if (j->state != DOPA_STATE_TRANSFERRING) {
            j->state = DOPA_STATE_TRANSFERRING; /* (after a restart, say) */
            engine_touch(e, j);
        }
        pump_job(e, j);
    }
    qsort(want, n_want, sizeof *want, run_order);
    for (size_t i = 0; i < n_want && n < cap; i++)
        chosen[n++] = want[i];
    for (size_t i = n; i < n_want; i++) {
        agent_job *j = want[i];
        if (j->running) {
            engine_stop_job(e, j);
            j->state = DOPA_STATE_QUEUED;
            engine_touch(e, j);
        }
    }
    free(want);
    for (size_t i = 0; i < n; i++) {
        agent_job *j = chosen[i];
        if (!j->running) {
            j->running = 1;
            if (j->state == DOPA_STATE_QUEUED) {
                j->state = DOPA_STATE_CONNECTING;
                engine_touch(e, j);
            }
        }
        if (j->running && engine_wants_to_run(j->state))
            pump_job(e, j);
    }
}

/* ------------------------------------------------------------------ */
/* The engine                                                         */

int engine_add_job(agent_engine *e, agent_job *j)
{
    if (e->n_jobs == e->cap_jobs) {
        size_t cap = e->cap_jobs ? 2 * e->cap_jobs : 256;
        agent_job **grown = realloc(e->jobs, cap * sizeof *grown);
        if (grown == NULL)
            return DOPA_ENOMEM;
        e->jobs = grown;
        e->cap_jobs = cap;
    }
    e->jobs[e->n_jobs++] = j;
    if (j->seq >= e->next_seq)
        e->next_seq = j->seq + 1;
    return DOPA_OK;
}

agent_job *engine_find(agent_engine *e, const dopa_id *id)
{
    for (size_t i = 0; i < e->n_jobs; i++)
        if (memcmp(e->jobs[i]->id.bytes, id->bytes, 16) == 0)
            return e->jobs[i];
    return NULL;
}

size_t engine_job_count(const agent_engine *e)
{
    return e->n_jobs;
}

void engine_state_counts(const agent_engine *e, uint64_t out[AGENT_JOB_STATES])
{
    memset(out, 0, AGENT_JOB_STATES * sizeof out[0]);
    for (size_t i = 0; i < e->n_jobs; i++)
        if (e->jobs[i]->state >= 0 && e->jobs[i]->state < AGENT_JOB_STATES)
            out[e->jobs[i]->state]++;
}

void engine_set_control(agent_engine *e, control *c)
{
    e->control = c;
}

void engine_wakeup(agent_engine *e)
{
    origin_wakeup(e->origin);
}

void engine_wake(void *engine)
{
    engine_wakeup(engine);
}

static int make_dir(const char *path, validate_error *why)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        validate_error_set(why, DOPA_EIO, "%s: %s", path, strerror(errno));
        return DOPA_EIO;
    }
    return DOPA_OK;
}

int engine_open(const engine_config *cfg, agent_engine **out, validate_error *why)
{
    agent_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    e->cfg = *cfg;
    e->peer_wake = -1;
    if (e->cfg.max_running == 0)
        e->cfg.max_running = DEFAULT_MAX_RUNNING;
    if (e->cfg.inactivity_ms == 0)
        e->cfg.inactivity_ms = DEFAULT_INACTIVITY_MS;
    if (e->cfg.max_jobs_per_user == 0)
        e->cfg.max_jobs_per_user = DEFAULT_MAX_JOBS_PER_USER;
    e->clock = cfg->clock != NULL ? *cfg->clock
                                  : (agent_clock){.wall_ms = real_wall, .mono_ms = real_mono};
    e->next_seq = 1;
    int err = DOPA_ENOMEM;
    e->state_dir = strdup(cfg->state_dir);
    if (cfg->n_trusted_keys > 0) {
        e->keys = calloc(cfg->n_trusted_keys, sizeof *e->keys);
        if (e->keys != NULL) {
            memcpy(e->keys, cfg->trusted_keys, cfg->n_trusted_keys * sizeof *e->keys);
            e->n_keys = cfg->n_trusted_keys;
        }
    }
    if (e->state_dir == NULL || (cfg->n_trusted_keys > 0 && e->keys == NULL)) {
        validate_error_set(why, err, "out of memory");
        goto fail;
    }
    e->cfg.state_dir = e->state_dir;
    e->cfg.trusted_keys = e->keys;
    if (cfg->plugin_dir != NULL) {
        if (cfg->validate_helper == NULL || cfg->validate_helper[0] != '/') {
            validate_error_set(why, DOPA_EINVAL,
                               "validator plugins need the dopa-validate program's full path");
            err = DOPA_EINVAL;
            goto fail;
        }
        e->cfg.plugin_dir = e->plugin_dir = strdup(cfg->plugin_dir);
        e->cfg.validate_helper = e->validate_helper = strdup(cfg->validate_helper);
        if (e->plugin_dir == NULL || e->validate_helper == NULL) {
            validate_error_set(why, err, "out of memory");
            goto fail;
        }
    }
    if (e->cfg.notify.per_user > CLIENT_HELD_MAX) {
        validate_error_set(why, DOPA_EINVAL, "at most %d notifications per user may be outstanding",
                           CLIENT_HELD_MAX);
        err = DOPA_EINVAL;
        goto fail;
    }
    err = make_dir(e->state_dir, why);
    if (err != DOPA_OK)
        goto fail;
    char path[4200];
    snprintf(path, sizeof path, "%s/dopa.db", e->state_dir);
    err = store_open(path, &e->db, why);
    if (err != DOPA_OK)
        goto fail;
    if (origin_new(&cfg->origin, &e->origin) != ORIGIN_OK) {
        validate_error_set(why, DOPA_EINTERNAL, "cannot start the transfer loop");
        err = DOPA_EINTERNAL;
        goto fail;
    }
    if (work_queue_init(&e->checks, CHECK_THREADS, engine_wake, e) != 0 ||
        work_queue_init(&e->syncer, 1, engine_wake, e) != 0) {
        validate_error_set(why, DOPA_ENOMEM, "out of memory for the engine's work queues");
        err = DOPA_ENOMEM;
        goto fail;
    }
    agent_job **loaded = NULL;
    size_t n = 0, damaged = 0;
    err = store_load(e->db, &loaded, &n, &damaged, why);
    if (err != DOPA_OK)
        goto fail;
    if (damaged > 0)
        agent_log("warning", "%zu stored jobs failed their checks and were left out", damaged);
    int64_t mono = engine_mono(e);
    for (size_t i = 0; i < n; i++) {
        agent_job *j = loaded[i];
        /* What was running runs again; timers start from now. */
        if (j->state == DOPA_STATE_CONNECTING || j->state == DOPA_STATE_TRANSFERRING)
            j->state = DOPA_STATE_QUEUED;
        /* Wall-clock times carry the timers over the restart; a clock set
         * back counts as no time passed. */
        int64_t wall = engine_now(e);
        int64_t idle = wall > j->modified ? wall - j->modified : 0;
        j->touched = mono - idle;
        if (j->no_progress_wall != 0) {
            int64_t stalled = wall > j->no_progress_wall ? wall - j->no_progress_wall : 0;
            j->no_progress_since = mono - stalled;
        }
        if (j->state == DOPA_STATE_TRANSIENT_ERROR)
            j->retry_at = mono; /* the network may be another after a restart */
        j->version = 1;
        if (engine_add_job(e, j) != DOPA_OK) {
            /* Not one job may be left out: no engine rather than less. */
            while (i < n)
                agent_job_free(loaded[i++]);
            free(loaded);
            validate_error_set(why, DOPA_ENOMEM, "out of memory for the stored jobs");
            err = DOPA_ENOMEM;
            goto fail;
        }
    }
    free(loaded);
    err = notify_open(e, why);
    if (err != DOPA_OK)
        goto fail;
    err = peers_open(e, why);
    if (err == DOPA_OK)
        err = cache_open(e, why);
    if (err != DOPA_OK)
        goto fail;
    e->last_commit = mono;
    *out = e;
    return DOPA_OK;
fail:
    engine_close(e);
    return err;
}

void engine_flush(agent_engine *e)
{
    if (e->db == NULL || e->origin == NULL)
        return;
    commit_step(e, 1); /* (it waits for a running batch first) */
}

void engine_close(agent_engine *e)
{
    if (e == NULL)
        return;
    /* Background checks use the engine (its origin's wakeup): wait for
     * them before anything goes; their results are dropped. */
    work_queue_destroy(&e->checks);
    if (e->db != NULL && e->origin != NULL)
        commit_step(e, 1);
    work_queue_destroy(&e->syncer);
    engine_answer_waits(e, 1);
    for (size_t i = 0; i < e->n_jobs; i++)
        engine_stop_job(e, e->jobs[i]);
    cache_close(e);
    peers_close(e);
    notify_close(e);
    engine_reap(e, 1);
    free(e->zombies);
    for (size_t i = 0; i < e->n_jobs; i++)
        agent_job_free(e->jobs[i]);
    free(e->jobs);
    origin_free(e->origin);
    store_close(e->db);
    free(e->keys);
    free(e->state_dir);
    free(e->plugin_dir);
    free(e->validate_helper);
    free(e);
}

int engine_reconfigure(agent_engine *e, const engine_config *cfg)
{
    validate_public_key *keys = NULL;
    if (cfg->n_trusted_keys > 0) {
        keys = calloc(cfg->n_trusted_keys, sizeof *keys);
        if (keys == NULL)
            return validate_error_set(&e->error, DOPA_ENOMEM, "out of memory");
        memcpy(keys, cfg->trusted_keys, cfg->n_trusted_keys * sizeof *keys);
    }
    /* Manifests are checked against the keys when a file is added: the
     * jobs that have theirs keep them. */
    free(e->keys);
    e->cfg.trusted_keys = e->keys = keys;
    e->cfg.n_trusted_keys = e->n_keys = cfg->n_trusted_keys;
    /* schedule() stops the jobs beyond a smaller max_running. */
    e->cfg.max_running = cfg->max_running ? cfg->max_running : DEFAULT_MAX_RUNNING;
    e->cfg.inactivity_ms = cfg->inactivity_ms ? cfg->inactivity_ms : DEFAULT_INACTIVITY_MS;
    e->cfg.plugin_timeout_ms = cfg->plugin_timeout_ms;
    e->cfg.origin.max_rate = cfg->origin.max_rate;
    origin_set_max_rate(e->origin, cfg->origin.max_rate);
    /* The first failure is the one reported; the rest is applied anyway. */
    int err = DOPA_OK;
    e->error = (validate_error){0};
    if (e->peers != NULL && cfg->peer != NULL &&
        (err = peer_node_reconfigure(e->peers, cfg->peer)) != PEER_OK)
        e->error = *peer_node_error(e->peers);
    if (cfg->cache_bytes != e->cfg.cache_bytes || cfg->cache_age_ms != e->cfg.cache_age_ms) {
        validate_error cache_why = {0};
        int cache_err = cache_set_limits(e, cfg->cache_bytes, cfg->cache_age_ms, &cache_why);
        if (cache_err != DOPA_OK && err == DOPA_OK) {
            e->error = cache_why;
            err = cache_err;
        }
    }
    engine_wakeup(e);
    return err;
}

const validate_error *engine_error(const agent_engine *e)
{
    return &e->error;
}

/* The next timer, in ms from now, capped at `limit`. */
static int next_timer_ms(agent_engine *e, int limit)
{
    int64_t mono = engine_mono(e), best = limit;
    for (size_t i = 0; i < e->n_jobs; i++) {
        const agent_job *j = e->jobs[i];
        if (j->state == DOPA_STATE_TRANSIENT_ERROR && j->retry_at - mono < best)
            best = j->retry_at - mono;
    }
    for (const engine_wait *w = e->waits; w != NULL; w = w->next)
        if (w->deadline - mono < best)
            best = w->deadline - mono;
    best = commit_next_ms(e, best);
    if (e->notify_wake >= 0 && e->notify_wake < best)
        best = e->notify_wake;
    best = validation_next_ms(e, best);
    if (e->peer_wake >= 0 && e->peer_wake < best)
        best = e->peer_wake;
    return best < 0 ? 0 : (int)best;
}

int engine_step(agent_engine *e, int timeout_ms)
{
    int err = origin_poll(e->origin, next_timer_ms(e, timeout_ms));
    unsigned active = origin_active(e->origin);
    if (active > e->origin_peak)
        e->origin_peak = active;
    e->peer_wake = peers_step(e);
    cache_step(e);
    if (e->control != NULL)
        control_run_queued(e->control);
    work_reap(&e->checks);
    engine_reap(e, 0);
    commit_step(e, 0);
    run_timers(e);
    schedule(e);
    e->notify_wake = notify_step(e);
    engine_answer_waits(e, 0);
    return err == ORIGIN_OK ? DOPA_OK : DOPA_EINTERNAL;
}
