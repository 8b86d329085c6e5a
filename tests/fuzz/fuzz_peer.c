/*
 * Fuzz target: opening peer messages (peer_wire_open), with the group key
 * 00 01 .. 1f. The first input byte picks how the rest is used:
 *
 *  - even: raw bytes, as they come off the network. Mutations exercise the
 *    prefix checks; almost none get past authentication.
 *  - odd: [type][data length, u16 LE][data][plaintext header]. The harness
 *    seals the header and data itself with the key, as a group member
 *    could, bypassing peer_wire_seal's checks, so that the header decoder
 *    sees every input.
 *
 * What open accepts must be canonical: sealing the decoded message again
 * gives a message of the same length that opens to the same fields.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "peer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static peer_wire_key key;
static peer_replay *replay;

static void setup(void)
{
    uint8_t group[PEER_GROUP_KEY_BYTES];
    for (int i = 0; i < PEER_GROUP_KEY_BYTES; i++)
        group[i] = (uint8_t)i;
    peer_wire_key_derive(group, &key);
    if (peer_replay_new(256, 4, &replay) != PEER_OK)
        abort();
}

/* The sealed message for a plaintext header and data, exactly as
 * PROTOCOL.md lays it out; returns a new buffer of *len bytes. */
static uint8_t *seal_raw(uint8_t type, const uint8_t *header, size_t h_len, const uint8_t *piece,
                         size_t d_len, size_t *len)
{
    size_t total = PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES;
    uint8_t *buf = malloc(total);
    if (buf == NULL)
        return NULL;
    memcpy(buf, "DOPP", 4);
    buf[4] = 1;
    buf[5] = type;
    buf[6] = buf[7] = 0;
    /* A fixed nonce keeps runs reproducible. */
    memset(buf + 8, 0x4e, PEER_NONCE_BYTES);
    for (int i = 0; i < 4; i++) {
        buf[32 + i] = (uint8_t)(h_len >> (8 * i));
        buf[36 + i] = (uint8_t)(d_len >> (8 * i));
    }
    if (d_len > 0)
        memcpy(buf + PEER_PREFIX_BYTES, piece, d_len);
    uint8_t *h = buf + PEER_PREFIX_BYTES + d_len;
    if (h_len > 0)
        memcpy(h, header, h_len);
    crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
        h, h + h_len, NULL, h, h_len, buf, PEER_PREFIX_BYTES + d_len, NULL, buf + 8, key.k);
    *len = total;
    return buf;
}

static int same(const peer_msg *a, const peer_msg *b)
{
    if (a->head.type != b->head.type ||
        memcmp(a->head.sender, b->head.sender, PEER_ID_BYTES) != 0 ||
        a->head.time_ms != b->head.time_ms || a->head.request_id != b->head.request_id ||
        memcmp(a->cid, b->cid, PEER_CID_BYTES) != 0 || a->port != b->port ||
        a->beacon_flags != b->beacon_flags || a->have_status != b->have_status ||
        a->role != b->role || a->piece_count != b->piece_count || a->piece != b->piece ||
        a->piece_status != b->piece_status || a->data_len != b->data_len)
        return 0;
    if ((a->bitfield == NULL) != (b->bitfield == NULL) ||
        (a->coming == NULL) != (b->coming == NULL) || (a->data == NULL) != (b->data == NULL))
        return 0;
    if (a->bitfield != NULL && memcmp(a->bitfield, b->bitfield, (a->piece_count + 7) / 8) != 0)
        return 0;
    if (a->coming != NULL && memcmp(a->coming, b->coming, (a->piece_count + 7) / 8) != 0)
        return 0;
    return a->data == NULL || memcmp(a->data, b->data, a->data_len) == 0;
}

/* Checks what open accepted from buf (len bytes). */
static void check_accepted(const uint8_t *buf, size_t len, const peer_msg *m)
{
    if (peer_wire_sealed_size(m) != len)
        abort();
    /* Bitfields point into the message, whole. */
    size_t field = (m->piece_count + 7) / 8;
    if (m->bitfield != NULL && (m->bitfield < buf || field > (size_t)(buf + len - m->bitfield)))
        abort();
    if (m->coming != NULL && (m->coming < buf || field > (size_t)(buf + len - m->coming)))
        abort();
    if (m->data != NULL && m->data != buf + PEER_PREFIX_BYTES)
        abort();
    uint8_t *again = malloc(len);
    size_t again_len = 0;
    peer_msg back;
    if (again == NULL)
        return;
    if (peer_wire_seal(&key, m, again, len, &again_len) != PEER_OK || again_len != len ||
        peer_wire_open(&key, again, again_len, &back) != PEER_OK || !same(m, &back))
        abort();
    free(again);
    /* The replay filter takes any time the sender claims. */
    uint8_t source[PEER_SOURCE_BYTES] = {(uint8_t)(len % 5)};
    int err = peer_replay_check(replay, source, peer_wire_nonce(buf), m->head.time_ms,
                                1700000000000 + (int64_t)(len % 7) * 20000);
    if (err != PEER_OK && err != PEER_ESTALE && err != PEER_EREPLAY)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (replay == NULL)
        setup();
    if (size < 1)
        return 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    if ((data[0] & 1) == 0) {
        len = size - 1;
        buf = malloc(len ? len : 1);
        if (buf == NULL)
            return 0;
        memcpy(buf, data + 1, len);
    } else {
        if (size < 4)
            return 0;
        size_t d_len = (size_t)data[2] | (size_t)data[3] << 8;
        if (d_len > size - 4)
            d_len = size - 4;
        buf = seal_raw(data[1], data + 4 + d_len, size - 4 - d_len, data + 4, d_len, &len);
        if (buf == NULL)
            return 0;
    }
    peer_msg m;
    int err = peer_wire_open(&key, buf, len, &m);
    if (err == PEER_OK)
        check_accepted(buf, len, &m);
    else if (err < PEER_ETRUNCATED || err > PEER_EAUTH)
        abort(); /* only the message errors */
    free(buf);
    return 0;
}
