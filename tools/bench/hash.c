/*
 * Hashing benchmark: computes a file's manifest digest (BLAKE2b-256 of
 * every piece, whole-file BLAKE2b-256 and SHA-256) through validate/ and
 * through a plain libsodium loop, in the same run, and prints the ratio of
 * their throughputs. Also prints the per-piece check against raw BLAKE2b.
 *
 * usage: dopa-bench-hash FILE [ROUNDS]
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "validate.h"

#define PIECE VALIDATE_PIECE_SIZE_DEFAULT

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The baseline: read 1 MiB at a time and feed libsodium directly. */
static int plain_loop(int fd, uint8_t sha_out[32], uint8_t b2_out[32], uint64_t *bytes)
{
    static uint8_t buf[PIECE];
    crypto_generichash_blake2b_state whole;
    crypto_hash_sha256_state sha;
    uint8_t piece_hash[32];
    crypto_generichash_blake2b_init(&whole, NULL, 0, 32);
    crypto_hash_sha256_init(&sha);
    *bytes = 0;
    for (;;) {
        size_t got = 0;
        while (got < sizeof buf) {
            ssize_t n = pread(fd, buf + got, sizeof buf - got, (off_t)(*bytes + got));
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            got += (size_t)n;
        }
        if (got == 0)
            break;
        crypto_generichash_blake2b(piece_hash, 32, buf, got, NULL, 0);
        crypto_generichash_blake2b_update(&whole, buf, got);
        crypto_hash_sha256_update(&sha, buf, got);
        *bytes += got;
    }
    crypto_generichash_blake2b_final(&whole, b2_out, 32);
    crypto_hash_sha256_final(&sha, sha_out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: dopa-bench-hash FILE [ROUNDS]\n");
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    if (rounds < 1)
        rounds = 1;
    if (validate_init() != VALIDATE_OK)
        return 1;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }

    uint8_t sha[32], b2[32];
    uint64_t bytes = 0;
    plain_loop(fd, sha, b2, &bytes); /* warm the page cache */

    double best_plain = 1e30, best_validate = 1e30;
    int agree = 1;
    for (int r = 0; r < rounds; r++) {
        /* Alternate the order so that neither side always runs second. */
        for (int side = 0; side < 2; side++) {
            int which = (r + side) % 2;
            double t0 = now();
            if (which == 0) {
                if (plain_loop(fd, sha, b2, &bytes) != 0) {
                    perror("read");
                    return 1;
                }
                double t = now() - t0;
                best_plain = t < best_plain ? t : best_plain;
            } else {
                validate_digest d;
                validate_error why = {0};
                if (validate_digest_fd(fd, PIECE, &d, &why) != VALIDATE_OK) {
                    fprintf(stderr, "validate_digest_fd: %s\n", why.text);
                    return 1;
                }
                double t = now() - t0;
                best_validate = t < best_validate ? t : best_validate;
                if (r > 0 && (memcmp(d.sha256, sha, 32) != 0 || memcmp(d.blake2b, b2, 32) != 0))
                    agree = 0;
                validate_digest_clear(&d);
            }
        }
    }
    close(fd);

    double mib = (double)bytes / (1024.0 * 1024.0);
    printf("file: %s, %.0f MiB, best of %d rounds\n", argv[1], mib, rounds);
    printf("plain libsodium loop:   %8.1f MiB/s\n", mib / best_plain);
    printf("validate_digest_fd:     %8.1f MiB/s\n", mib / best_validate);
    printf("digests agree:          %s\n", agree ? "yes" : "NO");

    /* Per-piece verification, the agent's hot path, against raw BLAKE2b. */
    static uint8_t piece[PIECE];
    randombytes_buf(piece, sizeof piece);
    uint8_t h[32];
    const int n = 512;
    double t0 = now();
    for (int i = 0; i < n; i++)
        crypto_generichash_blake2b(h, 32, piece, sizeof piece, NULL, 0);
    double raw = now() - t0;
    validate_digest d1 = {
        .file_size = PIECE, .piece_size = PIECE, .piece_count = 1, .piece_hashes = h};
    validate_secret_key *sk = NULL;
    validate_manifest *m = NULL;
    if (validate_secret_key_generate(&sk) != VALIDATE_OK ||
        validate_manifest_sign(&d1, 1, 0, sk, &m) != VALIDATE_OK)
        return 1;
    t0 = now();
    for (int i = 0; i < n; i++)
        if (validate_manifest_check_piece(m, 0, piece, sizeof piece) != VALIDATE_OK)
            return 1;
    double checked = now() - t0;
    validate_manifest_free(m);
    validate_secret_key_free(sk);
    printf("raw BLAKE2b (1 core):   %8.1f MiB/s\n", n / raw);
    printf("piece check:            %8.1f MiB/s\n", n / checked);

    double ratio = best_plain / best_validate;
    printf("ratio validate/plain:   %.3f (target >= 0.95) %s\n", ratio,
           ratio >= 0.95 && agree ? "PASS" : "FAIL");
    printf("ratio piece-check/raw:  %.3f\n", raw / checked);
    return ratio >= 0.95 && agree ? 0 : 1;
}
