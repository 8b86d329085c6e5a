/*
 * Serving (peer/PROTOCOL.md, Serving): the catalog of the content the agent
 * offers, and the server's workers that answer HAVE_REQ and PIECE_REQ from
 * it on nng's threads, the upload rate shared between the connections
 * asking. The connections themselves are conns.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>
#include <sodium.h>

#include "node_internal.h"
#include "validate.h"

#define UPLOAD_WAIT_MAX_MS 4000 /* a reply the upload limit would hold longer is BUSY */

/* Content offered to peers. */
struct offer {
    uint8_t cid[PEER_CID_BYTES];
    int fd;
    uint64_t size;
    uint32_t piece_size;
    uint64_t pieces;
    uint8_t *hashes; /* or NULL */
    uint8_t *held;   /* bitfield */
    uint64_t n_held;
    uint8_t *coming; /* bitfield: pieces on their way (peer_offer_coming) */
    uint64_t n_coming;
    int downloading;
    int stable;
    struct stat st; /* when offered: content without piece hashes, or stable, must keep it */
    uint64_t uploaded;
    int refs;
    int gone;
    struct offer *next;
};

/* ------------------------------------------------------------------ */
/* The catalog                                                        */

static offer *find_offer(peer_node *n, const uint8_t cid[PEER_CID_BYTES])
{
    for (offer *o = n->offers; o != NULL; o = o->next)
        if (!o->gone && memcmp(o->cid, cid, PEER_CID_BYTES) == 0)
            return o;
    return NULL;
}

static void offer_free(offer *o)
{
    if (o->fd >= 0)
        close(o->fd);
    free(o->hashes);
    free(o->held);
    free(o->coming);
    free(o);
}

/* Drops a reference (catalog_lock held); frees an offer withdrawn and unused. */
static void offer_unref(peer_node *n, offer *o)
{
    if (--o->refs > 0)
        return;
    for (offer **pp = &n->offers; *pp != NULL; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    offer_free(o);
}

int peer_offer(peer_node *n, const uint8_t cid[PEER_CID_BYTES], const peer_offer_info *info)
{
    if (info->piece_size == 0 || info->fd < 0)
        return PEER_EINVAL;
    uint64_t pieces = piece_count(info->size, info->piece_size);
    if (pieces > PEER_MAX_PIECES)
        return PEER_EINVAL;
    offer *o = calloc(1, sizeof *o);
    if (o == NULL)
        return PEER_ENOMEM;
    size_t bytes = peer_bits_bytes(pieces);
    o->held = calloc(bytes ? bytes : 1, 1);
    o->coming = calloc(bytes ? bytes : 1, 1);
    o->fd = fcntl(info->fd, F_DUPFD_CLOEXEC, 3);
    if (info->piece_hashes != NULL) {
        o->hashes = malloc(pieces * VALIDATE_HASH_BYTES + 1);
        if (o->hashes != NULL)
            memcpy(o->hashes, info->piece_hashes, pieces * VALIDATE_HASH_BYTES);
    }
    if (o->held == NULL || o->coming == NULL || o->fd < 0 ||
        (info->piece_hashes != NULL && o->hashes == NULL) || fstat(o->fd, &o->st) != 0) {
        int err = o->fd < 0 ? PEER_EIO : PEER_ENOMEM;
        offer_free(o);
        return err;
    }
    memcpy(o->cid, cid, PEER_CID_BYTES);
    o->size = info->size;
    o->piece_size = info->piece_size;
    o->pieces = pieces;
    o->downloading = info->downloading;
    o->stable = info->stable;
    for (uint64_t i = 0; i < pieces; i++)
        if (info->held == NULL || peer_bit_get(info->held, i)) {
            peer_bit_set(o->held, i);
            o->n_held++;
        }
    o->refs = 1;
    pthread_mutex_lock(&n->catalog_lock);
    offer *old = find_offer(n, cid);
    if (old != NULL) {
        o->uploaded = old->uploaded;
        if (o->downloading && old->pieces == o->pieces) /* still on their way */
            for (uint64_t i = 0; i < pieces; i++)
                if (peer_bit_get(old->coming, i) && !peer_bit_get(o->held, i)) {
                    peer_bit_set(o->coming, i);
                    o->n_coming++;
                }
        old->gone = 1;
        offer_unref(n, old);
    }
    o->next = n->offers;
    n->offers = o;
    pthread_mutex_unlock(&n->catalog_lock);
    return PEER_OK;
}

void peer_offer_piece(peer_node *n, const uint8_t cid[PEER_CID_BYTES], uint64_t piece)
{
    pthread_mutex_lock(&n->catalog_lock);
    offer *o = find_offer(n, cid);
    if (o != NULL && piece < o->pieces && o->hashes != NULL && !peer_bit_get(o->held, piece)) {
        peer_bit_set(o->held, piece);
        o->n_held++;
        if (peer_bit_get(o->coming, piece)) {
            peer_bit_clear(o->coming, piece);
            o->n_coming--;
        }
    }
    pthread_mutex_unlock(&n->catalog_lock);
}

int peer_offer_coming(peer_node *n, const uint8_t cid[PEER_CID_BYTES], const uint64_t *pieces,
                      size_t count)
{
    int err = PEER_EINVAL; /* not offered */
    pthread_mutex_lock(&n->catalog_lock);
    offer *o = find_offer(n, cid);
    if (o != NULL) {
        err = PEER_OK;
        memset(o->coming, 0, peer_bits_bytes(o->pieces));
        o->n_coming = 0;
        for (size_t i = 0; i < count; i++) {
            uint64_t p = pieces[i];
            if (p >= o->pieces) {
                err = PEER_EINVAL;
                continue;
            }
            if (peer_bit_get(o->held, p) || peer_bit_get(o->coming, p))
                continue;
            peer_bit_set(o->coming, p);
            o->n_coming++;
        }
    }
    pthread_mutex_unlock(&n->catalog_lock);
    return err;
}

void peer_withdraw(peer_node *n, const uint8_t cid[PEER_CID_BYTES])
{
    pthread_mutex_lock(&n->catalog_lock);
    offer *o = find_offer(n, cid);
    if (o != NULL) {
        o->gone = 1;
        offer_unref(n, o);
    }
    pthread_mutex_unlock(&n->catalog_lock);
}

uint64_t peer_offer_uploaded(peer_node *n, const uint8_t cid[PEER_CID_BYTES])
{
    pthread_mutex_lock(&n->catalog_lock);
    offer *o = find_offer(n, cid);
    uint64_t v = o != NULL ? o->uploaded : 0;
    pthread_mutex_unlock(&n->catalog_lock);
    return v;
}

void node_serve_free_catalog(peer_node *n)
{
    while (n->offers != NULL) {
        offer *o = n->offers;
        n->offers = o->next;
        offer_free(o);
    }
}

/* ------------------------------------------------------------------ */
/* The server: nng threads                                            */

static void worker_receive(worker *w)
{
    w->phase = W_RECEIVING;
    nng_ctx_recv(w->ctx, w->aio);
}

static void worker_send(worker *w)
{
    w->phase = W_SENDING;
    nng_aio_set_msg(w->aio, w->reply);
    w->reply = NULL;
    nng_aio_set_timeout(w->aio, 30000);
    nng_ctx_send(w->ctx, w->aio);
}

/* The slot of a connection with requests in service, else a free one,
 * else -1 (catalog_lock held). */
static int pipe_slot(peer_node *n, uint32_t pipe)
{
    int free_slot = -1;
    for (int i = 0; i < SERVER_WORKERS; i++) {
        if (n->pipes[i].busy > 0 && n->pipes[i].pipe == pipe)
            return i;
        if (n->pipes[i].busy == 0 && free_slot < 0)
            free_slot = i;
    }
    return free_slot;
}

/* Connections with piece requests in service (catalog_lock held). */
static unsigned pipes_active(const peer_node *n)
{
    unsigned k = 0;
    for (int i = 0; i < SERVER_WORKERS; i++)
        k += n->pipes[i].busy > 0;
    return k;
}

/* A worker is done with a piece request (catalog_lock held). */
static void piece_done(peer_node *n, uint32_t pipe)
{
    if (n->piece_workers > 0)
        n->piece_workers--;
    int i = pipe_slot(n, pipe);
    if (i >= 0 && n->pipes[i].busy > 0 && n->pipes[i].pipe == pipe)
        n->pipes[i].busy--;
}

/* Builds the reply to a PIECE_REQ; returns the ms to wait before sending
 * it (the upload limit), and sets *took when it took a slot of the pipe. */
static int64_t answer_piece(peer_node *n, const peer_msg *req, uint32_t pipe, nng_msg **out,
                            int *took)
{
    peer_msg rep;
    node_head_init(n, &rep, PEER_MSG_PIECE_REP, req->head.request_id);
    memcpy(rep.cid, req->cid, PEER_CID_BYTES);
    rep.piece = req->piece;
    rep.piece_status = PEER_PIECE_NOT_HELD;
    *took = 0;
    pthread_mutex_lock(&n->catalog_lock);
    offer *o = find_offer(n, req->cid);
    int held = o != NULL && req->piece < o->pieces && peer_bit_get(o->held, req->piece) &&
               (o->hashes != NULL || o->n_held == o->pieces);
    uint32_t len = held ? piece_len(o->size, o->piece_size, req->piece) : 0;
    int64_t wait = 0;
    if (held) {
        /* BUSY, rather than a reply that would come too late: when every
         * worker but those kept for HAVE requests holds a piece, when the
         * connection has its share of them or max_queued requests in
         * service, or when its share of the upload budget would make it
         * wait too long. The budget is shared as fair queueing would: each
         * connection asking gets rate / (connections asking) of it, so one
         * that asks for everything leaves the others theirs. A connection
         * gets at least one piece at a time. */
        int slot = pipe_slot(n, pipe);
        unsigned busy = slot >= 0 ? n->pipes[slot].busy : 0;
        unsigned active = pipes_active(n) + (busy == 0);
        unsigned max = n->cfg.max_queued ? n->cfg.max_queued : 8;
        unsigned share = (SERVER_WORKERS - 2) / active;
        double rate = (double)n->cfg.upload_rate / active;
        int64_t now = mono_ms();
        int refuse = slot < 0 || n->piece_workers >= SERVER_WORKERS - 2 || busy >= max ||
                     (busy > 0 && busy >= share);
        if (!refuse && rate > 0) {
            if (busy == 0) {
                n->pipes[slot].tokens = 0; /* a connection starts with no credit */
            } else {
                n->pipes[slot].tokens += rate * (double)(now - n->pipes[slot].tokens_at) / 1000.0;
                if (n->pipes[slot].tokens > rate)
                    n->pipes[slot].tokens = rate;
            }
            n->pipes[slot].tokens_at = now;
            refuse = busy > 0 && n->pipes[slot].tokens - len < -rate * UPLOAD_WAIT_MAX_MS / 1000.0;
        }
        if (refuse) {
            held = 0;
            rep.piece_status = PEER_PIECE_BUSY;
        } else {
            n->pipes[slot].pipe = pipe;
            n->pipes[slot].busy++;
            if (rate > 0) {
                n->pipes[slot].tokens -= len;
                if (n->pipes[slot].tokens < 0)
                    wait = (int64_t)(-n->pipes[slot].tokens * 1000.0 / rate) + 1;
            }
            n->piece_workers++;
            *took = 1;
            o->refs++;
        }
    }
    pthread_mutex_unlock(&n->catalog_lock);
    if (!held) {
        if (node_seal_msg(n, &rep, out) != PEER_OK)
            *out = NULL;
        return 0;
    }
    /* The piece is read straight into the reply, where sealing leaves it. */
    peer_msg full = rep;
    full.piece_status = PEER_PIECE_OK;
    full.data_len = len;
    size_t size = peer_wire_sealed_size(&full);
    nng_msg *msg = NULL;
    uint8_t *data =
        nng_msg_alloc(&msg, size) == 0 ? (uint8_t *)nng_msg_body(msg) + PEER_PREFIX_BYTES : NULL;
    int ok = data != NULL &&
             validate_pread_full(o->fd, data, len, req->piece * o->piece_size) == (ssize_t)len;
    if (ok && o->hashes != NULL && !o->stable) {
        uint8_t h[VALIDATE_HASH_BYTES];
        validate_blake2b(data, len, h);
        ok = sodium_memcmp(h, o->hashes + req->piece * VALIDATE_HASH_BYTES, sizeof h) == 0;
    } else if (ok) {
        struct stat st;
        ok = fstat(o->fd, &st) == 0 && st.st_ino == o->st.st_ino && st.st_dev == o->st.st_dev &&
             st.st_size == o->st.st_size && st.st_mtim.tv_sec == o->st.st_mtim.tv_sec &&
             st.st_mtim.tv_nsec == o->st.st_mtim.tv_nsec;
    }
    pthread_mutex_lock(&n->catalog_lock);
    if (!ok && (o->hashes == NULL || o->stable) && data != NULL) {
        /* The file changed since it was checked: none of it is served. */
        memset(o->held, 0, peer_bits_bytes(o->pieces));
        o->n_held = 0;
    }
    if (!ok) {
        int slot = pipe_slot(n, pipe);
        if (slot >= 0 && n->pipes[slot].pipe == pipe)
            n->pipes[slot].tokens += len; /* nothing is sent */
        wait = 0;
    }
    if (ok) {
        o->uploaded += len;
    } else if (o->hashes != NULL && data != NULL) {
        /* The bytes on disk changed since they were verified: never again. */
        if (peer_bit_get(o->held, req->piece)) {
            peer_bit_clear(o->held, req->piece);
            o->n_held--;
        }
    }
    offer_unref(n, o);
    pthread_mutex_unlock(&n->catalog_lock);
    *out = NULL;
    size_t sealed = 0;
    if (ok) {
        full.data = data;
        if (peer_wire_seal(&n->key, &full, nng_msg_body(msg), size, &sealed) == PEER_OK) {
            nng_msg_chop(msg, size - sealed);
            *out = msg;
            msg = NULL;
            atomic_fetch_add(&n->uploaded, len);
        }
    } else if (node_seal_msg(n, &rep, out) != PEER_OK) {
        *out = NULL;
    }
    if (msg != NULL)
        nng_msg_free(msg);
    return wait;
}

/* A peer asked about a content: it fetches it too (catalog_lock held). */
static void note_interest(peer_node *n, const peer_msg *req)
{
    size_t slot = 0;
    for (size_t i = 0; i < INTEREST_SLOTS; i++) {
        if (memcmp(n->interest[i].cid, req->cid, PEER_CID_BYTES) == 0 &&
            memcmp(n->interest[i].sender, req->head.sender, PEER_ID_BYTES) == 0) {
            slot = i;
            break;
        }
        if (n->interest[i].at < n->interest[slot].at)
            slot = i; /* the oldest goes */
    }
    memcpy(n->interest[slot].cid, req->cid, PEER_CID_BYTES);
    memcpy(n->interest[slot].sender, req->head.sender, PEER_ID_BYTES);
    n->interest[slot].at = mono_ms();
}

static nng_msg *answer_have(peer_node *n, const peer_msg *req)
{
    peer_msg rep;
    node_head_init(n, &rep, PEER_MSG_HAVE_REP, req->head.request_id);
    memcpy(rep.cid, req->cid, PEER_CID_BYTES);
    rep.have_status = PEER_HAVE_NONE;
    rep.role = n->cfg.cache_host ? PEER_ROLE_CACHE_HOST : 0;
    uint8_t *bits = NULL, *coming = NULL;
    pthread_mutex_lock(&n->catalog_lock);
    note_interest(n, req);
    offer *o = find_offer(n, req->cid);
    if (o != NULL) {
        size_t bytes = peer_bits_bytes(o->pieces);
        if (o->downloading)
            rep.role |= PEER_ROLE_DOWNLOADING;
        if (o->n_held == o->pieces && o->pieces > 0) {
            rep.have_status = PEER_HAVE_ALL;
            rep.piece_count = (uint32_t)o->pieces;
        } else if (o->n_held > 0 && o->hashes != NULL && (bits = malloc(bytes)) != NULL) {
            memcpy(bits, o->held, bytes);
            rep.have_status = PEER_HAVE_SOME;
            rep.piece_count = (uint32_t)o->pieces;
            rep.bitfield = bits;
        }
        /* What is on its way: the others leave it to this agent. */
        if (rep.have_status != PEER_HAVE_ALL && o->n_coming > 0 &&
            (coming = malloc(bytes)) != NULL) {
            memcpy(coming, o->coming, bytes);
            rep.role |= PEER_ROLE_COMING;
            rep.piece_count = (uint32_t)o->pieces;
            rep.coming = coming;
        }
    }
    pthread_mutex_unlock(&n->catalog_lock);
    nng_msg *msg = NULL;
    if (node_seal_msg(n, &rep, &msg) != PEER_OK)
        msg = NULL;
    free(bits);
    free(coming);
    return msg;
}

static void on_worker(void *arg)
{
    worker *w = arg;
    peer_node *n = w->n;
    int rv = nng_aio_result(w->aio);
    if (w->phase == W_SENDING || w->phase == W_WAITING) {
        if (w->phase == W_WAITING && rv == 0 && w->reply != NULL) {
            worker_send(w);
            return;
        }
        if (w->phase == W_SENDING && rv != 0)
            nng_msg_free(nng_aio_get_msg(w->aio));
        if (w->reply != NULL) {
            nng_msg_free(w->reply);
            w->reply = NULL;
        }
        pthread_mutex_lock(&n->catalog_lock);
        if (w->pipe != 0)
            piece_done(n, w->pipe);
        int closing = n->closing;
        pthread_mutex_unlock(&n->catalog_lock);
        w->pipe = 0;
        if (!closing)
            worker_receive(w);
        return;
    }
    if (rv != 0) {
        if (rv != NNG_ECLOSED && rv != NNG_ECANCELED)
            worker_receive(w);
        return;
    }
    nng_msg *msg = nng_aio_get_msg(w->aio);
    uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
    peer_msg req;
    uint8_t *body = nng_msg_body(msg);
    size_t len = nng_msg_len(msg);
    int err = peer_wire_open(&n->key, body, len, &req);
    if (err == PEER_OK && req.head.type != PEER_MSG_HAVE_REQ && req.head.type != PEER_MSG_PIECE_REQ)
        err = PEER_ETYPE;
    if (err == PEER_OK) {
        /* Filter shares are per address: a member cannot multiply those
         * as it can sender ids or connections (PROTOCOL.md). */
        uint8_t source[PEER_SOURCE_BYTES] = {0};
        nng_sockaddr sa;
        if (nng_pipe_get_addr(nng_msg_get_pipe(msg), NNG_OPT_REMADDR, &sa) == 0) {
            if (sa.s_family == NNG_AF_INET)
                peer_replay_source_ipv4((const uint8_t *)&sa.s_in.sa_addr, source);
            else if (sa.s_family == NNG_AF_INET6)
                memcpy(source, sa.s_in6.sa_addr, sizeof source);
        }
        pthread_mutex_lock(&n->catalog_lock);
        /* A connection on its way out gets nothing more. */
        conn *c = node_conn_serving(n, pipe);
        err = c == NULL ? PEER_ENNG
                        : peer_replay_check(n->replay, source, peer_wire_nonce(body),
                                            req.head.time_ms, wall_ms());
        if (err == PEER_OK) {
            c->good = 1;
            c->last = mono_ms();
        }
        pthread_mutex_unlock(&n->catalog_lock);
    }
    if (err != PEER_OK) {
        /* Not ours, altered, stale or replayed: no answer at all. */
        atomic_fetch_add(&n->refused, 1);
        nng_msg_free(msg);
        worker_receive(w);
        return;
    }
    nng_msg *reply = NULL;
    int64_t wait = 0;
    int took = 0;
    if (req.head.type == PEER_MSG_HAVE_REQ) {
        atomic_fetch_add(&n->control_received, 1);
        reply = answer_have(n, &req);
        if (reply != NULL)
            atomic_fetch_add(&n->control_sent, 1);
    } else
        wait = answer_piece(n, &req, pipe, &reply, &took);
    nng_msg_free(msg);
    if (reply == NULL) {
        if (took) {
            pthread_mutex_lock(&n->catalog_lock);
            piece_done(n, pipe);
            pthread_mutex_unlock(&n->catalog_lock);
        }
        worker_receive(w);
        return;
    }
    w->pipe = took ? pipe : 0; /* nng never uses 0 for a pipe */
    w->reply = reply;
    if (wait > 0) {
        w->phase = W_WAITING;
        nng_aio_set_timeout(w->aio, NNG_DURATION_INFINITE);
        nng_sleep_aio((nng_duration)wait, w->aio);
        return;
    }
    worker_send(w);
}

/* ------------------------------------------------------------------ */
/* Opening                                                            */

int node_serve_listen(peer_node *n, const char *url, validate_error *why)
{
    int rv = nng_listener_create(&n->listener, n->server, url);
    if (rv == 0 &&
        ((n->tls_server != NULL &&
          (rv = nng_listener_set_ptr(n->listener, NNG_OPT_TLS_CONFIG, n->tls_server)) != 0) ||
         (rv = nng_listener_start(n->listener, 0)) != 0))
        nng_listener_close(n->listener);
    if (rv != 0) {
        validate_error_set(why, PEER_ENNG, "listening on %s: %s", url, nng_strerror(rv));
        return PEER_ENNG;
    }
    return PEER_OK;
}

int node_serve_open(peer_node *n, validate_error *why)
{
    int rv;
    if (is_tls(n->cfg.listen) &&
        node_tls_config(n, NNG_TLS_MODE_SERVER, &n->tls_server, why) != PEER_OK)
        return PEER_EINVAL;
    if ((rv = nng_rep0_open(&n->server)) != 0) {
        validate_error_set(why, PEER_ENNG, "peer server: %s", nng_strerror(rv));
        return PEER_ENNG;
    }
    n->serving = 1; /* from here on, closing closes the socket */
    if ((rv = nng_socket_set_size(n->server, NNG_OPT_RECVMAXSZ, PEER_REQUEST_MAX)) != 0 ||
        (rv = nng_pipe_notify(n->server, NNG_PIPE_EV_ADD_PRE, node_conn_pipe_event, n)) != 0 ||
        (rv = nng_pipe_notify(n->server, NNG_PIPE_EV_REM_POST, node_conn_pipe_event, n)) != 0) {
        validate_error_set(why, PEER_ENNG, "peer server: %s", nng_strerror(rv));
        return PEER_ENNG;
    }
    if (node_serve_listen(n, n->cfg.listen, why) != PEER_OK)
        return PEER_ENNG;
    snprintf(n->listen_url, sizeof n->listen_url, "%s", n->cfg.listen);
    int port = 0;
    if (nng_listener_get_int(n->listener, NNG_OPT_TCP_BOUND_PORT, &port) == 0) {
        char host[64];
        if (node_url_host(n->cfg.listen, host, sizeof host) == 0) {
            const char *scheme = strncmp(n->cfg.listen, "tls+", 4) == 0 ? "tls+tcp" : "tcp";
            snprintf(n->listen_url, sizeof n->listen_url, "%s://%s:%d", scheme, host, port);
        }
    }
    for (int i = 0; i < SERVER_WORKERS; i++) {
        worker *w = &n->workers[i];
        w->n = n;
        if (nng_ctx_open(&w->ctx, n->server) != 0 || nng_aio_alloc(&w->aio, on_worker, w) != 0) {
            validate_error_set(why, PEER_ENOMEM, "cannot set up the peer server");
            return PEER_ENOMEM;
        }
    }
    for (int i = 0; i < SERVER_WORKERS; i++)
        worker_receive(&n->workers[i]);
    return PEER_OK;
}
