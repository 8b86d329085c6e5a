/*
 * The engine's side of peering: which files use peers, what the agent
 * offers them, and what happens to a piece a peer sent.
 *
 * A file uses peers when the agent is in a group, the file has a content id
 * (a manifest, or an expected SHA-256 of the whole file), no byte ranges,
 * and has not been put on origin_only by a failed validation. A piece asked
 * of a peer is claimed by SOURCE_PEERS in the file's piece map (pieces.h),
 * as the origin claims the pieces of its request, so every piece comes
 * whole from one source.
 *
 * A piece checked against a manifest is copied and handed to the writers
 * (a work queue), which hash it and write it while the engine goes on; the
 * engine takes their results in peers_step (the piece stays claimed until
 * then, and a result for a file that started over since is void).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_internal.h"

/* A piece for the writers: hashed and written on a worker thread, from the
 * message the node handed over (which the writer lets go of). It names
 * everything it needs, so that the worker touches no agent_file. */
#define WRITERS 2
typedef struct write_job {
    work w; /* tagged with the file */
    agent_engine *e;
    agent_file *f;
    int fd;              /* not closed while f->peer.writing > 0 */
    const uint8_t *want; /* the manifest's hash of the piece */
    uint64_t offset;
    uint64_t gen, piece, sender;
    const uint8_t *buf; /* inside `kept` */
    void *kept;
    size_t len;
    int cache_host;
    int verdict; /* PEER_VERDICT_GOOD or _BAD, or UNUSED with err */
    int err;
} write_job;

static void take_written(agent_engine *e, write_job *w);
static void peers_stop_file(agent_engine *e, agent_file *f);

static void write_run(work *wk)
{
    write_job *w = (write_job *)wk;
    uint8_t h[VALIDATE_HASH_BYTES];
    validate_blake2b(w->buf, w->len, h);
    if (sodium_memcmp(h, w->want, sizeof h) != 0) {
        w->verdict = PEER_VERDICT_BAD; /* never written */
    } else {
        w->err = engine_write_all(w->fd, w->buf, w->len, w->offset);
        w->verdict = w->err == 0 ? PEER_VERDICT_GOOD : PEER_VERDICT_UNUSED;
    }
    peer_piece_release(w->kept);
    w->kept = NULL;
    w->buf = NULL;
}

/* Engine thread: the result is taken, or dropped (the file is forgotten,
 * or the writers stop) and the piece fetched again some other time. */
static void write_done(work *wk, int status)
{
    write_job *w = (write_job *)wk;
    if (status == WORK_RAN) {
        take_written(w->e, w);
    } else {
        w->f->peer.writing--;
        pieces_unclaim(&w->f->pieces, w->piece, SOURCE_PEERS);
        if (w->kept != NULL)
            peer_piece_release(w->kept);
    }
    free(w);
}

/* Nothing of the writers writes into the file any more. */
static void peers_drain_file(agent_engine *e, agent_file *f)
{
    if (e->peers != NULL)
        work_settle(&e->writers, f);
}

/* A piece the writers checked and wrote (or not): recorded on the engine
 * thread. */
static void take_written(agent_engine *e, write_job *w)
{
    agent_file *f = w->f;
    agent_job *j = f->job;
    f->peer.writing--;
    int verdict = w->verdict; /* a bad piece stays bad whatever the file did since */
    int current = w->gen == f->write_gen;
    if (verdict == PEER_VERDICT_GOOD &&
        (!current || !pieces_written(&f->pieces, w->piece, SOURCE_PEERS)))
        verdict = PEER_VERDICT_UNUSED; /* the file started over meanwhile */
    else if (verdict == PEER_VERDICT_UNUSED && w->err != 0 && current)
        f->peer.write_err = w->err;
    if (verdict != PEER_VERDICT_GOOD)
        pieces_unclaim(&f->pieces, w->piece, SOURCE_PEERS);
    if (verdict == PEER_VERDICT_GOOD) {
        engine_received(e, f, w->cache_host ? FROM_CACHE : FROM_PEERS, w->len);
        engine_progress(e, j);
    }
    if (e->peers != NULL)
        peer_node_judge(e->peers, w->sender, verdict, w->len);
    if (!j->running)
        engine_release_fd(f);
}

static void peer_log(void *ctx, const char *level, const char *msg)
{
    (void)ctx;
    agent_log(level, "%s", msg);
}

int peers_open(agent_engine *e, validate_error *why)
{
    if (e->cfg.peer == NULL)
        return DOPA_OK;
    peer_node_config cfg = *e->cfg.peer;
    cfg.wakeup = engine_wake;
    cfg.wakeup_ctx = e;
    cfg.log = peer_log;
    if (work_queue_init(&e->writers, WRITERS, engine_wake, e) != 0)
        return validate_error_set(why, DOPA_ENOMEM, "cannot start the piece writers");
    return peer_node_open(&cfg, &e->peers, why); /* its PEER_E* code, as it is */
}

const char *engine_peer_url(const agent_engine *e)
{
    return e->peers != NULL ? peer_node_listen_url(e->peers) : "";
}

void peers_close(agent_engine *e)
{
    for (size_t i = 0; i < e->n_jobs; i++)
        for (size_t k = 0; k < e->jobs[i]->n_files; k++)
            peers_stop_file(e, e->jobs[i]->files[k]);
    /* The writers finish what they hold; their results are dropped (the
     * pieces were not committed, so they are fetched again next time). */
    work_queue_destroy(&e->writers);
    peer_node_close(e->peers);
    e->peers = NULL;
}

/* ------------------------------------------------------------------ */
/* The swarm's callbacks (inside peer_node_step)                      */

static int on_claim(void *ctx, uint64_t piece, int take)
{
    agent_file *f = ctx;
    if (f->fd < 0 || f->peer.write_err != 0)
        return 0;
    if (!take)
        return pieces_missing(&f->pieces, piece);
    return pieces_claim(&f->pieces, piece, SOURCE_PEERS);
}

static int on_piece(void *ctx, uint64_t piece, const uint8_t *data, size_t len, int cache_host,
                    uint64_t sender, void *handle, int *took)
{
    agent_file *f = ctx;
    agent_job *j = f->job;
    agent_engine *e = f->peer.engine;
    if (f->fd < 0 || f->peer.write_err != 0 || pieces_claimer(&f->pieces, piece) != SOURCE_PEERS ||
        len != pieces_length(&f->pieces, piece)) {
        pieces_unclaim(&f->pieces, piece, SOURCE_PEERS);
        return PEER_VERDICT_UNUSED;
    }
    if (f->manifest != NULL) {
        /* Checked and written by a writer, from the message itself; it
         * stays claimed until then. */
        write_job *w = calloc(1, sizeof *w);
        if (w == NULL) {
            pieces_unclaim(&f->pieces, piece, SOURCE_PEERS);
            return PEER_VERDICT_UNUSED;
        }
        *w = (write_job){.w = {.run = write_run, .done = write_done, .tag = f},
                         .e = e,
                         .f = f,
                         .fd = f->fd,
                         .want = validate_manifest_piece_hash(f->manifest, piece),
                         .offset = piece * f->pieces.piece_size,
                         .gen = f->write_gen,
                         .piece = piece,
                         .sender = sender,
                         .buf = data,
                         .kept = handle,
                         .len = len,
                         .cache_host = cache_host};
        *took = 1;
        f->peer.writing++;
        work_submit(&e->writers, &w->w);
        return PEER_VERDICT_PENDING;
    }
    /* Without a manifest, nothing can be checked before the whole file is:
     * written here and now. */
    int err = engine_write_all(f->fd, data, len, piece * f->pieces.piece_size);
    if (err != 0) {
        pieces_unclaim(&f->pieces, piece, SOURCE_PEERS);
        f->peer.write_err = err; /* peers_step fails the job, outside this callback */
        return PEER_VERDICT_UNUSED;
    }
    pieces_written(&f->pieces, piece, SOURCE_PEERS);
    engine_received(e, f, cache_host ? FROM_CACHE : FROM_PEERS, len);
    engine_progress(e, j);
    return PEER_VERDICT_LATER;
}

static void on_lost(void *ctx, uint64_t piece)
{
    agent_file *f = ctx;
    pieces_unclaim(&f->pieces, piece, SOURCE_PEERS);
}

/* ------------------------------------------------------------------ */
/* Offers and swarms                                                  */

static int eligible(const agent_engine *e, agent_file *f)
{
    if (e->peers == NULL || f->origin_only || f->n_ranges > 0 || f->size == DOPA_SIZE_UNKNOWN ||
        f->pieces.count == 0)
        return 0;
    if (f->manifest != NULL) {
        memcpy(f->peer.cid, f->manifest->content_id, sizeof f->peer.cid);
        f->peer.has_cid = 1;
    } else if (f->has_sha256) {
        validate_content_id_from_sha256(f->sha256, f->size, f->peer.cid);
        f->peer.has_cid = 1;
    } else {
        f->peer.has_cid = 0;
    }
    return f->peer.has_cid;
}

/* Offers what the file holds, with a manifest: its committed pieces (each
 * hashed again before it is sent). Content known only by its SHA-256 is
 * offered by the cache alone, from the copy hashed as it was made: the
 * temporary file belongs to the user, who may change it after its check.
 * Content the cache holds is the cache's to offer. */
static void offer(agent_engine *e, agent_file *f, int downloading)
{
    if (f->fd < 0 || cache_has(e, f->peer.cid))
        return;
    if (f->manifest == NULL) {
        /* Nothing to serve yet, but others should know it is fetched. */
        if (!downloading)
            return;
    }
    size_t bytes = peer_bits_bytes(f->pieces.count);
    uint8_t *held = calloc(bytes ? bytes : 1, 1);
    if (held == NULL)
        return;
    for (uint64_t i = 0; i < f->pieces.count; i++)
        if (f->manifest != NULL && pieces_state(&f->pieces, i) == PIECE_DURABLE)
            peer_bit_set(held, i);
    peer_offer_info info = {
        .fd = f->fd,
        .size = f->size,
        .piece_size = f->pieces.piece_size,
        .piece_hashes = f->manifest != NULL ? f->manifest->piece_hashes : NULL,
        .held = held,
        .downloading = downloading,
    };
    if (peer_offer(e->peers, f->peer.cid, &info) == PEER_OK)
        f->peer.offered = 1;
    free(held);
}

/* The file transfers: join the swarm for its content and offer what it
 * holds. */
static void peers_start_file(agent_engine *e, agent_file *f)
{
    if (f->peer.swarm != NULL || f->transferred || !eligible(e, f) || f->fd < 0)
        return;
    offer(e, f, 1);
    f->peer.engine = e;
    peer_swarm_ops ops = {.claim = on_claim, .piece = on_piece, .lost = on_lost, .ctx = f};
    if (peer_swarm_open(e->peers, f->peer.cid, f->size, f->pieces.piece_size, &ops,
                        &f->peer.swarm) != PEER_OK)
        f->peer.swarm = NULL;
}

/* The file's transfer stops: leave the swarm (its pieces stay offered). */
static void peers_stop_file(agent_engine *e, agent_file *f)
{
    (void)e;
    if (f->peer.swarm != NULL) {
        peer_swarm_close(f->peer.swarm); /* gives back its claims */
        f->peer.swarm = NULL;
    }
}

void peers_forget_file(agent_engine *e, agent_file *f)
{
    peers_stop_file(e, f);
    /* Nothing of the writers may point at it any more (it may be freed). */
    if (e->peers != NULL) {
        work_settle(&e->writers, f);
        mailbox_drop(&e->writers.finished, f);
    }
    if (f->peer.offered && e->peers != NULL)
        peer_withdraw(e->peers, f->peer.cid);
    f->peer.offered = 0;
}

void peers_piece_done(agent_engine *e, agent_file *f, uint64_t piece)
{
    if (f->peer.offered && f->manifest != NULL && e->peers != NULL)
        peer_offer_piece(e->peers, f->peer.cid, piece);
}

void peers_file_transferred(agent_engine *e, agent_file *f)
{
    peers_stop_file(e, f);
    if (e->peers == NULL || !eligible(e, f))
        return;
    if (f->manifest != NULL) {
        offer(e, f, 0);
    } else if (f->peer.offered) {
        peer_withdraw(e->peers, f->peer.cid); /* the cache offers it once copied */
        f->peer.offered = 0;
    }
}

void peers_blame(agent_engine *e, agent_file *f)
{
    (void)e;
    if (f->peer.swarm != NULL)
        peer_swarm_blame(f->peer.swarm);
}

/* ------------------------------------------------------------------ */
/* Peers as a source, beside the others (source.h)                    */

static int swarm_active(const agent_file *f)
{
    return f->peer.swarm != NULL;
}

/* The others wait for the swarm's first answers. */
static int swarm_starting(const agent_file *f)
{
    return f->peer.swarm != NULL && !peer_swarm_ready(f->peer.swarm);
}

/* A missing piece the others should leave to peers. */
static int swarm_keeps(const agent_file *f, uint64_t piece)
{
    if (f->peer.swarm == NULL)
        return 0;
    /* Without a manifest nobody can serve pieces before the whole file
     * is checked: splitting the origin's work would only wait for
     * members that show no progress. Only what peers hold is left to them. */
    if (f->manifest == NULL)
        return peer_swarm_holders(f->peer.swarm, piece) > 0;
    return !peer_swarm_origin_may(f->peer.swarm, piece);
}

/* This agent's share of the others' work starts there. */
static uint64_t swarm_share_start(const agent_file *f)
{
    return f->peer.swarm != NULL && f->manifest != NULL ? peer_swarm_share_start(f->peer.swarm) : 0;
}

/* Some peer holds a piece the file still misses. */
static int swarm_can_finish(const agent_file *f)
{
    if (f->peer.swarm == NULL)
        return 0;
    for (uint64_t p = 0; p < f->pieces.count; p++)
        if (peer_swarm_holders(f->peer.swarm, p) > 0 &&
            pieces_state(&f->pieces, p) <= PIECE_CLAIMED) /* (asked of a peer: not here yet) */
            return 1;
    return 0;
}

const piece_source peer_source = {
    .name = "peers",
    .id = SOURCE_PEERS,
    .fetch = peers_start_file,
    .stop = peers_stop_file,
    .drain = peers_drain_file,
    .active = swarm_active,
    .holds_back = swarm_starting,
    .keeps = swarm_keeps,
    .share_start = swarm_share_start,
    .can_finish = swarm_can_finish,
};

void engine_stats(agent_engine *e, dopa_agent_stats *out)
{
    memset(out, 0, sizeof *out);
    out->jobs = e->n_jobs;
    out->from_origin = e->got_origin;
    out->from_peers = e->got_peers;
    out->from_cache = e->got_cache;
    out->origin_failures = e->origin_failures;
    out->origin_peak = e->origin_peak;
    if (e->peers != NULL) {
        peer_stats ps;
        peer_node_stats(e->peers, &ps);
        out->uploaded = ps.uploaded;
        out->peers = ps.peers;
        out->banned = ps.banned;
        out->bans = ps.bans;
        out->bad_pieces = ps.bad_pieces;
        out->timeouts = ps.timeouts;
        out->refused = ps.refused;
        out->control_sent = ps.control_sent;
        out->control_received = ps.control_received;
        snprintf(out->peer_url, sizeof out->peer_url, "%s", peer_node_listen_url(e->peers));
    }
    cache_stats(e, &out->cache_entries, &out->cache_bytes, &out->cache_limit);
}

/* Bytes of each job's content its offers have sent since the last look. */
static void count_uploads(agent_engine *e)
{
    for (size_t i = 0; i < e->n_jobs; i++) {
        agent_job *j = e->jobs[i];
        for (size_t k = 0; k < j->n_files; k++) {
            agent_file *f = j->files[k];
            if (!f->peer.offered)
                continue;
            uint64_t up = peer_offer_uploaded(e->peers, f->peer.cid);
            if (up > f->peer.upload_seen) {
                j->uploaded += up - f->peer.upload_seen;
                f->peer.upload_seen = up;
            }
        }
    }
}

/* Tells the swarm which pieces are on their way to this agent: those the
 * other sources fetch now (the origin's running request, the piece it goes
 * on filling), and those written but not yet durable. Members would
 * otherwise see them neither held nor fetched, and ask the origin for them
 * as well. */
static void announce_coming(agent_engine *e, agent_file *f)
{
    uint64_t small[256], *list = small;
    uint64_t runs[4][2];
    size_t n_runs = sources_fetching(e, f, SOURCE_PEERS, runs, 4), run = 0;
    for (size_t r = 0; r < n_runs; r++)
        run += (size_t)(runs[r][1] - runs[r][0] + 1);
    size_t cap = run + f->pieces.n_written + f->pieces.n_syncing, n = 0;
    if (cap > sizeof small / sizeof small[0] && (list = malloc(cap * sizeof *list)) == NULL)
        return;
    for (size_t r = 0; r < n_runs; r++)
        for (uint64_t p = runs[r][0]; p <= runs[r][1]; p++)
            list[n++] = p;
    if (f->pieces.n_written > 0) /* (pending may be NULL when empty) */
        memcpy(list + n, f->pieces.written, f->pieces.n_written * sizeof *list);
    n += f->pieces.n_written;
    if (f->pieces.n_syncing > 0)
        memcpy(list + n, f->pieces.syncing, f->pieces.n_syncing * sizeof *list);
    n += f->pieces.n_syncing;
    peer_offer_coming(e->peers, f->peer.cid, list, n);
    if (list != small)
        free(list);
}

int64_t peers_step(agent_engine *e)
{
    if (e->peers == NULL)
        return -1;
    for (size_t i = 0; i < e->n_jobs; i++)
        for (size_t k = 0; k < e->jobs[i]->n_files; k++) {
            agent_file *f = e->jobs[i]->files[k];
            if (f->peer.swarm != NULL && f->peer.offered && f->manifest != NULL)
                announce_coming(e, f);
        }
    int64_t wake = peer_node_step(e->peers);
    work_reap(&e->writers);
    count_uploads(e);
    for (size_t i = 0; i < e->n_jobs; i++) {
        agent_job *j = e->jobs[i];
        for (size_t k = 0; k < j->n_files; k++) {
            agent_file *f = j->files[k];
            if (f->peer.write_err == 0)
                continue;
            int err = f->peer.write_err;
            f->peer.write_err = 0;
            char msg[512];
            snprintf(msg, sizeof msg, "writing %s: %s", f->tmp_path, strerror(err));
            engine_fail_job(e, j, err == ENOSPC || err == EIO || err == EDQUOT,
                            DOPA_CONTEXT_LOCAL_FILE, err, (int)f->index, 0, msg);
            break;
        }
    }
    return wake;
}
