/* The peer wire format: sealing, strict opening, and the replay filter. */
#include <sodium.h>
#include <stdint.h>

#include "../check.h"
#include "peer.h"

/* Made by an independent implementation of PROTOCOL.md (Python: hashlib's
 * BLAKE2b, HChaCha20 by hand, and the cryptography package's
 * ChaCha20-Poly1305) with the group key 00 01 .. 1f. */
static const uint8_t kat_wire_key[32] = {
    0xfa, 0x4d, 0xbf, 0xea, 0x59, 0x57, 0x1e, 0xf8, 0x24, 0x07, 0xb1, 0x6a, 0x19, 0x57, 0x3d, 0x23,
    0xa6, 0xfe, 0x1f, 0xa7, 0x43, 0x46, 0x85, 0xd5, 0x93, 0x37, 0x16, 0x18, 0x52, 0xbf, 0x0f, 0xf6,
};
/* HAVE_REP, SOME of 10 pieces (0, 3 and 9), role DOWNLOADING|CACHE_HOST. */
static const uint8_t kat_have_rep[129] = {
    0x44, 0x4f, 0x50, 0x50, 0x01, 0x03, 0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
    0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
    0x26, 0x27, 0x49, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4e, 0x9b, 0xf2, 0x36, 0x3e,
    0xc7, 0x26, 0x05, 0x07, 0x0b, 0x86, 0xc2, 0x4b, 0x80, 0xd2, 0xf7, 0x6c, 0xb1, 0xbb, 0x1d,
    0x3d, 0xfa, 0xce, 0x6d, 0x97, 0x23, 0x39, 0x93, 0x9a, 0x5e, 0xdf, 0xde, 0xcb, 0xbe, 0x73,
    0xb2, 0x2e, 0x69, 0xea, 0x7c, 0xd6, 0x4a, 0x8e, 0x4a, 0x64, 0x61, 0x57, 0xed, 0x7c, 0x6b,
    0x1c, 0x8c, 0x03, 0x85, 0x7e, 0x89, 0xb6, 0xbc, 0x80, 0x53, 0xfe, 0x51, 0xf3, 0xe2, 0x89,
    0x86, 0x91, 0xae, 0xa2, 0x06, 0x31, 0xf6, 0xaf, 0xe2, 0x98, 0x08, 0x94, 0x82, 0x02, 0x9f,
    0x9a, 0xe2, 0x12, 0xcf, 0x36, 0x13, 0xa5, 0x37, 0xfd,
};
/* PIECE_REP OK, piece 7, data "dopa piece bytes", time -5, request id 42. */
static const uint8_t kat_piece_rep[150] = {
    0x44, 0x4f, 0x50, 0x50, 0x01, 0x05, 0x00, 0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x4e, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x64, 0x6f, 0x70, 0x61, 0x20,
    0x70, 0x69, 0x65, 0x63, 0x65, 0x20, 0x62, 0x79, 0x74, 0x65, 0x73, 0xaa, 0x1b, 0x18, 0x11,
    0x66, 0x90, 0xba, 0x87, 0x1a, 0xcf, 0xe8, 0x1e, 0x69, 0xde, 0xc1, 0x77, 0x68, 0xbb, 0x61,
    0xa1, 0xe4, 0x85, 0xdf, 0xfc, 0xbb, 0xf4, 0x1c, 0xca, 0x2a, 0x0a, 0xe0, 0x41, 0x5e, 0x03,
    0x53, 0x34, 0xfb, 0x24, 0xf9, 0x2a, 0x18, 0xa7, 0xfa, 0x3e, 0x81, 0x77, 0x52, 0xfa, 0xc7,
    0x48, 0xac, 0xa8, 0x51, 0x75, 0x8c, 0xae, 0xf6, 0xe4, 0x32, 0x59, 0x6a, 0x70, 0xfd, 0x4e,
    0x9a, 0x19, 0xe9, 0x4f, 0x33, 0xbc, 0x64, 0x68, 0x90, 0x78, 0xf2, 0x4c, 0xd0, 0x5b, 0xb7,
    0x08, 0x05, 0x4d, 0xb5, 0x0b, 0x15, 0xcd, 0xba, 0xc9, 0x41, 0x71, 0xbf, 0x4e, 0x09, 0x11,
};

#define BUF_MAX (PEER_PREFIX_BYTES + PEER_HEADER_MAX + PEER_MAC_BYTES + 4096)

static uint8_t buf[BUF_MAX], copy[BUF_MAX];
static peer_wire_key wire;
static uint8_t held[PEER_MAX_PIECES / 8], coming[PEER_MAX_PIECES / 8];
static const uint8_t piece_bytes[] = "the bytes of one piece of public content";

static void use_kat_key(void)
{
    uint8_t group[PEER_GROUP_KEY_BYTES];
    for (int i = 0; i < PEER_GROUP_KEY_BYTES; i++)
        group[i] = (uint8_t)i;
    peer_wire_key_derive(group, &wire);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A valid message of each type (and HAVE_REP/PIECE_REP variants). */
enum example {
    EX_BEACON,
    EX_HAVE_REQ,
    EX_HAVE_NONE,
    EX_HAVE_SOME,
    EX_HAVE_ALL,
    EX_HAVE_COMING,
    EX_PIECE_REQ,
    EX_PIECE_OK,
    EX_PIECE_NOT_HELD,
    EX_PIECE_BUSY,
    EX_COUNT
};

static peer_msg example(enum example which)
{
    peer_msg m;
    memset(&m, 0, sizeof m);
    memset(m.head.sender, 0x5a, sizeof m.head.sender);
    m.head.time_ms = 1700000000000 + which;
    m.head.request_id = 0x0123456789abcdefu + which;
    for (int i = 0; i < PEER_CID_BYTES; i++)
        m.cid[i] = (uint8_t)(0xc0 + i);
    switch (which) {
    case EX_BEACON:
        m.head.type = PEER_MSG_BEACON;
        m.port = 7882;
        m.beacon_flags = PEER_ROLE_CACHE_HOST;
        break;
    case EX_HAVE_REQ:
        m.head.type = PEER_MSG_HAVE_REQ;
        break;
    case EX_HAVE_NONE:
    case EX_HAVE_SOME:
    case EX_HAVE_ALL:
    case EX_HAVE_COMING:
        m.head.type = PEER_MSG_HAVE_REP;
        m.have_status = which == EX_HAVE_NONE  ? PEER_HAVE_NONE
                        : which == EX_HAVE_ALL ? PEER_HAVE_ALL
                                               : PEER_HAVE_SOME;
        m.role = PEER_ROLE_DOWNLOADING;
        m.piece_count = which == EX_HAVE_NONE ? 0 : 13;
        if (m.have_status == PEER_HAVE_SOME) {
            memset(held, 0, sizeof held);
            peer_bit_set(held, 0);
            peer_bit_set(held, 7);
            peer_bit_set(held, 12);
            m.bitfield = held;
        }
        if (which == EX_HAVE_COMING) { /* held 0, 7, 12; coming 1, 8 */
            m.role |= PEER_ROLE_COMING;
            memset(coming, 0, sizeof coming);
            peer_bit_set(coming, 1);
            peer_bit_set(coming, 8);
            m.coming = coming;
        }
        break;
    case EX_PIECE_REQ:
        m.head.type = PEER_MSG_PIECE_REQ;
        m.piece = 12;
        break;
    case EX_PIECE_OK:
    case EX_PIECE_NOT_HELD:
    case EX_PIECE_BUSY:
        m.head.type = PEER_MSG_PIECE_REP;
        m.piece = PEER_MAX_PIECES - 1;
        m.piece_status = which == EX_PIECE_OK         ? PEER_PIECE_OK
                         : which == EX_PIECE_NOT_HELD ? PEER_PIECE_NOT_HELD
                                                      : PEER_PIECE_BUSY;
        if (which == EX_PIECE_OK) {
            m.data = piece_bytes;
            m.data_len = sizeof piece_bytes;
        }
        break;
    case EX_COUNT:
        break;
    }
    return m;
}

static size_t seal_ok(const peer_msg *m)
{
    size_t len = 0;
    CHECK_INT(peer_wire_seal(&wire, m, buf, sizeof buf, &len), PEER_OK);
    CHECK_INT(len, peer_wire_sealed_size(m));
    return len;
}

/* Seals any header and data as a group member could, bypassing
 * peer_wire_seal's checks: what a buggy or hostile member might send. */
static size_t seal_raw(uint8_t type, const uint8_t *header, size_t h_len, const uint8_t *data,
                       size_t d_len)
{
    CHECK(PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES <= sizeof buf);
    memcpy(buf, "DOPP", 4);
    buf[4] = 1;
    buf[5] = type;
    buf[6] = buf[7] = 0;
    randombytes_buf(buf + 8, PEER_NONCE_BYTES);
    put_le32(buf + 32, (uint32_t)h_len);
    put_le32(buf + 36, (uint32_t)d_len);
    if (d_len > 0)
        memmove(buf + PEER_PREFIX_BYTES, data, d_len);
    uint8_t *h = buf + PEER_PREFIX_BYTES + d_len;
    memmove(h, header, h_len);
    crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
        h, h + h_len, NULL, h, h_len, buf, PEER_PREFIX_BYTES + d_len, NULL, buf + 8, wire.k);
    return PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES;
}

/* The plaintext header peer_wire_seal writes for m, decrypted with
 * libsodium directly; returns its length. */
static size_t plain_header(const peer_msg *m, uint8_t *header)
{
    size_t len = seal_ok(m);
    uint32_t h_len = get_le32(buf + 32), d_len = get_le32(buf + 36);
    CHECK_INT(len, PEER_PREFIX_BYTES + d_len + h_len + PEER_MAC_BYTES);
    const uint8_t *h = buf + PEER_PREFIX_BYTES + d_len;
    CHECK(crypto_aead_xchacha20poly1305_ietf_decrypt_detached(header, NULL, h, h_len, h + h_len,
                                                              buf, PEER_PREFIX_BYTES + d_len,
                                                              buf + 8, wire.k) == 0);
    return h_len;
}

static int open_raw(uint8_t type, const uint8_t *header, size_t h_len, const uint8_t *data,
                    size_t d_len)
{
    peer_msg m;
    size_t len = seal_raw(type, header, h_len, data, d_len);
    return peer_wire_open(&wire, buf, len, &m);
}

static void check_same(const peer_msg *a, const peer_msg *b)
{
    CHECK_INT(a->head.type, b->head.type);
    CHECK(memcmp(a->head.sender, b->head.sender, PEER_ID_BYTES) == 0);
    CHECK_INT(a->head.time_ms, b->head.time_ms);
    CHECK(a->head.request_id == b->head.request_id);
    switch (a->head.type) {
    case PEER_MSG_BEACON:
        CHECK_INT(a->port, b->port);
        CHECK_INT(a->beacon_flags, b->beacon_flags);
        break;
    case PEER_MSG_HAVE_REQ:
        CHECK(memcmp(a->cid, b->cid, PEER_CID_BYTES) == 0);
        break;
    case PEER_MSG_HAVE_REP:
        CHECK(memcmp(a->cid, b->cid, PEER_CID_BYTES) == 0);
        CHECK_INT(a->have_status, b->have_status);
        CHECK_INT(a->role, b->role);
        CHECK_INT(a->piece_count, b->piece_count);
        CHECK((b->bitfield != NULL) == (a->have_status == PEER_HAVE_SOME));
        if (b->bitfield != NULL)
            CHECK(memcmp(a->bitfield, b->bitfield, (a->piece_count + 7) / 8) == 0);
        CHECK((b->coming != NULL) == ((a->role & PEER_ROLE_COMING) != 0));
        if (b->coming != NULL)
            CHECK(memcmp(a->coming, b->coming, (a->piece_count + 7) / 8) == 0);
        break;
    case PEER_MSG_PIECE_REQ:
        CHECK(memcmp(a->cid, b->cid, PEER_CID_BYTES) == 0);
        CHECK(a->piece == b->piece);
        break;
    case PEER_MSG_PIECE_REP:
        CHECK(memcmp(a->cid, b->cid, PEER_CID_BYTES) == 0);
        CHECK(a->piece == b->piece);
        CHECK_INT(a->piece_status, b->piece_status);
        CHECK_INT(a->data_len, b->data_len);
        CHECK((b->data != NULL) == (a->data_len > 0));
        if (b->data != NULL)
            CHECK(memcmp(a->data, b->data, a->data_len) == 0);
        break;
    default:
        CHECK(a->head.type >= PEER_MSG_BEACON && a->head.type <= PEER_MSG_PIECE_REP);
    }
}

static void test_wire_key_is_blake2b_of_the_group_key(void)
{
    use_kat_key();
    CHECK(memcmp(wire.k, kat_wire_key, sizeof kat_wire_key) == 0);
    uint8_t other[PEER_GROUP_KEY_BYTES] = {1};
    peer_wire_key k2;
    peer_wire_key_derive(other, &k2);
    CHECK(memcmp(wire.k, k2.k, sizeof k2.k) != 0);
}

static void test_opens_messages_sealed_by_an_independent_implementation(void)
{
    use_kat_key();
    peer_msg m;
    memcpy(copy, kat_have_rep, sizeof kat_have_rep);
    CHECK_INT(peer_wire_open(&wire, copy, sizeof kat_have_rep, &m), PEER_OK);
    CHECK_INT(m.head.type, PEER_MSG_HAVE_REP);
    CHECK_INT(m.head.sender[0], 0xa0);
    CHECK_INT(m.head.sender[15], 0xaf);
    CHECK_INT(m.head.time_ms, 1700000000123);
    CHECK(m.head.request_id == 0x1122334455667788u);
    CHECK_INT(m.cid[0], 0x40);
    CHECK_INT(m.cid[31], 0x5f);
    CHECK_INT(m.have_status, PEER_HAVE_SOME);
    CHECK_INT(m.role, PEER_ROLE_DOWNLOADING | PEER_ROLE_CACHE_HOST);
    CHECK_INT(m.piece_count, 10);
    for (uint32_t i = 0; i < 10; i++)
        CHECK_INT(peer_bit_get(m.bitfield, i), i == 0 || i == 3 || i == 9);
    CHECK(peer_wire_nonce(copy) == copy + 8);
    CHECK_INT(peer_wire_nonce(copy)[0], 0x10);

    memcpy(copy, kat_piece_rep, sizeof kat_piece_rep);
    CHECK_INT(peer_wire_open(&wire, copy, sizeof kat_piece_rep, &m), PEER_OK);
    CHECK_INT(m.head.type, PEER_MSG_PIECE_REP);
    CHECK_INT(m.head.time_ms, -5);
    CHECK(m.head.request_id == 42);
    CHECK(m.piece == 7);
    CHECK_INT(m.piece_status, PEER_PIECE_OK);
    CHECK_INT(m.data_len, 16);
    CHECK(m.data == copy + PEER_PREFIX_BYTES); /* the data travels in the clear */
    CHECK(memcmp(m.data, "dopa piece bytes", 16) == 0);
}

static void test_sealed_layout_matches_the_protocol(void)
{
    use_kat_key();
    peer_msg m = example(EX_PIECE_OK);
    uint8_t h[PEER_HEADER_MAX];
    size_t h_len = plain_header(&m, h);
    CHECK(memcmp(buf, "DOPP\x01\x05\x00\x00", 8) == 0);
    CHECK_INT(get_le32(buf + 32), 78);
    CHECK_INT(get_le32(buf + 36), sizeof piece_bytes);
    CHECK(memcmp(buf + 40, piece_bytes, sizeof piece_bytes) == 0);
    CHECK_INT(h_len, 78);
    CHECK_INT(h[0], PEER_MSG_PIECE_REP);
    CHECK_INT(h[1], 0x5a);
    CHECK_INT(h[17], (uint8_t)(m.head.time_ms & 0xff));
    CHECK_INT(h[24], 0);
    CHECK_INT(h[25], 0xef + EX_PIECE_OK);
    CHECK_INT(h[32], 0x01);
    CHECK_INT(h[33], 0xc0);
    CHECK_INT(h[64], 0xdf);
    CHECK_INT(get_le32(h + 65), PEER_MAX_PIECES - 1);
    CHECK_INT(get_le32(h + 69), 0);
    CHECK_INT(h[73], PEER_PIECE_OK);
    CHECK_INT(get_le32(h + 74), sizeof piece_bytes);

    m = example(EX_HAVE_SOME);
    h_len = plain_header(&m, h);
    CHECK_INT(h_len, 71 + 2);
    CHECK_INT(h[65], PEER_HAVE_SOME);
    CHECK_INT(h[66], PEER_ROLE_DOWNLOADING);
    CHECK_INT(get_le32(h + 67), 13);
    CHECK_INT(h[71], 0x81); /* pieces 0 and 7, most significant bit first */
    CHECK_INT(h[72], 0x08); /* piece 12 */

    m = example(EX_BEACON);
    h_len = plain_header(&m, h);
    CHECK_INT(h_len, 36);
    CHECK_INT(h[33] | h[34] << 8, 7882);
    CHECK_INT(h[35], PEER_ROLE_CACHE_HOST);
}

static void test_every_type_round_trips(void)
{
    use_kat_key();
    for (int i = 0; i < EX_COUNT; i++) {
        peer_msg m = example((enum example)i), back;
        size_t len = seal_ok(&m);
        CHECK_INT(buf[5], m.head.type);
        CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_OK);
        check_same(&m, &back);
        if (back.bitfield != NULL)
            CHECK(back.bitfield > buf && back.bitfield < buf + len);
        if (back.data != NULL)
            CHECK(back.data == buf + PEER_PREFIX_BYTES);
    }
}

static void test_largest_messages_round_trip(void)
{
    use_kat_key();
    /* Every piece of the largest content, half of them held. */
    peer_msg m = example(EX_HAVE_SOME), back;
    m.piece_count = PEER_MAX_PIECES;
    memset(held, 0xaa, sizeof held);
    size_t len = seal_ok(&m);
    CHECK_INT(len, PEER_PREFIX_BYTES + 71 + PEER_MAX_PIECES / 8 + PEER_MAC_BYTES);
    CHECK(len - PEER_PREFIX_BYTES - PEER_MAC_BYTES <= PEER_HEADER_MAX);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_OK);
    check_same(&m, &back);
    /* And the other half on its way: the largest HAVE_REP. */
    m.role |= PEER_ROLE_COMING;
    memset(coming, 0x55, sizeof coming);
    m.coming = coming;
    len = seal_ok(&m);
    CHECK_INT(len, PEER_PREFIX_BYTES + 71 + 2 * (PEER_MAX_PIECES / 8) + PEER_MAC_BYTES);
    CHECK(len - PEER_PREFIX_BYTES - PEER_MAC_BYTES <= PEER_HEADER_MAX);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_OK);
    check_same(&m, &back);

    /* The largest piece: PEER_MSG_MAX holds it. */
    uint8_t *big = malloc(PEER_MSG_MAX), *data = malloc(PEER_DATA_MAX);
    CHECK(big != NULL && data != NULL);
    for (size_t i = 0; i < PEER_DATA_MAX; i++)
        data[i] = (uint8_t)(i * 7);
    m = example(EX_PIECE_OK);
    m.data = data;
    m.data_len = PEER_DATA_MAX;
    CHECK_INT(peer_wire_sealed_size(&m), PEER_PREFIX_BYTES + PEER_DATA_MAX + 78 + PEER_MAC_BYTES);
    CHECK(peer_wire_sealed_size(&m) <= PEER_MSG_MAX);
    CHECK_INT(peer_wire_seal(&wire, &m, big, PEER_MSG_MAX, &len), PEER_OK);
    CHECK_INT(peer_wire_open(&wire, big, len, &back), PEER_OK);
    check_same(&m, &back);
    /* One byte more is refused by seal. */
    m.data_len = PEER_DATA_MAX + 1;
    int err = peer_wire_seal(&wire, &m, big, PEER_MSG_MAX, &len);
    free(big);
    free(data);
    CHECK_INT(err, PEER_ETOOBIG);
}

static void test_piece_already_in_place_is_sealed_without_a_copy(void)
{
    use_kat_key();
    peer_msg m = example(EX_PIECE_OK), back;
    memcpy(buf + PEER_PREFIX_BYTES, piece_bytes, sizeof piece_bytes);
    m.data = buf + PEER_PREFIX_BYTES;
    size_t len = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_OK);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_OK);
    CHECK(memcmp(back.data, piece_bytes, sizeof piece_bytes) == 0);
}

static void test_each_seal_has_a_fresh_nonce(void)
{
    use_kat_key();
    peer_msg m = example(EX_HAVE_REQ);
    uint8_t first[PEER_NONCE_BYTES];
    seal_ok(&m);
    memcpy(first, peer_wire_nonce(buf), sizeof first);
    seal_ok(&m);
    CHECK(memcmp(first, peer_wire_nonce(buf), sizeof first) != 0);
}

static void test_every_prefix_byte_is_checked(void)
{
    use_kat_key();
    peer_msg m = example(EX_PIECE_OK), back;
    size_t len = seal_ok(&m);
    memcpy(copy, buf, len);
    for (size_t i = 0; i < PEER_PREFIX_BYTES; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(buf, copy, len);
            buf[i] ^= (uint8_t)(1u << bit);
            int err = peer_wire_open(&wire, buf, len, &back);
            if (i < 4)
                CHECK_INT(err, PEER_EMAGIC);
            else if (i == 4)
                CHECK_INT(err, PEER_EVERSION);
            else if (i == 5)
                CHECK(err == PEER_ETYPE || err == PEER_ETRUNCATED || err == PEER_ETOOBIG);
            else if (i < 8)
                CHECK_INT(err, PEER_ERESERVED);
            else if (i < 32)
                CHECK_INT(err, PEER_EAUTH); /* the nonce */
            else
                CHECK(err == PEER_ETRUNCATED || err == PEER_ETOOBIG); /* the lengths */
        }
    }
    /* A prefix type whose lengths the message also fits still fails: the
     * prefix is authenticated. (73 bytes, a PIECE_REQ header, is a
     * possible HAVE_REP length.) */
    m = example(EX_PIECE_REQ);
    len = seal_ok(&m);
    buf[5] = PEER_MSG_HAVE_REP;
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_EAUTH);
}

static void test_altered_or_foreign_messages_fail_authentication(void)
{
    use_kat_key();
    peer_msg m = example(EX_PIECE_OK), back;
    size_t len = seal_ok(&m);
    memcpy(copy, buf, len);
    /* Every byte after the prefix: data, encrypted header and MAC. */
    for (size_t i = PEER_PREFIX_BYTES; i < len; i++) {
        memcpy(buf, copy, len);
        buf[i] ^= 0x20;
        CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_EAUTH);
    }
    /* Another group's key. */
    peer_wire_key other;
    uint8_t group[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(group);
    peer_wire_key_derive(group, &other);
    memcpy(buf, copy, len);
    CHECK_INT(peer_wire_open(&other, buf, len, &back), PEER_EAUTH);
    memcpy(buf, copy, len);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_OK);
}

static void test_message_lengths_must_be_exact(void)
{
    use_kat_key();
    peer_msg m = example(EX_PIECE_OK), back;
    size_t len = seal_ok(&m);
    memcpy(copy, buf, len);
    CHECK_INT(peer_wire_open(&wire, buf, len - 1, &back), PEER_ETRUNCATED);
    memcpy(buf, copy, len);
    buf[len] = 0;
    CHECK_INT(peer_wire_open(&wire, buf, len + 1, &back), PEER_ETOOBIG);
    /* Each length field one off, both ways. */
    for (int field = 32; field <= 36; field += 4) {
        memcpy(buf, copy, len);
        put_le32(buf + field, get_le32(copy + field) + 1);
        CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETRUNCATED);
        memcpy(buf, copy, len);
        put_le32(buf + field, get_le32(copy + field) - 1);
        CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETOOBIG);
    }
    /* Short inputs never read past their length. */
    memcpy(buf, copy, len);
    for (size_t n = 0; n < PEER_PREFIX_BYTES + 33 + PEER_MAC_BYTES; n++) {
        uint8_t *exact = malloc(n ? n : 1);
        CHECK(exact != NULL);
        memcpy(exact, copy, n);
        int err = peer_wire_open(&wire, exact, n, &back);
        free(exact);
        CHECK_INT(err, PEER_ETRUNCATED);
    }
    uint8_t junk[4] = {'D', 'O', 'P', 'A'};
    CHECK_INT(peer_wire_open(&wire, junk, 3, &back), PEER_ETRUNCATED);
    CHECK_INT(peer_wire_open(&wire, junk, 4, &back), PEER_EMAGIC);
}

static void test_length_fields_are_bounded_before_any_crypto(void)
{
    use_kat_key();
    peer_msg m = example(EX_HAVE_REQ), back;
    size_t len = seal_ok(&m);
    memcpy(copy, buf, len);
    put_le32(buf + 32, 32); /* shorter than the part every header has */
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETRUNCATED);
    memcpy(buf, copy, len);
    put_le32(buf + 32, PEER_HEADER_MAX + 1);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETOOBIG);
    memcpy(buf, copy, len);
    put_le32(buf + 36, PEER_DATA_MAX + 1);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETOOBIG);
    memcpy(buf, copy, len);
    put_le32(buf + 32, UINT32_MAX);
    put_le32(buf + 36, UINT32_MAX);
    CHECK_INT(peer_wire_open(&wire, buf, len, &back), PEER_ETOOBIG);
    /* Longer than any message: refused by length alone. */
    uint8_t *huge = calloc(1, PEER_MSG_MAX + 1);
    CHECK(huge != NULL);
    memcpy(huge, copy, len);
    int err = peer_wire_open(&wire, huge, PEER_MSG_MAX + 1, &back);
    free(huge);
    CHECK_INT(err, PEER_ETOOBIG);
    CHECK_INT(peer_wire_open(&wire, NULL, 0, &back), PEER_EINVAL);
    CHECK_INT(peer_wire_open(NULL, copy, len, &back), PEER_EINVAL);
}

static void test_header_lengths_are_exact_per_type(void)
{
    use_kat_key();
    uint8_t h[PEER_HEADER_MAX + 1];
    const enum example fixed[] = {EX_BEACON,    EX_HAVE_REQ,       EX_HAVE_NONE, EX_HAVE_ALL,
                                  EX_PIECE_REQ, EX_PIECE_NOT_HELD, EX_HAVE_SOME};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        peer_msg m = example(fixed[i]);
        size_t h_len = plain_header(&m, h);
        h[h_len] = 0;
        CHECK_INT(open_raw(m.head.type, h, h_len, NULL, 0), PEER_OK);
        CHECK_INT(open_raw(m.head.type, h, h_len - 1, NULL, 0), PEER_ETRUNCATED);
        CHECK_INT(open_raw(m.head.type, h, h_len + 1, NULL, 0), PEER_ETOOBIG);
    }
    /* The header's own type must be the prefix's. */
    peer_msg m = example(EX_PIECE_REQ);
    size_t h_len = plain_header(&m, h);
    h[0] = PEER_MSG_PIECE_REP;
    CHECK_INT(open_raw(PEER_MSG_PIECE_REQ, h, h_len, NULL, 0), PEER_ETYPE);
    /* Unknown types, in the prefix. */
    CHECK_INT(open_raw(0, h, h_len, NULL, 0), PEER_ETYPE);
    CHECK_INT(open_raw(6, h, h_len, NULL, 0), PEER_ETYPE);
    CHECK_INT(open_raw(255, h, h_len, NULL, 0), PEER_ETYPE);
    /* Only PIECE_REP carries data. */
    const uint8_t one = 1;
    const enum example no_data[] = {EX_BEACON, EX_HAVE_REQ, EX_HAVE_SOME, EX_PIECE_REQ};
    for (size_t i = 0; i < sizeof no_data / sizeof no_data[0]; i++) {
        m = example(no_data[i]);
        h_len = plain_header(&m, h);
        CHECK_INT(open_raw(m.head.type, h, h_len, &one, 1), PEER_ETOOBIG);
    }
}

static void test_beacon_fields_are_checked(void)
{
    use_kat_key();
    uint8_t h[PEER_HEADER_MAX];
    peer_msg m = example(EX_BEACON);
    size_t h_len = plain_header(&m, h);
    h[33] = h[34] = 0; /* port 0 */
    CHECK_INT(open_raw(PEER_MSG_BEACON, h, h_len, NULL, 0), PEER_ERESERVED);
    h_len = plain_header(&m, h);
    h[35] = PEER_ROLE_DOWNLOADING;
    CHECK_INT(open_raw(PEER_MSG_BEACON, h, h_len, NULL, 0), PEER_ERESERVED);
    h[35] = 0x80;
    CHECK_INT(open_raw(PEER_MSG_BEACON, h, h_len, NULL, 0), PEER_ERESERVED);
    h[35] = 0;
    CHECK_INT(open_raw(PEER_MSG_BEACON, h, h_len, NULL, 0), PEER_OK);
}

static void test_have_reply_fields_are_checked(void)
{
    use_kat_key();
    uint8_t h[PEER_HEADER_MAX + 8];
    peer_msg m = example(EX_HAVE_SOME);
    size_t h_len;
    /* Bits past the piece count (13) in the last byte. */
    for (int bit = 13; bit < 16; bit++) {
        h_len = plain_header(&m, h);
        h[71 + 1] |= (uint8_t)(0x80u >> (bit - 8));
        CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    }
    h_len = plain_header(&m, h);
    h[65] = 3; /* no such status */
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    h_len = plain_header(&m, h);
    h[66] = 0x08; /* no such role */
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    /* A bitfield one byte short or long for its count. */
    h_len = plain_header(&m, h);
    put_le32(h + 67, 17);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ETRUNCATED);
    put_le32(h + 67, 8);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ETOOBIG);
    put_le32(h + 67, 16);
    h[72] = 0;
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_OK);
    /* Counts: none with NONE, at least one with SOME or ALL, at most the
     * limit. */
    m = example(EX_HAVE_NONE);
    h_len = plain_header(&m, h);
    put_le32(h + 67, 1);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    m = example(EX_HAVE_ALL);
    h_len = plain_header(&m, h);
    put_le32(h + 67, 0);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    put_le32(h + 67, PEER_MAX_PIECES);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_OK);
    put_le32(h + 67, PEER_MAX_PIECES + 1);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ETOOBIG);
    put_le32(h + 67, UINT32_MAX);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ETOOBIG);
    h[65] = PEER_HAVE_SOME; /* SOME with no pieces, so no bitfield */
    put_le32(h + 67, 0);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    put_le32(h + 67, PEER_MAX_PIECES + 1);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ETOOBIG);
    /* ALL and NONE have no bitfield. */
    m = example(EX_HAVE_ALL);
    h_len = plain_header(&m, h);
    h[h_len] = 0xff;
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len + 1, NULL, 0), PEER_ETOOBIG);

    /* COMING: a second bitfield (bytes 73-74 after SOME's 71-72), whose
     * bits past the count are 0 too. */
    m = example(EX_HAVE_COMING);
    h_len = plain_header(&m, h);
    CHECK_INT(h_len, 75);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_OK);
    for (int bit = 13; bit < 16; bit++) {
        h_len = plain_header(&m, h);
        h[73 + 1] |= (uint8_t)(0x80u >> (bit - 8));
        CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    }
    h_len = plain_header(&m, h);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len - 1, NULL, 0), PEER_ETRUNCATED);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len - 2, NULL, 0), PEER_ETRUNCATED);
    h[h_len] = 0;
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, h_len + 1, NULL, 0), PEER_ETOOBIG);
    /* Nothing comes to an agent holding it all; NONE with pieces coming
     * gives their count (and one bitfield), never 0. */
    h[65] = PEER_HAVE_ALL;
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, 71, NULL, 0), PEER_ERESERVED);
    h_len = plain_header(&m, h);
    h[65] = PEER_HAVE_NONE;
    memmove(h + 71, h + 73, 2); /* the coming bitfield alone */
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, 73, NULL, 0), PEER_OK);
    put_le32(h + 67, 0);
    CHECK_INT(open_raw(PEER_MSG_HAVE_REP, h, 71, NULL, 0), PEER_ERESERVED);
    /* Seal keeps the same rules. */
    size_t len;
    m = example(EX_HAVE_COMING);
    m.coming = NULL;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_EINVAL);
    m = example(EX_HAVE_COMING);
    m.have_status = PEER_HAVE_ALL;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_HAVE_COMING);
    m.have_status = PEER_HAVE_NONE;
    m.piece_count = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m.piece_count = 13;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_OK);
    CHECK_INT(len, PEER_PREFIX_BYTES + 73 + PEER_MAC_BYTES);
}

static void test_piece_fields_are_checked(void)
{
    use_kat_key();
    uint8_t h[PEER_HEADER_MAX];
    const uint8_t data[4] = {1, 2, 3, 4};
    peer_msg m = example(EX_PIECE_REQ);
    size_t h_len = plain_header(&m, h);
    put_le32(h + 65, PEER_MAX_PIECES);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REQ, h, h_len, NULL, 0), PEER_ETOOBIG);
    put_le32(h + 65, PEER_MAX_PIECES - 1);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REQ, h, h_len, NULL, 0), PEER_OK);
    h[72] = 1; /* piece 2^56 + ... */
    CHECK_INT(open_raw(PEER_MSG_PIECE_REQ, h, h_len, NULL, 0), PEER_ETOOBIG);

    m = example(EX_PIECE_OK);
    m.data = data;
    m.data_len = sizeof data;
    h_len = plain_header(&m, h);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, data, sizeof data), PEER_OK);
    /* The header's data length must be the prefix's. */
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, data, sizeof data - 1), PEER_ETRUNCATED);
    put_le32(h + 74, sizeof data - 1);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, data, sizeof data), PEER_ETOOBIG);
    /* OK needs data; the other statuses have none. */
    put_le32(h + 74, 0);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, NULL, 0), PEER_ETRUNCATED);
    h[73] = PEER_PIECE_NOT_HELD;
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, NULL, 0), PEER_OK);
    put_le32(h + 74, sizeof data);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, data, sizeof data), PEER_ETOOBIG);
    h[73] = PEER_PIECE_BUSY;
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, data, sizeof data), PEER_ETOOBIG);
    h[73] = 3;
    put_le32(h + 74, 0);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, NULL, 0), PEER_ERESERVED);
    h[73] = PEER_PIECE_BUSY;
    put_le32(h + 65, PEER_MAX_PIECES);
    CHECK_INT(open_raw(PEER_MSG_PIECE_REP, h, h_len, NULL, 0), PEER_ETOOBIG);
}

static void test_seal_refuses_what_open_would_reject(void)
{
    use_kat_key();
    size_t len = 7;
    peer_msg m = example(EX_BEACON);
    m.port = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_BEACON);
    m.beacon_flags = PEER_ROLE_DOWNLOADING;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);

    m = example(EX_HAVE_SOME);
    peer_bit_set(held, 13); /* past the count of 13 */
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_HAVE_SOME);
    m.bitfield = NULL;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_EINVAL);
    m = example(EX_HAVE_SOME);
    m.piece_count = PEER_MAX_PIECES + 1;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ETOOBIG);
    m = example(EX_HAVE_SOME);
    m.piece_count = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_HAVE_NONE);
    m.piece_count = 3;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_HAVE_ALL);
    m.have_status = 3;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);
    m = example(EX_HAVE_ALL);
    m.role = 0x10;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);

    m = example(EX_PIECE_REQ);
    m.piece = PEER_MAX_PIECES;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ETOOBIG);
    m = example(EX_PIECE_OK);
    m.piece = UINT64_MAX;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ETOOBIG);
    m = example(EX_PIECE_OK);
    m.data_len = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ETRUNCATED);
    m = example(EX_PIECE_OK);
    m.data = NULL;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_EINVAL);
    m = example(EX_PIECE_OK);
    m.piece_status = PEER_PIECE_BUSY;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ETOOBIG);
    m = example(EX_PIECE_OK);
    m.piece_status = 3;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_ERESERVED);

    m = example(EX_HAVE_REQ);
    m.head.type = 0;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_EINVAL);
    CHECK_INT(peer_wire_sealed_size(&m), 0);
    m.head.type = 6;
    CHECK_INT(peer_wire_seal(&wire, &m, buf, sizeof buf, &len), PEER_EINVAL);
    CHECK_INT(len, 7); /* untouched on failure */

    /* The capacity must hold the whole message. */
    m = example(EX_PIECE_OK);
    size_t need = peer_wire_sealed_size(&m);
    CHECK_INT(peer_wire_seal(&wire, &m, buf, need - 1, &len), PEER_ETOOBIG);
    CHECK_INT(peer_wire_seal(&wire, &m, buf, need, &len), PEER_OK);
    CHECK_INT(len, need);
    CHECK_INT(peer_wire_seal(NULL, &m, buf, need, &len), PEER_EINVAL);
    CHECK_INT(peer_wire_seal(&wire, NULL, buf, need, &len), PEER_EINVAL);
}

/* A small deterministic generator, so that a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t pick(const uint64_t *values, size_t n)
{
    return values[rng() % n];
}

static void test_whatever_seal_accepts_open_accepts(void)
{
    use_kat_key();
    static const uint64_t small[] = {0, 1, 2, 3, 4, 0x80, 0xff};
    static const uint64_t counts[] = {
        0, 1, 7, 8, 9, PEER_MAX_PIECES - 1, PEER_MAX_PIECES, PEER_MAX_PIECES + 1, UINT32_MAX};
    static const uint64_t pieces[] = {0, 1, PEER_MAX_PIECES - 1, PEER_MAX_PIECES, UINT64_MAX};
    static const uint64_t lens[] = {0, 1, 100, sizeof copy};
    static uint8_t out[BUF_MAX + sizeof copy];
    int sealed[8] = {0}, refused = 0;
    memset(copy, 0x3c, sizeof copy);
    for (int iter = 0; iter < 3000; iter++) {
        peer_msg m = example((enum example)(rng() % EX_COUNT)), back;
        if (rng() % 16 == 0)
            m.head.type = (uint8_t)pick(small, 7);
        m.port = (uint16_t)(rng() % 3 == 0 ? 0 : rng());
        m.beacon_flags = (uint8_t)pick(small, 7);
        m.have_status = (uint8_t)pick(small, 7);
        m.role = (uint8_t)pick(small, 7);
        m.piece_count = (uint32_t)pick(counts, sizeof counts / sizeof counts[0]);
        for (size_t i = 0; i < sizeof held; i++)
            held[i] = (uint8_t)rng();
        if (m.piece_count % 8 != 0 && m.piece_count <= PEER_MAX_PIECES && rng() % 2)
            held[m.piece_count / 8] &= (uint8_t)(0xff00u >> (m.piece_count % 8));
        m.bitfield = rng() % 8 ? held : NULL;
        for (size_t i = 0; i < sizeof coming; i++)
            coming[i] = (uint8_t)rng();
        if (m.piece_count % 8 != 0 && m.piece_count <= PEER_MAX_PIECES && rng() % 2)
            coming[m.piece_count / 8] &= (uint8_t)(0xff00u >> (m.piece_count % 8));
        m.coming = rng() % 8 ? coming : NULL;
        m.piece = pick(pieces, sizeof pieces / sizeof pieces[0]);
        m.piece_status = (uint8_t)pick(small, 7);
        m.data_len = (uint32_t)pick(lens, sizeof lens / sizeof lens[0]);
        m.data = m.data_len > 0 && rng() % 8 ? copy : NULL;
        size_t len = 0;
        if (peer_wire_seal(&wire, &m, out, sizeof out, &len) != PEER_OK) {
            refused++;
            continue;
        }
        CHECK_INT(len, peer_wire_sealed_size(&m));
        CHECK_INT(peer_wire_open(&wire, out, len, &back), PEER_OK);
        check_same(&m, &back);
        sealed[m.head.type & 7]++;
    }
    /* The generator reached every type both ways. */
    for (int t = PEER_MSG_BEACON; t <= PEER_MSG_PIECE_REP; t++)
        CHECK(sealed[t] > 10);
    CHECK(refused > 100);
}

/* Sources (PEER_SOURCE_BYTES): 10.0.0.k. */
static const uint8_t *source_k(unsigned k)
{
    static uint8_t sources[8][PEER_SOURCE_BYTES];
    uint8_t addr[4] = {10, 0, 0, (uint8_t)k};
    peer_replay_source_ipv4(addr, sources[k % 8]);
    return sources[k % 8];
}

static void test_replayed_nonce_is_refused_while_its_time_is_accepted(void)
{
    peer_replay *r = NULL;
    uint8_t a[PEER_NONCE_BYTES] = {1}, b[PEER_NONCE_BYTES] = {2};
    const uint8_t *s = source_k(1);
    int64_t t = 1700000000000;
    CHECK_INT(peer_replay_new(64, 1, &r), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, a, t, t), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, a, t, t), PEER_EREPLAY);
    CHECK_INT(peer_replay_check(r, s, b, t, t), PEER_OK);
    /* Still refused at the very end of the window, stale just after. */
    CHECK_INT(peer_replay_check(r, s, a, t, t + PEER_TIME_WINDOW_MS), PEER_EREPLAY);
    CHECK_INT(peer_replay_check(r, s, a, t, t + PEER_TIME_WINDOW_MS + 1), PEER_ESTALE);
    /* A refused message is not remembered as a new one. */
    uint8_t c[PEER_NONCE_BYTES] = {3};
    CHECK_INT(peer_replay_check(r, s, c, t - PEER_TIME_WINDOW_MS - 1, t), PEER_ESTALE);
    CHECK_INT(peer_replay_check(r, s, c, t, t), PEER_OK);
    peer_replay_free(r);
}

static void test_a_replay_from_another_source_is_refused(void)
{
    peer_replay *r = NULL;
    uint8_t a[PEER_NONCE_BYTES];
    randombytes_buf(a, sizeof a);
    int64_t t = 1700000000000;
    CHECK_INT(peer_replay_new(64, 4, &r), PEER_OK);
    CHECK_INT(peer_replay_check(r, source_k(1), a, t, t), PEER_OK);
    for (unsigned k = 0; k < 8; k++)
        CHECK_INT(peer_replay_check(r, source_k(k), a, t, t + 1000), PEER_EREPLAY);
    peer_replay_free(r);
}

static void test_messages_outside_the_time_window_are_stale(void)
{
    peer_replay *r = NULL;
    uint8_t n[PEER_NONCE_BYTES];
    const uint8_t *s = source_k(1);
    int64_t t = 1700000000000;
    CHECK_INT(peer_replay_new(64, 1, &r), PEER_OK);
    const int64_t times[] = {t - PEER_TIME_WINDOW_MS - 1, t + PEER_TIME_WINDOW_MS + 1, 0, INT64_MIN,
                             INT64_MAX};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        randombytes_buf(n, sizeof n);
        CHECK_INT(peer_replay_check(r, s, n, times[i], t), PEER_ESTALE);
    }
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, s, n, t - PEER_TIME_WINDOW_MS, t), PEER_OK);
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, s, n, t + PEER_TIME_WINDOW_MS, t), PEER_OK);
    /* The extremes of the clock: no overflow. */
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, s, n, INT64_MAX, INT64_MAX), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, n, INT64_MAX, INT64_MAX), PEER_EREPLAY);
    CHECK_INT(peer_replay_check(r, s, n, INT64_MIN, INT64_MAX), PEER_ESTALE);
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, s, n, INT64_MIN, INT64_MIN), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, n, INT64_MIN + 5, INT64_MIN), PEER_EREPLAY);
    peer_replay_free(r);
}

static void test_full_replay_filter_refuses_rather_than_forgets(void)
{
    peer_replay *r = NULL;
    uint8_t n[8][PEER_NONCE_BYTES];
    const uint8_t *s = source_k(1);
    int64_t t = 1700000000000;
    CHECK_INT(peer_replay_new(4, 1, &r), PEER_OK);
    for (int i = 0; i < 8; i++)
        randombytes_buf(n[i], sizeof n[i]);
    for (int i = 0; i < 4; i++)
        CHECK_INT(peer_replay_check(r, s, n[i], t, t), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, n[4], t, t), PEER_EREPLAY);
    for (int i = 0; i < 4; i++)
        CHECK_INT(peer_replay_check(r, s, n[i], t, t + 1000), PEER_EREPLAY);
    /* Once those expire their slots are reused. */
    int64_t later = t + PEER_TIME_WINDOW_MS + 1;
    for (int i = 4; i < 8; i++)
        CHECK_INT(peer_replay_check(r, s, n[i], later, later), PEER_OK);
    CHECK_INT(peer_replay_check(r, s, n[0], later, later), PEER_EREPLAY); /* full again */
    CHECK_INT(peer_replay_check(r, s, n[0], t, later), PEER_ESTALE);
    peer_replay_free(r);
}

static void test_live_nonce_behind_an_expired_slot_is_still_found(void)
{
    int64_t t = 1700000000000;
    const uint8_t *s = source_k(1);
    for (int round = 0; round < 50; round++) {
        peer_replay *r = NULL;
        uint8_t a[PEER_NONCE_BYTES], b[PEER_NONCE_BYTES], c[PEER_NONCE_BYTES];
        randombytes_buf(a, sizeof a);
        randombytes_buf(b, sizeof b);
        randombytes_buf(c, sizeof c);
        CHECK_INT(peer_replay_new(2, 1, &r), PEER_OK);
        CHECK_INT(peer_replay_check(r, s, a, t, t), PEER_OK);
        CHECK_INT(peer_replay_check(r, s, b, t + 30000, t + 30000), PEER_OK);
        /* a has expired, b has not: b is still found, and c takes a's place. */
        int64_t now = t + PEER_TIME_WINDOW_MS + 1;
        CHECK_INT(peer_replay_check(r, s, b, t + 30000, now), PEER_EREPLAY);
        CHECK_INT(peer_replay_check(r, s, c, now, now), PEER_OK);
        CHECK_INT(peer_replay_check(r, s, b, t + 30000, now), PEER_EREPLAY);
        CHECK_INT(peer_replay_check(r, s, c, now, now), PEER_EREPLAY);
        peer_replay_free(r);
    }
}

/* What was accepted, to replay it later. */
typedef struct sent {
    uint8_t nonce[PEER_NONCE_BYTES];
    int64_t time_ms;
} sent;

static void test_a_flood_never_makes_another_sources_message_replayed(void)
{
    /* The filter as the node sizes it. Four flooding sources send 40000
     * fresh messages each, interleaved, dated anywhere in the window and
     * most a second short of its future end (they live longest), while the
     * clock moves on a millisecond every 4 messages. Between every 200
     * comes a fresh message from an honest source (12 a second, within the
     * 1024 a minute its share holds): it is never refused. Accepted
     * messages replayed, from any source and as long as their time is
     * accepted, are always refused. */
    enum { SLOTS = 131072, SOURCES = 64, FLOOD = 4 * 40000, SAMPLES = 4096 };
    peer_replay *r = NULL;
    CHECK_INT(peer_replay_new(SLOTS, SOURCES, &r), PEER_OK);
    static sent kept[SAMPLES];
    size_t n_kept = 0;
    int64_t now = 1700000000000;
    unsigned flood_ok = 0, honest_ok = 0, honest = 0, replays = 0;
    uint8_t nonce[PEER_NONCE_BYTES];
    for (unsigned i = 0; i < FLOOD; i++) {
        if (i % 4 == 0)
            now++;
        int64_t t = rng() % 4
                        ? now + PEER_TIME_WINDOW_MS - 1000
                        : now - PEER_TIME_WINDOW_MS + (int64_t)(rng() % (2 * PEER_TIME_WINDOW_MS));
        randombytes_buf(nonce, sizeof nonce);
        int err = peer_replay_check(r, source_k(1 + i % 4), nonce, t, now);
        CHECK(err == PEER_OK || err == PEER_EREPLAY);
        if (err == PEER_OK) {
            flood_ok++;
            if (rng() % 32 == 0) {
                memcpy(kept[n_kept % SAMPLES].nonce, nonce, sizeof nonce);
                kept[n_kept++ % SAMPLES].time_ms = t;
            }
        }
        if (i % 200 == 0) {
            randombytes_buf(nonce, sizeof nonce);
            honest++;
            int64_t ht = now - (int64_t)(rng() % 2000); /* a little late */
            err = peer_replay_check(r, source_k(7), nonce, ht, now);
            if (err == PEER_OK)
                honest_ok++;
            else
                CHECK_INT(err, PEER_OK);
            if (err == PEER_OK && rng() % 4 == 0) {
                memcpy(kept[n_kept % SAMPLES].nonce, nonce, sizeof nonce);
                kept[n_kept++ % SAMPLES].time_ms = ht;
            }
        }
        if (i % 50 == 0 && n_kept > 0) {
            const sent *k = &kept[rng() % (n_kept < SAMPLES ? n_kept : SAMPLES)];
            err = peer_replay_check(r, source_k((unsigned)rng() % 8), k->nonce, k->time_ms, now);
            if (err != PEER_ESTALE) {
                CHECK_INT(err, PEER_EREPLAY);
                replays++;
            }
        }
    }
    printf("  %u flood messages from 4 sources, %u accepted; %u of %u honest ones accepted; "
           "%u replays refused\n",
           FLOOD, flood_ok, honest_ok, honest, replays);
    CHECK_INT(honest_ok, honest);
    CHECK(flood_ok < FLOOD); /* the flood did reach the limit */
    CHECK(replays > 1000);
    peer_replay_free(r);
}

static void test_each_source_keeps_its_share_of_a_full_filter(void)
{
    /* 16 slots, 2 accounts: shares of 4, 8 common. */
    peer_replay *r = NULL;
    uint8_t n[PEER_NONCE_BYTES];
    int64_t t = 1700000000000;
    CHECK_INT(peer_replay_new(16, 2, &r), PEER_OK);
    /* Source 1 takes its share and the common half, then is refused. */
    int ok = 0;
    for (int i = 0; i < 40; i++) {
        randombytes_buf(n, sizeof n);
        ok += peer_replay_check(r, source_k(1), n, t, t) == PEER_OK;
    }
    CHECK_INT(ok, 12);
    /* Source 2 still has its whole share, and no more. */
    for (int i = 0; i < 4; i++) {
        randombytes_buf(n, sizeof n);
        CHECK_INT(peer_replay_check(r, source_k(2), n, t, t), PEER_OK);
    }
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, source_k(2), n, t, t), PEER_EREPLAY);
    /* A third source finds both accounts taken: only the common half,
     * which is full. */
    CHECK_INT(peer_replay_check(r, source_k(3), n, t, t), PEER_EREPLAY);
    /* When source 1's entries expire, its account is free again. */
    int64_t later = t + PEER_TIME_WINDOW_MS + 1;
    randombytes_buf(n, sizeof n);
    CHECK_INT(peer_replay_check(r, source_k(3), n, later, later), PEER_OK);
    peer_replay_free(r);
}

static void test_the_filter_is_exact_below_its_capacity(void)
{
    /* Against a plain list of what was accepted, over several windows: a
     * nonce is refused exactly when it was accepted before and its first
     * message's time is still in the window. Nonces come from a small
     * pool so that they repeat. */
    enum { POOL = 512, STEPS = 60000 };
    static uint8_t pool[POOL][PEER_NONCE_BYTES];
    static int64_t expiry[POOL]; /* 0: not remembered */
    for (int i = 0; i < POOL; i++)
        randombytes_buf(pool[i], sizeof pool[i]);
    peer_replay *r = NULL;
    CHECK_INT(peer_replay_new(2 * POOL, 1, &r), PEER_OK); /* never full */
    int64_t now = 1700000000000;
    int refused = 0, accepted = 0;
    for (int step = 0; step < STEPS; step++) {
        now += (int64_t)(rng() % 16);
        int i = (int)(rng() % POOL);
        int64_t t = now - PEER_TIME_WINDOW_MS + (int64_t)(rng() % (2 * PEER_TIME_WINDOW_MS + 1));
        int remembered = expiry[i] != 0 && expiry[i] >= now;
        int err = peer_replay_check(r, source_k(1), pool[i], t, now);
        CHECK_INT(err, remembered ? PEER_EREPLAY : PEER_OK);
        if (err == PEER_OK) {
            expiry[i] = t + PEER_TIME_WINDOW_MS;
            accepted++;
        } else {
            refused++;
        }
    }
    CHECK(accepted > 1000 && refused > 1000);
    peer_replay_free(r);
}

static void test_replay_filter_arguments(void)
{
    peer_replay *r = NULL;
    uint8_t n[PEER_NONCE_BYTES] = {0};
    CHECK_INT(peer_replay_new(0, 1, &r), PEER_EINVAL);
    CHECK_INT(peer_replay_new(SIZE_MAX, 1, &r), PEER_EINVAL);
    CHECK_INT(peer_replay_new(1, 0, &r), PEER_EINVAL);
    CHECK_INT(peer_replay_new(4, 5, &r), PEER_EINVAL);
    CHECK_INT(peer_replay_new(1, 1, NULL), PEER_EINVAL);
    CHECK(r == NULL);
    CHECK_INT(peer_replay_new(1, 1, &r), PEER_OK);
    CHECK_INT(peer_replay_check(r, source_k(1), NULL, 0, 0), PEER_EINVAL);
    CHECK_INT(peer_replay_check(r, NULL, n, 0, 0), PEER_EINVAL);
    CHECK_INT(peer_replay_check(NULL, source_k(1), n, 0, 0), PEER_EINVAL);
    CHECK_INT(peer_replay_check(r, source_k(1), n, 0, 0), PEER_OK);
    peer_replay_free(r);
    peer_replay_free(NULL);
}

static void test_every_error_code_has_a_name(void)
{
    CHECK_STR(peer_strerror(PEER_OK), "success");
    for (int e = PEER_ENOMEM; e < PEER_ERR_END; e++) {
        const char *s = peer_strerror(e);
        CHECK(s != NULL && *s != '\0');
        CHECK(strcmp(s, "unknown error") != 0);
        for (int f = PEER_ENOMEM; f < e; f++)
            CHECK(strcmp(s, peer_strerror(f)) != 0);
    }
    CHECK_STR(peer_strerror(PEER_ERR_END), "unknown error");
    CHECK_STR(peer_strerror(399), "unknown error");
    CHECK_STR(peer_strerror(-1), "unknown error");
    CHECK_HAS(peer_strerror(PEER_EAUTH), "group key");
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_wire_key_is_blake2b_of_the_group_key),
                         CASE(test_opens_messages_sealed_by_an_independent_implementation),
                         CASE(test_sealed_layout_matches_the_protocol),
                         CASE(test_every_type_round_trips),
                         CASE(test_largest_messages_round_trip),
                         CASE(test_piece_already_in_place_is_sealed_without_a_copy),
                         CASE(test_each_seal_has_a_fresh_nonce),
                         CASE(test_every_prefix_byte_is_checked),
                         CASE(test_altered_or_foreign_messages_fail_authentication),
                         CASE(test_message_lengths_must_be_exact),
                         CASE(test_length_fields_are_bounded_before_any_crypto),
                         CASE(test_header_lengths_are_exact_per_type),
                         CASE(test_beacon_fields_are_checked),
                         CASE(test_have_reply_fields_are_checked),
                         CASE(test_piece_fields_are_checked),
                         CASE(test_seal_refuses_what_open_would_reject),
                         CASE(test_whatever_seal_accepts_open_accepts),
                         CASE(test_replayed_nonce_is_refused_while_its_time_is_accepted),
                         CASE(test_a_replay_from_another_source_is_refused),
                         CASE(test_messages_outside_the_time_window_are_stale),
                         CASE(test_full_replay_filter_refuses_rather_than_forgets),
                         CASE(test_live_nonce_behind_an_expired_slot_is_still_found),
                         CASE(test_a_flood_never_makes_another_sources_message_replayed),
                         CASE(test_each_source_keeps_its_share_of_a_full_filter),
                         CASE(test_the_filter_is_exact_below_its_capacity),
                         CASE(test_replay_filter_arguments),
                         CASE(test_every_error_code_has_a_name),
                         {0},
                     });
}
