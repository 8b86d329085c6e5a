/*
 * The peers known (owner thread): configured ones, cache hosts and those
 * beacons found; each with its own REQ socket and a dialer, whose pace
 * follows how the peer treats our connections; bans by address; and
 * forgetting discovered peers that have gone quiet. A discovered peer is
 * dialled only while a swarm has it among its neighbours (swarm.c), and
 * its connection closes UNWANTED_MS after the last one let it go, so that
 * an agent's connections do not grow with the size of its LAN.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

#include "node_internal.h"

#define SHORT_PIPE_MS      1000  /* a connection of ours the peer closes this soon: refused */
#define REFUSED_BACKOFF_MS 30000 /* the longest wait before dialling a peer that refuses */
#define REDIAL_AFTER_MS    3000  /* a peer without a connection this long gets a new dialer */
#define UNWANTED_MS        30000 /* a discovered peer no swarm wants this long is not dialled */

int node_peers_banned(peer_node *n, const char *host, int64_t now)
{
    int k = 0;
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        k += p->banned_until > now && strcmp(p->host, host) == 0;
    return k >= 2;
}

/* Dial notes. A peer whose server is full (or refuses us) closes each
 * connection we make as soon as it comes; nng dials again 100 ms later
 * each time (a connection that came up resets its back-off), for ever.
 * The notes tell the owner, which stretches the dialer's wait from 250 ms,
 * doubling at each refusal up to REFUSED_BACKOFF_MS, until a connection
 * lasts again (nng waits a random time below it). */
static void dial_note_take(peer_node *n, peer_entry *p)
{
    pthread_mutex_lock(&n->lock);
    p->dial_slot = MAX_PEERS;
    for (unsigned i = 0; i < MAX_PEERS; i++)
        if (n->notes[i].sock == 0) {
            n->notes[i] =
                (dial_note){.sock = (uint32_t)nng_socket_id(p->sock), .pipeless_since = mono_ms()};
            p->dial_slot = i;
            break;
        }
    pthread_mutex_unlock(&n->lock);
}

static void dial_note_free(peer_node *n, peer_entry *p)
{
    pthread_mutex_lock(&n->lock);
    if (p->dial_slot < MAX_PEERS)
        n->notes[p->dial_slot].sock = 0;
    pthread_mutex_unlock(&n->lock);
    p->dial_slot = MAX_PEERS;
}

/* nng's threads: a connection of ours came or went (notes only). */
static void on_dial_pipe(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
    peer_node *n = arg;
    uint32_t sock = (uint32_t)nng_socket_id(nng_pipe_socket(pipe));
    int64_t now = mono_ms();
    pthread_mutex_lock(&n->lock);
    for (unsigned i = 0; i < MAX_PEERS; i++) {
        dial_note *d = &n->notes[i];
        if (d->sock != sock)
            continue;
        if (ev == NNG_PIPE_EV_ADD_POST) {
            d->added = now;
            d->pipeless_since = 0;
        } else if (d->added != 0) {
            d->pipeless_since = now;
            if (now - d->added < SHORT_PIPE_MS) {
                d->cut_short++;
            } else {
                d->cut_short = 0;
                d->lasted++;
            }
            d->added = 0;
        }
        break;
    }
    pthread_mutex_unlock(&n->lock);
}

/* Starts the peer's dialer, with its back-off. */
static int dial(peer_node *n, peer_entry *p)
{
    nng_duration backoff = (nng_duration)p->backoff_ms;
    if (nng_dialer_create(&p->dialer, p->sock, p->url) != 0)
        return -1;
    if ((is_tls(p->url) && nng_dialer_set_ptr(p->dialer, NNG_OPT_TLS_CONFIG, n->tls_client) != 0) ||
        (backoff > 0 && (nng_dialer_set_ms(p->dialer, NNG_OPT_RECONNMAXT, backoff) != 0 ||
                         nng_dialer_set_ms(p->dialer, NNG_OPT_RECONNMINT, backoff) != 0)) ||
        nng_dialer_start(p->dialer, NNG_FLAG_NONBLOCK) != 0) {
        nng_dialer_close(p->dialer);
        return -1;
    }
    return 0;
}

/* The owner: the dialer's wait follows what the notes say, and a dialer
 * that gave up is replaced. nng 1.5.2's dialer never dials again when the
 * server closes a connection before the dialer has taken it as its own (a
 * full server does): a peer without a connection for REDIAL_AFTER_MS past
 * its back-off gets a new dialer, at most once in that time. */
static void pace_dialer(peer_node *n, peer_entry *p, int64_t now)
{
    if (p->dial_slot >= MAX_PEERS || !p->dialing)
        return;
    pthread_mutex_lock(&n->lock);
    dial_note *d = &n->notes[p->dial_slot];
    unsigned cut = d->cut_short, lasted = d->lasted;
    int64_t pipeless = d->pipeless_since;
    d->lasted = 0;
    pthread_mutex_unlock(&n->lock);
    int64_t stuck = REDIAL_AFTER_MS + p->backoff_ms;
    if (pipeless != 0 && now - pipeless > stuck && now >= p->next_redial) {
        p->next_redial = now + stuck;
        nng_dialer_close(p->dialer);
        if (dial(n, p) != 0)
            p->next_redial = now + 1000; /* tried again soon */
    }
    int64_t want = p->backoff_ms;
    /* Refused again: doubled, once for each wait (refusals of dials made
     * before the last change count once). */
    if (cut > 0 && now - p->backoff_at >= p->backoff_ms / 2)
        want = p->backoff_ms == 0 ? 250 : p->backoff_ms * 2;
    else if (lasted > 0 && cut == 0)
        want = 0;
    if (want > REFUSED_BACKOFF_MS)
        want = REFUSED_BACKOFF_MS;
    if (want == p->backoff_ms)
        return;
    if (cut > 0) {
        pthread_mutex_lock(&n->lock);
        d->cut_short = 0; /* the next refusal doubles it again */
        pthread_mutex_unlock(&n->lock);
    }
    p->backoff_ms = want;
    p->backoff_at = now;
    nng_dialer_set_ms(p->dialer, NNG_OPT_RECONNMAXT, want ? (nng_duration)want : 2000);
    nng_dialer_set_ms(p->dialer, NNG_OPT_RECONNMINT, want ? (nng_duration)want : 100);
}

peer_entry *node_peers_add(peer_node *n, const char *url, int configured, int cache_host)
{
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        if (strcmp(p->url, url) == 0) {
            p->last_seen = mono_ms();
            p->cache_host |= cache_host;
            return p;
        }
    if (n->n_peers >= MAX_PEERS || !node_url_ok(url))
        return NULL;
    peer_entry *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    snprintf(p->url, sizeof p->url, "%s", url);
    node_url_host(url, p->host, sizeof p->host);
    p->serial = ++n->next_serial;
    p->configured = configured;
    p->cache_host = cache_host;
    p->last_seen = mono_ms();
    if (nng_req0_open(&p->sock) != 0) {
        free(p);
        return NULL;
    }
    dial_note_take(n, p);
    nng_socket_set_size(p->sock, NNG_OPT_RECVMAXSZ, PEER_MSG_MAX);
    nng_socket_set_ms(p->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_ms(p->sock, NNG_OPT_RECONNMINT, 100);
    nng_socket_set_ms(p->sock, NNG_OPT_RECONNMAXT, 2000);
    validate_error why = {0};
    if ((is_tls(url) && n->tls_client == NULL &&
         node_tls_config(n, NNG_TLS_MODE_CLIENT, &n->tls_client, &why) != PEER_OK) ||
        nng_pipe_notify(p->sock, NNG_PIPE_EV_ADD_POST, on_dial_pipe, n) != 0 ||
        nng_pipe_notify(p->sock, NNG_PIPE_EV_REM_POST, on_dial_pipe, n) != 0 ||
        ((configured || cache_host) && dial(n, p) != 0)) {
        dial_note_free(n, p);
        nng_close(p->sock);
        free(p);
        return NULL;
    }
    p->dialing = configured || cache_host;
    p->open = 1;
    p->next = n->peers;
    n->peers = p;
    n->n_peers++;
    for (peer_swarm *s = n->swarms; s != NULL; s = s->next)
        node_swarm_add_peer(s, p);
    return p;
}

void node_peers_want(peer_node *n, peer_entry *p, int64_t now)
{
    p->wanted_at = now;
    if (p->dialing || !p->open || now < p->next_redial)
        return;
    if (dial(n, p) != 0) {
        p->next_redial = now + 1000; /* tried again soon */
        return;
    }
    pthread_mutex_lock(&n->lock);
    if (p->dial_slot < MAX_PEERS)
        n->notes[p->dial_slot].pipeless_since = now;
    pthread_mutex_unlock(&n->lock);
    p->dialing = 1;
}

/* A discovered peer no swarm has wanted for UNWANTED_MS, with nothing
 * asked of it, is not dialled any more (its connection closes). */
static void drop_unwanted(peer_node *n, peer_entry *p, int64_t now)
{
    if (!p->dialing || p->configured || p->cache_host || now - p->wanted_at < UNWANTED_MS ||
        p->in_flight > 0)
        return;
    for (request *r = n->requests; r != NULL; r = r->next)
        if (r->p == p)
            return;
    nng_dialer_close(p->dialer);
    p->dialing = 0;
}

/* Forgets discovered peers not heard from for a while (none in use). */
static void forget_peers(peer_node *n, int64_t now)
{
    for (peer_entry **pp = &n->peers; *pp != NULL;) {
        peer_entry *p = *pp;
        int in_use = p->configured || p->in_flight > 0 || p->banned_until > now ||
                     now - p->last_seen < FORGET_MS;
        for (request *r = n->requests; r != NULL && !in_use; r = r->next)
            in_use = r->p == p;
        if (in_use) {
            pp = &p->next;
            continue;
        }
        for (peer_swarm *s = n->swarms; s != NULL; s = s->next)
            node_swarm_drop_peer(s, p);
        *pp = p->next;
        dial_note_free(n, p);
        node_closer_take_socket(n, p->sock);
        free(p);
        n->n_peers--;
    }
}

void node_peers_found(peer_node *n, found *f, int64_t now)
{
    while (f != NULL) {
        found *next = f->next;
        char host[64];
        if (node_url_host(f->url, host, sizeof host) == 0 && !node_peers_banned(n, host, now)) {
            peer_entry *p = node_peers_add(n, f->url, 0, f->cache_host);
            if (p != NULL && !p->has_id) {
                memcpy(p->id, f->id, PEER_ID_BYTES);
                p->has_id = 1;
            }
        }
        free(f);
        f = next;
    }
}

void node_peers_step(peer_node *n, int64_t now)
{
    if (now - n->last_forget > 1000) {
        n->last_forget = now;
        forget_peers(n, now);
    }
    atomic_store(&n->known_peers, n->n_peers);
    for (peer_entry *p = n->peers; p != NULL; p = p->next) {
        if (p->configured || p->cache_host)
            node_peers_want(n, p, now); /* always dialled */
        drop_unwanted(n, p, now);
        pace_dialer(n, p, now);
    }
}

void node_peers_close(peer_node *n)
{
    for (peer_entry *p = n->peers, *next; p != NULL; p = next) {
        next = p->next;
        if (p->open) {
            dial_note_free(n, p);
            nng_close(p->sock);
        }
        free(p);
    }
    for (found *f = n->found_head, *next; f != NULL; f = next) {
        next = f->next;
        free(f);
    }
}
