/*
 * The node: an agent's presence in its group (peer/PROTOCOL.md).
 *
 * Three kinds of threads meet here. The owner (the agent's engine) calls
 * every peer_* function and receives the swarm callbacks inside
 * peer_node_step. nng's threads run the server (workers answering
 * requests from the catalog of offered content) and complete the client's
 * requests, which they hand to the owner through the `done` list. The
 * beacon thread sends and hears multicast beacons and hands new peers over
 * through the `found` list. `lock` guards those two lists; `catalog_lock`
 * guards the catalog and the server's counters.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/supplemental/util/platform.h>
#include <sodium.h>

#include "peer.h"
#include "validate.h"

#define SERVER_WORKERS     16
#define REFRESH_MS         500 /* availability asked again after this */
#define REFRESH_FAST_MS    250 /* and, while a swarm starts, after this */
#define FAST_PHASE_MS      3000
#define READY_MIN_MS       500   /* the origin waits at least this (others starting together) */
#define READY_MS           1500  /* and at most this for every peer's answer */
#define MEMBER_TTL_MS      5000  /* a member not heard from for this long is gone */
#define STALL_MS           5000  /* a member without progress for this long loses its share */
#define SWARM_STALL_MS     10000 /* no piece from any peer this long: the origin may take any */
#define REFUSALS           3     /* refusals in a row before a peer's holdings stop counting */
#define QUIET_MS           10000
#define SCAN_PIECES        2048 /* pieces one pick looks at, at most */
#define AUTH_GRACE_MS      5000 /* a connection must send a valid request within this */
#define UPLOAD_WAIT_MAX_MS 4000 /* a reply the upload limit would hold longer is BUSY */
#define INTEREST_SLOTS     256
#define FORGET_MS          30000 /* a discovered peer not heard from is forgotten */
#define SLOW_RESET_MS      30000 /* a stalled peer is tried again after this */
#define HAVE_TIMEOUT_MS    3000
#define REPLAY_SLOTS       131072 /* ~6 MiB: a minute of requests from hundreds of peers */
#define REPLAY_SOURCES     64     /* addresses with a share of it: 1024 requests each */
#define MAX_PEERS          1024
#define MAX_MEMBERS        256    /* agents sharing the origin's work for one content */
#define SETTLE_LAG_MS      300    /* a member hears of a change within a turn (250 ms) */
#define SETTLE_MAX_MS      1500   /* pieces new to this agent's share wait at most this */
#define CLOSER_TICK_MS     100    /* the closer's sweep of strangers and descriptors */
#define IDLE_EVICT_MS      5000   /* a full server lets a newcomer in for a connection this idle */
#define TURN_MS            5000   /* or for one connected this long (agents beyond the cap) */
#define PAUSE_MIN_MS       1000   /* the listener, closed for want of descriptors, stays so */
#define REFUSE_DELAY_MS    200    /* a newcomer turned away is closed once this old */
#define SHORT_PIPE_MS      1000   /* a connection of ours the peer closes this soon: refused */
#define REFUSED_BACKOFF_MS 30000  /* the longest wait before dialling a peer that refuses */
#define BROKEN_WINDOW_MS   600000 /* broken claims count towards a ban within this */
#define REDIAL_AFTER_MS    3000   /* a peer without a connection this long gets a new dialer */
#define FD_RESERVE_MIN     64     /* descriptors kept free for the agent itself, at least */

/* ------------------------------------------------------------------ */
/* Types                                                              */

typedef struct peer_entry {
    uint64_t serial; /* names it to peer_node_judge */
    char url[PEER_URL_MAX + 32];
    char host[64]; /* the address part, which bans apply to */
    uint8_t id[PEER_ID_BYTES];
    int has_id;
    int cache_host;
    int configured;
    int self; /* it answered with our own id: never asked again */
    nng_socket sock;
    nng_dialer dialer;
    int open;
    unsigned dial_slot;  /* its entry in the node's dial notes */
    int64_t backoff_ms;  /* the dialer's wait now (it refused us), 0: nng's default */
    int64_t backoff_at;  /* mono ms: when it last changed */
    int64_t next_redial; /* mono ms: no new dialer before */
    int64_t last_seen;   /* mono ms */
    unsigned strikes;    /* bad pieces */
    unsigned broken;     /* claims it did not honour, since broken_since */
    int64_t broken_since;
    int64_t banned_until;
    unsigned in_flight; /* piece requests */
    unsigned judging;   /* pieces it sent whose verdict is PENDING */
    unsigned slow;      /* consecutive piece requests that ran out of time */
    int64_t slow_since;
    struct peer_entry *next;
} peer_entry;

/* What one peer holds of one swarm's content. */
typedef struct swarm_peer {
    peer_entry *p;
    uint8_t status, role;
    uint8_t *bits;   /* SOME: its bitfield; counted in the swarm's holders */
    uint8_t *coming; /* what is on its way to it (PEER_ROLE_COMING), or NULL */
    int counted;     /* its bits are in holders */
    uint64_t count;
    int64_t asked, answered, progress_at;
    int member;                /* a member at the last update_members */
    int64_t sent, answer_sent; /* when the HAVE_REQ now asked / last answered went out */
    int asking;
    int contributed;     /* sent pieces judged LATER */
    int claim_broken;    /* it refused a piece its last answer claimed */
    unsigned refused;    /* NOT_HELD or BUSY answers in a row */
    int64_t quiet_until; /* its holdings do not count until then (it refuses) */
} swarm_peer;

struct peer_swarm {
    peer_node *n;
    uint8_t cid[PEER_CID_BYTES];
    uint64_t size;
    uint32_t piece_size;
    uint64_t pieces;
    peer_swarm_ops ops;
    swarm_peer *sp;
    size_t n_sp, cap_sp;
    uint16_t *holders; /* usable peers holding each piece */
    int64_t opened;
    uint64_t cursor;                  /* where the next rarest-first scan starts */
    swarm_peer *members[MAX_MEMBERS]; /* fetching it, by id; NULL is this agent */
    int64_t last_piece;               /* mono ms of the last piece from a peer */
    size_t n_members, rank;
    /* The members changed at members_at: pieces outside [kept_lo, kept_hi),
     * this agent's share before the change, wait until every member has
     * answered what is coming to it since (SETTLE_*). */
    int64_t members_at;
    uint64_t kept_lo, kept_hi;
    struct peer_swarm *next;
};

enum req_phase { REQ_SENDING, REQ_RECEIVING, REQ_DONE };

typedef struct request {
    peer_node *n;
    peer_entry *p;
    peer_swarm *s;
    int type; /* PEER_MSG_HAVE_REQ or PEER_MSG_PIECE_REQ */
    uint64_t piece;
    uint64_t id;
    nng_ctx ctx;
    nng_aio *aio;
    enum req_phase phase;
    int result;
    nng_msg *reply;
    struct request *next;      /* all requests */
    struct request *next_done; /* the done list */
    int in_done;
} request;

/* Content offered to peers. */
typedef struct offer {
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
} offer;

enum worker_phase { W_RECEIVING, W_WAITING, W_SENDING };

typedef struct worker {
    peer_node *n;
    nng_ctx ctx;
    nng_aio *aio;
    enum worker_phase phase;
    nng_msg *reply;
    uint32_t pipe; /* the connection whose request it serves */
} worker;

/* A connection to the server. nng's pipe callbacks add and remove them and
 * mark the ones to close; the closer thread closes them. */
typedef struct conn {
    nng_pipe pipe;
    int64_t since;  /* mono ms: when it came */
    int64_t last;   /* mono ms: its last request that opened */
    int good;       /* it sent a request that opened with the group key */
    int64_t doomed; /* mono ms: when it was marked to close (over the cap, an idle or a
                     * stranger let go), 0: live */
    int closed;     /* nng_pipe_close called: only REM_POST is awaited */
} conn;

/* What nng's pipe callbacks of a peer's socket tell the owner (under
 * `lock`): how its connections end. */
typedef struct dial_note {
    uint32_t sock;          /* nng_socket_id of the peer's socket, 0: a free note */
    int64_t added;          /* mono ms: the current connection came up */
    int64_t pipeless_since; /* mono ms: no connection since, 0: it has one */
    unsigned cut_short;     /* connections in a row it closed within SHORT_PIPE_MS */
    unsigned lasted;        /* connections that lasted, since the owner last looked */
} dial_note;

typedef struct found {
    char url[PEER_URL_MAX + 32];
    uint8_t id[PEER_ID_BYTES];
    int cache_host;
    struct found *next;
} found;

struct peer_node {
    peer_node_config cfg;
    nng_tls_config *tls_server, *tls_client; /* for tls+tcp://, or NULL */
    peer_wire_key key;
    uint8_t id[PEER_ID_BYTES];
    char listen_url[PEER_URL_MAX + 32];

    /* Owner thread. */
    peer_entry *peers;
    size_t n_peers;
    uint64_t next_serial;
    peer_swarm *swarms;
    request *requests;
    int64_t last_forget;

    /* Shared with nng's and the beacon thread. */
    pthread_mutex_t lock;
    request *done_head;
    found *found_head;
    size_t n_found;

    /* Server. */
    int serving;
    nng_socket server;
    nng_listener listener;
    worker workers[SERVER_WORKERS];
    pthread_mutex_t catalog_lock;
    offer *offers;
    peer_replay *replay;
    /* The connections with piece requests in service, each with its own
     * upload budget: the upload rate is shared equally among them. */
    struct {
        uint32_t pipe;
        unsigned busy;
        double tokens; /* bytes */
        int64_t tokens_at;
    } pipes[SERVER_WORKERS];
    conn *conns; /* every connection of the server, doomed ones too */
    size_t n_conns, cap_conns;
    _Atomic size_t n_live;  /* not doomed (changed under catalog_lock) */
    unsigned piece_workers; /* workers holding a piece reply (HAVE requests keep the rest) */
    struct {
        uint8_t cid[PEER_CID_BYTES];
        uint8_t sender[PEER_ID_BYTES];
        int64_t at;             /* mono ms */
    } interest[INTEREST_SLOTS]; /* who asked what we hold of which content, lately */
    int closing;

    /* The closer thread: every nng close happens there, none on nng's own
     * threads (under catalog_lock). */
    pthread_t closer_thread;
    int closer_running, closer_stop, closer_wake_made;
    pthread_cond_t closer_wake;
    nng_socket *dead_socks; /* sockets of forgotten peers, to close */
    size_t n_dead_socks, cap_dead_socks;
    int64_t paused;   /* mono ms: the listener closed (descriptors ran short), 0: open */
    int64_t fd_limit; /* RLIMIT_NOFILE's soft limit, 0: none (the closer's) */
    _Atomic uint64_t evicted, over_cap, pauses;

    /* Dial notes, one per peer (guarded by `lock`). */
    dial_note notes[MAX_PEERS];

    /* Beacons. */
    int beacon_fd;
    int beacon_pipe[2];
    pthread_t beacon_thread;
    int beacon_running;
    peer_replay *beacon_replay;

    _Atomic uint64_t uploaded, downloaded, bad_pieces, bans, refused, timeouts, broken_claims;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                      */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t random64(void)
{
    uint64_t v;
    randombytes_buf(&v, sizeof v);
    return v;
}

static void wake(peer_node *n)
{
    if (n->cfg.wakeup != NULL)
        n->cfg.wakeup(n->cfg.wakeup_ctx);
}

static uint64_t piece_count(uint64_t size, uint32_t piece_size)
{
    return size == 0 ? 0 : (size - 1) / piece_size + 1;
}

static uint32_t piece_len(uint64_t size, uint32_t piece_size, uint64_t i)
{
    uint64_t start = i * piece_size;
    uint64_t left = size - start;
    return left < piece_size ? (uint32_t)left : piece_size;
}

/* The host part of "tcp://host:port" (what bans apply to). */
static int url_host(const char *url, char *host, size_t len)
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

static int is_tls(const char *url)
{
    return strncmp(url, "tls+tcp://", 10) == 0;
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
static int tls_config(peer_node *n, nng_tls_mode mode, nng_tls_config **out, char *why,
                      size_t why_len)
{
    const peer_node_config *c = &n->cfg;
    if (c->tls_cert == NULL || c->tls_ca == NULL) {
        snprintf(why, why_len, "tls+tcp:// needs tls-cert and tls-ca");
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
        snprintf(why, why_len, "TLS certificate %s, CA %s: %s", c->tls_cert, c->tls_ca,
                 nng_strerror(rv));
        return PEER_EINVAL;
    }
    return PEER_OK;
}

static int url_ok(const char *url)
{
    char host[64];
    return strlen(url) <= PEER_URL_MAX &&
           (strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tls+tcp://", 10) == 0) &&
           url_host(url, host, sizeof host) == 0;
}

/* ------------------------------------------------------------------ */
/* Sealing                                                            */

static void head_init(peer_node *n, peer_msg *m, int type, uint64_t request_id)
{
    memset(m, 0, sizeof *m);
    m->head.type = (uint8_t)type;
    memcpy(m->head.sender, n->id, PEER_ID_BYTES);
    m->head.time_ms = wall_ms();
    m->head.request_id = request_id;
}

/* A new nng message holding `m` sealed. */
static int seal_msg(peer_node *n, const peer_msg *m, nng_msg **out)
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
 * hand sealed messages to nng, and nothing else. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:send_request\nleak:answer_piece\nleak:answer_have\n";
}
#endif

/* ------------------------------------------------------------------ */
/* The catalog (serving side)                                         */

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

static conn *conn_serving(peer_node *n, uint32_t pipe);

/* A worker is done with a piece request (catalog_lock held). */
static void piece_done(peer_node *n, uint32_t pipe)
{
    if (n->piece_workers > 0)
        n->piece_workers--;
    int i = pipe_slot(n, pipe);
    if (i >= 0 && n->pipes[i].busy > 0 && n->pipes[i].pipe == pipe)
        n->pipes[i].busy--;
}

static int read_piece(int fd, uint8_t *buf, uint32_t len, uint64_t offset)
{
    while (len > 0) {
        ssize_t r = pread(fd, buf, len, (off_t)offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        len -= (uint32_t)r;
        offset += (uint64_t)r;
    }
    return 0;
}

/* Builds the reply to a PIECE_REQ; returns the ms to wait before sending
 * it (the upload limit), and sets *took when it took a slot of the pipe. */
static int64_t answer_piece(peer_node *n, const peer_msg *req, uint32_t pipe, nng_msg **out,
                            int *took)
{
    peer_msg rep;
    head_init(n, &rep, PEER_MSG_PIECE_REP, req->head.request_id);
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
        if (seal_msg(n, &rep, out) != PEER_OK)
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
    int ok = data != NULL && read_piece(o->fd, data, len, req->piece * o->piece_size) == 0;
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
    } else if (seal_msg(n, &rep, out) != PEER_OK) {
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
    head_init(n, &rep, PEER_MSG_HAVE_REP, req->head.request_id);
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
    if (seal_msg(n, &rep, &msg) != PEER_OK)
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
        conn *c = conn_serving(n, pipe);
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
    if (req.head.type == PEER_MSG_HAVE_REQ)
        reply = answer_have(n, &req);
    else
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
/* Connections and the closer thread                                  */
/*
 * The server keeps at most max_connections live connections, and each must
 * send a request that opens with the group key within AUTH_GRACE_MS, or it
 * is closed (so that outsiders cannot hold the slots). A newcomer to a full
 * server takes the place of a stranger there for more than a second, of a
 * member idle for IDLE_EVICT_MS, or of one connected for over TURN_MS (a
 * site may have more agents than its cache host's cap: they take turns);
 * otherwise it is closed REFUSE_DELAY_MS after it came.
 *
 * No close happens on nng's threads. With libnng 1.5.2 a pipe closed
 * inside its own pipe-event callback while a message arrives on it never
 * reaches REM_POST: nng's reaper waits for it for ever, and every nng_close
 * after that, of any socket of the process, blocks. So the callbacks only
 * note connections (from ADD_PRE, before any message can arrive) and mark
 * those to close; the closer thread closes them, and the sockets of
 * forgotten peers too, so that the owner never waits in nng_close. It also
 * watches descriptors: when they run short, the listener closes (and its
 * connections with it) until they are back, so that the control socket,
 * the store and the files being written keep theirs whatever the peer
 * port is sent. Connections still in the SP handshake are no pipes yet
 * and only this bounds them. */

static conn *conn_find(peer_node *n, uint32_t pipe)
{
    for (size_t i = 0; i < n->n_conns; i++)
        if ((uint32_t)nng_pipe_id(n->conns[i].pipe) == pipe)
            return &n->conns[i];
    return NULL;
}

/* Whether a request that came on the pipe may be served: its connection
 * is known and not on its way out (catalog_lock held). */
static conn *conn_serving(peer_node *n, uint32_t pipe)
{
    conn *c = conn_find(n, pipe);
    return c != NULL && !c->doomed ? c : NULL;
}

/* A live connection a newcomer may replace: the oldest stranger of more
 * than a second, else the member idle longest past IDLE_EVICT_MS, else the
 * one connected longest past TURN_MS (its requests in flight are asked
 * again when it dials back). */
static conn *conn_victim(peer_node *n, int64_t now)
{
    conn *stranger = NULL, *idle = NULL, *turn = NULL;
    for (size_t i = 0; i < n->n_conns; i++) {
        conn *c = &n->conns[i];
        if (c->doomed)
            continue;
        if (!c->good && now - c->since > 1000 && (stranger == NULL || c->since < stranger->since))
            stranger = c;
        if (c->good && now - c->last > IDLE_EVICT_MS && (idle == NULL || c->last < idle->last))
            idle = c;
        if (c->good && now - c->since > TURN_MS && (turn == NULL || c->since < turn->since))
            turn = c;
    }
    return stranger != NULL ? stranger : idle != NULL ? idle : turn;
}

static void conn_doom(peer_node *n, conn *c, int64_t now)
{
    c->doomed = now;
    n->n_live--;
}

/* A new connection (catalog_lock held). */
static void conn_add(peer_node *n, nng_pipe pipe, int64_t now)
{
    unsigned max = n->cfg.max_connections ? n->cfg.max_connections : 64;
    if (n->n_conns == n->cap_conns) {
        size_t cap = n->cap_conns ? 2 * n->cap_conns : max + 16;
        conn *grown = realloc(n->conns, cap * sizeof *grown);
        if (grown == NULL)
            return; /* unknown to us, its requests get no answer */
        n->conns = grown;
        n->cap_conns = cap;
    }
    conn *c = &n->conns[n->n_conns++];
    *c = (conn){.pipe = pipe, .since = now, .last = now};
    n->n_live++;
    if (n->n_live > max) {
        conn *victim = conn_victim(n, now);
        conn_doom(n, victim != NULL ? victim : c, now);
        if (victim != NULL)
            n->evicted++;
        else
            n->over_cap++;
        pthread_cond_signal(&n->closer_wake);
    }
}

static void conn_remove(peer_node *n, nng_pipe pipe)
{
    conn *c = conn_find(n, (uint32_t)nng_pipe_id(pipe));
    if (c == NULL)
        return;
    if (!c->doomed)
        n->n_live--;
    *c = n->conns[--n->n_conns];
}

/* nng's threads: never closes anything (see above). */
static void on_pipe(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
    peer_node *n = arg;
    pthread_mutex_lock(&n->catalog_lock);
    if (ev == NNG_PIPE_EV_ADD_PRE)
        conn_add(n, pipe, mono_ms());
    else if (ev == NNG_PIPE_EV_REM_POST)
        conn_remove(n, pipe);
    pthread_mutex_unlock(&n->catalog_lock);
}

/* The owner: a forgotten peer's socket is closed by the closer. */
static void close_later(peer_node *n, nng_socket sock)
{
    pthread_mutex_lock(&n->catalog_lock);
    if (n->n_dead_socks == n->cap_dead_socks) {
        size_t cap = n->cap_dead_socks ? 2 * n->cap_dead_socks : 16;
        nng_socket *grown = realloc(n->dead_socks, cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&n->catalog_lock);
            nng_close(sock); /* no room to hand it over: closed here */
            return;
        }
        n->dead_socks = grown;
        n->cap_dead_socks = cap;
    }
    n->dead_socks[n->n_dead_socks++] = sock;
    pthread_cond_signal(&n->closer_wake);
    pthread_mutex_unlock(&n->catalog_lock);
}

static void node_log(peer_node *n, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void node_log(peer_node *n, const char *level, const char *fmt, ...)
{
    if (n->cfg.log == NULL)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    n->cfg.log(n->cfg.log_ctx, level, msg);
}

/* Descriptors open in the process, or -1. */
static long open_descriptors(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long k = 0;
    while (readdir(d) != NULL)
        k++;
    closedir(d);
    return k - 3; /* ".", ".." and the directory's own */
}

/* The lowest free descriptor: under a flood, holes fill first, so this is
 * about the number in use; a cheap look taken every tick. */
static long lowest_free_descriptor(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == EMFILE || errno == ENFILE ? LONG_MAX : -1;
    close(fd);
    return fd;
}

static int listener_start(peer_node *n, const char *url, char *why, size_t why_len);

/* Closer thread: closes the listener when descriptors run short, opens it
 * again once they are back (catalog_lock not held). */
static void watch_descriptors(peer_node *n)
{
    struct rlimit rl; /* read each time: prlimit may change it */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        n->fd_limit = rl.rlim_cur == RLIM_INFINITY ? 0 : (int64_t)rl.rlim_cur;
    if (!n->serving || n->fd_limit <= 0)
        return;
    long reserve = n->fd_limit / 8 > FD_RESERVE_MIN ? (long)(n->fd_limit / 8) : FD_RESERVE_MIN;
    if (!n->paused) {
        long low = lowest_free_descriptor();
        if (low < n->fd_limit - reserve)
            return;
        nng_listener_close(n->listener);
        n->paused = mono_ms();
        n->pauses++;
        node_log(n, "warning",
                 "peer port %s closed: %ld of %lld descriptors in use; it opens again below %ld",
                 n->listen_url, low, (long long)n->fd_limit, (long)n->fd_limit - 2 * reserve);
        return;
    }
    if (mono_ms() - n->paused < PAUSE_MIN_MS)
        return;
    long used = open_descriptors();
    if (used < 0 || used >= n->fd_limit - 2 * reserve)
        return;
    char why[256];
    if (listener_start(n, n->listen_url, why, sizeof why) != PEER_OK) {
        node_log(n, "warning", "peer port: %s (tried again shortly)", why);
        return;
    }
    n->paused = 0;
    node_log(n, "info", "peer port %s open again: %ld descriptors in use", n->listen_url, used);
}

static void *closer_main(void *arg)
{
    peer_node *n = arg;
    int64_t ticked = 0;
    pthread_mutex_lock(&n->catalog_lock);
    for (;;) {
        int64_t now = mono_ms();
        nng_pipe batch[64];
        size_t k = 0;
        int stop = n->closer_stop;
        for (size_t i = 0; i < n->n_conns && k < 64; i++) {
            conn *c = &n->conns[i];
            if (!c->doomed && !c->good && now - c->since > AUTH_GRACE_MS)
                conn_doom(n, c, now);
            /* A newcomer turned away is closed once its dialer has taken
             * it: nng 1.5.2's dialer neither dials again nor sees the close
             * of a connection closed while it was still setting it up. */
            if (c->doomed && !c->closed && (now - c->since >= REFUSE_DELAY_MS || stop)) {
                c->closed = 1;
                batch[k++] = c->pipe;
            }
        }
        nng_socket *socks = n->dead_socks;
        size_t n_socks = n->n_dead_socks;
        n->dead_socks = NULL;
        n->n_dead_socks = n->cap_dead_socks = 0;
        pthread_mutex_unlock(&n->catalog_lock);
        for (size_t i = 0; i < k; i++)
            nng_pipe_close(batch[i]);
        for (size_t i = 0; i < n_socks; i++)
            nng_close(socks[i]);
        free(socks);
        if (now - ticked >= CLOSER_TICK_MS) {
            ticked = now;
            watch_descriptors(n);
        }
        pthread_mutex_lock(&n->catalog_lock);
        if (k == 64)
            continue; /* more to close */
        if (stop && n->n_dead_socks == 0)
            break;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)CLOSER_TICK_MS * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        if (!n->closer_stop && n->n_dead_socks == 0)
            pthread_cond_timedwait(&n->closer_wake, &n->catalog_lock, &until);
    }
    pthread_mutex_unlock(&n->catalog_lock);
    return NULL;
}

/* Starts the closer once the node is set up (its wake-up exists from the
 * start: pipe callbacks signal it). */
static int closer_open(peer_node *n)
{
    n->closer_running = pthread_create(&n->closer_thread, NULL, closer_main, n) == 0;
    return n->closer_running ? PEER_OK : PEER_ENOMEM;
}

/* Closes what is left to close, then stops the closer. */
static void closer_close(peer_node *n)
{
    if (!n->closer_running)
        return;
    pthread_mutex_lock(&n->catalog_lock);
    n->closer_stop = 1;
    pthread_cond_signal(&n->closer_wake);
    pthread_mutex_unlock(&n->catalog_lock);
    pthread_join(n->closer_thread, NULL);
    n->closer_running = 0;
}

static int listener_start(peer_node *n, const char *url, char *why, size_t why_len)
{
    int rv = nng_listener_create(&n->listener, n->server, url);
    if (rv == 0 &&
        ((n->tls_server != NULL &&
          (rv = nng_listener_set_ptr(n->listener, NNG_OPT_TLS_CONFIG, n->tls_server)) != 0) ||
         (rv = nng_listener_start(n->listener, 0)) != 0))
        nng_listener_close(n->listener);
    if (rv != 0) {
        snprintf(why, why_len, "listening on %s: %s", url, nng_strerror(rv));
        return PEER_ENNG;
    }
    return PEER_OK;
}

static int server_open(peer_node *n, char *why, size_t why_len)
{
    int rv;
    if (is_tls(n->cfg.listen) &&
        tls_config(n, NNG_TLS_MODE_SERVER, &n->tls_server, why, why_len) != PEER_OK)
        return PEER_EINVAL;
    if ((rv = nng_rep0_open(&n->server)) != 0) {
        snprintf(why, why_len, "peer server: %s", nng_strerror(rv));
        return PEER_ENNG;
    }
    n->serving = 1; /* from here on, closing closes the socket */
    if ((rv = nng_socket_set_size(n->server, NNG_OPT_RECVMAXSZ, PEER_REQUEST_MAX)) != 0 ||
        (rv = nng_pipe_notify(n->server, NNG_PIPE_EV_ADD_PRE, on_pipe, n)) != 0 ||
        (rv = nng_pipe_notify(n->server, NNG_PIPE_EV_REM_POST, on_pipe, n)) != 0) {
        snprintf(why, why_len, "peer server: %s", nng_strerror(rv));
        return PEER_ENNG;
    }
    if (listener_start(n, n->cfg.listen, why, why_len) != PEER_OK)
        return PEER_ENNG;
    snprintf(n->listen_url, sizeof n->listen_url, "%s", n->cfg.listen);
    int port = 0;
    if (nng_listener_get_int(n->listener, NNG_OPT_TCP_BOUND_PORT, &port) == 0) {
        char host[64];
        if (url_host(n->cfg.listen, host, sizeof host) == 0) {
            const char *scheme = strncmp(n->cfg.listen, "tls+", 4) == 0 ? "tls+tcp" : "tcp";
            snprintf(n->listen_url, sizeof n->listen_url, "%s://%s:%d", scheme, host, port);
        }
    }
    for (int i = 0; i < SERVER_WORKERS; i++) {
        worker *w = &n->workers[i];
        w->n = n;
        if (nng_ctx_open(&w->ctx, n->server) != 0 || nng_aio_alloc(&w->aio, on_worker, w) != 0) {
            snprintf(why, why_len, "cannot set up the peer server");
            return PEER_ENOMEM;
        }
    }
    for (int i = 0; i < SERVER_WORKERS; i++)
        worker_receive(&n->workers[i]);
    return PEER_OK;
}

/* ------------------------------------------------------------------ */
/* Peers (owner thread)                                               */

/* Whether an address is banned: two of its peers were. */
static int banned(peer_node *n, const char *host, int64_t now)
{
    int k = 0;
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        k += p->banned_until > now && strcmp(p->host, host) == 0;
    return k >= 2;
}

static void swarm_add_peer(peer_swarm *s, peer_entry *p);

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
    if (p->dial_slot >= MAX_PEERS)
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

static peer_entry *add_peer(peer_node *n, const char *url, int configured, int cache_host)
{
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        if (strcmp(p->url, url) == 0) {
            p->last_seen = mono_ms();
            p->cache_host |= cache_host;
            return p;
        }
    if (n->n_peers >= MAX_PEERS || !url_ok(url))
        return NULL;
    peer_entry *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    snprintf(p->url, sizeof p->url, "%s", url);
    url_host(url, p->host, sizeof p->host);
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
    char why[256];
    if ((is_tls(url) && n->tls_client == NULL &&
         tls_config(n, NNG_TLS_MODE_CLIENT, &n->tls_client, why, sizeof why) != PEER_OK) ||
        nng_pipe_notify(p->sock, NNG_PIPE_EV_ADD_POST, on_dial_pipe, n) != 0 ||
        nng_pipe_notify(p->sock, NNG_PIPE_EV_REM_POST, on_dial_pipe, n) != 0 || dial(n, p) != 0) {
        dial_note_free(n, p);
        nng_close(p->sock);
        free(p);
        return NULL;
    }
    p->open = 1;
    p->next = n->peers;
    n->peers = p;
    n->n_peers++;
    for (peer_swarm *s = n->swarms; s != NULL; s = s->next)
        swarm_add_peer(s, p);
    return p;
}

static int usable(const peer_entry *p, int64_t now)
{
    return p->open && !p->self && p->banned_until <= now;
}

/* ------------------------------------------------------------------ */
/* Requests (client side)                                             */

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

static request *send_request(peer_node *n, peer_entry *p, peer_swarm *s, int type, uint64_t piece,
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
    head_init(n, &m, type, r->id);
    memcpy(m.cid, s->cid, PEER_CID_BYTES);
    m.piece = piece;
    nng_msg *msg;
    if (seal_msg(n, &m, &msg) != PEER_OK) {
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

/* Stops a request and frees it (owner thread). */
static void request_free(peer_node *n, request *r)
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

/* ------------------------------------------------------------------ */
/* Swarms                                                             */

static swarm_peer *swarm_find(peer_swarm *s, const peer_entry *p)
{
    for (size_t i = 0; i < s->n_sp; i++)
        if (s->sp[i].p == p)
            return &s->sp[i];
    return NULL;
}

static void swarm_add_peer(peer_swarm *s, peer_entry *p)
{
    if (swarm_find(s, p) != NULL)
        return;
    if (s->n_sp == s->cap_sp) {
        size_t cap = s->cap_sp ? 2 * s->cap_sp : 8;
        swarm_peer *grown = realloc(s->sp, cap * sizeof *grown);
        if (grown == NULL)
            return;
        s->sp = grown;
        s->cap_sp = cap;
    }
    memset(&s->sp[s->n_sp], 0, sizeof s->sp[s->n_sp]);
    s->sp[s->n_sp].p = p;
    s->n_sp++;
}

/* Takes a peer's pieces out of (or back into) the holders count. */
static void count_holdings(peer_swarm *s, swarm_peer *sp, int add)
{
    if (sp->counted == add)
        return;
    sp->counted = add;
    if (sp->status == PEER_HAVE_NONE)
        return;
    for (uint64_t i = 0; i < s->pieces; i++)
        if (sp->status == PEER_HAVE_ALL || peer_bit_get(sp->bits, i)) {
            if (add)
                s->holders[i]++;
            else if (s->holders[i] > 0)
                s->holders[i]--;
        }
}

/* Whether a peer's holdings count now: usable and not stalled. */
static int holdings_count(const swarm_peer *sp, int64_t now)
{
    return usable(sp->p, now) && sp->p->slow < 3 && sp->answered > 0 && sp->quiet_until <= now &&
           !sp->claim_broken;
}

int peer_swarm_open(peer_node *n, const uint8_t cid[PEER_CID_BYTES], uint64_t size,
                    uint32_t piece_size, const peer_swarm_ops *ops, peer_swarm **out)
{
    uint64_t pieces = piece_count(size, piece_size);
    if (piece_size == 0 || pieces > PEER_MAX_PIECES || ops->claim == NULL || ops->piece == NULL ||
        ops->lost == NULL)
        return PEER_EINVAL;
    peer_swarm *s = calloc(1, sizeof *s);
    if (s == NULL)
        return PEER_ENOMEM;
    s->holders = calloc(pieces ? pieces : 1, sizeof *s->holders);
    if (s->holders == NULL) {
        free(s);
        return PEER_ENOMEM;
    }
    s->n = n;
    memcpy(s->cid, cid, PEER_CID_BYTES);
    s->size = size;
    s->piece_size = piece_size;
    s->pieces = pieces;
    s->ops = *ops;
    s->opened = mono_ms();
    s->cursor = pieces ? random64() % pieces : 0;
    s->n_members = 1; /* alone until the first turn says otherwise */
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        swarm_add_peer(s, p);
    s->next = n->swarms;
    n->swarms = s;
    *out = s;
    return PEER_OK;
}

void peer_swarm_close(peer_swarm *s)
{
    if (s == NULL)
        return;
    peer_node *n = s->n;
    for (request *r = n->requests, *next; r != NULL; r = next) {
        next = r->next;
        if (r->s != s)
            continue;
        int piece = r->type == PEER_MSG_PIECE_REQ;
        uint64_t idx = r->piece;
        if (piece && r->p->in_flight > 0)
            r->p->in_flight--;
        request_free(n, r);
        if (piece)
            s->ops.lost(s->ops.ctx, idx);
    }
    for (peer_swarm **pp = &n->swarms; *pp != NULL; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    for (size_t i = 0; i < s->n_sp; i++) {
        free(s->sp[i].bits);
        free(s->sp[i].coming);
    }
    free(s->sp);
    free(s->holders);
    free(s);
}

int peer_swarm_ready(const peer_swarm *s)
{
    int64_t now = mono_ms();
    if (now - s->opened >= READY_MS)
        return 1;
    if (s->n_sp > 0 && now - s->opened < READY_MIN_MS)
        return 0;
    for (size_t i = 0; i < s->n_sp; i++)
        if (usable(s->sp[i].p, now) && s->sp[i].answered == 0)
            return 0;
    /* A newcomer to a swarm under way waits the whole READY_MS: what the
     * members are fetching from the origin right now is not in their
     * answers until it is held, and the newcomer's share covers some of
     * it. Meanwhile it takes from peers what they hold. */
    for (size_t i = 0; i < s->n_members; i++) /* (NULL, this agent, sits by its id) */
        if (s->members[i] != NULL && s->members[i]->count > 0)
            return 0;
    return 1;
}

static int id_cmp(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, PEER_ID_BYTES);
}

/* Whether the peer fetches the content too: its answers say so, or it
 * has asked us about it lately (which tells a newcomer at once, before our
 * next question to it). catalog_lock held. */
static int is_member(const peer_swarm *s, const swarm_peer *sp, int64_t now)
{
    if (!usable(sp->p, now) || !sp->p->has_id)
        return 0;
    if ((sp->role & PEER_ROLE_DOWNLOADING) && now - sp->answered <= MEMBER_TTL_MS)
        return 1;
    if (sp->status == PEER_HAVE_ALL)
        return 0; /* a seeder asking is checking, not fetching */
    for (size_t i = 0; i < INTEREST_SLOTS; i++)
        if (now - s->n->interest[i].at <= MEMBER_TTL_MS &&
            memcmp(s->n->interest[i].cid, s->cid, PEER_CID_BYTES) == 0 &&
            memcmp(s->n->interest[i].sender, sp->p->id, PEER_ID_BYTES) == 0)
            return 1;
    return 0;
}

/* Who fetches the content now, ordered by id (this agent is the NULL
 * entry): recomputed once a turn, after the turn changed the peers. */
static uint64_t share_end(const peer_swarm *s);

static void update_members(peer_swarm *s, int64_t now)
{
    swarm_peer *before[MAX_MEMBERS];
    size_t n_before = s->n_members;
    memcpy(before, s->members, n_before * sizeof *before);
    uint64_t lo = peer_swarm_share_start(s), hi = share_end(s);
    size_t m = 0;
    s->members[m++] = NULL;
    pthread_mutex_lock(&s->n->catalog_lock);
    for (size_t i = 0; i < s->n_sp && m < MAX_MEMBERS; i++) {
        swarm_peer *sp = &s->sp[i];
        int was = sp->member;
        sp->member = 0;
        if (!is_member(s, sp, now) || id_cmp(sp->p->id, s->n->id) == 0)
            continue;
        int seen = 0; /* one agent reached at two addresses counts once */
        for (size_t k = 1; k < m && !seen; k++)
            seen = id_cmp(s->members[k]->p->id, sp->p->id) == 0;
        if (seen)
            continue;
        /* Its stall is counted from when it joined, not from an answer it
         * gave before it fetched the content. */
        if (!was)
            sp->progress_at = now;
        sp->member = 1;
        s->members[m++] = sp;
    }
    pthread_mutex_unlock(&s->n->catalog_lock);
    /* Insertion sort: a few dozen members at most. */
    for (size_t i = 1; i < m; i++) {
        swarm_peer *x = s->members[i];
        const uint8_t *xid = x != NULL ? x->p->id : s->n->id;
        size_t k = i;
        while (k > 0) {
            swarm_peer *y = s->members[k - 1];
            if (id_cmp(y != NULL ? y->p->id : s->n->id, xid) <= 0)
                break;
            s->members[k] = y;
            k--;
        }
        s->members[k] = x;
    }
    s->n_members = m;
    for (size_t i = 0; i < m; i++)
        if (s->members[i] == NULL)
            s->rank = i;
    if (m == n_before && memcmp(before, s->members, m * sizeof *before) == 0)
        return;
    /* Pieces that just became this agent's share may be on their way to
     * their former owner, which says so only in its next answers. */
    if (n_before == 1)
        lo = 0, hi = s->pieces; /* alone, everything was its own */
    if (s->members_at != 0 && now - s->members_at < SETTLE_MAX_MS) {
        lo = lo > s->kept_lo ? lo : s->kept_lo; /* still settling: what both kept */
        hi = hi < s->kept_hi ? hi : s->kept_hi;
    }
    s->kept_lo = lo;
    s->kept_hi = hi > lo ? hi : lo;
    s->members_at = now;
}

/* Whether every member has answered since the last change of members had
 * time to reach it (or it waited long enough). */
static int settled(const peer_swarm *s, int64_t now)
{
    if (s->members_at == 0 || now - s->members_at >= SETTLE_MAX_MS)
        return 1;
    for (size_t i = 0; i < s->n_members; i++)
        if (s->members[i] != NULL && s->members[i]->answer_sent < s->members_at + SETTLE_LAG_MS)
            return 0;
    return 1;
}

int peer_swarm_origin_may(const peer_swarm *s, uint64_t piece)
{
    if (piece >= s->pieces)
        return 0;
    int64_t now = mono_ms();
    if (s->holders[piece] > 0) {
        /* Held by peers, who send it, unless nothing has come from any
         * peer for a long while (they claim what they do not send). */
        int64_t since = s->last_piece > s->opened ? s->last_piece : s->opened;
        return now - since > SWARM_STALL_MS;
    }
    /* A member fetches a piece in this long at 1 MB/s or more. */
    int64_t stall = STALL_MS + (int64_t)(s->piece_size / 1000);
    for (size_t i = 0; i < s->n_members; i++) {
        const swarm_peer *m = s->members[i];
        if (m != NULL && m->coming != NULL && !m->claim_broken && peer_bit_get(m->coming, piece) &&
            now - m->progress_at <= stall)
            return 0; /* on its way to that member, who will hold it */
    }
    const swarm_peer *owner = s->members[(size_t)(piece * s->n_members / s->pieces)];
    if (owner == NULL)
        return (piece >= s->kept_lo && piece < s->kept_hi) || settled(s, now);
    return now - owner->progress_at > stall;
}

unsigned peer_swarm_holders(const peer_swarm *s, uint64_t piece)
{
    return piece < s->pieces ? s->holders[piece] : 0;
}

/* Where this agent's share ends (exclusive). */
static uint64_t share_end(const peer_swarm *s)
{
    return s->n_members == 1 ? s->pieces : (uint64_t)(s->rank + 1) * s->pieces / s->n_members;
}

uint64_t peer_swarm_share_start(const peer_swarm *s)
{
    if (s->n_members == 1) {
        /* Alone as far as it knows: start where its id points, so that
         * agents that have not heard of each other yet fetch apart. */
        uint64_t at = 0;
        for (int i = 0; i < 8; i++)
            at = at << 8 | s->n->id[i];
        return s->pieces ? (uint64_t)(((unsigned __int128)at * s->pieces) >> 64) : 0;
    }
    return (uint64_t)s->rank * s->pieces / s->n_members;
}

static void strike(peer_node *n, peer_entry *p);
static int sp_holds(const peer_swarm *s, const swarm_peer *sp, uint64_t i);
static void broke_claim(peer_node *n, peer_entry *p);
static void judge(peer_node *n, peer_entry *p, int verdict, size_t len);

void peer_swarm_blame(peer_swarm *s)
{
    /* Without piece hashes the bad bytes cannot be traced to one sender:
     * only a sole sender is certainly the one, and only it is blamed (an
     * honest peer must never pay for another's piece). */
    swarm_peer *sole = NULL;
    size_t senders = 0;
    for (size_t i = 0; i < s->n_sp; i++) {
        if (!s->sp[i].contributed)
            continue;
        s->sp[i].contributed = 0;
        senders++;
        sole = &s->sp[i];
    }
    if (senders == 1)
        strike(s->n, sole->p);
}

unsigned peer_swarm_sources(const peer_swarm *s)
{
    unsigned k = 0;
    int64_t now = mono_ms();
    for (size_t i = 0; i < s->n_sp; i++)
        if (holdings_count(&s->sp[i], now) && s->sp[i].status != PEER_HAVE_NONE)
            k++;
    return k;
}

static void ban(peer_node *n, peer_entry *p, int64_t now)
{
    uint32_t ban_s = n->cfg.ban_seconds ? n->cfg.ban_seconds : 3600;
    if (p->banned_until > now)
        return;
    p->banned_until = now + (int64_t)ban_s * 1000;
    atomic_fetch_add(&n->bans, 1);
    /* Several agents may share an address (a NAT, containers on one host),
     * so one ban is for the peer alone; a second one at the same address
     * bans the address (a liar opening port after port). */
    if (banned(n, p->host, now))
        for (peer_entry *q = n->peers; q != NULL; q = q->next)
            if (strcmp(q->host, p->host) == 0 && q->banned_until < p->banned_until)
                q->banned_until = p->banned_until;
}

/* A peer sent a bad piece: a strike, and after enough of them a ban. */
static void strike(peer_node *n, peer_entry *p)
{
    unsigned ban_after = n->cfg.ban_after ? n->cfg.ban_after : 4;
    atomic_fetch_add(&n->bad_pieces, 1);
    if (++p->strikes >= ban_after)
        ban(n, p, mono_ms());
}

/* A peer refused a piece it said it held. It costs trust as a bad piece
 * does: a peer that claims what it does not send holds the others back
 * (they leave the piece to it, and to the members it names) without
 * sending a bad byte. An honest peer breaks a claim only when its content
 * goes (a job cancelled, a cache emptied, a file changed on disk): at most
 * once per answer, which is all that counts, and the count starts again
 * after BROKEN_WINDOW_MS. */
static void broke_claim(peer_node *n, peer_entry *p)
{
    unsigned ban_after = n->cfg.ban_after ? n->cfg.ban_after : 4;
    int64_t now = mono_ms();
    atomic_fetch_add(&n->broken_claims, 1);
    if (now - p->broken_since > BROKEN_WINDOW_MS) {
        p->broken = 0;
        p->broken_since = now;
    }
    if (++p->broken >= ban_after)
        ban(n, p, now);
}

/* A reply arrived (or failed) for a request of this swarm. */
static void take_have(peer_swarm *s, request *r, const peer_msg *m)
{
    swarm_peer *sp = swarm_find(s, r->p);
    if (sp == NULL)
        return;
    sp->asking = 0;
    if (m == NULL)
        return;
    int64_t now = mono_ms();
    if (m->have_status != PEER_HAVE_NONE && m->piece_count != s->pieces)
        return; /* another idea of the content: ignore it */
    count_holdings(s, sp, 0);
    uint64_t count = m->have_status == PEER_HAVE_ALL ? s->pieces : 0;
    size_t bytes = peer_bits_bytes(s->pieces);
    free(sp->bits);
    sp->bits = NULL;
    sp->status = m->have_status;
    if (m->have_status == PEER_HAVE_SOME) {
        sp->bits = malloc(bytes);
        if (sp->bits == NULL) {
            sp->status = PEER_HAVE_NONE;
        } else {
            memcpy(sp->bits, m->bitfield, bytes);
            count += peer_bits_count(sp->bits, s->pieces);
        }
    }
    sp->role = m->role;
    free(sp->coming);
    sp->coming = NULL;
    if ((m->role & PEER_ROLE_COMING) && (sp->coming = malloc(bytes)) != NULL)
        memcpy(sp->coming, m->coming, bytes);
    sp->answer_sent = sp->sent;
    sp->claim_broken = 0; /* its claims are taken at their word again */
    if (sp->answered == 0 || count > sp->count)
        sp->progress_at = now;
    sp->count = count;
    sp->answered = now;
    r->p->cache_host |= (m->role & PEER_ROLE_CACHE_HOST) != 0;
    count_holdings(s, sp, holdings_count(sp, now));
}

static void take_piece(peer_node *n, peer_swarm *s, request *r, const peer_msg *m)
{
    peer_entry *p = r->p;
    if (p->in_flight > 0)
        p->in_flight--;
    if (m == NULL || m->piece_status != PEER_PIECE_OK) {
        /* No answer in time, or none that opened (a connection the peer
         * breaks, a reply nng refuses as too long): the peer gets fewer
         * requests, and none for a while after a few such in a row. */
        if (m == NULL) {
            if (r->result == NNG_ETIMEDOUT)
                atomic_fetch_add(&n->timeouts, 1);
            if (p->slow++ == 0)
                p->slow_since = mono_ms();
        }
        swarm_peer *sp = swarm_find(s, p);
        if (m != NULL && sp != NULL) {
            /* NOT_HELD: ask what it holds now. Refusing again and again
             * (whatever it claims to hold): its holdings stop counting for
             * a while, so that the origin or others send those pieces. */
            int broken = 0;
            if (m->piece_status == PEER_PIECE_NOT_HELD) {
                sp->asked = 0;
                /* Its claim broken: nothing it claims counts until it
                 * answers again, and it loses trust (broke_claim). Its
                 * other replies under the same claim are no news. */
                broken = sp_holds(s, sp, r->piece) || sp->claim_broken;
                if (!sp->claim_broken && broken) {
                    sp->claim_broken = 1;
                    count_holdings(s, sp, 0);
                    broke_claim(n, p);
                }
            }
            if (!broken && ++sp->refused >= REFUSALS) {
                sp->refused = 0;
                sp->quiet_until = mono_ms() + QUIET_MS;
                count_holdings(s, sp, 0);
            }
        }
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    p->slow = 0;
    if (p->banned_until > mono_ms()) {
        /* Asked before its ban, come since: dropped unread, the bytes of
         * a peer known to lie are not worth checking. */
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    swarm_peer *from = swarm_find(s, p);
    if (from != NULL)
        from->refused = 0;
    if (m->data_len != piece_len(s->size, s->piece_size, r->piece)) {
        strike(n, p); /* more or less than the piece */
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    int took = 0;
    int verdict = s->ops.piece(s->ops.ctx, r->piece, m->data, m->data_len, p->cache_host, p->serial,
                               r->reply, &took);
    if (took)
        r->reply = NULL; /* the callback holds it now */
    if (verdict == PEER_VERDICT_PENDING) {
        s->last_piece = mono_ms(); /* it came; its worth is told later */
        p->judging++;
        return;
    }
    if (verdict == PEER_VERDICT_LATER && from != NULL)
        from->contributed = 1;
    if (verdict == PEER_VERDICT_GOOD || verdict == PEER_VERDICT_LATER)
        s->last_piece = mono_ms();
    judge(n, p, verdict, m->data_len);
}

void peer_piece_release(void *kept)
{
    if (kept != NULL)
        nng_msg_free(kept);
}

/* What a piece from p (NULL: gone since) was worth. */
static void judge(peer_node *n, peer_entry *p, int verdict, size_t len)
{
    if (verdict == PEER_VERDICT_GOOD || verdict == PEER_VERDICT_LATER)
        atomic_fetch_add(&n->downloaded, len);
    else if (verdict == PEER_VERDICT_BAD && p != NULL)
        strike(n, p);
}

void peer_node_judge(peer_node *n, uint64_t sender, int verdict, size_t len)
{
    peer_entry *p = n->peers;
    while (p != NULL && p->serial != sender)
        p = p->next;
    if (p != NULL && p->judging > 0)
        p->judging--;
    judge(n, p, verdict, len);
}

/* The owner's handling of a finished request. */
static void finish_request(peer_node *n, request *r)
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
        take_have(r->s, r, ok ? &m : NULL);
    else
        take_piece(n, r->s, r, ok ? &m : NULL);
}

/* ------------------------------------------------------------------ */
/* Scheduling                                                         */

static unsigned slots(const peer_node *n, const peer_entry *p)
{
    unsigned k = n->cfg.in_flight ? n->cfg.in_flight : 4;
    unsigned shift = p->slow < 2 ? p->slow : 2;
    k >>= shift;
    if (k == 0)
        k = 1;
    if (p->slow >= 3)
        k = 0; /* stalled: left alone for a while */
    /* Pieces awaiting their verdict count as in flight: a peer sending bad
     * pieces gets no more than k past the strike that bans it. */
    unsigned busy = p->in_flight + p->judging;
    return k > busy ? k - busy : 0;
}

static int sp_holds(const peer_swarm *s, const swarm_peer *sp, uint64_t i)
{
    (void)s;
    return sp->status == PEER_HAVE_ALL ||
           (sp->status == PEER_HAVE_SOME && peer_bit_get(sp->bits, i));
}

/* Rarest first: the piece this peer holds that fewest peers hold. */
static int pick_piece(peer_swarm *s, const swarm_peer *sp, uint64_t *out)
{
    uint64_t best = UINT64_MAX;
    unsigned best_h = UINT32_MAX;
    uint64_t scan = s->pieces < SCAN_PIECES ? s->pieces : SCAN_PIECES;
    for (uint64_t k = 0; k < scan; k++) {
        uint64_t i = (s->cursor + k) % s->pieces;
        if (!sp_holds(s, sp, i) || s->holders[i] >= best_h)
            continue;
        if (!s->ops.claim(s->ops.ctx, i, 0))
            continue;
        best = i;
        best_h = s->holders[i];
        if (best_h <= 1)
            break;
    }
    if (best == UINT64_MAX || !s->ops.claim(s->ops.ctx, best, 1)) {
        s->cursor = (s->cursor + scan) % s->pieces; /* the next look goes on from there */
        return 0;
    }
    s->cursor = (best + 1) % s->pieces;
    *out = best;
    return 1;
}

static void schedule_swarm(peer_node *n, peer_swarm *s, int64_t now)
{
    uint32_t timeout = n->cfg.piece_timeout_ms ? n->cfg.piece_timeout_ms : 8000;
    for (size_t i = 0; i < s->n_sp; i++) {
        swarm_peer *sp = &s->sp[i];
        peer_entry *p = sp->p;
        if (!usable(p, now)) {
            count_holdings(s, sp, 0); /* banned: what it claims counts for nothing */
            continue;
        }
        /* A stalled peer gets another chance after a while. */
        if (p->slow >= 3 && now - p->slow_since > SLOW_RESET_MS)
            p->slow = 0;
        count_holdings(s, sp, holdings_count(sp, now));
        int64_t refresh = now - s->opened < FAST_PHASE_MS ? REFRESH_FAST_MS : REFRESH_MS;
        /* After a change of members, a fresh answer settles it sooner. */
        int settle = s->members_at != 0 && now - s->members_at >= SETTLE_LAG_MS &&
                     now - s->members_at < SETTLE_MAX_MS &&
                     sp->sent < s->members_at + SETTLE_LAG_MS;
        if (!sp->asking && (now - sp->asked >= refresh || settle)) {
            if (send_request(n, p, s, PEER_MSG_HAVE_REQ, 0, HAVE_TIMEOUT_MS) != NULL) {
                sp->asking = 1;
                sp->asked = now;
                sp->sent = now;
            }
        }
        if (!holdings_count(sp, now) || sp->status == PEER_HAVE_NONE)
            continue;
        for (unsigned k = slots(n, p); k > 0; k--) {
            uint64_t piece;
            if (!pick_piece(s, sp, &piece))
                break;
            if (send_request(n, p, s, PEER_MSG_PIECE_REQ, piece, timeout) == NULL) {
                s->ops.lost(s->ops.ctx, piece);
                break;
            }
            p->in_flight++;
        }
    }
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
        for (peer_swarm *s = n->swarms; s != NULL; s = s->next) {
            swarm_peer *sp = swarm_find(s, p);
            if (sp == NULL)
                continue;
            count_holdings(s, sp, 0);
            free(sp->bits);
            free(sp->coming);
            *sp = s->sp[--s->n_sp];
        }
        *pp = p->next;
        dial_note_free(n, p);
        close_later(n, p->sock);
        free(p);
        n->n_peers--;
    }
}

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
    while (f != NULL) {
        found *next = f->next;
        char host[64];
        if (url_host(f->url, host, sizeof host) == 0 && !banned(n, host, now)) {
            peer_entry *p = add_peer(n, f->url, 0, f->cache_host);
            if (p != NULL && !p->has_id) {
                memcpy(p->id, f->id, PEER_ID_BYTES);
                p->has_id = 1;
            }
        }
        free(f);
        f = next;
    }
    while (done != NULL) {
        request *next = done->next_done;
        done->next_done = NULL;
        finish_request(n, done);
        request_free(n, done);
        done = next;
    }
    if (now - n->last_forget > 1000) {
        n->last_forget = now;
        forget_peers(n, now);
    }
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        pace_dialer(n, p, now);
    for (peer_swarm *s = n->swarms; s != NULL; s = s->next) {
        schedule_swarm(n, s, now);
        update_members(s, now);
    }
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

int peer_node_reconfigure(peer_node *n, const peer_node_config *cfg, char *why, size_t why_len)
{
    for (size_t i = 0; i < cfg->n_peers + cfg->n_cache_hosts; i++) {
        const char *url = i < cfg->n_peers ? cfg->peers[i] : cfg->cache_hosts[i - cfg->n_peers];
        if (!url_ok(url)) {
            snprintf(why, why_len, "%s: not a tcp:// or tls+tcp:// address", url);
            return PEER_EADDRESS;
        }
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
        peer_entry *p = add_peer(n, url, 1, cache);
        if (p == NULL) {
            if (err == PEER_OK)
                snprintf(why, why_len, "%s: cannot dial", url);
            err = PEER_ENNG;
            continue;
        }
        p->configured = 1; /* it may have been found by a beacon first */
        if (configured_in(cfg, url, 1))
            p->cache_host = 1;
    }
    return err;
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
/* Beacons                                                            */

static int port_of(const char *url)
{
    const char *c = strrchr(url, ':');
    return c != NULL ? atoi(c + 1) : 0;
}

static void send_beacons(peer_node *n, const struct sockaddr_in *group)
{
    peer_msg m;
    head_init(n, &m, PEER_MSG_BEACON, 0);
    m.port = (uint16_t)port_of(n->listen_url);
    m.beacon_flags = (uint8_t)((n->cfg.cache_host ? PEER_ROLE_CACHE_HOST : 0) |
                               (is_tls(n->listen_url) ? PEER_BEACON_TLS : 0));
    uint8_t buf[256];
    size_t len;
    if (m.port == 0 || peer_wire_seal(&n->key, &m, buf, sizeof buf, &len) != PEER_OK)
        return;
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return;
    for (struct ifaddrs *i = ifs; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            !(i->ifa_flags & IFF_MULTICAST))
            continue;
        struct in_addr a = ((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr;
        struct ip_mreq mr = {.imr_multiaddr = group->sin_addr, .imr_interface = a};
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr);
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a);
        sendto(n->beacon_fd, buf, len, 0, (const struct sockaddr *)group, sizeof *group);
    }
    freeifaddrs(ifs);
}

static void hear_beacon(peer_node *n)
{
    uint8_t buf[512];
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    ssize_t len =
        recvfrom(n->beacon_fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
    if (len <= 0 || from.sin_family != AF_INET)
        return;
    peer_msg m;
    int err = peer_wire_open(&n->key, buf, (size_t)len, &m);
    if (err == PEER_OK && m.head.type != PEER_MSG_BEACON)
        err = PEER_ETYPE;
    if (err == PEER_OK && memcmp(m.head.sender, n->id, PEER_ID_BYTES) == 0)
        return; /* our own */
    uint8_t source[PEER_SOURCE_BYTES];
    peer_replay_source_ipv4((const uint8_t *)&from.sin_addr.s_addr, source);
    if (err == PEER_OK)
        err = peer_replay_check(n->beacon_replay, source, peer_wire_nonce(buf), m.head.time_ms,
                                wall_ms());
    if (err != PEER_OK) {
        atomic_fetch_add(&n->refused, 1);
        return;
    }
    found *f = calloc(1, sizeof *f);
    if (f == NULL)
        return;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
    snprintf(f->url, sizeof f->url, "%s://%s:%u",
             (m.beacon_flags & PEER_BEACON_TLS) ? "tls+tcp" : "tcp", ip, (unsigned)m.port);
    memcpy(f->id, m.head.sender, PEER_ID_BYTES);
    f->cache_host = (m.beacon_flags & PEER_ROLE_CACHE_HOST) != 0;
    pthread_mutex_lock(&n->lock);
    if (n->n_found < 256) {
        f->next = n->found_head;
        n->found_head = f;
        n->n_found++;
        f = NULL;
    }
    pthread_mutex_unlock(&n->lock);
    free(f);
    wake(n);
}

static void *beacon_main(void *arg)
{
    peer_node *n = arg;
    uint32_t interval = n->cfg.beacon_interval_ms ? n->cfg.beacon_interval_ms : 5000;
    struct sockaddr_in group = {
        .sin_family = AF_INET,
        .sin_port = htons(n->cfg.beacon_port ? n->cfg.beacon_port : PEER_BEACON_PORT)};
    inet_pton(AF_INET, n->cfg.beacon_group ? n->cfg.beacon_group : PEER_BEACON_GROUP,
              &group.sin_addr);
    int64_t next = 0;
    for (;;) {
        int64_t now = mono_ms();
        if (now >= next) {
            send_beacons(n, &group);
            /* A little jitter keeps agents started together apart. */
            next = now + interval - interval / 10 + (int64_t)randombytes_uniform(interval / 5 + 1);
        }
        struct pollfd pfd[2] = {{.fd = n->beacon_fd, .events = POLLIN},
                                {.fd = n->beacon_pipe[0], .events = POLLIN}};
        int64_t wait = next - mono_ms();
        if (poll(pfd, 2, wait > 0 ? (int)wait : 0) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            break;
        if (pfd[0].revents & POLLIN)
            hear_beacon(n);
    }
    return NULL;
}

static int beacons_open(peer_node *n, char *why, size_t why_len)
{
    if (pipe2(n->beacon_pipe, O_CLOEXEC) != 0) {
        snprintf(why, why_len, "pipe: %s", strerror(errno));
        return PEER_EIO;
    }
    n->beacon_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    unsigned char loop = 1, ttl = 1;
    struct sockaddr_in any = {.sin_family = AF_INET,
                              .sin_port =
                                  htons(n->cfg.beacon_port ? n->cfg.beacon_port : PEER_BEACON_PORT),
                              .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (n->beacon_fd < 0 ||
        setsockopt(n->beacon_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(n->beacon_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0 ||
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0 ||
        bind(n->beacon_fd, (struct sockaddr *)&any, sizeof any) != 0) {
        snprintf(why, why_len, "beacon socket on port %u: %s", (unsigned)ntohs(any.sin_port),
                 strerror(errno));
        return PEER_EIO;
    }
    if (peer_replay_new(4096, 64, &n->beacon_replay) != PEER_OK) {
        snprintf(why, why_len, "out of memory");
        return PEER_ENOMEM;
    }
    if (pthread_create(&n->beacon_thread, NULL, beacon_main, n) != 0) {
        snprintf(why, why_len, "cannot start the beacon thread");
        return PEER_ENOMEM;
    }
    n->beacon_running = 1;
    return PEER_OK;
}

/* ------------------------------------------------------------------ */
/* Opening and closing                                                */

int peer_node_open(const peer_node_config *cfg, peer_node **out, char *why, size_t why_len)
{
    if (cfg->group_key == NULL) {
        snprintf(why, why_len, "no group key");
        return PEER_EINVAL;
    }
    if (validate_init() != 0) {
        snprintf(why, why_len, "libsodium could not initialise");
        return PEER_ECRYPTO;
    }
    peer_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return PEER_ENOMEM;
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
        snprintf(why, why_len, "out of memory");
        peer_node_close(n);
        return PEER_ENOMEM;
    }
    peer_wire_key_derive(cfg->group_key, &n->key);
    randombytes_buf(n->id, sizeof n->id);
    int err = peer_replay_new(REPLAY_SLOTS, REPLAY_SOURCES, &n->replay);
    if (err != PEER_OK) {
        snprintf(why, why_len, "out of memory");
        peer_node_close(n);
        return err;
    }
    if (cfg->listen != NULL && cfg->listen[0] != '\0') {
        if (!url_ok(cfg->listen)) {
            snprintf(why, why_len, "%s: not a tcp:// or tls+tcp:// address", cfg->listen);
            peer_node_close(n);
            return PEER_EADDRESS;
        }
        err = server_open(n, why, why_len);
        if (err != PEER_OK) {
            peer_node_close(n);
            return err;
        }
    }
    for (size_t i = 0; i < cfg->n_peers + cfg->n_cache_hosts; i++) {
        int cache = i >= cfg->n_peers;
        const char *url = cache ? cfg->cache_hosts[i - cfg->n_peers] : cfg->peers[i];
        if (!url_ok(url)) {
            snprintf(why, why_len, "%s: not a tcp:// or tls+tcp:// address", url);
            peer_node_close(n);
            return PEER_EADDRESS;
        }
        if (add_peer(n, url, 1, cache) == NULL) {
            snprintf(why, why_len, "%s: cannot dial", url);
            peer_node_close(n);
            return PEER_ENNG;
        }
    }
    if (cfg->beacons) {
        err = beacons_open(n, why, why_len);
        if (err != PEER_OK) {
            peer_node_close(n);
            return err;
        }
    }
    if (closer_open(n) != PEER_OK) {
        snprintf(why, why_len, "cannot start the peer closer thread");
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
    if (n->beacon_running) {
        if (write(n->beacon_pipe[1], "x", 1) != 1)
            pthread_cancel(n->beacon_thread);
        pthread_join(n->beacon_thread, NULL);
    }
    while (n->swarms != NULL)
        peer_swarm_close(n->swarms);
    while (n->requests != NULL)
        request_free(n, n->requests);
    pthread_mutex_lock(&n->catalog_lock);
    n->closing = 1;
    pthread_mutex_unlock(&n->catalog_lock);
    for (int i = 0; i < SERVER_WORKERS; i++)
        if (n->workers[i].aio != NULL)
            nng_aio_stop(n->workers[i].aio);
    closer_close(n);
    if (n->serving)
        nng_close(n->server);
    for (int i = 0; i < SERVER_WORKERS; i++) {
        worker *w = &n->workers[i];
        if (w->reply != NULL)
            nng_msg_free(w->reply);
        if (w->aio != NULL)
            nng_aio_free(w->aio);
    }
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
    while (n->offers != NULL) {
        offer *o = n->offers;
        n->offers = o->next;
        offer_free(o);
    }
    if (n->beacon_fd >= 0)
        close(n->beacon_fd);
    for (int i = 0; i < 2; i++)
        if (n->beacon_pipe[i] >= 0)
            close(n->beacon_pipe[i]);
    peer_replay_free(n->replay);
    peer_replay_free(n->beacon_replay);
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
