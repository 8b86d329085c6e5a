/*
 * The node: an agent's presence in its group (peer/PROTOCOL.md). This file
 * opens and closes it, runs the owner's turn (peer_node_step), changes
 * what may change while it runs, and holds the helpers the other parts
 * use: addresses, TLS settings and sealing. node_internal.h says which
 * file does what, and which thread owns which state.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <sodium.h>

#include "node_internal.h"
#include "validate.h"

#define REPLAY_SLOTS   131072 /* ~6 MiB: a minute of requests from hundreds of peers */
#define REPLAY_SOURCES 64     /* addresses with a share of it: 1024 requests each */

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

int node_url_host(const char *url, char *host, size_t len)
{
    const char *p = strstr(url, "://");
    if (p == NULL)
        return -1;
    p += 3;
    const char *end;
    if (*p == '[') {
        end = strchr(p, ']');
        if (end == NULL)
            return -1;
        end++;
    } else {
        end = strrchr(p, ':');
        if (end == NULL)
            return -1;
    }
    size_t n = (size_t)(end - p);
    if (n == 0 || n >= len)
        return -1;
    memcpy(host, p, n);
    host[n] = '\0';
    return 0;
}

/* A PEM file, NUL-terminated, for nng's TLS engine; NULL if unreadable. */
static char *read_pem(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = malloc(65536);
    ssize_t n = fd >= 0 && buf != NULL ? read(fd, buf, 65535) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* The TLS settings for one side, from the configured files. A peer is
 * whoever holds a certificate from the group's CA (and the group key): the
 * peer's name is not checked against its certificate, since peers are
 * found by address. */
int node_tls_config(peer_node *n, nng_tls_mode mode, nng_tls_config **out, validate_error *why)
{
    const peer_node_config *c = &n->cfg;
    if (c->tls_cert == NULL || c->tls_ca == NULL) {
        validate_error_set(why, PEER_EINVAL, "tls+tcp:// needs tls-cert and tls-ca");
        return PEER_EINVAL;
    }
    char *cert = read_pem(c->tls_cert), *key = read_pem(c->tls_key ? c->tls_key : c->tls_cert);
    int rv = cert == NULL || key == NULL ? NNG_ENOENT : 0;
    if (rv == 0 && (rv = nng_tls_config_alloc(out, mode)) == 0 &&
        (rv = nng_tls_config_ca_file(*out, c->tls_ca)) == 0 &&
        (rv = nng_tls_config_own_cert(*out, cert, key, NULL)) == 0)
        rv = nng_tls_config_auth_mode(*out, NNG_TLS_AUTH_MODE_REQUIRED);
    if (key != NULL)
        sodium_memzero(key, strlen(key));
    free(cert);
    free(key);
    if (rv != 0) {
        validate_error_set(why, PEER_EINVAL, "TLS certificate %s, CA %s: %s", c->tls_cert,
                           c->tls_ca, nng_strerror(rv));
        return PEER_EINVAL;
    }
    return PEER_OK;
}

int node_url_ok(const char *url)
{
    char host[64];
    return strlen(url) <= PEER_URL_MAX &&
           (strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tls+tcp://", 10) == 0) &&
           node_url_host(url, host, sizeof host) == 0;
}

/* ------------------------------------------------------------------ */
/* Sealing                                                            */

void node_head_init(peer_node *n, peer_msg *m, int type, uint64_t request_id)
{
    memset(m, 0, sizeof *m);
    m->head.type = (uint8_t)type;
    memcpy(m->head.sender, n->id, PEER_ID_BYTES);
    m->head.time_ms = wall_ms();
    m->head.request_id = request_id;
}

int node_seal_msg(peer_node *n, const peer_msg *m, nng_msg **out)
{
    size_t size = peer_wire_sealed_size(m), len = 0;
    nng_msg *msg;
    if (nng_msg_alloc(&msg, size) != 0)
        return PEER_ENOMEM;
    int err = peer_wire_seal(&n->key, m, nng_msg_body(msg), size, &len);
    if (err != PEER_OK) {
        nng_msg_free(msg);
        return err;
    }
    nng_msg_chop(msg, size - len);
    *out = msg;
    return PEER_OK;
}

#if defined(__SANITIZE_ADDRESS__)
/* libnng before 1.7.0 (Debian 12 has 1.5.2) loses a message handed to a
 * connection at the moment that connection closes: req0 and rep0 close
 * the pipe's send aio before taking the socket lock, a send that slips in
 * between finds the aio stopped, and the transport returns without
 * freeing the message (nng issue #1713, fixed by 759a2e9d). A message
 * per connection lost; LeakSanitizer is told about the three places that
 * hand sealed messages to nng (request.c's node_request_send, serve.c's
 * answer_piece and answer_have), and nothing else. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:node_request_send\nleak:answer_piece\nleak:answer_have\n";
}
#endif

/* ------------------------------------------------------------------ */
/* The owner's turn and settings                                      */

int64_t peer_node_step(peer_node *n)
{
    pthread_mutex_lock(&n->lock);
    request *done = n->done_head;
    n->done_head = NULL;
    for (request *r = done; r != NULL; r = r->next_done)
        r->in_done = 0;
    found *f = n->found_head;
    n->found_head = NULL;
    n->n_found = 0;
    pthread_mutex_unlock(&n->lock);

    int64_t now = mono_ms();
    node_peers_found(n, f, now);
    while (done != NULL) {
        request *next = done->next_done;
        done->next_done = NULL;
        node_request_finish(n, done);
        node_request_free(n, done);
        done = next;
    }
    node_peers_step(n, now);
    for (peer_swarm *s = n->swarms; s != NULL; s = s->next)
        node_swarm_step(n, s, now);
    return n->swarms != NULL ? 250 : 1000;
}

const char *peer_node_listen_url(const peer_node *n)
{
    return n->listen_url;
}

/* Whether url is one of cfg's configured peers (cache_only: cache hosts). */
static int configured_in(const peer_node_config *cfg, const char *url, int cache_only)
{
    for (size_t i = cache_only ? cfg->n_peers : 0; i < cfg->n_peers + cfg->n_cache_hosts; i++)
        if (strcmp(i < cfg->n_peers ? cfg->peers[i] : cfg->cache_hosts[i - cfg->n_peers], url) == 0)
            return 1;
    return 0;
}

int peer_node_reconfigure(peer_node *n, const peer_node_config *cfg)
{
    validate_error *why = &n->error;
    *why = (validate_error){0};
    for (size_t i = 0; i < cfg->n_peers + cfg->n_cache_hosts; i++) {
        const char *url = i < cfg->n_peers ? cfg->peers[i] : cfg->cache_hosts[i - cfg->n_peers];
        if (!node_url_ok(url))
            return validate_error_set(why, PEER_EADDRESS, "%s: not a tcp:// or tls+tcp:// address",
                                      url);
    }
    /* The server's workers read these under catalog_lock. */
    pthread_mutex_lock(&n->catalog_lock);
    if (cfg->upload_rate != n->cfg.upload_rate) {
        n->cfg.upload_rate = cfg->upload_rate;
        for (int i = 0; i < SERVER_WORKERS; i++)
            n->pipes[i].tokens = 0; /* the new rate from now on */
    }
    n->cfg.max_queued = cfg->max_queued;
    pthread_mutex_unlock(&n->catalog_lock);
    /* The owner's thread alone reads these. */
    n->cfg.in_flight = cfg->in_flight;
    n->cfg.piece_timeout_ms = cfg->piece_timeout_ms;
    n->cfg.ban_after = cfg->ban_after;
    n->cfg.ban_seconds = cfg->ban_seconds;

    /* Peers no longer named become like discovered ones long unheard of:
     * forget_peers drops them once nothing uses them. */
    int64_t now = mono_ms();
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        if (p->configured && !configured_in(cfg, p->url, 0)) {
            p->configured = 0;
            p->last_seen = now - FORGET_MS;
        }
    int err = PEER_OK;
    for (size_t i = 0; i < cfg->n_peers + cfg->n_cache_hosts; i++) {
        int cache = i >= cfg->n_peers;
        const char *url = cache ? cfg->cache_hosts[i - cfg->n_peers] : cfg->peers[i];
        peer_entry *p = node_peers_add(n, url, 1, cache);
        if (p == NULL) {
            if (err == PEER_OK)
                err = validate_error_set(why, PEER_ENNG, "%s: cannot dial", url);
            continue;
        }
        p->configured = 1; /* it may have been found by a beacon first */
        if (configured_in(cfg, url, 1))
            p->cache_host = 1;
    }
    return err;
}

const validate_error *peer_node_error(const peer_node *n)
{
    return &n->error;
}

void peer_node_stats(const peer_node *n, peer_stats *out)
{
    memset(out, 0, sizeof *out);
    out->uploaded = atomic_load(&n->uploaded);
    out->downloaded = atomic_load(&n->downloaded);
    out->bad_pieces = atomic_load(&n->bad_pieces);
    out->bans = atomic_load(&n->bans);
    out->refused = atomic_load(&n->refused);
    out->timeouts = atomic_load(&n->timeouts);
    out->broken_claims = atomic_load(&n->broken_claims);
    out->connections = (unsigned)atomic_load(&n->n_live);
    out->over_cap = atomic_load(&n->over_cap);
    out->evicted = atomic_load(&n->evicted);
    out->port_pauses = atomic_load(&n->pauses);
    out->control_sent = atomic_load(&n->control_sent);
    out->control_received = atomic_load(&n->control_received);
    int64_t now = mono_ms();
    for (const peer_entry *p = n->peers; p != NULL; p = p->next) {
        if (p->self)
            continue;
        out->peers++;
        if (p->banned_until > now)
            out->banned++;
    }
}

/* ------------------------------------------------------------------ */
/* Opening and closing                                                */

int peer_node_open(const peer_node_config *cfg, peer_node **out, validate_error *why)
{
    if (cfg->group_key == NULL) {
        validate_error_set(why, PEER_EINVAL, "no group key");
        return PEER_EINVAL;
    }
    if (validate_init() != 0) {
        validate_error_set(why, PEER_ECRYPTO, "libsodium could not initialise");
        return PEER_ECRYPTO;
    }
    peer_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return validate_error_set(why, PEER_ENOMEM, "out of memory");
    n->cfg = *cfg;
    n->cfg.group_key = NULL; /* only the derived key is kept */
    n->beacon_fd = -1;
    n->beacon_pipe[0] = n->beacon_pipe[1] = -1;
    pthread_mutex_init(&n->lock, NULL);
    pthread_mutex_init(&n->catalog_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    n->closer_wake_made = pthread_cond_init(&n->closer_wake, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!n->closer_wake_made) {
        validate_error_set(why, PEER_ENOMEM, "out of memory");
        peer_node_close(n);
        return PEER_ENOMEM;
    }
    peer_wire_key_derive(cfg->group_key, &n->key);
    randombytes_buf(n->id, sizeof n->id);
    int err = peer_replay_new(REPLAY_SLOTS, REPLAY_SOURCES, &n->replay);
    if (err != PEER_OK) {
        validate_error_set(why, err, "out of memory");
        peer_node_close(n);
        return err;
    }
    if (cfg->listen != NULL && cfg->listen[0] != '\0') {
        if (!node_url_ok(cfg->listen)) {
            validate_error_set(why, PEER_EADDRESS, "%s: not a tcp:// or tls+tcp:// address",
                               cfg->listen);
            peer_node_close(n);
            return PEER_EADDRESS;
        }
        err = node_serve_open(n, why);
        if (err != PEER_OK) {
            peer_node_close(n);
            return err;
        }
    }
    for (size_t i = 0; i < cfg->n_peers + cfg->n_cache_hosts; i++) {
        int cache = i >= cfg->n_peers;
        const char *url = cache ? cfg->cache_hosts[i - cfg->n_peers] : cfg->peers[i];
        if (!node_url_ok(url)) {
            validate_error_set(why, PEER_EADDRESS, "%s: not a tcp:// or tls+tcp:// address", url);
            peer_node_close(n);
            return PEER_EADDRESS;
        }
        if (node_peers_add(n, url, 1, cache) == NULL) {
            validate_error_set(why, PEER_ENNG, "%s: cannot dial", url);
            peer_node_close(n);
            return PEER_ENNG;
        }
    }
    if (cfg->beacons) {
        err = node_beacons_open(n, why);
        if (err != PEER_OK) {
            peer_node_close(n);
            return err;
        }
    }
    if (node_closer_open(n) != PEER_OK) {
        validate_error_set(why, PEER_ENOMEM, "cannot start the peer closer thread");
        peer_node_close(n);
        return PEER_ENOMEM;
    }
    *out = n;
    return PEER_OK;
}

void peer_node_close(peer_node *n)
{
    if (n == NULL)
        return;
    node_beacons_close(n);
    while (n->swarms != NULL)
        peer_swarm_close(n->swarms);
    while (n->requests != NULL)
        node_request_free(n, n->requests);
    pthread_mutex_lock(&n->catalog_lock);
    n->closing = 1;
    pthread_mutex_unlock(&n->catalog_lock);
    for (int i = 0; i < SERVER_WORKERS; i++)
        if (n->workers[i].aio != NULL)
            nng_aio_stop(n->workers[i].aio);
    node_closer_close(n);
    if (n->serving)
        nng_close(n->server);
    for (int i = 0; i < SERVER_WORKERS; i++) {
        worker *w = &n->workers[i];
        if (w->reply != NULL)
            nng_msg_free(w->reply);
        if (w->aio != NULL)
            nng_aio_free(w->aio);
    }
    node_peers_close(n);
    node_serve_free_catalog(n);
    peer_replay_free(n->replay);
    free(n->conns);
    free(n->dead_socks);
    if (n->closer_wake_made)
        pthread_cond_destroy(&n->closer_wake);
    if (n->tls_server != NULL)
        nng_tls_config_free(n->tls_server);
    if (n->tls_client != NULL)
        nng_tls_config_free(n->tls_client);
    pthread_mutex_destroy(&n->lock);
    pthread_mutex_destroy(&n->catalog_lock);
    sodium_memzero(&n->key, sizeof n->key);
    free(n);
}
