/*
 * The peer wire format (PROTOCOL.md): sealing a message with the group's
 * wire key, opening and strictly decoding one that came off the network,
 * and the replay filter. Pure functions over caller-owned buffers: no I/O,
 * no clock, so that they can be fuzzed. Offsets below follow PROTOCOL.md.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "peer.h"
#include "validate.h"

static const uint8_t magic[4] = {'D', 'O', 'P', 'P'};
#define WIRE_VERSION 1

/* The clear prefix. */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 4,
    OFF_TYPE = 5,
    OFF_RESERVED = 6,
    OFF_NONCE = 8,
    OFF_HEADER_LEN = 32,
    OFF_DATA_LEN = 36,
};

/* The encrypted header: the part every message has, then each body. */
enum {
    H_TYPE = 0,
    H_SENDER = 1,
    H_TIME = 17,
    H_REQUEST_ID = 25,
    H_BODY = 33,
    /* BEACON */
    H_BEACON_PORT = H_BODY,
    H_BEACON_FLAGS = H_BODY + 2,
    H_BEACON_LEN = H_BODY + 3,
    /* HAVE_REQ, HAVE_REP, PIECE_REQ, PIECE_REP */
    H_CID = H_BODY,
    H_HAVE_REQ_LEN = H_CID + PEER_CID_BYTES,
    /* HAVE_REP */
    H_HAVE_STATUS = H_CID + PEER_CID_BYTES,
    H_HAVE_ROLE = H_HAVE_STATUS + 1,
    H_HAVE_COUNT = H_HAVE_ROLE + 1,
    H_HAVE_BITFIELD = H_HAVE_COUNT + 4,
    /* PIECE_REQ, PIECE_REP */
    H_PIECE = H_CID + PEER_CID_BYTES,
    H_PIECE_REQ_LEN = H_PIECE + 8,
    H_PIECE_STATUS = H_PIECE + 8,
    H_PIECE_DATA_LEN = H_PIECE_STATUS + 1,
    H_PIECE_REP_LEN = H_PIECE_DATA_LEN + 4,
};

_Static_assert(OFF_DATA_LEN + 4 == PEER_PREFIX_BYTES, "prefix layout");
_Static_assert(H_BODY == 33 && H_BEACON_LEN == 36 && H_HAVE_REQ_LEN == 65 &&
                   H_HAVE_BITFIELD == 71 && H_PIECE_REQ_LEN == 73 && H_PIECE_REP_LEN == 78,
               "header layout");
_Static_assert(H_HAVE_BITFIELD + 2 * (PEER_MAX_PIECES / 8) <= PEER_HEADER_MAX,
               "the largest HAVE_REP fits in PEER_HEADER_MAX");
_Static_assert(PEER_PREFIX_BYTES + H_PIECE_REQ_LEN + PEER_MAC_BYTES <= PEER_REQUEST_MAX,
               "every request fits in PEER_REQUEST_MAX");
_Static_assert(PEER_NONCE_BYTES == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES &&
                   PEER_MAC_BYTES == crypto_aead_xchacha20poly1305_ietf_ABYTES &&
                   sizeof(peer_wire_key) == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "XChaCha20-Poly1305 sizes");

#define ALLOWED_BEACON_FLAGS (PEER_ROLE_CACHE_HOST | PEER_BEACON_TLS)
#define ALLOWED_ROLES        (PEER_ROLE_DOWNLOADING | PEER_ROLE_CACHE_HOST | PEER_ROLE_COMING)

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void peer_wire_key_derive(const uint8_t group_key[PEER_GROUP_KEY_BYTES], peer_wire_key *out)
{
    static const uint8_t personal[crypto_generichash_blake2b_PERSONALBYTES] = "dopa-peer-wire";
    (void)validate_init();
    crypto_generichash_blake2b_salt_personal(out->k, sizeof out->k, NULL, 0, group_key,
                                             PEER_GROUP_KEY_BYTES, NULL, personal);
}

const uint8_t *peer_wire_nonce(const uint8_t *buf)
{
    return buf + OFF_NONCE;
}

/* The rules the clear prefix alone decides, per type: header and data
 * lengths. Open applies them before any crypto, seal before encoding. */
static int check_lengths(uint8_t type, uint32_t header_len, uint32_t data_len)
{
    uint32_t min = 0, max = 0;
    switch (type) {
    case PEER_MSG_BEACON:
        min = max = H_BEACON_LEN;
        break;
    case PEER_MSG_HAVE_REQ:
        min = max = H_HAVE_REQ_LEN;
        break;
    case PEER_MSG_HAVE_REP:
        min = H_HAVE_BITFIELD;
        max = H_HAVE_BITFIELD + 2 * (uint32_t)peer_bits_bytes(PEER_MAX_PIECES);
        break;
    case PEER_MSG_PIECE_REQ:
        min = max = H_PIECE_REQ_LEN;
        break;
    case PEER_MSG_PIECE_REP:
        min = max = H_PIECE_REP_LEN;
        break;
    default:
        return PEER_ETYPE;
    }
    if (header_len < min)
        return PEER_ETRUNCATED;
    if (header_len > max)
        return PEER_ETOOBIG;
    if (data_len > (type == PEER_MSG_PIECE_REP ? PEER_DATA_MAX : 0))
        return PEER_ETOOBIG;
    return PEER_OK;
}

/* How many bitfields a HAVE_REP carries: the held pieces (SOME), then the
 * coming ones (PEER_ROLE_COMING). */
static uint32_t have_bitfields(const peer_msg *m)
{
    return (uint32_t)(m->have_status == PEER_HAVE_SOME) +
           (uint32_t)((m->role & PEER_ROLE_COMING) != 0);
}

/* Bits past piece_count in the bitfield's last byte must be zero. */
static int bitfield_tail_clear(const uint8_t *bits, uint32_t piece_count)
{
    for (uint64_t i = piece_count; i < 8 * (uint64_t)peer_bits_bytes(piece_count); i++)
        if (peer_bit_get(bits, i))
            return 0;
    return 1;
}

/* The rules on a message's fields, shared by seal (on *m) and open (on
 * what it decoded), so that seal never produces what open rejects.
 * data_len is the message's data length, D. */
static int check_fields(const peer_msg *m, uint32_t data_len)
{
    switch (m->head.type) {
    case PEER_MSG_BEACON:
        if (m->port == 0 || (m->beacon_flags & ~ALLOWED_BEACON_FLAGS) != 0)
            return PEER_ERESERVED;
        return PEER_OK;
    case PEER_MSG_HAVE_REQ:
        return PEER_OK;
    case PEER_MSG_PIECE_REQ:
        return m->piece < PEER_MAX_PIECES ? PEER_OK : PEER_ETOOBIG;
    case PEER_MSG_HAVE_REP:
        if (m->have_status > PEER_HAVE_ALL || (m->role & ~ALLOWED_ROLES) != 0)
            return PEER_ERESERVED;
        if (m->piece_count > PEER_MAX_PIECES)
            return PEER_ETOOBIG;
        /* NONE has no pieces, unless some are coming; SOME and ALL have
         * at least one. Nothing is coming to an agent that holds it all. */
        if (m->role & PEER_ROLE_COMING) {
            if (m->piece_count == 0 || m->have_status == PEER_HAVE_ALL)
                return PEER_ERESERVED;
        } else if ((m->have_status == PEER_HAVE_NONE) != (m->piece_count == 0)) {
            return PEER_ERESERVED;
        }
        if ((m->have_status == PEER_HAVE_SOME && m->bitfield == NULL) ||
            ((m->role & PEER_ROLE_COMING) && m->coming == NULL))
            return PEER_EINVAL; /* only seal can see these */
        if (m->have_status == PEER_HAVE_SOME && !bitfield_tail_clear(m->bitfield, m->piece_count))
            return PEER_ERESERVED;
        if ((m->role & PEER_ROLE_COMING) && !bitfield_tail_clear(m->coming, m->piece_count))
            return PEER_ERESERVED;
        return PEER_OK;
    case PEER_MSG_PIECE_REP:
        if (m->piece >= PEER_MAX_PIECES)
            return PEER_ETOOBIG;
        if (m->piece_status > PEER_PIECE_BUSY)
            return PEER_ERESERVED;
        if (data_len > PEER_DATA_MAX)
            return PEER_ETOOBIG;
        if (m->data_len != data_len)
            return m->data_len > data_len ? PEER_ETRUNCATED : PEER_ETOOBIG;
        /* Data comes with OK, and only with OK. */
        if (m->piece_status == PEER_PIECE_OK && data_len == 0)
            return PEER_ETRUNCATED;
        if (m->piece_status != PEER_PIECE_OK && data_len != 0)
            return PEER_ETOOBIG;
        return PEER_OK;
    default:
        return PEER_ETYPE;
    }
}

/* The encrypted header's length for a message whose fields passed
 * check_fields (0 for an unknown type). */
static size_t header_len(const peer_msg *m)
{
    switch (m->head.type) {
    case PEER_MSG_BEACON:
        return H_BEACON_LEN;
    case PEER_MSG_HAVE_REQ:
        return H_HAVE_REQ_LEN;
    case PEER_MSG_HAVE_REP:
        return H_HAVE_BITFIELD + have_bitfields(m) * peer_bits_bytes(m->piece_count);
    case PEER_MSG_PIECE_REQ:
        return H_PIECE_REQ_LEN;
    case PEER_MSG_PIECE_REP:
        return H_PIECE_REP_LEN;
    default:
        return 0;
    }
}

static size_t data_len_of(const peer_msg *m)
{
    return m->head.type == PEER_MSG_PIECE_REP ? m->data_len : 0;
}

size_t peer_wire_sealed_size(const peer_msg *m)
{
    if (m == NULL || header_len(m) == 0)
        return 0;
    return PEER_PREFIX_BYTES + data_len_of(m) + header_len(m) + PEER_MAC_BYTES;
}

static void encode_header(const peer_msg *m, uint8_t *h)
{
    h[H_TYPE] = m->head.type;
    memcpy(h + H_SENDER, m->head.sender, PEER_ID_BYTES);
    put_le64(h + H_TIME, (uint64_t)m->head.time_ms);
    put_le64(h + H_REQUEST_ID, m->head.request_id);
    switch (m->head.type) {
    case PEER_MSG_BEACON:
        put_le16(h + H_BEACON_PORT, m->port);
        h[H_BEACON_FLAGS] = m->beacon_flags;
        return;
    case PEER_MSG_HAVE_REQ:
        memcpy(h + H_CID, m->cid, PEER_CID_BYTES);
        return;
    case PEER_MSG_HAVE_REP: {
        memcpy(h + H_CID, m->cid, PEER_CID_BYTES);
        h[H_HAVE_STATUS] = m->have_status;
        h[H_HAVE_ROLE] = m->role;
        put_le32(h + H_HAVE_COUNT, m->piece_count);
        size_t at = H_HAVE_BITFIELD;
        if (m->have_status == PEER_HAVE_SOME) {
            memcpy(h + at, m->bitfield, peer_bits_bytes(m->piece_count));
            at += peer_bits_bytes(m->piece_count);
        }
        if (m->role & PEER_ROLE_COMING)
            memcpy(h + at, m->coming, peer_bits_bytes(m->piece_count));
        return;
    }
    case PEER_MSG_PIECE_REQ:
        memcpy(h + H_CID, m->cid, PEER_CID_BYTES);
        put_le64(h + H_PIECE, m->piece);
        return;
    case PEER_MSG_PIECE_REP:
        memcpy(h + H_CID, m->cid, PEER_CID_BYTES);
        put_le64(h + H_PIECE, m->piece);
        h[H_PIECE_STATUS] = m->piece_status;
        put_le32(h + H_PIECE_DATA_LEN, m->data_len);
        return;
    default:
        return;
    }
}

/* m->data may already sit at out + PEER_PREFIX_BYTES (a piece read into
 * place is not copied); m->bitfield must not point into out. */
int peer_wire_seal(const peer_wire_key *key, const peer_msg *m, uint8_t *out, size_t cap,
                   size_t *len)
{
    if (key == NULL || m == NULL || out == NULL || len == NULL)
        return PEER_EINVAL;
    if (validate_init() != VALIDATE_OK)
        return PEER_ECRYPTO;
    if (m->head.type == PEER_MSG_PIECE_REP && m->data_len > 0 && m->data == NULL)
        return PEER_EINVAL;
    int err = check_fields(m, (uint32_t)data_len_of(m));
    if (err != PEER_OK)
        return err == PEER_ETYPE ? PEER_EINVAL : err;
    size_t h_len = header_len(m), d_len = data_len_of(m);
    /* Implied by check_fields; kept as the guard on what follows. */
    err = check_lengths(m->head.type, (uint32_t)h_len, (uint32_t)d_len);
    if (err != PEER_OK)
        return err;
    size_t total = PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES;
    if (total > cap)
        return PEER_ETOOBIG;

    memcpy(out + OFF_MAGIC, magic, sizeof magic);
    out[OFF_VERSION] = WIRE_VERSION;
    out[OFF_TYPE] = m->head.type;
    out[OFF_RESERVED] = out[OFF_RESERVED + 1] = 0;
    randombytes_buf(out + OFF_NONCE, PEER_NONCE_BYTES);
    put_le32(out + OFF_HEADER_LEN, (uint32_t)h_len);
    put_le32(out + OFF_DATA_LEN, (uint32_t)d_len);
    /* memmove: the caller may have read the piece into place already. */
    if (d_len > 0 && m->data != out + PEER_PREFIX_BYTES)
        memmove(out + PEER_PREFIX_BYTES, m->data, d_len);
    uint8_t *h = out + PEER_PREFIX_BYTES + d_len;
    encode_header(m, h);
    crypto_aead_xchacha20poly1305_ietf_encrypt_detached(h, h + h_len, NULL, h, h_len, out,
                                                        PEER_PREFIX_BYTES + d_len, NULL,
                                                        out + OFF_NONCE, key->k);
    *len = total;
    return PEER_OK;
}

/* Decodes an authenticated, decrypted header whose length passed
 * check_lengths for the prefix's type, then checks it as seal does. */
static int decode_header(uint8_t type, const uint8_t *h, uint32_t h_len, const uint8_t *data,
                         uint32_t d_len, peer_msg *m)
{
    memset(m, 0, sizeof *m);
    if (h[H_TYPE] != type)
        return PEER_ETYPE;
    m->head.type = type;
    memcpy(m->head.sender, h + H_SENDER, PEER_ID_BYTES);
    m->head.time_ms = (int64_t)get_le64(h + H_TIME);
    m->head.request_id = get_le64(h + H_REQUEST_ID);
    switch (type) {
    case PEER_MSG_BEACON:
        m->port = get_le16(h + H_BEACON_PORT);
        m->beacon_flags = h[H_BEACON_FLAGS];
        break;
    case PEER_MSG_HAVE_REQ:
        memcpy(m->cid, h + H_CID, PEER_CID_BYTES);
        break;
    case PEER_MSG_HAVE_REP: {
        memcpy(m->cid, h + H_CID, PEER_CID_BYTES);
        m->have_status = h[H_HAVE_STATUS];
        m->role = h[H_HAVE_ROLE];
        m->piece_count = get_le32(h + H_HAVE_COUNT);
        /* The fixed fields first, since the bitfields' length depends on
         * them; then a bitfield with SOME and one with COMING, each of
         * exactly the count's length. check_fields does the rest. */
        if (m->have_status > PEER_HAVE_ALL || (m->role & ~ALLOWED_ROLES) != 0)
            return PEER_ERESERVED;
        if (m->piece_count > PEER_MAX_PIECES)
            return PEER_ETOOBIG;
        if ((m->role & PEER_ROLE_COMING) &&
            (m->have_status == PEER_HAVE_ALL || m->piece_count == 0))
            return PEER_ERESERVED;
        size_t want = H_HAVE_BITFIELD + have_bitfields(m) * peer_bits_bytes(m->piece_count);
        if (h_len != want)
            return h_len < want ? PEER_ETRUNCATED : PEER_ETOOBIG;
        size_t at = H_HAVE_BITFIELD;
        if (m->have_status == PEER_HAVE_SOME) {
            m->bitfield = h + at;
            at += peer_bits_bytes(m->piece_count);
        }
        if (m->role & PEER_ROLE_COMING)
            m->coming = h + at;
        break;
    }
    case PEER_MSG_PIECE_REQ:
        memcpy(m->cid, h + H_CID, PEER_CID_BYTES);
        m->piece = get_le64(h + H_PIECE);
        break;
    case PEER_MSG_PIECE_REP:
        memcpy(m->cid, h + H_CID, PEER_CID_BYTES);
        m->piece = get_le64(h + H_PIECE);
        m->piece_status = h[H_PIECE_STATUS];
        m->data_len = get_le32(h + H_PIECE_DATA_LEN);
        m->data = d_len > 0 ? data : NULL;
        break;
    default:
        return PEER_ETYPE;
    }
    return check_fields(m, d_len);
}

int peer_wire_open(const peer_wire_key *key, uint8_t *buf, size_t len, peer_msg *m)
{
    if (key == NULL || buf == NULL || m == NULL)
        return PEER_EINVAL;
    /* The clear prefix, in full, before any crypto. */
    if (len > PEER_MSG_MAX)
        return PEER_ETOOBIG;
    if (len >= sizeof magic && memcmp(buf + OFF_MAGIC, magic, sizeof magic) != 0)
        return PEER_EMAGIC;
    if (len < PEER_PREFIX_BYTES)
        return PEER_ETRUNCATED;
    if (buf[OFF_VERSION] != WIRE_VERSION)
        return PEER_EVERSION;
    if (buf[OFF_RESERVED] != 0 || buf[OFF_RESERVED + 1] != 0)
        return PEER_ERESERVED;
    uint32_t h_len = get_le32(buf + OFF_HEADER_LEN), d_len = get_le32(buf + OFF_DATA_LEN);
    if (h_len < H_BODY)
        return PEER_ETRUNCATED;
    if (h_len > PEER_HEADER_MAX || d_len > PEER_DATA_MAX)
        return PEER_ETOOBIG;
    /* Both are bounded above, so the sum cannot overflow even in 32 bits;
     * it is computed in 64 anyway. */
    uint64_t want = (uint64_t)PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES;
    if ((uint64_t)len != want)
        return (uint64_t)len < want ? PEER_ETRUNCATED : PEER_ETOOBIG;
    uint8_t type = buf[OFF_TYPE];
    int err = check_lengths(type, h_len, d_len);
    if (err != PEER_OK)
        return err;

    if (validate_init() != VALIDATE_OK)
        return PEER_ECRYPTO;
    uint8_t *data = buf + PEER_PREFIX_BYTES, *h = data + d_len;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt_detached(h, NULL, h, h_len, h + h_len, buf,
                                                            PEER_PREFIX_BYTES + d_len,
                                                            buf + OFF_NONCE, key->k) != 0)
        return PEER_EAUTH;
    err = decode_header(type, h, h_len, data, d_len, m);
    if (err != PEER_OK)
        memset(m, 0, sizeof *m); /* nothing half-decoded for a careless caller */
    return err;
}

/* ------------------------------------------------------------------ */
/* The replay filter                                                  */

/*
 * Exact for its window: every nonce accepted is remembered until its
 * message's time + PEER_TIME_WINDOW_MS, never forgotten earlier, so a
 * replay is always refused while its time would be accepted. Memory is a
 * fixed pool of `slots` entries, found through a chained hash table (keyed
 * SipHash: nobody can choose nonces that share a chain) and expired from a
 * min-heap of expiry times. A message costs one hash, a walk of its chain
 * (about one entry), an O(log slots) heap step, a scan of the accounts, and
 * the expiries it pops (each entry is popped once).
 *
 * A group member can seal as many fresh messages as it likes, so the pool
 * is shared out rather than first come, first served (issue 15: one
 * member's flood of future-dated messages filled the old table and every
 * other member's requests were refused as replays). Every source (the
 * address a message came from, which a member cannot multiply as it can
 * sender ids or connections) has an account, and half the pool is split
 * into equal shares, one for each of the `sources` accounts, that only the
 * account's owner may fill; the other half is borrowed by whoever needs it
 * first. A source with an account can therefore always hold `share`
 * entries, whatever the others send: a flood fills its own share and the
 * common half, and is refused from then on, without touching anyone
 * else's. An account lives while it holds entries, so a member sending
 * regularly keeps its share; a source that finds every account taken has
 * only the common half.
 */

#define REPLAY_NIL UINT32_MAX

struct replay_entry {
    uint8_t nonce[PEER_NONCE_BYTES];
    int64_t expiry;   /* remembered while expiry >= now */
    uint32_t next;    /* in its hash chain; in the free list when unused */
    uint32_t account; /* REPLAY_NIL: the source had no account */
};

struct replay_account {
    uint8_t source[PEER_SOURCE_BYTES];
    uint32_t live; /* entries it holds; 0: the account is free */
};

/* Not thread-safe: its owner serialises the calls. */
struct peer_replay {
    uint32_t slots, n_buckets;    /* n_buckets: a power of two >= slots */
    uint32_t share;               /* what each account may always hold */
    uint32_t common, common_used; /* the rest of the pool, and what is borrowed */
    uint32_t n_accounts;
    uint32_t n_live, free_head;
    uint8_t hash_key[crypto_shorthash_KEYBYTES];
    struct replay_account *accounts;
    struct replay_entry *entries;
    uint32_t *buckets; /* chain heads */
    uint32_t *heap;    /* live entries, the earliest expiry first */
};

int peer_replay_new(size_t slots, unsigned sources, peer_replay **out)
{
    if (out == NULL || slots == 0 || slots >= UINT32_MAX / 2 || sources == 0 || sources > slots)
        return PEER_EINVAL;
    if (validate_init() != VALIDATE_OK)
        return PEER_ECRYPTO;
    peer_replay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return PEER_ENOMEM;
    r->slots = (uint32_t)slots;
    r->n_buckets = 1;
    while (r->n_buckets < r->slots)
        r->n_buckets <<= 1;
    r->n_accounts = sources;
    r->share = r->slots / 2 / sources;
    r->common = r->slots - r->share * sources;
    r->accounts = calloc(sources, sizeof *r->accounts);
    r->entries = calloc(slots, sizeof *r->entries);
    r->buckets = malloc(r->n_buckets * sizeof *r->buckets);
    r->heap = malloc(slots * sizeof *r->heap);
    if (r->accounts == NULL || r->entries == NULL || r->buckets == NULL || r->heap == NULL) {
        peer_replay_free(r);
        return PEER_ENOMEM;
    }
    for (uint32_t i = 0; i < r->n_buckets; i++)
        r->buckets[i] = REPLAY_NIL;
    for (uint32_t i = 0; i < r->slots; i++)
        r->entries[i].next = i + 1 < r->slots ? i + 1 : REPLAY_NIL;
    r->free_head = 0;
    /* A secret per filter, so that nobody can choose nonces that share a
     * chain (the nonces are in the clear). */
    crypto_shorthash_keygen(r->hash_key);
    *out = r;
    return PEER_OK;
}

void peer_replay_free(peer_replay *r)
{
    if (r == NULL)
        return;
    free(r->accounts);
    free(r->entries);
    free(r->buckets);
    free(r->heap);
    free(r);
}

static uint32_t replay_bucket(const peer_replay *r, const uint8_t nonce[PEER_NONCE_BYTES])
{
    uint8_t hash[crypto_shorthash_BYTES];
    crypto_shorthash(hash, nonce, PEER_NONCE_BYTES, r->hash_key);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | hash[i];
    return (uint32_t)(h & (r->n_buckets - 1));
}

static int64_t heap_expiry(const peer_replay *r, uint32_t at)
{
    return r->entries[r->heap[at]].expiry;
}

static void heap_push(peer_replay *r, uint32_t e)
{
    uint32_t at = r->n_live++;
    r->heap[at] = e;
    while (at > 0 && heap_expiry(r, (at - 1) / 2) > heap_expiry(r, at)) {
        uint32_t up = (at - 1) / 2, t = r->heap[up];
        r->heap[up] = r->heap[at];
        r->heap[at] = t;
        at = up;
    }
}

static void heap_pop(peer_replay *r)
{
    r->heap[0] = r->heap[--r->n_live];
    uint32_t at = 0;
    for (;;) {
        uint32_t least = at, l = 2 * at + 1, rt = 2 * at + 2;
        if (l < r->n_live && heap_expiry(r, l) < heap_expiry(r, least))
            least = l;
        if (rt < r->n_live && heap_expiry(r, rt) < heap_expiry(r, least))
            least = rt;
        if (least == at)
            return;
        uint32_t t = r->heap[least];
        r->heap[least] = r->heap[at];
        r->heap[at] = t;
        at = least;
    }
}

/* An entry's holder gives it up: borrowed entries go back to the common
 * half first. */
static void account_release(peer_replay *r, uint32_t account)
{
    if (account == REPLAY_NIL) {
        r->common_used--;
        return;
    }
    struct replay_account *a = &r->accounts[account];
    if (a->live > r->share)
        r->common_used--;
    a->live--;
}

/* Forgets the entries whose time is no longer accepted. */
static void replay_expire(peer_replay *r, int64_t now_ms)
{
    while (r->n_live > 0 && heap_expiry(r, 0) < now_ms) {
        uint32_t e = r->heap[0];
        heap_pop(r);
        uint32_t *link = &r->buckets[replay_bucket(r, r->entries[e].nonce)];
        while (*link != e)
            link = &r->entries[*link].next;
        *link = r->entries[e].next;
        account_release(r, r->entries[e].account);
        r->entries[e].next = r->free_head;
        r->free_head = e;
    }
}

/* The account of `source`, a free one taken for it, or REPLAY_NIL. */
static uint32_t account_of(peer_replay *r, const uint8_t source[PEER_SOURCE_BYTES])
{
    uint32_t free_one = REPLAY_NIL;
    for (uint32_t i = 0; i < r->n_accounts; i++) {
        struct replay_account *a = &r->accounts[i];
        if (a->live == 0) {
            if (free_one == REPLAY_NIL)
                free_one = i;
        } else if (memcmp(a->source, source, PEER_SOURCE_BYTES) == 0) {
            return i;
        }
    }
    if (free_one != REPLAY_NIL)
        memcpy(r->accounts[free_one].source, source, PEER_SOURCE_BYTES);
    return free_one;
}

int peer_replay_check(peer_replay *r, const uint8_t source[PEER_SOURCE_BYTES],
                      const uint8_t nonce[PEER_NONCE_BYTES], int64_t msg_time_ms, int64_t now_ms)
{
    if (r == NULL || source == NULL || nonce == NULL)
        return PEER_EINVAL;
    /* |msg - now| in unsigned arithmetic: exact for any two int64 values. */
    uint64_t skew = msg_time_ms > now_ms ? (uint64_t)msg_time_ms - (uint64_t)now_ms
                                         : (uint64_t)now_ms - (uint64_t)msg_time_ms;
    if (skew > PEER_TIME_WINDOW_MS)
        return PEER_ESTALE;
    /* Remembered for as long as its time is accepted. */
    int64_t expiry = msg_time_ms > INT64_MAX - PEER_TIME_WINDOW_MS
                         ? INT64_MAX
                         : msg_time_ms + PEER_TIME_WINDOW_MS;

    replay_expire(r, now_ms);
    uint32_t bucket = replay_bucket(r, nonce);
    for (uint32_t e = r->buckets[bucket]; e != REPLAY_NIL; e = r->entries[e].next)
        if (memcmp(r->entries[e].nonce, nonce, PEER_NONCE_BYTES) == 0)
            return PEER_EREPLAY;

    /* Its source's share, else the common half; when both are full the
     * message is refused rather than anything forgotten. */
    uint32_t account = account_of(r, source);
    int borrows = account == REPLAY_NIL || r->accounts[account].live >= r->share;
    if (borrows && r->common_used >= r->common)
        return PEER_EREPLAY;
    /* The shares and the common half add up to the pool: an entry is free. */
    uint32_t e = r->free_head;
    r->free_head = r->entries[e].next;
    memcpy(r->entries[e].nonce, nonce, PEER_NONCE_BYTES);
    r->entries[e].expiry = expiry;
    r->entries[e].account = account;
    r->entries[e].next = r->buckets[bucket];
    r->buckets[bucket] = e;
    heap_push(r, e);
    if (borrows)
        r->common_used++;
    if (account != REPLAY_NIL)
        r->accounts[account].live++;
    return PEER_OK;
}

void peer_replay_source_ipv4(const uint8_t addr[4], uint8_t source[PEER_SOURCE_BYTES])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(source, mapped, sizeof mapped);
    memcpy(source + sizeof mapped, addr, 4);
}
