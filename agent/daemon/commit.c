/*
 * Commits: how written pieces become durable (pieces.h: WRITTEN → SYNCING
 * → DURABLE).
 *
 * Bytes go to the temporary file as they arrive; a written piece waits
 * until a commit, which fdatasyncs the file and then records the piece in
 * the store in one transaction. So a piece is done only when both its
 * bytes and its row are on disk, and a kill -9 loses at most the pieces
 * since the last commit (about COMMIT_INTERVAL_MS).
 *
 * The fdatasyncs of a commit run on the engine's syncer (a work queue), so
 * that the engine goes on receiving meanwhile: a batch takes every file's
 * written pieces (SYNCING then: neither missing nor done), syncs
 * duplicates of the descriptors, and the engine records the pieces in the
 * store when it is back. Entries name their file by job id, index and
 * generation, so a job that went away or a file that started over
 * meanwhile is skipped. One batch runs at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_internal.h"

#define COMMIT_INTERVAL_MS 200
#define COMMIT_PIECES      64 /* written pieces that make a commit at once */

typedef struct sync_entry {
    dopa_id job;
    uint32_t file;
    uint64_t gen;
    int fd;
    int err;
} sync_entry;

typedef struct sync_batch {
    work w;
    agent_engine *e;
    sync_entry *entries;
    size_t n;
} sync_batch;

static void run_batch(work *w)
{
    sync_batch *b = (sync_batch *)w;
    for (size_t i = 0; i < b->n; i++)
        b->entries[i].err = fdatasync(b->entries[i].fd) != 0 ? errno : 0;
}

static void finish_batch(agent_engine *e, sync_batch *b);

/* The batch is done (the engine is closing when it was dropped: it waits
 * for it in engine_flush first, so that cannot happen to one that ran). */
static void batch_done(work *w, int status)
{
    sync_batch *b = (sync_batch *)w;
    b->e->sync = NULL;
    if (status == WORK_RAN) {
        finish_batch(b->e, b);
    } else {
        for (size_t i = 0; i < b->n; i++)
            close(b->entries[i].fd);
    }
    free(b->entries);
    free(b);
}

static agent_file *entry_file(agent_engine *e, const sync_entry *en)
{
    agent_job *j = engine_find(e, &en->job);
    if (j == NULL || j->purge_at != 0 || en->file >= j->n_files)
        return NULL;
    agent_file *f = j->files[en->file];
    return f->write_gen == en->gen ? f : NULL;
}

/* The batch's fdatasyncs are done: its pieces go into the store. */
static void finish_batch(agent_engine *e, sync_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        sync_entry *en = &b->entries[i];
        close(en->fd);
        agent_file *f = entry_file(e, en);
        if (f == NULL || en->err == 0)
            continue;
        /* A piece whose bytes may not be on disk is dropped. That is every
         * piece written since the file's last good fdatasync, not only the
         * batch's: the failed writeback may have covered the pieces written
         * meanwhile too, and Linux reports its error once, so the next
         * fdatasync would succeed without their bytes. Peer pieces still
         * being written are void as well (write_gen). */
        char msg[512];
        snprintf(msg, sizeof msg, "syncing %s: %s", f->tmp_path, strerror(en->err));
        pieces_lose(&f->pieces, 1);
        f->write_gen++;
        engine_fail_job(e, f->job, 1, DOPA_CONTEXT_LOCAL_FILE, en->err, (int)f->index, 0, msg);
    }
    int failed = store_begin(e->db) != DOPA_OK;
    for (size_t i = 0; i < b->n && !failed; i++) {
        agent_file *f = entry_file(e, &b->entries[i]);
        if (f == NULL || f->pieces.n_syncing == 0)
            continue;
        agent_job *j = f->job;
        j->modified = engine_now(e);
        failed = store_add_pieces(e->db, f, f->pieces.syncing, f->pieces.n_syncing) != DOPA_OK ||
                 store_put_file(e->db, f) != DOPA_OK || store_put_job(e->db, j) != DOPA_OK;
    }
    if (failed || store_commit(e->db) != DOPA_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "cannot record progress in the store: %s", store_error(e->db));
        agent_log("error", "commit: %s", store_error(e->db));
        store_rollback(e->db);
        /* The pieces wait again; the next commit tries again. Their jobs
         * stop meanwhile (a transient error, retried as any other): what
         * they fetch could not be recorded, a kill would lose all of it,
         * and their clients should see why nothing counts. */
        for (size_t i = 0; i < b->n; i++) {
            agent_file *f = entry_file(e, &b->entries[i]);
            if (f == NULL)
                continue;
            pieces_sync_retry(&f->pieces);
            if (engine_wants_to_run(f->job->state))
                engine_fail_job(e, f->job, 1, DOPA_CONTEXT_GENERAL, DOPA_EINTERNAL, (int)f->index,
                                0, msg);
        }
        return;
    }
    for (size_t i = 0; i < b->n; i++) {
        agent_file *f = entry_file(e, &b->entries[i]);
        if (f == NULL || f->pieces.n_syncing == 0)
            continue;
        agent_job *j = f->job;
        for (size_t p = 0; p < f->pieces.n_syncing; p++)
            peers_piece_done(e, f, f->pieces.syncing[p]);
        pieces_sync_done(&f->pieces);
        if (!j->running && !f->check.hashing)
            engine_release_fd(f);
        j->no_progress_since = 0;
        j->no_progress_wall = 0;
        j->version++;
        engine_notify(e, j, CB_JOB_MODIFICATION, -1);
    }
}

/* Takes a finished batch (waiting for it when `wait`). */
static void reap_batch(agent_engine *e, int wait)
{
    if (e->sync == NULL)
        return;
    if (wait)
        work_settle(&e->syncer, NULL);
    work_reap(&e->syncer);
}

void commit_step(agent_engine *e, int force)
{
    reap_batch(e, force);
    if (e->sync != NULL)
        return; /* one batch at a time */
    int64_t now = engine_mono(e);
    size_t total = 0, files = 0;
    for (size_t i = 0; i < e->n_jobs; i++)
        for (size_t k = 0; k < e->jobs[i]->n_files; k++) {
            total += e->jobs[i]->files[k]->pieces.n_written;
            files += e->jobs[i]->files[k]->pieces.n_written > 0;
        }
    if (total == 0)
        return;
    if (!force && !e->commit_now && total < COMMIT_PIECES &&
        now - e->last_commit < COMMIT_INTERVAL_MS)
        return;
    e->last_commit = now;
    e->commit_now = 0;

    sync_batch *b = calloc(1, sizeof *b);
    sync_entry *entries = calloc(files, sizeof *entries);
    if (b == NULL || entries == NULL) {
        free(b);
        free(entries);
        return; /* the pieces stay pending */
    }
    b->w = (work){.run = run_batch, .done = batch_done};
    b->e = e;
    b->entries = entries;
    for (size_t i = 0; i < e->n_jobs; i++) {
        agent_job *j = e->jobs[i];
        for (size_t k = 0; k < j->n_files; k++) {
            agent_file *f = j->files[k];
            if (f->pieces.n_written == 0 || j->purge_at != 0)
                continue;
            int fd = f->fd >= 0 ? fcntl(f->fd, F_DUPFD_CLOEXEC, 3) : -1;
            if (fd < 0) {
                int err = f->fd < 0 ? EBADF : errno;
                char msg[512];
                snprintf(msg, sizeof msg, "syncing %s: %s", f->tmp_path, strerror(err));
                pieces_lose(&f->pieces, 0);
                engine_fail_job(e, j, 1, DOPA_CONTEXT_LOCAL_FILE, err, (int)f->index, 0, msg);
                continue;
            }
            pieces_sync_begin(&f->pieces); /* its written pieces are the batch's */
            b->entries[b->n++] =
                (sync_entry){.job = j->id, .file = f->index, .gen = f->write_gen, .fd = fd};
        }
    }
    if (b->n == 0) {
        free(entries);
        free(b);
        return;
    }
    e->sync = b;
    if (force) {
        run_batch(&b->w); /* (with the engine waiting for it anyway) */
        batch_done(&b->w, WORK_RAN);
    } else {
        work_submit(&e->syncer, &b->w);
    }
}

int64_t commit_next_ms(const agent_engine *e, int64_t limit)
{
    if (e->sync != NULL || limit <= COMMIT_INTERVAL_MS)
        return limit;
    for (size_t i = 0; i < e->n_jobs; i++)
        for (size_t k = 0; k < e->jobs[i]->n_files; k++)
            if (e->jobs[i]->files[k]->pieces.n_written > 0)
                return COMMIT_INTERVAL_MS;
    return limit;
}
