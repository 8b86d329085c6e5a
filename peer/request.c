/*
 * The client's requests: a HAVE_REQ or PIECE_REQ sent to a peer on an nng
 * context of its socket, completed on nng's threads and handed to the owner
 * through the `done` list, where the reply is opened and checked against
 * what was asked before its swarm takes it (node_swarm_take_have,
 * node_swarm_take_piece).
 */
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>

#include "node_internal.h"

static void on_request(void *arg)
{
    request *r = arg;
    int rv = nng_aio_result(r->aio);
    if (r->phase == REQ_SENDING && rv == 0) {
        r->phase = REQ_RECEIVING;
        nng_ctx_recv(r->ctx, r->aio);
        return;
    }
    if (r->phase == REQ_SENDING)
        nng_msg_free(nng_aio_get_msg(r->aio));
    else if (rv == 0)
        r->reply = nng_aio_get_msg(r->aio);
    r->result = rv;
    r->phase = REQ_DONE;
    peer_node *n = r->n;
    pthread_mutex_lock(&n->lock);
    r->in_done = 1;
    r->next_done = n->done_head;
    n->done_head = r;
    pthread_mutex_unlock(&n->lock);
    wake(n);
}

request *node_request_send(peer_node *n, peer_entry *p, peer_swarm *s, int type, uint64_t piece,
                           uint32_t timeout_ms)
{
    request *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->n = n;
    r->p = p;
    r->s = s;
    r->type = type;
    r->piece = piece;
    r->id = random64();
    peer_msg m;
    node_head_init(n, &m, type, r->id);
    memcpy(m.cid, s->cid, PEER_CID_BYTES);
    m.piece = piece;
    nng_msg *msg;
    if (node_seal_msg(n, &m, &msg) != PEER_OK) {
        free(r);
        return NULL;
    }
    if (nng_ctx_open(&r->ctx, p->sock) != 0) {
        nng_msg_free(msg);
        free(r);
        return NULL;
    }
    if (nng_aio_alloc(&r->aio, on_request, r) != 0) {
        nng_ctx_close(r->ctx);
        nng_msg_free(msg);
        free(r);
        return NULL;
    }
    r->next = n->requests;
    n->requests = r;
    r->phase = REQ_SENDING;
    nng_aio_set_msg(r->aio, msg);
    nng_aio_set_timeout(r->aio, (nng_duration)timeout_ms);
    nng_ctx_send(r->ctx, r->aio);
    return r;
}

void node_request_free(peer_node *n, request *r)
{
    nng_aio_stop(r->aio);
    pthread_mutex_lock(&n->lock);
    if (r->in_done) {
        for (request **pp = &n->done_head; *pp != NULL; pp = &(*pp)->next_done)
            if (*pp == r) {
                *pp = r->next_done;
                break;
            }
    }
    pthread_mutex_unlock(&n->lock);
    for (request **pp = &n->requests; *pp != NULL; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    if (r->reply != NULL)
        nng_msg_free(r->reply);
    nng_ctx_close(r->ctx);
    nng_aio_free(r->aio);
    free(r);
}

void node_request_finish(peer_node *n, request *r)
{
    peer_msg m;
    int ok = 0;
    if (r->result == 0 && r->reply != NULL) {
        int err = peer_wire_open(&n->key, nng_msg_body(r->reply), nng_msg_len(r->reply), &m);
        int want = r->type == PEER_MSG_HAVE_REQ ? PEER_MSG_HAVE_REP : PEER_MSG_PIECE_REP;
        int64_t now = wall_ms();
        if (err == PEER_OK && (m.head.type != want || m.head.request_id != r->id ||
                               memcmp(m.cid, r->s->cid, PEER_CID_BYTES) != 0 ||
                               (want == PEER_MSG_PIECE_REP && m.piece != r->piece)))
            err = PEER_EMISMATCH;
        if (err == PEER_OK && (m.head.time_ms > now + PEER_TIME_WINDOW_MS ||
                               m.head.time_ms < now - PEER_TIME_WINDOW_MS))
            err = PEER_ESTALE;
        if (err == PEER_OK && memcmp(m.head.sender, n->id, PEER_ID_BYTES) == 0) {
            r->p->self = 1; /* a configured address that is this agent */
            err = PEER_EMISMATCH;
        }
        if (err == PEER_OK) {
            ok = 1;
            memcpy(r->p->id, m.head.sender, PEER_ID_BYTES);
            r->p->has_id = 1;
            r->p->last_seen = mono_ms();
        } else {
            atomic_fetch_add(&n->refused, 1);
        }
    }
    if (r->type == PEER_MSG_HAVE_REQ)
        node_swarm_take_have(r->s, r, ok ? &m : NULL);
    else
        node_swarm_take_piece(n, r->s, r, ok ? &m : NULL);
}
