/* Signed manifests: round trips, every parser rejection, signatures, expiry,
 * piece and file checks. */
#include <fcntl.h>
#include <sys/stat.h>

#include "../check.h"
#include "validate.h"

#define PS 65536u

static uint8_t content[3 * PS + 1000];
static validate_secret_key *key;

/* A manifest over `content` signed with `key` (made on first use). */
static validate_manifest *make_manifest(uint64_t version, uint64_t expires)
{
    if (key == NULL) {
        randombytes_buf(content, sizeof content);
        CHECK_INT(validate_secret_key_generate(&key), VALIDATE_OK);
    }
    validate_digester *dg = NULL;
    validate_digest d;
    validate_manifest *m = NULL;
    CHECK_INT(validate_digester_new(PS, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_update(dg, content, sizeof content), VALIDATE_OK);
    CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
    validate_digester_free(dg);
    CHECK_INT(validate_manifest_sign(&d, version, expires, key, &m), VALIDATE_OK);
    validate_digest_clear(&d);
    return m;
}

static const validate_public_key *trusted(void)
{
    return validate_secret_key_public(key);
}

/* Parses a copy of m's bytes after `mutate` changed them; returns the code. */
static int parse_mutated(const validate_manifest *m, size_t extra,
                         void (*mutate)(uint8_t *, size_t *), validate_error *why)
{
    size_t len = m->encoded_len;
    uint8_t *buf = calloc(1, len + extra);
    memcpy(buf, m->encoded, len);
    if (mutate)
        mutate(buf, &len);
    validate_manifest *out = NULL;
    int err = validate_manifest_parse(buf, len, &out, why);
    CHECK(err != VALIDATE_OK || out != NULL);
    validate_manifest_free(out);
    free(buf);
    return err;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_signed_manifest_round_trips(void)
{
    validate_manifest *m = make_manifest(7, VALIDATE_NEVER_EXPIRES);
    CHECK_INT(m->encoded_len, 128 + 4 * 32 + 64);
    validate_manifest *p = NULL;
    validate_error why = {0};
    CHECK_INT(validate_manifest_parse(m->encoded, m->encoded_len, &p, &why), VALIDATE_OK);
    CHECK_INT(p->content_version, 7);
    CHECK_INT(p->expires_at, 0);
    CHECK_INT(p->file_size, sizeof content);
    CHECK_INT(p->piece_size, PS);
    CHECK_INT(p->piece_count, 4);
    CHECK(memcmp(p->content_id, m->content_id, 32) == 0);
    CHECK(memcmp(p->sha256, m->sha256, 32) == 0);
    CHECK(memcmp(p->blake2b, m->blake2b, 32) == 0);
    CHECK(memcmp(p->key_id, trusted()->id, 16) == 0);
    CHECK(memcmp(p->piece_hashes, m->piece_hashes, 4 * 32) == 0);
    uint8_t h[32];
    validate_sha256(content, sizeof content, h);
    CHECK(memcmp(p->sha256, h, 32) == 0);
    CHECK_INT(validate_manifest_verify(p, trusted(), 1, 12345, &why), VALIDATE_OK);
    validate_manifest_free(p);
    validate_manifest_free(m);
}

static void test_content_id_follows_the_signed_body(void)
{
    validate_manifest *a = make_manifest(1, 0), *b = make_manifest(1, 0), *c = make_manifest(2, 0);
    uint8_t from_sha[32], other_size[32];
    CHECK(memcmp(a->content_id, b->content_id, 32) == 0); /* Ed25519 is deterministic */
    CHECK(memcmp(a->content_id, c->content_id, 32) != 0);
    validate_content_id_from_sha256(a->sha256, a->file_size, from_sha);
    validate_content_id_from_sha256(a->sha256, a->file_size + 1, other_size);
    CHECK(memcmp(from_sha, a->content_id, 32) != 0);
    CHECK(memcmp(from_sha, other_size, 32) != 0);
    uint8_t again[32];
    validate_content_id_from_sha256(a->sha256, a->file_size, again);
    CHECK(memcmp(from_sha, again, 32) == 0);
    validate_manifest_free(a);
    validate_manifest_free(b);
    validate_manifest_free(c);
}

static void test_empty_file_has_zero_pieces(void)
{
    validate_digester *dg = NULL;
    validate_digest d;
    validate_manifest *m = NULL, *p = NULL;
    if (key == NULL)
        make_manifest(1, 0);
    CHECK_INT(validate_digester_new(PS, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
    validate_digester_free(dg);
    CHECK_INT(validate_manifest_sign(&d, 1, 0, key, &m), VALIDATE_OK);
    CHECK_INT(m->encoded_len, 128 + 64);
    CHECK_INT(validate_manifest_open(m->encoded, m->encoded_len, trusted(), 1, 1, &p, NULL),
              VALIDATE_OK);
    CHECK_INT(p->piece_count, 0);
    int fd = open(check_path("empty"), O_RDWR | O_CREAT, 0600);
    CHECK(fd >= 0);
    CHECK_INT(validate_manifest_check_fd(p, fd, NULL, NULL), VALIDATE_OK);
    close(fd);
    validate_manifest_free(p);
    validate_manifest_free(m);
    validate_digest_clear(&d);
}

/* Each mutation below breaks one rule of MANIFEST.md. */
static void bad_magic(uint8_t *b, size_t *len)
{
    (void)len;
    b[3] ^= 1;
}
static void bad_format(uint8_t *b, size_t *len)
{
    (void)len;
    b[8] = 2;
}
static void reserved_set(uint8_t *b, size_t *len)
{
    (void)len;
    b[11] = 0x80;
}
static void piece_size_odd(uint8_t *b, size_t *len)
{
    (void)len;
    b[12] = 1; /* 65537 */
}
static void piece_size_small(uint8_t *b, size_t *len)
{
    (void)len;
    memset(b + 12, 0, 4);
    b[13] = 0x80; /* 32768 */
}
static void piece_size_large(uint8_t *b, size_t *len)
{
    (void)len;
    memset(b + 12, 0, 4);
    b[15] = 0x02; /* 32 MiB */
}
static void too_many_pieces(uint8_t *b, size_t *len)
{
    (void)len;
    put64(b + 40, (uint64_t)VALIDATE_MAX_PIECES + 1);
    put64(b + 32, ((uint64_t)VALIDATE_MAX_PIECES + 1) * PS);
}
static void huge_piece_count(uint8_t *b, size_t *len)
{
    (void)len;
    put64(b + 40, UINT64_MAX);
}
static void count_disagrees(uint8_t *b, size_t *len)
{
    (void)len;
    put64(b + 40, 5);
}
static void size_disagrees(uint8_t *b, size_t *len)
{
    (void)len;
    put64(b + 32, 5 * (uint64_t)PS);
}
static void cut_last_byte(uint8_t *b, size_t *len)
{
    (void)b;
    *len -= 1;
}
static void cut_to_header(uint8_t *b, size_t *len)
{
    (void)b;
    *len = 128 + 64;
}
static void cut_to_nothing(uint8_t *b, size_t *len)
{
    (void)b;
    *len = 100;
}
static void one_trailing_byte(uint8_t *b, size_t *len)
{
    b[*len] = 0;
    *len += 1;
}

static void test_parser_rejects_each_broken_rule(void)
{
    validate_manifest *m = make_manifest(1, 0);
    static const struct {
        void (*mutate)(uint8_t *, size_t *);
        int err;
        const char *detail;
    } cases[] = {
        {bad_magic, VALIDATE_EMAGIC, "DOPAMFST"},
        {bad_format, VALIDATE_EVERSION, "format version 2"},
        {reserved_set, VALIDATE_ERESERVED, "0x8000"},
        {piece_size_odd, VALIDATE_EPIECE_SIZE, "65537"},
        {piece_size_small, VALIDATE_EPIECE_SIZE, "32768"},
        {piece_size_large, VALIDATE_EPIECE_SIZE, "33554432"},
        {too_many_pieces, VALIDATE_ETOO_MANY_PIECES, "131073 pieces"},
        {huge_piece_count, VALIDATE_ETOO_MANY_PIECES, "18446744073709551615"},
        {count_disagrees, VALIDATE_EPIECE_COUNT, "5 pieces"},
        {size_disagrees, VALIDATE_EPIECE_COUNT, "need 5"},
        {cut_last_byte, VALIDATE_ETRUNCATED, "need 320"},
        {cut_to_header, VALIDATE_ETRUNCATED, "4 pieces need"},
        {cut_to_nothing, VALIDATE_ETRUNCATED, "shorter than the smallest"},
        {one_trailing_byte, VALIDATE_ETRAILING, "1 bytes after"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        validate_error why = {0};
        int err = parse_mutated(m, 1, cases[i].mutate, &why);
        if (err != cases[i].err)
            fprintf(stderr, "  case %zu: %s (%s)\n", i, validate_strerror(err), why.text);
        CHECK_INT(err, cases[i].err);
        CHECK_HAS(why.text, cases[i].detail);
    }
    validate_manifest_free(m);
}

static void test_parser_rejects_oversized_and_null_input(void)
{
    validate_manifest *out = NULL;
    validate_error why = {0};
    size_t big = VALIDATE_MANIFEST_MAX_BYTES + 1;
    uint8_t *buf = calloc(1, big);
    CHECK_INT(validate_manifest_parse(buf, big, &out, &why), VALIDATE_ETOOBIG);
    CHECK_INT(validate_manifest_parse(buf, 0, &out, &why), VALIDATE_ETRUNCATED);
    CHECK_INT(validate_manifest_parse(NULL, 10, &out, &why), VALIDATE_EINVAL);
    CHECK(out == NULL);
    free(buf);
}

static void test_largest_manifest_is_accepted(void)
{
    /* A manifest at the piece limit is at most VALIDATE_MANIFEST_MAX_BYTES. */
    validate_digest d = {
        .file_size = (uint64_t)VALIDATE_MAX_PIECES * PS,
        .piece_size = PS,
        .piece_count = VALIDATE_MAX_PIECES,
        .piece_hashes = calloc(VALIDATE_MAX_PIECES, 32),
    };
    validate_manifest *m = NULL, *p = NULL;
    if (key == NULL)
        make_manifest(1, 0);
    CHECK_INT(validate_manifest_sign(&d, 1, 0, key, &m), VALIDATE_OK);
    CHECK_INT(m->encoded_len, VALIDATE_MANIFEST_MAX_BYTES);
    CHECK_INT(validate_manifest_open(m->encoded, m->encoded_len, trusted(), 1, 0, &p, NULL),
              VALIDATE_OK);
    validate_manifest_free(p);
    validate_manifest_free(m);
    validate_digest_clear(&d);
}

static void test_sign_refuses_inconsistent_digest(void)
{
    uint8_t hashes[3 * 32] = {0};
    validate_digest d = {
        .file_size = 3 * PS, .piece_size = PS, .piece_count = 2, .piece_hashes = hashes};
    validate_manifest *m = NULL;
    if (key == NULL)
        make_manifest(1, 0);
    CHECK_INT(validate_manifest_sign(&d, 1, 0, key, &m), VALIDATE_EPIECE_COUNT);
    d.piece_count = 3;
    d.piece_size = 1000;
    CHECK_INT(validate_manifest_sign(&d, 1, 0, key, &m), VALIDATE_EPIECE_SIZE);
    CHECK(m == NULL);
}

static void test_untrusted_key_is_rejected(void)
{
    validate_manifest *m = make_manifest(1, 0);
    validate_secret_key *other = NULL;
    CHECK_INT(validate_secret_key_generate(&other), VALIDATE_OK);
    validate_error why = {0};
    CHECK_INT(validate_manifest_verify(m, validate_secret_key_public(other), 1, 0, &why),
              VALIDATE_EUNTRUSTED_KEY);
    CHECK_HAS(why.text, "not among the 1 trusted keys");
    CHECK_INT(validate_manifest_verify(m, NULL, 0, 0, &why), VALIDATE_EUNTRUSTED_KEY);
    /* Trusting several keys finds the right one. */
    validate_public_key both[2] = {*validate_secret_key_public(other), *trusted()};
    CHECK_INT(validate_manifest_verify(m, both, 2, 0, &why), VALIDATE_OK);
    validate_secret_key_free(other);
    validate_manifest_free(m);
}

static void test_forged_key_id_with_other_key_fails_signature(void)
{
    /* An attacker signs with its own key but claims our key id. */
    validate_manifest *m = make_manifest(1, 0);
    validate_secret_key *other = NULL;
    CHECK_INT(validate_secret_key_generate(&other), VALIDATE_OK);
    validate_public_key forged = *validate_secret_key_public(other);
    memcpy(forged.id, m->key_id, sizeof forged.id);
    CHECK_INT(validate_manifest_verify(m, &forged, 1, 0, NULL), VALIDATE_ESIGNATURE);
    validate_secret_key_free(other);
    validate_manifest_free(m);
}

static void test_any_changed_byte_breaks_the_signature(void)
{
    validate_manifest *m = make_manifest(3, 0);
    uint8_t *buf = malloc(m->encoded_len);
    for (size_t i = 0; i < m->encoded_len; i++) {
        memcpy(buf, m->encoded, m->encoded_len);
        buf[i] ^= (uint8_t)(1u << (i % 8));
        validate_manifest *p = NULL;
        int err = validate_manifest_open(buf, m->encoded_len, trusted(), 1, 0, &p, NULL);
        CHECK(err != VALIDATE_OK);
        CHECK(p == NULL);
        /* Version, expiry, hashes and the signature itself are not policed
         * by the parser: the signature check must catch them. A changed key
         * id names a key that is not trusted. */
        if ((i >= 16 && i < 32) || i >= 64)
            CHECK_INT(err, VALIDATE_ESIGNATURE);
        else if (i >= 48)
            CHECK_INT(err, VALIDATE_EUNTRUSTED_KEY);
    }
    free(buf);
    validate_manifest_free(m);
}

static void test_expiry_is_enforced(void)
{
    validate_manifest *m = make_manifest(1, 1000);
    validate_error why = {0};
    CHECK_INT(validate_manifest_verify(m, trusted(), 1, 999, &why), VALIDATE_OK);
    CHECK_INT(validate_manifest_verify(m, trusted(), 1, 1000, &why), VALIDATE_EEXPIRED);
    CHECK_HAS(why.text, "expired at 1000");
    validate_manifest_free(m);
    m = make_manifest(1, VALIDATE_NEVER_EXPIRES);
    CHECK_INT(validate_manifest_verify(m, trusted(), 1, UINT64_MAX, &why), VALIDATE_OK);
    validate_manifest_free(m);
}

static void test_piece_check_catches_index_length_and_hash(void)
{
    validate_manifest *m = make_manifest(1, 0);
    CHECK_INT(validate_manifest_check_piece(m, 0, content, PS), VALIDATE_OK);
    CHECK_INT(validate_manifest_check_piece(m, 3, content + 3 * PS, 1000), VALIDATE_OK);
    CHECK_INT(validate_manifest_check_piece(m, 4, content, 1000), VALIDATE_EPIECE_INDEX);
    CHECK_INT(validate_manifest_check_piece(m, UINT64_MAX, content, 1000), VALIDATE_EPIECE_INDEX);
    CHECK_INT(validate_manifest_check_piece(m, 3, content + 3 * PS, 999), VALIDATE_EPIECE_LENGTH);
    CHECK_INT(validate_manifest_check_piece(m, 0, content, PS + 1), VALIDATE_EPIECE_LENGTH);
    CHECK_INT(validate_manifest_check_piece(m, 1, content, PS), VALIDATE_EPIECE_HASH);
    CHECK(validate_manifest_piece_hash(m, 4) == NULL);
    validate_manifest_free(m);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, len, f) == len);
    CHECK(fclose(f) == 0);
}

static void test_file_check_reports_bad_pieces(void)
{
    validate_manifest *m = make_manifest(1, 0);
    const char *path = check_path("content");
    validate_file_report r;
    validate_error why = {0};
    write_file(path, content, sizeof content);
    int fd = open(path, O_RDONLY);
    CHECK_INT(validate_manifest_check_fd(m, fd, &r, &why), VALIDATE_OK);
    CHECK_INT(r.bad_pieces, 0);
    close(fd);

    uint8_t *copy = malloc(sizeof content);
    memcpy(copy, content, sizeof content);
    copy[PS + 5] ^= 1;
    copy[3 * PS + 999] ^= 1;
    write_file(path, copy, sizeof content);
    fd = open(path, O_RDONLY);
    CHECK_INT(validate_manifest_check_fd(m, fd, &r, &why), VALIDATE_EPIECE_HASH);
    CHECK_INT(r.bad_pieces, 2);
    CHECK_INT(r.first_bad_piece, 1);
    CHECK_HAS(why.text, "2 of 4 pieces");
    close(fd);

    write_file(path, content, sizeof content - 1);
    fd = open(path, O_RDONLY);
    CHECK_INT(validate_manifest_check_fd(m, fd, &r, &why), VALIDATE_EFILE_SIZE);
    CHECK_INT(r.size, sizeof content - 1);
    close(fd);
    free(copy);
    validate_manifest_free(m);
}

static void test_file_check_catches_inconsistent_whole_file_hash(void)
{
    /* A manifest whose pieces match but whose whole-file hash does not
     * (a broken publisher) must not pass. */
    validate_digester *dg = NULL;
    validate_digest d;
    validate_manifest *m = NULL;
    if (key == NULL)
        validate_manifest_free(make_manifest(1, 0));
    CHECK_INT(validate_digester_new(PS, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_update(dg, content, sizeof content), VALIDATE_OK);
    CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
    validate_digester_free(dg);
    d.sha256[5] ^= 1;
    CHECK_INT(validate_manifest_sign(&d, 1, 0, key, &m), VALIDATE_OK);
    validate_digest_clear(&d);
    const char *path = check_path("content");
    write_file(path, content, sizeof content);
    int fd = open(path, O_RDONLY);
    validate_file_report r;
    validate_error why = {0};
    CHECK_INT(validate_manifest_check_fd(m, fd, &r, &why), VALIDATE_EFILE_HASH);
    CHECK_INT(r.bad_pieces, 0);
    CHECK_HAS(why.text, "whole-file hashes do not");
    close(fd);
    validate_manifest_free(m);
}

static void test_short_buffers_with_the_magic_are_truncated(void)
{
    validate_manifest *out = NULL;
    for (size_t len = 1; len < 8; len++)
        CHECK_INT(validate_manifest_parse("DOPAMFST", len, &out, NULL), VALIDATE_ETRUNCATED);
    CHECK_INT(validate_manifest_parse("DOPAMFST", 8, &out, NULL), VALIDATE_ETRUNCATED);
    CHECK(out == NULL);
}

static void test_load_refuses_a_fifo_without_hanging(void)
{
    validate_manifest *m = NULL;
    validate_error why = {0};
    CHECK(mkfifo(check_path("fifo"), 0600) == 0);
    CHECK_INT(validate_manifest_load(check_path("fifo"), &m, &why), VALIDATE_EIO);
    CHECK_HAS(why.text, "not a regular file");
}

static void test_save_and_load_round_trip(void)
{
    validate_manifest *m = make_manifest(9, 0), *back = NULL;
    const char *path = check_path("m.dopa-manifest");
    validate_error why = {0};
    CHECK_INT(validate_manifest_save(m, path, &why), VALIDATE_OK);
    CHECK_INT(validate_manifest_save(m, path, &why), VALIDATE_OK); /* replaces */
    CHECK_INT(validate_manifest_load(path, &back, &why), VALIDATE_OK);
    CHECK_INT(back->encoded_len, m->encoded_len);
    CHECK(memcmp(back->encoded, m->encoded, m->encoded_len) == 0);
    validate_manifest_free(back);

    CHECK_INT(validate_manifest_load(check_path("missing"), &back, &why), VALIDATE_EIO);
    CHECK_HAS(why.text, "No such file");

    /* A file larger than any manifest is refused before it is parsed. */
    int fd = open(check_path("big"), O_RDWR | O_CREAT, 0600);
    CHECK(ftruncate(fd, (off_t)VALIDATE_MANIFEST_MAX_BYTES + 1) == 0);
    close(fd);
    CHECK_INT(validate_manifest_load(check_path("big"), &back, &why), VALIDATE_ETOOBIG);

    /* Load reports parser errors with the file name. */
    write_file(path, "DOPAMFSX", 8);
    CHECK_INT(validate_manifest_load(path, &back, &why), VALIDATE_EMAGIC);
    CHECK_HAS(why.text, "m.dopa-manifest");
    validate_manifest_free(m);
}

static void test_random_mutations_never_verify(void)
{
    validate_manifest *m = make_manifest(5, 0);
    uint8_t *buf = malloc(m->encoded_len + 64);
    for (int round = 0; round < 3000; round++) {
        memcpy(buf, m->encoded, m->encoded_len);
        size_t len = m->encoded_len;
        int edits = 1 + (int)randombytes_uniform(4);
        for (int e = 0; e < edits; e++) {
            uint32_t what = randombytes_uniform(3);
            if (what == 0)
                buf[randombytes_uniform((uint32_t)len)] = (uint8_t)randombytes_uniform(256);
            else if (what == 1 && len > 1)
                len -= 1 + randombytes_uniform((uint32_t)len - 1);
            else if (len < m->encoded_len + 32)
                buf[len++] = (uint8_t)randombytes_uniform(256);
        }
        if (len == m->encoded_len && memcmp(buf, m->encoded, len) == 0)
            continue;
        validate_manifest *p = NULL;
        CHECK(validate_manifest_open(buf, len, trusted(), 1, 0, &p, NULL) != VALIDATE_OK);
        CHECK(p == NULL);
    }
    free(buf);
    validate_manifest_free(m);
}

static void cleanup(void)
{
    validate_secret_key_free(key);
}

int main(int argc, char **argv)
{
    atexit(cleanup);
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_signed_manifest_round_trips),
                         CASE(test_content_id_follows_the_signed_body),
                         CASE(test_empty_file_has_zero_pieces),
                         CASE(test_parser_rejects_each_broken_rule),
                         CASE(test_parser_rejects_oversized_and_null_input),
                         CASE(test_largest_manifest_is_accepted),
                         CASE(test_sign_refuses_inconsistent_digest),
                         CASE(test_untrusted_key_is_rejected),
                         CASE(test_forged_key_id_with_other_key_fails_signature),
                         CASE(test_any_changed_byte_breaks_the_signature),
                         CASE(test_expiry_is_enforced),
                         CASE(test_piece_check_catches_index_length_and_hash),
                         CASE(test_file_check_reports_bad_pieces),
                         CASE(test_file_check_catches_inconsistent_whole_file_hash),
                         CASE(test_short_buffers_with_the_magic_are_truncated),
                         CASE(test_load_refuses_a_fifo_without_hanging),
                         CASE(test_save_and_load_round_trip),
                         CASE(test_random_mutations_never_verify),
                         {0},
                     });
}
