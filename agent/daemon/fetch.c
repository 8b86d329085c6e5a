/*
 * The origin as a source of pieces (source.h): the file's URL through
 * libcurl (origin.h), one range request at a time.
 *
 * The origin learns the file's size first when nobody knows it (a probe),
 * then asks for runs of missing pieces, claiming them as it starts each
 * request. Bytes are written as they arrive and checked piece by piece
 * against the manifest, if there is one; a piece is WRITTEN once its last
 * byte is. A range of the file that ends inside a piece leaves the piece
 * claimed and partly filled, and the next request goes on with it. Beside
 * other sources it asks for short runs, from where they say its share
 * starts, and only what they leave to it.
 *
 * What can go wrong: a write that fails, a piece that does not match the
 * manifest (both abort the request), the file changing on the server (it
 * starts over as a new version, at most MAX_CHANGES times), or any error
 * of the origin (the job fails, transiently or not, unless other sources
 * can still bring what is missing: then the origin rests a while).
 *
 * Beside other sources, a request that brings no byte for STALL_MS (a
 * connection that does not open, a server that stops sending) ends there
 * and gives its pieces back to them; the origin rests 1 s, then twice as
 * long after each failure in a row, up to 30 s, until bytes come again,
 * and each try in a row waits longer for its first byte (3, 6, 12, then
 * 24 s: an origin slow to answer is still reached when no peer can help).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_internal.h"

#define REQUEST_PIECES        256   /* pieces asked for in one range request */
#define SHARED_REQUEST_PIECES 2     /* the same, beside other sources */
#define MAX_BAD_PIECES        3     /* hash failures from the origin before ERROR */
#define MAX_CHANGES           4     /* the remote file changing, before ERROR */
#define STALL_MS              3000  /* beside other sources: no byte this long ends a request */
#define BACKOFF_MIN_MS        1000  /* the first rest after a failure beside other sources */
#define BACKOFF_MAX_MS        30000 /* the longest */

/* Gives back the origin's claims: every piece of its last request, but
 * the one being filled (the next request goes on with it). */
static void origin_release(agent_file *f)
{
    for (uint64_t p = f->fetch.req_first; p <= f->fetch.req_last && p < f->pieces.count; p++)
        if (f->fetch.fill == 0 || p != f->fetch.fill_piece)
            pieces_unclaim(&f->pieces, p, SOURCE_ORIGIN);
}

/* Beside other sources, the origin rests after a failure, longer after
 * each one in a row. */
static void rest(agent_engine *e, agent_file *f)
{
    int64_t b = f->fetch.backoff_ms;
    b = b == 0 ? BACKOFF_MIN_MS : b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b * 2;
    f->fetch.backoff_ms = b;
    f->fetch.rest_until = engine_mono(e) + b;
}

/* The file stops: its request ends, its handle closes, its claims go. */
static void fetch_stop(agent_engine *e, agent_file *f)
{
    (void)e;
    if (f->fetch.origin != NULL) {
        origin_file_close(f->fetch.origin);
        f->fetch.origin = NULL;
    }
    f->fetch.request = 0;
    f->fetch.probing = 0;
    f->fetch.fill = 0;
    origin_release(f);
}

/* The remote offset of a local offset, and how many bytes from there stay
 * inside the same range. */
static void map_local(const agent_file *f, uint64_t local, uint64_t *remote, uint64_t *room)
{
    if (f->n_ranges == 0) {
        *remote = local;
        *room = f->size - local;
        return;
    }
    uint64_t base = 0;
    for (size_t i = 0; i < f->n_ranges; i++) {
        uint64_t len = f->ranges[i].length;
        if (len == DOPA_LENGTH_TO_EOF)
            len = (uint64_t)f->remote_size - f->ranges[i].offset;
        if (local < base + len) {
            *remote = f->ranges[i].offset + (local - base);
            *room = base + len - local;
            return;
        }
        base += len;
    }
    *remote = 0;
    *room = 0;
}

static void on_info(void *ctx, origin_file *of, const origin_file_info *info)
{
    (void)of;
    agent_file *f = ctx;
    if (info->etag[0] != '\0')
        snprintf(f->etag, sizeof f->etag, "%s", info->etag);
    if (info->last_modified[0] != '\0')
        snprintf(f->last_modified, sizeof f->last_modified, "%s", info->last_modified);
    if (info->size >= 0)
        f->remote_size = info->size;
}

/* Why on_data refused a request, kept in the file for its on_done. */
enum abort_reason { ABORT_NONE, ABORT_WRITE, ABORT_BAD_PIECE };

static int on_data(void *ctx, origin_file *of, uint64_t id, uint64_t offset, const void *data,
                   size_t len)
{
    (void)of;
    agent_file *f = ctx;
    agent_job *j = f->job;
    if (id != f->fetch.request || f->fetch.probing)
        return 0; /* a probe's data is not ours to keep */
    uint64_t local = f->fetch.req_local + (offset - f->fetch.req_remote);
    if (local + len > f->fetch.req_end_local)
        return -1; /* origin promises this never happens */
    int err = engine_write_all(f->fd, data, len, local);
    if (err != 0) {
        f->fetch.abort_reason = ABORT_WRITE;
        f->fetch.abort_errno = err;
        return -1;
    }
    const uint8_t *p = data;
    size_t left = len;
    while (left > 0) {
        uint32_t plen = validate_piece_length(f->size, f->pieces.piece_size, f->fetch.fill_piece);
        size_t take = plen - f->fetch.fill < left ? plen - f->fetch.fill : left;
        if (f->manifest != NULL)
            validate_blake2b_update(&f->fetch.piece_hash, p, take);
        f->fetch.fill += (uint32_t)take;
        p += take;
        left -= take;
        if (f->fetch.fill == plen) {
            if (f->manifest != NULL) {
                uint8_t h[32];
                validate_blake2b_final(&f->fetch.piece_hash, h);
                validate_blake2b_init(&f->fetch.piece_hash);
                if (sodium_memcmp(h, validate_manifest_piece_hash(f->manifest, f->fetch.fill_piece),
                                  32) != 0) {
                    f->fetch.abort_reason = ABORT_BAD_PIECE;
                    return -1;
                }
            }
            pieces_written(&f->pieces, f->fetch.fill_piece, SOURCE_ORIGIN);
            f->fetch.fill_piece++;
            f->fetch.fill = 0;
        }
    }
    engine_received(f->fetch.engine, f, FROM_ORIGIN, len);
    f->fetch.data_at = engine_mono(f->fetch.engine);
    f->fetch.backoff_ms = 0;
    /* Bytes fetched again (after a restart, or the same range over and
     * over from an origin that keeps breaking its responses) are not
     * progress: the no-progress timeout must still end such a job. */
    uint64_t held = pieces_held_bytes(&f->pieces) + f->fetch.fill;
    if (held > f->progress_mark) {
        f->progress_mark = held;
        engine_progress(f->fetch.engine, j);
    } else {
        engine_data_arrived(f->fetch.engine, j);
    }
    return 0;
}

static void on_done(void *ctx, origin_file *of, uint64_t id, const origin_error *err)
{
    (void)of;
    agent_file *f = ctx;
    agent_job *j = f->job;
    agent_engine *e = f->fetch.engine;
    if (id != f->fetch.request)
        return;
    int was_probe = f->fetch.probing;
    f->fetch.request = 0;
    f->fetch.probing = 0;
    if (err != NULL)
        f->fetch.fill = 0; /* a partly filled piece is fetched again */
    origin_release(f);
    int reason = f->fetch.abort_reason;
    f->fetch.abort_reason = ABORT_NONE;
    if (err == NULL) {
        if (was_probe && f->size == DOPA_SIZE_UNKNOWN) {
            uint64_t size;
            if (f->remote_size < 0) {
                engine_fail_job(e, j, 0, DOPA_CONTEXT_REMOTE_FILE, ORIGIN_EBAD_RESPONSE,
                                (int)f->index, 0, "the server does not say how large the file is");
                return;
            }
            if (agent_file_local_size(f, f->remote_size, &size) != DOPA_OK) {
                engine_fail_job(e, j, 0, DOPA_CONTEXT_REMOTE_FILE, ORIGIN_ERANGE, (int)f->index, 0,
                                "the ranges reach past the end of the remote file");
                return;
            }
            int serr = agent_file_set_size(f, size);
            if (serr == DOPA_ELIMIT) {
                engine_fail_job(e, j, 0, DOPA_CONTEXT_REMOTE_FILE, DOPA_ELIMIT, (int)f->index, 0,
                                "the file is larger than dopa can track (2 TiB)");
                return;
            }
            if (serr != DOPA_OK || store_put_file(e->db, f) != DOPA_OK) {
                engine_fail_job(e, j, 1, DOPA_CONTEXT_GENERAL, DOPA_EINTERNAL, (int)f->index, 0,
                                "cannot record the file size");
                return;
            }
            engine_touch(e, j);
        }
        return; /* the pump asks for the next range */
    }
    char msg[DOPA_MESSAGE_MAX + 1];
    if (err->code == ORIGIN_EABORTED && reason == ABORT_WRITE) {
        snprintf(msg, sizeof msg, "writing %s: %s", f->tmp_path, strerror(f->fetch.abort_errno));
        /* A full disk or an I/O error may pass; anything else will not. */
        int transient = f->fetch.abort_errno == ENOSPC || f->fetch.abort_errno == EIO ||
                        f->fetch.abort_errno == EDQUOT;
        engine_fail_job(e, j, transient, DOPA_CONTEXT_LOCAL_FILE, f->fetch.abort_errno,
                        (int)f->index, 0, msg);
        return;
    }
    if (err->code == ORIGIN_EABORTED && reason == ABORT_BAD_PIECE) {
        f->bad_pieces++;
        store_put_file(e->db, f);
        snprintf(msg, sizeof msg, "%s: piece %llu from the origin does not match the manifest",
                 f->url, (unsigned long long)f->fetch.fill_piece);
        engine_fail_job(e, j, f->bad_pieces < MAX_BAD_PIECES, DOPA_CONTEXT_VALIDATION,
                        VALIDATE_EPIECE_HASH, (int)f->index, 0, msg);
        return;
    }
    if (err->code == ORIGIN_ECHANGED) {
        /* The pieces we hold belong to the old version: start this file
         * again, as a new version. */
        agent_file_clear_pieces(f);
        f->etag[0] = f->last_modified[0] = '\0';
        f->remote_size = -1;
        if (f->manifest == NULL &&
            (f->n_ranges == 0 || f->ranges[f->n_ranges - 1].length == DOPA_LENGTH_TO_EOF))
            f->size = DOPA_SIZE_UNKNOWN; /* it follows the new version's size */
        /* Nothing of the old version may stay behind the new one. */
        sources_drain(e, f);
        if (f->fd >= 0 && ftruncate(f->fd, 0) != 0)
            agent_log("warning", "truncating %s: %s", f->tmp_path, strerror(errno));
        engine_reset_file(e, f);
        /* An origin whose file changes at every look (a size that flips,
         * validators that never hold) would be fetched again for ever. */
        if (++f->fetch.changes > MAX_CHANGES) {
            snprintf(msg, sizeof msg, "changed on the server %u times during the download: %.400s",
                     f->fetch.changes, err->message);
            engine_fail_job(e, j, 0, DOPA_CONTEXT_REMOTE_FILE, err->code, (int)f->index,
                            err->http_status, msg);
            return;
        }
        engine_fail_job(e, j, 1, DOPA_CONTEXT_REMOTE_FILE, err->code, (int)f->index,
                        err->http_status, err->message);
        return;
    }
    const piece_source *other = sources_can_finish(e, f, SOURCE_ORIGIN);
    if (other != NULL) {
        /* Peers hold missing pieces: they go on while the origin rests
         * (a while that grows, for an error that may pass; else the retry
         * delay); it fails the job then if no peer holds anything still
         * missing. */
        if (err->is_transient)
            rest(e, f);
        else
            f->fetch.rest_until =
                engine_mono(e) + (int64_t)(j->retry_delay > 0 ? j->retry_delay : 1) * 1000;
        e->origin_failures++;
        agent_log("info", "%s: %s; going on with %s", f->url, err->message, other->name);
        return;
    }
    engine_fail_job_after(e, j, err->is_transient, DOPA_CONTEXT_REMOTE_FILE, err->code,
                          (int)f->index, err->http_status, err->retry_after, err->message);
}

static int open_origin(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    origin_file_options opts = {
        .url = f->url,
        .proxy_mode = j->proxy_usage == DOPA_PROXY_NONE       ? ORIGIN_PROXY_NONE
                      : j->proxy_usage == DOPA_PROXY_OVERRIDE ? ORIGIN_PROXY_EXPLICIT
                                                              : ORIGIN_PROXY_SYSTEM,
        .proxy = j->proxy,
        .proxy_bypass = j->bypass,
        .connections = 1,
        .known_size = f->remote_size,
        .known_etag = f->etag[0] ? f->etag : NULL,
        .known_last_modified = f->last_modified[0] ? f->last_modified : NULL,
    };
    f->fetch.engine = e;
    origin_sink sink = {.on_info = on_info, .on_data = on_data, .on_done = on_done, .ctx = f};
    return origin_file_open(e->origin, &opts, &sink, &f->fetch.origin);
}

/* The first piece the origin should send: beside other sources, from
 * where they say this agent's share starts, only what they leave to the
 * origin; piece_count if none. */
static uint64_t next_origin_piece(const agent_engine *e, const agent_file *f)
{
    if (!sources_active(e, f, SOURCE_ORIGIN))
        return pieces_first_absent(&f->pieces);
    if (sources_hold_back(e, f, SOURCE_ORIGIN) || engine_mono(e) < f->fetch.rest_until)
        return f->pieces.count;
    uint64_t start = sources_share_start(e, f, SOURCE_ORIGIN);
    for (uint64_t k = 0; k < f->pieces.count; k++) {
        uint64_t p = (start + k) % f->pieces.count;
        if (pieces_missing(&f->pieces, p) && !sources_keep(e, f, p, SOURCE_ORIGIN))
            return p;
    }
    return f->pieces.count;
}

/* Asks the origin for the next run of missing pieces. A request stays
 * within one range of the file; when a range ends inside a piece, the next
 * request continues that piece (fill and its hash carry over). */
static void start_request(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    uint64_t first, local;
    if (f->fetch.fill > 0) {
        first = f->fetch.fill_piece;
        local = first * f->pieces.piece_size + f->fetch.fill;
    } else {
        first = next_origin_piece(e, f);
        if (first >= f->pieces.count)
            return;
        local = first * f->pieces.piece_size;
        if (f->manifest != NULL)
            validate_blake2b_init(&f->fetch.piece_hash);
    }
    uint64_t last = first;
    /* Beside other sources, short requests: who fetches what changes as
     * it goes. */
    uint64_t run = sources_active(e, f, SOURCE_ORIGIN) ? SHARED_REQUEST_PIECES : REQUEST_PIECES;
    while (last + 1 < f->pieces.count && last + 1 - first < run &&
           pieces_missing(&f->pieces, last + 1) && !sources_keep(e, f, last + 1, SOURCE_ORIGIN))
        last++;
    uint64_t end = (last + 1) * f->pieces.piece_size;
    if (end > f->size)
        end = f->size;
    uint64_t remote, room;
    map_local(f, local, &remote, &room);
    if (end - local > room)
        end = local + room;
    if (room == 0 || end <= local) {
        engine_fail_job(e, j, 0, DOPA_CONTEXT_GENERAL, DOPA_EINTERNAL, (int)f->index, 0,
                        "internal error mapping a range");
        return;
    }
    uint64_t id;
    if (origin_fetch(f->fetch.origin, remote, end - local, &id) != ORIGIN_OK) {
        engine_fail_job(e, j, 1, DOPA_CONTEXT_GENERAL, DOPA_ENOMEM, (int)f->index, 0,
                        "cannot start a request");
        return;
    }
    f->fetch.request = id;
    f->fetch.started_at = engine_mono(e);
    f->fetch.req_local = local;
    f->fetch.req_remote = remote;
    f->fetch.req_end_local = end;
    f->fetch.fill_piece = first;
    f->fetch.req_first = first;
    f->fetch.req_last = (end - 1) / f->pieces.piece_size;
    /* Its pieces are the origin's until they are written or it ends (the
     * first is its already when it goes on filling one). */
    for (uint64_t p = first; p <= f->fetch.req_last; p++)
        pieces_claim(&f->pieces, p, SOURCE_ORIGIN);
}

/* The file's URL opened, its size known and agreeing with the manifest. */
static int fetch_prepare(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    if (strncmp(f->url, "file://", 7) == 0) {
        /* A FIFO or a device would block the engine inside libcurl. */
        struct stat st;
        if (stat(f->url + 7, &st) != 0 || !S_ISREG(st.st_mode)) {
            engine_fail_job(e, j, 0, DOPA_CONTEXT_REMOTE_FILE, ORIGIN_ENOT_FOUND, (int)f->index, 0,
                            "the file:// source is missing or not a regular file");
            return SOURCE_FAILED;
        }
    }
    if (f->fetch.origin == NULL && open_origin(e, f) != ORIGIN_OK) {
        engine_fail_job(e, j, 1, DOPA_CONTEXT_REMOTE_FILE, ORIGIN_EINVAL, (int)f->index, 0,
                        "cannot use the remote URL");
        return SOURCE_FAILED;
    }
    if (f->size == DOPA_SIZE_UNKNOWN) {
        uint64_t id;
        if (origin_probe(f->fetch.origin, &id) == ORIGIN_OK) {
            f->fetch.request = id;
            f->fetch.probing = 1;
        }
        return SOURCE_BUSY;
    }
    if (f->manifest != NULL && f->remote_size >= 0 &&
        (uint64_t)f->remote_size != f->manifest->file_size) {
        char msg[256];
        snprintf(msg, sizeof msg, "the origin has %lld bytes, the manifest says %llu",
                 (long long)f->remote_size, (unsigned long long)f->manifest->file_size);
        engine_fail_job(e, j, 0, DOPA_CONTEXT_VALIDATION, VALIDATE_EFILE_SIZE, (int)f->index, 0,
                        msg);
        return SOURCE_FAILED;
    }
    return SOURCE_READY;
}

static void fetch_more(agent_engine *e, agent_file *f)
{
    if (f->fetch.fill > 0 || next_origin_piece(e, f) < f->pieces.count)
        start_request(e, f);
}

/* Beside other sources, a request without a byte for STALL_MS ends: its
 * pieces go back to them, and the origin rests. */
static void fetch_watch(agent_engine *e, agent_file *f)
{
    if (f->fetch.request == 0 || f->fetch.probing || !sources_active(e, f, SOURCE_ORIGIN))
        return;
    int64_t now = engine_mono(e);
    int connected = f->fetch.data_at >= f->fetch.started_at;
    int64_t limit = STALL_MS;
    for (int64_t b = f->fetch.backoff_ms; b > BACKOFF_MIN_MS && limit < 8 * STALL_MS; b /= 2)
        limit *= 2;
    if (now - (connected ? f->fetch.data_at : f->fetch.started_at) < limit)
        return;
    origin_cancel(f->fetch.origin, f->fetch.request);
    f->fetch.request = 0;
    f->fetch.fill = 0; /* a partly filled piece is fetched again, by whoever can */
    origin_release(f);
    e->origin_failures++;
    rest(e, f);
    agent_log("info", "%s: %s for %lld ms; its pieces go back to the peers, the origin rests %lld ms",
              f->url, connected ? "no bytes from the origin" : "no answer from the origin",
              (long long)limit, (long long)f->fetch.backoff_ms);
}

static int fetch_busy(const agent_file *f)
{
    return f->fetch.request != 0;
}

/* The pieces of the running request, or the one it goes on filling. */
static int fetch_run(const agent_file *f, uint64_t *first, uint64_t *last)
{
    if (f->fetch.request != 0 && !f->fetch.probing && f->fetch.req_last >= f->fetch.req_first) {
        *first = f->fetch.req_first;
        *last = f->fetch.req_last;
        return 1;
    }
    if (f->fetch.fill > 0) {
        *first = *last = f->fetch.fill_piece;
        return 1;
    }
    return 0;
}

const piece_source origin_source = {
    .name = "origin",
    .id = SOURCE_ORIGIN,
    .prepare = fetch_prepare,
    .fetch = fetch_more,
    .watch = fetch_watch,
    .busy = fetch_busy,
    .idle = fetch_stop,
    .stop = fetch_stop,
    .fetching = fetch_run,
};
