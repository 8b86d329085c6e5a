/*
 * peer: the LAN peer protocol (peer/PROTOCOL.md).
 *
 *  - group keys: the 32-byte secret a group of agents shares, its text form
 *    and key files (peer_group_key_*);
 *  - the wire format: sealing and opening messages with the group key,
 *    encoding and strictly decoding every message body (peer_wire_*); pure
 *    functions with no I/O, so that they can be fuzzed;
 *  - the node: an agent's presence in the group. It serves verified pieces
 *    of the content the agent offers, discovers peers (multicast beacons,
 *    configured peers and cache hosts), asks them what they hold, fetches
 *    pieces from them with several requests in flight, and keeps score of
 *    who delivered what (peer_node_*, peer_swarm_*).
 *
 * The module knows nothing of jobs or storage: the agent tells it what it
 * offers and what it needs, and hears back through callbacks run on its own
 * thread inside peer_node_step(). Functions return 0 or a PEER_E* code;
 * peer_strerror() names it.
 */
#ifndef DOPA_PEER_H
#define DOPA_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "validate.h" /* validate_error */

/* Error codes. The range 400..499 belongs to this module. */
enum peer_err {
    PEER_OK = 0,
    PEER_ENOMEM = 400, /* out of memory */
    PEER_EINVAL,       /* bad argument from the caller */
    PEER_EIO,          /* a read, write or stat failed */
    PEER_ECRYPTO,      /* libsodium could not initialise */
    PEER_EKEY_FORMAT,  /* group key text malformed */
    PEER_EKEY_PERMS,   /* group key file readable by others */
    PEER_EEXISTS,      /* refusing to overwrite an existing file */
    PEER_ETRUNCATED,   /* message shorter than its fields say */
    PEER_ETOOBIG,      /* message longer than its type allows */
    PEER_EMAGIC,       /* not a dopa peer message */
    PEER_EVERSION,     /* protocol version not supported */
    PEER_ERESERVED,    /* reserved bits set */
    PEER_ETYPE,        /* unknown message type, or not the one expected */
    PEER_EAUTH,        /* not sealed with our group key, or altered */
    PEER_ESTALE,       /* timestamp outside the accepted window */
    PEER_EREPLAY,      /* a message seen before */
    PEER_EMISMATCH,    /* a reply that does not answer what was asked */
    PEER_EADDRESS,     /* a peer address (nng URL) that is not acceptable */
    PEER_ENNG,         /* nng failed (socket, dial, listen) */
    PEER_ERR_END
};

/* The message for a PEER_E* code (or "unknown error"); never NULL. */
const char *peer_strerror(int err);

/* ------------------------------------------------------------------ */
/* Group keys                                                         */

#define PEER_GROUP_KEY_BYTES    32
#define PEER_GROUP_KEY_TEXT_MAX 64 /* "dopa-grp1:" + base64 of 32 bytes, with NUL */

/* A fresh random key. */
void peer_group_key_generate(uint8_t key[PEER_GROUP_KEY_BYTES]);
/* "dopa-grp1:" followed by the key in URL-safe base64 without padding. */
void peer_group_key_text(const uint8_t key[PEER_GROUP_KEY_BYTES],
                         char out[PEER_GROUP_KEY_TEXT_MAX]);
/* Accepts the text form with surrounding blanks; PEER_EKEY_FORMAT otherwise. */
int peer_group_key_parse(const char *text, uint8_t key[PEER_GROUP_KEY_BYTES]);
/* Writes a key file (mode 0600, complete before it gets its name); refuses
 * to replace an existing file unless overwrite is set; never follows a
 * symlink at `path`. */
int peer_group_key_save(const uint8_t key[PEER_GROUP_KEY_BYTES], const char *path, int overwrite,
                        validate_error *why);
/* Reads a key file: comment lines (#) and blank lines are skipped, the first
 * other line is the key. Refuses a file group or others may access. */
int peer_group_key_load(const char *path, uint8_t key[PEER_GROUP_KEY_BYTES], validate_error *why);

/* ------------------------------------------------------------------ */
/* The wire format (peer/PROTOCOL.md)                                 */

#define PEER_ID_BYTES       16 /* an agent's id in the group (random per start) */
#define PEER_CID_BYTES      32 /* a content id (validate_content_id*) */
#define PEER_NONCE_BYTES    24
#define PEER_MAC_BYTES      16
#define PEER_PREFIX_BYTES   40                    /* the clear prefix of every message */
#define PEER_HEADER_MAX     (32u * 1024u + 128u)  /* encrypted header of any message */
#define PEER_DATA_MAX       (16u * 1024u * 1024u) /* a piece: the largest piece size */
#define PEER_MAX_PIECES     (1u << 17)
#define PEER_URL_MAX        128   /* a listener address in a beacon */
#define PEER_TIME_WINDOW_MS 60000 /* accepted clock difference */
/* The largest sealed message: what a requester sets NNG_OPT_RECVMAXSZ to. */
#define PEER_MSG_MAX (PEER_PREFIX_BYTES + PEER_DATA_MAX + PEER_HEADER_MAX + PEER_MAC_BYTES)
/* The largest request: what a server sets NNG_OPT_RECVMAXSZ to. */
#define PEER_REQUEST_MAX 512

enum peer_msg_type {
    PEER_MSG_BEACON = 1,    /* multicast: "I am in the group, reach me here" */
    PEER_MSG_HAVE_REQ = 2,  /* which pieces of this content do you hold? */
    PEER_MSG_HAVE_REP = 3,  /* this is what I hold */
    PEER_MSG_PIECE_REQ = 4, /* send me piece i of this content */
    PEER_MSG_PIECE_REP = 5, /* here it is (or why not) */
};

/* HAVE_REP: what the replying agent holds of the content. */
enum peer_have_status {
    PEER_HAVE_NONE = 0, /* nothing (no bitfield) */
    PEER_HAVE_SOME = 1, /* the pieces in the bitfield */
    PEER_HAVE_ALL = 2,  /* every piece (no bitfield) */
};
#define PEER_ROLE_DOWNLOADING 0x01 /* it is fetching this content too */
#define PEER_ROLE_CACHE_HOST  0x02 /* it is a site's cache host */
#define PEER_ROLE_COMING      0x04 /* a second bitfield: pieces on their way to it */
#define PEER_BEACON_TLS       0x04 /* BEACON: its listener speaks tls+tcp:// */

/* PIECE_REP status. */
enum peer_piece_status {
    PEER_PIECE_OK = 0,       /* the data is the piece */
    PEER_PIECE_NOT_HELD = 1, /* it does not hold (a verified copy of) that piece */
    PEER_PIECE_BUSY = 2,     /* too many requests now: ask again later or elsewhere */
};

/* The decoded header every message starts with. */
typedef struct peer_msg_head {
    uint8_t type; /* enum peer_msg_type */
    uint8_t sender[PEER_ID_BYTES];
    int64_t time_ms;     /* sender's wall clock, unix ms */
    uint64_t request_id; /* a request's id; a reply echoes its request's */
} peer_msg_head;

/* A decoded message body (which fields mean something depends on type). */
typedef struct peer_msg {
    peer_msg_head head;
    uint8_t cid[PEER_CID_BYTES]; /* HAVE_*, PIECE_* */
    /* BEACON */
    uint16_t port;        /* its listener's TCP port on the beacon's source address */
    uint8_t beacon_flags; /* PEER_ROLE_CACHE_HOST, PEER_BEACON_TLS */
    /* HAVE_REP */
    uint8_t have_status;     /* enum peer_have_status */
    uint8_t role;            /* PEER_ROLE_* */
    uint32_t piece_count;    /* of the content, as the replier knows it */
    const uint8_t *bitfield; /* SOME: ceil(piece_count / 8) bytes, bit i = piece i,
                            most significant bit first; points into the opened buffer */
    const uint8_t *coming;   /* role has PEER_ROLE_COMING: a bitfield as above of the
                                pieces it is fetching (from the origin) or storing */
    /* PIECE_REQ, PIECE_REP */
    uint64_t piece;
    uint8_t piece_status; /* enum peer_piece_status */
    const uint8_t *data;  /* PIECE_REP with OK: the piece; points into the buffer */
    uint32_t data_len;
} peer_msg;

/* The symmetric key messages are sealed with, derived from the group key. */
typedef struct peer_wire_key {
    uint8_t k[32];
} peer_wire_key;
void peer_wire_key_derive(const uint8_t group_key[PEER_GROUP_KEY_BYTES], peer_wire_key *out);

/* Encodes and seals `m` into `out` (capacity cap), a fresh random nonce
 * each time. *len gets the length. PEER_ETOOBIG when cap is too small or a
 * field is out of range (PEER_EINVAL for a bad type). For PIECE_REP the data
 * is authenticated, not encrypted (PROTOCOL.md says why). */
int peer_wire_seal(const peer_wire_key *key, const peer_msg *m, uint8_t *out, size_t cap,
                   size_t *len);
/* The size peer_wire_seal needs for `m`. */
size_t peer_wire_sealed_size(const peer_msg *m);

/* Opens a sealed message in place: checks the prefix, authenticates it with
 * the key (PEER_EAUTH if it fails: not ours, or altered), decrypts the
 * header and decodes it strictly into *m (whose pointers then point into
 * buf). It does not check time or replay: see peer_replay_check. */
int peer_wire_open(const peer_wire_key *key, uint8_t *buf, size_t len, peer_msg *m);

/* Checks a message's time against `now_ms` (PEER_ESTALE outside
 * PEER_TIME_WINDOW_MS) and, for requests and beacons, that its nonce was not
 * seen within the window (PEER_EREPLAY, whichever source sent it first).
 * Every accepted nonce is remembered until its time leaves the window. The
 * filter holds at most `slots` of them: half the slots are shared out
 * equally between `sources` accounts, one per source (who delivered the
 * message: its address, see PEER_SOURCE_BYTES), the rest is common. A
 * source that has filled its share and finds the common half full is
 * refused (PEER_EREPLAY) rather than anything forgotten: a flood from one
 * source never takes another's share (PROTOCOL.md, Replay protection).
 * PEER_EINVAL for sources == 0 or sources > slots. */
typedef struct peer_replay peer_replay;
int peer_replay_new(size_t slots, unsigned sources, peer_replay **out);
void peer_replay_free(peer_replay *r);
/* A source: the IPv6 address a message came from, an IPv4 one as
 * ::ffff:a.b.c.d (peer_replay_source_ipv4). */
#define PEER_SOURCE_BYTES 16
int peer_replay_check(peer_replay *r, const uint8_t source[PEER_SOURCE_BYTES],
                      const uint8_t nonce[PEER_NONCE_BYTES], int64_t msg_time_ms, int64_t now_ms);
/* The source of an IPv4 address (4 bytes, network order). */
void peer_replay_source_ipv4(const uint8_t addr[4], uint8_t source[PEER_SOURCE_BYTES]);
/* The nonce of a sealed message (the caller checked len >= PEER_PREFIX_BYTES). */
const uint8_t *peer_wire_nonce(const uint8_t *buf);

/* Bitmaps of pieces (held, coming, claimed), in the wire's bit order: bit i
 * stands for piece i, in byte i / 8, most significant bit first
 * (PROTOCOL.md, HAVE_REP). A map of n pieces takes peer_bits_bytes(n)
 * bytes; the bits past n in its last byte are 0. peer_bit_get, _set and
 * _clear read and change piece i's bit; peer_bits_count counts the bits
 * set among the first n. */
static inline size_t peer_bits_bytes(uint64_t n)
{
    return (size_t)(n / 8 + (n % 8 != 0));
}
static inline int peer_bit_get(const uint8_t *bits, uint64_t i)
{
    return (bits[i >> 3] >> (7 - (i & 7))) & 1;
}
static inline void peer_bit_set(uint8_t *bits, uint64_t i)
{
    bits[i >> 3] = (uint8_t)(bits[i >> 3] | (0x80u >> (i & 7)));
}
static inline void peer_bit_clear(uint8_t *bits, uint64_t i)
{
    bits[i >> 3] = (uint8_t)(bits[i >> 3] & ~(0x80u >> (i & 7)));
}
static inline uint64_t peer_bits_count(const uint8_t *bits, uint64_t n)
{
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; i++)
        k += (uint64_t)peer_bit_get(bits, i);
    return k;
}

/* ------------------------------------------------------------------ */
/* The node: serving, discovery, fetching                             */

typedef struct peer_node peer_node;

/* Incoming connections by default: every agent of a swarm has the
 * fetcher candidates among its neighbours, so a candidate may be asked by
 * a few hundred agents of a LAN. */
#define PEER_MAX_CONNECTIONS 512

typedef struct peer_node_config {
    const uint8_t *group_key; /* PEER_GROUP_KEY_BYTES */
    const char *listen;       /* nng URL to serve on ("tcp://0.0.0.0:7880"), NULL: none */
    const char *const *peers; /* configured peers (nng URLs) */
    size_t n_peers;
    const char *const *cache_hosts; /* configured cache hosts (nng URLs) */
    size_t n_cache_hosts;
    int cache_host;              /* this agent is a site's cache host */
    int beacons;                 /* send and hear multicast beacons */
    const char *beacon_group;    /* NULL: PEER_BEACON_GROUP */
    uint16_t beacon_port;        /* 0: PEER_BEACON_PORT */
    uint32_t beacon_interval_ms; /* 0: 5000 */
    uint64_t upload_rate;        /* bytes per second served, 0: unlimited */
    unsigned max_connections;    /* incoming connections, 0: PEER_MAX_CONNECTIONS */
    unsigned max_queued;         /* requests of one connection being served, 0: 8 */
    unsigned in_flight;          /* piece requests in flight per peer, 0: 4 */
    uint32_t piece_timeout_ms;   /* a piece not here by then is asked elsewhere, 0: 8000 */
    unsigned ban_after;          /* bad pieces before a ban, 0: 4 */
    uint32_t ban_seconds;        /* 0: 3600 */
    /* tls+tcp:// (listener and peers): this agent's certificate and key
     * (PEM files; one file may hold both) and the CA its peers' certificates
     * must chain to. Both sides present certificates. */
    const char *tls_cert, *tls_key, *tls_ca;
    void (*wakeup)(void *ctx); /* from any thread: peer_node_step has work */
    void *wakeup_ctx;
    /* From any thread, or NULL: what an operator should hear of (the peer
     * port closing while descriptors run short). level: "info", "warning". */
    void (*log)(void *ctx, const char *level, const char *msg);
    void *log_ctx;
} peer_node_config;

#define PEER_BEACON_GROUP "239.192.77.77"
#define PEER_BEACON_PORT  7881

/* Starts listening (when cfg->listen is set), the beacon thread (when
 * cfg->beacons is set) and dials the configured peers. */
int peer_node_open(const peer_node_config *cfg, peer_node **out, validate_error *why);
void peer_node_close(peer_node *n);
/* The owner's turn (always the same thread): delivers replies through the
 * swarms' callbacks, refreshes availability, sends requests. Returns the ms
 * until it wants another turn. */
int64_t peer_node_step(peer_node *n);
/* The address it listens on, with the port it got ("" when not serving). */
const char *peer_node_listen_url(const peer_node *n);
/* Changes what may change while the node runs, from the owner's thread:
 * of cfg, upload_rate, max_queued, in_flight, piece_timeout_ms, ban_after
 * and ban_seconds take effect for the next requests; the configured peers
 * and cache hosts become cfg's (the new ones are dialled; one no longer
 * named is forgotten once no request uses it, unless beacons find it
 * again). The rest of cfg (group key, listener, TLS, beacons,
 * max_connections, cache_host) is ignored: it needs a new node.
 * PEER_EADDRESS, with nothing changed, when an address is not acceptable;
 * PEER_ENNG when one cannot be dialled (the others are taken); either way
 * peer_node_error() says which. */
int peer_node_reconfigure(peer_node *n, const peer_node_config *cfg);
/* The node's last failure (of peer_node_reconfigure, from the owner's
 * thread): code 0 when the last call succeeded. */
const validate_error *peer_node_error(const peer_node *n);

typedef struct peer_stats {
    uint64_t uploaded;         /* piece bytes sent */
    uint64_t downloaded;       /* piece bytes received that passed their check */
    uint64_t bad_pieces;       /* received pieces that failed their check */
    uint64_t bans;             /* peers banned since start */
    uint64_t refused;          /* messages that failed to open (not ours, stale, replayed) */
    uint64_t timeouts;         /* piece requests that ran out of time */
    uint64_t broken_claims;    /* pieces refused that the peer's last answer claimed */
    unsigned peers;            /* peers known now */
    unsigned banned;           /* peers banned now */
    unsigned connections;      /* live connections to the server now */
    uint64_t over_cap;         /* connections closed at once: the server was full */
    uint64_t evicted;          /* idle connections closed to let a newcomer in */
    uint64_t port_pauses;      /* times the listener closed while descriptors ran short */
    uint64_t control_sent;     /* messages other than pieces sent: availability, beacons */
    uint64_t control_received; /* the same, received (and opened) */
} peer_stats;
void peer_node_stats(const peer_node *n, peer_stats *out);

/* Serving. The node serves a piece only when it is marked held; with piece
 * hashes it hashes the piece again before sending it and serves nothing of
 * a piece that no longer matches; without them (content known only by its
 * whole-file hash) it serves only content offered complete, and only while
 * the file's size, inode and modification time are those it had when
 * offered. The node keeps its own duplicate of fd. */
typedef struct peer_offer_info {
    int fd; /* readable */
    uint64_t size;
    uint32_t piece_size;
    const uint8_t *piece_hashes; /* 32 bytes a piece (copied), or NULL */
    const uint8_t *held;         /* bitfield of held pieces, or NULL: all */
    int downloading;             /* the agent is fetching it (HAVE_REP says so) */
    int stable;                  /* a file only the agent writes, checked as it was made:
                                  * pieces are not hashed again, only served while the
                                  * file is unchanged (size, inode, modification time) */
} peer_offer_info;
int peer_offer(peer_node *n, const uint8_t cid[PEER_CID_BYTES], const peer_offer_info *info);
/* Another piece is held (verified and durable). */
void peer_offer_piece(peer_node *n, const uint8_t cid[PEER_CID_BYTES], uint64_t piece);
/* The pieces on their way to this agent (from the origin, or being stored)
 * replace those said before; HAVE_REP tells the swarm, whose members then
 * leave them to this agent rather than ask the origin for them too. A piece
 * stops coming when it is held. PEER_EINVAL when the content is not offered
 * or a piece is out of range (the others are taken). */
int peer_offer_coming(peer_node *n, const uint8_t cid[PEER_CID_BYTES], const uint64_t *pieces,
                      size_t count);
void peer_withdraw(peer_node *n, const uint8_t cid[PEER_CID_BYTES]);
/* Bytes of this content sent to peers so far (0 if not offered). */
uint64_t peer_offer_uploaded(peer_node *n, const uint8_t cid[PEER_CID_BYTES]);

/* Fetching: a swarm is the node's view of one content being fetched. */
typedef struct peer_swarm peer_swarm;

/* What a received piece was worth. */
enum peer_verdict {
    PEER_VERDICT_GOOD = 0,    /* it matched its hash */
    PEER_VERDICT_BAD = 1,     /* it did not: the sender loses trust */
    PEER_VERDICT_LATER = 2,   /* it cannot be judged yet (whole-file hash only) */
    PEER_VERDICT_UNUSED = 3,  /* not needed any more, or not stored (no blame) */
    PEER_VERDICT_PENDING = 4, /* kept a copy to check elsewhere: peer_node_judge() tells */
};

typedef struct peer_swarm_ops {
    /* May the piece be asked of a peer now (still missing, fetched nowhere
     * else)? With take set, a yes also claims it: the caller fetches it
     * nowhere else until `piece` or `lost` gives it back. */
    int (*claim)(void *ctx, uint64_t piece, int take);
    /* A claimed piece arrived whole from one peer (`sender` names it for
     * peer_node_judge); returns a PEER_VERDICT_*. The data lives only
     * during the call, unless the callback sets *took to keep it: then it
     * lives until peer_piece_release(handle), which any thread may call. */
    int (*piece)(void *ctx, uint64_t piece, const uint8_t *data, size_t len, int from_cache_host,
                 uint64_t sender, void *handle, int *took);
    /* A claimed piece did not arrive (refused, timed out, banned peer). */
    void (*lost)(void *ctx, uint64_t piece);
    void *ctx;
} peer_swarm_ops;

int peer_swarm_open(peer_node *n, const uint8_t cid[PEER_CID_BYTES], uint64_t size,
                    uint32_t piece_size, const peer_swarm_ops *ops, peer_swarm **out);
/* Stops its requests (their pieces are given back through `lost`). */
void peer_swarm_close(peer_swarm *s);
/* Every known peer has answered what it holds, or had its time: until then
 * the origin should wait (so that agents starting together share). */
int peer_swarm_ready(const peer_swarm *s);
/* Whether the origin should fetch this piece now: no peer holds it, and it
 * is in this agent's share of the pieces (the members fetching the same
 * content split them), or its owner has stopped making progress. */
int peer_swarm_origin_may(const peer_swarm *s, uint64_t piece);
/* The first piece of this agent's share (where origin fetches start). */
uint64_t peer_swarm_share_start(const peer_swarm *s);
/* The content failed its whole-file check: if one peer alone sent the
 * pieces judged LATER, it loses trust (with several, the bad bytes cannot
 * be traced and nobody is blamed). */
void peer_swarm_blame(peer_swarm *s);
/* Frees a piece a callback kept. */
void peer_piece_release(void *kept);
/* The verdict on a piece whose callback said PEER_VERDICT_PENDING (GOOD,
 * BAD, LATER or UNUSED), from the owner's thread; the sender may be gone. */
void peer_node_judge(peer_node *n, uint64_t sender, int verdict, size_t len);
/* Peers known to hold pieces of the content now. */
unsigned peer_swarm_sources(const peer_swarm *s);
/* Usable peers known to hold this piece. */
unsigned peer_swarm_holders(const peer_swarm *s, uint64_t piece);

#endif
