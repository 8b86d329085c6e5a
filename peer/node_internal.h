/*
 * What the files of the node share: its state and the calls one file makes
 * into another. Not part of the peer module's interface (that is peer.h).
 *
 *   node.c     opening, closing, the owner's turn, reconfiguring, and the
 *              helpers every part uses (addresses, TLS, sealing)
 *   serve.c    the catalog of offered content and the server's workers
 *   conns.c    the server's connections and the closer thread
 *   request.c  the client's requests
 *   swarm.c    fetching: swarms, members and shares, scheduling, trust
 *   peers.c    the peers known: entries, dialing and its pace, forgetting
 *   beacons.c  multicast discovery
 *
 * Three kinds of threads meet in the node. The owner (the agent's engine)
 * calls every peer_* function and receives the swarm callbacks inside
 * peer_node_step. nng's threads run the server (workers answering
 * requests from the catalog of offered content) and complete the client's
 * requests, which they hand to the owner through the `done` list. The
 * beacon thread sends and hears multicast beacons and hands new peers over
 * through the `found` list. `lock` guards those two lists; `catalog_lock`
 * guards the catalog and the server's counters.
 */
#ifndef DOPA_PEER_NODE_INTERNAL_H
#define DOPA_PEER_NODE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <sodium.h>

#include "peer.h"

#define SERVER_WORKERS 16
#define INTEREST_SLOTS 256
#define FORGET_MS      60000 /* a discovered peer not heard from is forgotten */
#define MAX_PEERS      1024
#define MAX_MEMBERS    256 /* agents sharing the origin's work for one content */

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
    int dialing;         /* its dialer runs: configured, a cache host, or wanted */
    int64_t wanted_at;   /* mono ms: a swarm last had it among its neighbours */
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

/* What one peer holds of one swarm's content (swarm.c). */
typedef struct swarm_peer swarm_peer;

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
    swarm_peer *members[MAX_MEMBERS]; /* fetching it, in fetch order; NULL is this agent */
    int64_t last_piece;               /* mono ms of the last piece from a peer */
    size_t n_members, rank;
    size_t n_fetchers;   /* the first members, who own the origin's shares */
    int fetching;        /* this agent is one of the origin's fetchers now */
    int candidate;       /* this agent is among the first peers in fetch order */
    uint64_t self_order; /* this agent's place in fetch order */
    size_t n_known;      /* usable peers with an id */
    int64_t rotated_at;  /* a neighbour last made way for another */
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

/* Content offered to peers (serve.c). */
typedef struct offer offer;

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
    validate_error error;                    /* peer_node_error(): the owner's last failed call */
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
    _Atomic size_t known_peers; /* n_peers, for the beacon thread */
    /* Peer messages other than pieces (availability, beacons), each way. */
    _Atomic uint64_t control_sent, control_received;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                      */

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint64_t random64(void)
{
    uint64_t v;
    randombytes_buf(&v, sizeof v);
    return v;
}

static inline void wake(peer_node *n)
{
    if (n->cfg.wakeup != NULL)
        n->cfg.wakeup(n->cfg.wakeup_ctx);
}

static inline uint64_t piece_count(uint64_t size, uint32_t piece_size)
{
    return size == 0 ? 0 : (size - 1) / piece_size + 1;
}

static inline uint32_t piece_len(uint64_t size, uint32_t piece_size, uint64_t i)
{
    uint64_t start = i * piece_size;
    uint64_t left = size - start;
    return left < piece_size ? (uint32_t)left : piece_size;
}

static inline int is_tls(const char *url)
{
    return strncmp(url, "tls+tcp://", 10) == 0;
}

/* ------------------------------------------------------------------ */
/* Calls across the files                                             */

/* Each carries node_ and the name of its file (node_serve_* is serve.c's,
 * node_conn_* and node_closer_* conns.c's); node.c's have node_ alone. */

/* node.c */
/* The host part of "tcp://host:port" (what bans apply to). */
int node_url_host(const char *url, char *host, size_t len);
/* A tcp:// or tls+tcp:// address short enough for a beacon, with a host. */
int node_url_ok(const char *url);
/* The TLS settings for one side, from the configured files. */
int node_tls_config(peer_node *n, nng_tls_mode mode, nng_tls_config **out, validate_error *why);
/* A message of this node's, dated now, with nothing but its header set. */
void node_head_init(peer_node *n, peer_msg *m, int type, uint64_t request_id);
/* A new nng message holding `m` sealed. */
int node_seal_msg(peer_node *n, const peer_msg *m, nng_msg **out);

/* serve.c */
/* Opens the server socket, starts listening on cfg.listen and the workers. */
int node_serve_open(peer_node *n, validate_error *why);
/* Starts the server's listener on url. */
int node_serve_listen(peer_node *n, const char *url, validate_error *why);
/* Frees every offer (the node closing, no worker left). */
void node_serve_free_catalog(peer_node *n);

/* conns.c */
/* The connection of a request that came on the pipe, when it may be
 * served: known and not on its way out (catalog_lock held). */
conn *node_conn_serving(peer_node *n, uint32_t pipe);
/* The server's pipe callback: notes connections, never closes one. */
void node_conn_pipe_event(nng_pipe pipe, nng_pipe_ev ev, void *arg);
/* Starts the closer thread, once the node is set up; closes what is left
 * to close, then stops it. */
int node_closer_open(peer_node *n);
void node_closer_close(peer_node *n);
/* The owner: a forgotten peer's socket, for the closer to close. */
void node_closer_take_socket(peer_node *n, nng_socket sock);

/* request.c */
/* Sends a HAVE_REQ or PIECE_REQ (type) about s's content to p, to be
 * answered within timeout_ms; NULL when it cannot be sent. */
request *node_request_send(peer_node *n, peer_entry *p, peer_swarm *s, int type, uint64_t piece,
                           uint32_t timeout_ms);
/* Stops a request and frees it (owner thread). */
void node_request_free(peer_node *n, request *r);
/* The owner's handling of a finished request: its reply opened, checked
 * against what was asked and given to its swarm. */
void node_request_finish(peer_node *n, request *r);

/* swarm.c */
/* A peer the swarm asks from now on (nothing if it knows it already). */
void node_swarm_add_peer(peer_swarm *s, peer_entry *p);
/* Drops a peer about to be forgotten from the swarm. */
void node_swarm_drop_peer(peer_swarm *s, peer_entry *p);
/* The owner's turn for one swarm: requests sent, members updated. */
void node_swarm_step(peer_node *n, peer_swarm *s, int64_t now);
/* A reply (or its failure, m NULL) for a request of this swarm. */
void node_swarm_take_have(peer_swarm *s, request *r, const peer_msg *m);
void node_swarm_take_piece(peer_node *n, peer_swarm *s, request *r, const peer_msg *m);

/* peers.c */
/* The peer at url: the one known, seen again now, else a new one, dialled
 * and known to every swarm; NULL if it cannot be added. */
peer_entry *node_peers_add(peer_node *n, const char *url, int configured, int cache_host);
/* A swarm has the peer among its neighbours: it is dialled (again). */
void node_peers_want(peer_node *n, peer_entry *p, int64_t now);
/* Whether an address is banned: two of its peers were. */
int node_peers_banned(peer_node *n, const char *host, int64_t now);
/* Adds the peers beacons found (the list taken from `found`), frees it. */
void node_peers_found(peer_node *n, found *f, int64_t now);
/* The owner's turn for the peers: forgetting, pacing the dialers. */
void node_peers_step(peer_node *n, int64_t now);
/* Closes and frees every peer, and what beacons found and nobody took. */
void node_peers_close(peer_node *n);

/* beacons.c */
/* Opens the beacon socket and starts the beacon thread. */
int node_beacons_open(peer_node *n, validate_error *why);
/* Stops the beacon thread and closes its sockets. */
void node_beacons_close(peer_node *n);

#endif
