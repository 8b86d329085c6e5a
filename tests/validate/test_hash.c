/* Hashers, piece arithmetic and the digester. */
#include <fcntl.h>
#include <sys/stat.h>

#include "../check.h"
#include "validate.h"

static void hex_of(const uint8_t h[32], char out[65])
{
    validate_hex(h, 32, out);
}

static void test_blake2b_matches_published_vectors(void)
{
    uint8_t h[32];
    char hex[65];
    validate_blake2b("", 0, h);
    hex_of(h, hex);
    CHECK_STR(hex, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
    validate_blake2b("abc", 3, h);
    hex_of(h, hex);
    CHECK_STR(hex, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
}

static void test_sha256_matches_published_vectors(void)
{
    uint8_t h[32];
    char hex[65];
    validate_sha256("", 0, h);
    hex_of(h, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    validate_sha256("abc", 3, h);
    hex_of(h, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    validate_sha256(two, strlen(two), h);
    hex_of(h, hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_streaming_equals_one_shot_for_any_split(void)
{
    static uint8_t data[100000];
    randombytes_buf(data, sizeof data);
    uint8_t b_one[32], s_one[32];
    validate_blake2b(data, sizeof data, b_one);
    validate_sha256(data, sizeof data, s_one);
    const size_t steps[] = {1, 7, 63, 64, 65, 127, 128, 4096, 65537};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        validate_blake2b_state b;
        validate_sha256_state s;
        validate_blake2b_init(&b);
        validate_sha256_init(&s);
        for (size_t off = 0; off < sizeof data; off += steps[i]) {
            size_t n = sizeof data - off < steps[i] ? sizeof data - off : steps[i];
            validate_blake2b_update(&b, data + off, n);
            validate_sha256_update(&s, data + off, n);
        }
        uint8_t b_out[32], s_out[32];
        validate_blake2b_final(&b, b_out);
        validate_sha256_final(&s, s_out);
        CHECK(memcmp(b_out, b_one, 32) == 0);
        CHECK(memcmp(s_out, s_one, 32) == 0);
    }
}

static void test_piece_arithmetic(void)
{
    CHECK(validate_piece_size_ok(65536));
    CHECK(validate_piece_size_ok(1u << 20));
    CHECK(validate_piece_size_ok(16u << 20));
    CHECK(!validate_piece_size_ok(32768));
    CHECK(!validate_piece_size_ok(32u << 20));
    CHECK(!validate_piece_size_ok(3u << 16));
    CHECK(!validate_piece_size_ok(0));
    CHECK_INT(validate_piece_count(0, 65536), 0);
    CHECK_INT(validate_piece_count(1, 65536), 1);
    CHECK_INT(validate_piece_count(65536, 65536), 1);
    CHECK_INT(validate_piece_count(65537, 65536), 2);
    CHECK_INT(validate_piece_count(UINT64_MAX, 1u << 24), (UINT64_MAX >> 24) + 1);
    CHECK_INT(validate_piece_length(65537, 65536, 0), 65536);
    CHECK_INT(validate_piece_length(65537, 65536, 1), 1);
    CHECK_INT(validate_piece_length(65537, 65536, 2), 0);
    CHECK_INT(validate_piece_length(100, 65536, 1ull << 48), 0); /* index * size would wrap */
    CHECK_INT(validate_piece_length(100, 65536, UINT64_MAX), 0);
    CHECK_INT(validate_piece_size_for(0), VALIDATE_PIECE_SIZE_DEFAULT);
    CHECK_INT(validate_piece_size_for(128ull << 30), 1u << 20);
    CHECK_INT(validate_piece_size_for((128ull << 30) + 1), 2u << 20);
    CHECK_INT(validate_piece_size_for(2ull << 40), 16u << 20);
    CHECK_INT(validate_piece_size_for((2ull << 40) + 1), 0);
}

static void test_hex_round_trip_and_rejects(void)
{
    uint8_t bin[4] = {0x00, 0xab, 0x7f, 0xff}, back[4];
    char hex[9];
    validate_hex(bin, 4, hex);
    CHECK_STR(hex, "00ab7fff");
    CHECK_INT(validate_unhex("00AB7fff", back, 4), VALIDATE_OK);
    CHECK(memcmp(bin, back, 4) == 0);
    CHECK_INT(validate_unhex("00ab7ff", back, 4), VALIDATE_EINVAL);
    CHECK_INT(validate_unhex("00ab7fffa0", back, 4), VALIDATE_EINVAL);
    CHECK_INT(validate_unhex("00ab7fgf", back, 4), VALIDATE_EINVAL);
    CHECK_INT(validate_unhex(NULL, back, 4), VALIDATE_EINVAL);
}

/* Hashes each piece of data on its own: the digester must agree. */
static void check_digest_against_reference(const uint8_t *data, size_t len, uint32_t piece_size,
                                           const validate_digest *d)
{
    CHECK_INT(d->file_size, len);
    CHECK_INT(d->piece_size, piece_size);
    CHECK_INT(d->piece_count, validate_piece_count(len, piece_size));
    for (uint64_t i = 0; i < d->piece_count; i++) {
        uint8_t h[32];
        validate_blake2b(data + i * piece_size, validate_piece_length(len, piece_size, i), h);
        CHECK(memcmp(h, d->piece_hashes + i * 32, 32) == 0);
    }
    uint8_t b[32], s[32];
    validate_blake2b(data, len, b);
    validate_sha256(data, len, s);
    CHECK(memcmp(b, d->blake2b, 32) == 0);
    CHECK(memcmp(s, d->sha256, 32) == 0);
}

static void test_digester_pieces_for_uneven_feeds(void)
{
    const uint32_t ps = 65536;
    const size_t sizes[] = {0, 1, ps - 1, ps, ps + 1, 3 * ps, 3 * ps + ps / 2};
    static uint8_t data[4 * 65536];
    randombytes_buf(data, sizeof data);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        validate_digester *dg = NULL;
        CHECK_INT(validate_digester_new(ps, &dg), VALIDATE_OK);
        /* Feed in chunks that straddle piece boundaries. */
        size_t off = 0, step = 1;
        while (off < sizes[i]) {
            size_t n = sizes[i] - off < step ? sizes[i] - off : step;
            CHECK_INT(validate_digester_update(dg, data + off, n), VALIDATE_OK);
            off += n;
            step = step * 3 + 1;
        }
        validate_digest d;
        CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
        validate_digester_free(dg);
        check_digest_against_reference(data, sizes[i], ps, &d);
        validate_digest_clear(&d);
    }
}

static void test_digester_rejects_bad_piece_size(void)
{
    validate_digester *dg = NULL;
    CHECK_INT(validate_digester_new(1000, &dg), VALIDATE_EINVAL);
    CHECK_INT(validate_digester_new(1u << 25, &dg), VALIDATE_EINVAL);
    CHECK(dg == NULL);
}

static void test_digester_stops_at_piece_limit(void)
{
    /* The limit is checked before any byte is read, so a length beyond it
     * is refused without touching the (small) buffer. */
    static uint8_t data[65536];
    validate_digester *dg = NULL;
    CHECK_INT(validate_digester_new(65536, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_update(dg, data, sizeof data), VALIDATE_OK);
    size_t beyond = (size_t)VALIDATE_MAX_PIECES * 65536u - sizeof data + 1;
    CHECK_INT(validate_digester_update(dg, data, beyond), VALIDATE_ETOO_MANY_PIECES);
    validate_digester_free(dg);
}

static void test_digest_fd_reads_whole_file(void)
{
    static uint8_t data[5 * 65536 + 123];
    randombytes_buf(data, sizeof data);
    const char *path = check_path("content");
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, sizeof data, f) == sizeof data);
    fclose(f);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    validate_digest d;
    validate_error why = {0};
    CHECK_INT(validate_digest_fd(fd, 65536, &d, &why), VALIDATE_OK);
    close(fd);
    check_digest_against_reference(data, sizeof data, 65536, &d);
    validate_digest_clear(&d);
}

static void test_digest_fd_reports_read_errors(void)
{
    int fd = open(check_tmpdir(), O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    validate_digest d;
    validate_error why = {0};
    CHECK_INT(validate_digest_fd(fd, 65536, &d, &why), VALIDATE_EIO);
    CHECK_HAS(why.text, "read at offset 0");
    close(fd);
}

static void test_every_error_has_its_own_message(void)
{
    for (int a = VALIDATE_ENOMEM; a < VALIDATE_ERR_END; a++) {
        CHECK(strcmp(validate_strerror(a), "unknown error") != 0);
        for (int b = a + 1; b < VALIDATE_ERR_END; b++)
            CHECK(strcmp(validate_strerror(a), validate_strerror(b)) != 0);
    }
    CHECK_STR(validate_strerror(VALIDATE_ERR_END), "unknown error");
    CHECK_STR(validate_strerror(-1), "unknown error");
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_blake2b_matches_published_vectors),
                         CASE(test_sha256_matches_published_vectors),
                         CASE(test_streaming_equals_one_shot_for_any_split),
                         CASE(test_piece_arithmetic),
                         CASE(test_hex_round_trip_and_rejects),
                         CASE(test_digester_pieces_for_uneven_feeds),
                         CASE(test_digester_rejects_bad_piece_size),
                         CASE(test_digester_stops_at_piece_limit),
                         CASE(test_digest_fd_reads_whole_file),
                         CASE(test_digest_fd_reports_read_errors),
                         CASE(test_every_error_has_its_own_message),
                         {0},
                     });
}
