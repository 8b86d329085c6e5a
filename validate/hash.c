/*
 * Hashing: thin streaming wrappers over libsodium, piece arithmetic, and the
 * digester that computes everything a manifest records about a file (the
 * BLAKE2b-256 of every piece, the whole-file BLAKE2b-256 and SHA-256) in a
 * single pass over the bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "validate.h"

void validate_blake2b_init(validate_blake2b_state *h)
{
    (void)validate_init();
    crypto_generichash_blake2b_init(&h->state, NULL, 0, VALIDATE_HASH_BYTES);
}

void validate_blake2b_update(validate_blake2b_state *h, const void *data, size_t len)
{
    crypto_generichash_blake2b_update(&h->state, data, len);
}

void validate_blake2b_final(validate_blake2b_state *h, uint8_t out[VALIDATE_HASH_BYTES])
{
    crypto_generichash_blake2b_final(&h->state, out, VALIDATE_HASH_BYTES);
}

void validate_blake2b(const void *data, size_t len, uint8_t out[VALIDATE_HASH_BYTES])
{
    (void)validate_init();
    crypto_generichash_blake2b(out, VALIDATE_HASH_BYTES, data, len, NULL, 0);
}

void validate_sha256_init(validate_sha256_state *h)
{
    (void)validate_init();
    crypto_hash_sha256_init(&h->state);
}

void validate_sha256_update(validate_sha256_state *h, const void *data, size_t len)
{
    crypto_hash_sha256_update(&h->state, data, len);
}

void validate_sha256_final(validate_sha256_state *h, uint8_t out[VALIDATE_HASH_BYTES])
{
    crypto_hash_sha256_final(&h->state, out);
}

void validate_sha256(const void *data, size_t len, uint8_t out[VALIDATE_HASH_BYTES])
{
    (void)validate_init();
    crypto_hash_sha256(out, data, len);
}

int validate_piece_size_ok(uint64_t size)
{
    return size >= VALIDATE_PIECE_SIZE_MIN && size <= VALIDATE_PIECE_SIZE_MAX &&
           (size & (size - 1)) == 0;
}

uint64_t validate_piece_count(uint64_t file_size, uint32_t piece_size)
{
    return file_size / piece_size + (file_size % piece_size != 0);
}

uint32_t validate_piece_length(uint64_t file_size, uint32_t piece_size, uint64_t index)
{
    if (index >= validate_piece_count(file_size, piece_size))
        return 0; /* also keeps index * piece_size from overflowing */
    uint64_t start = index * piece_size;
    uint64_t left = file_size - start;
    return left < piece_size ? (uint32_t)left : piece_size;
}

uint32_t validate_piece_size_for(uint64_t file_size)
{
    for (uint32_t size = VALIDATE_PIECE_SIZE_DEFAULT; size <= VALIDATE_PIECE_SIZE_MAX; size *= 2)
        if (validate_piece_count(file_size, size) <= VALIDATE_MAX_PIECES)
            return size;
    return 0;
}

void validate_digest_clear(validate_digest *d)
{
    if (d == NULL)
        return;
    free(d->piece_hashes);
    memset(d, 0, sizeof *d);
}

struct validate_digester {
    uint32_t piece_size;
    uint32_t piece_fill; /* bytes of the current piece hashed so far */
    uint64_t total;
    uint64_t pieces;   /* completed pieces */
    uint64_t capacity; /* room in hashes, in pieces */
    uint8_t *hashes;
    validate_blake2b_state piece;
    validate_blake2b_state whole;
    validate_sha256_state sha;
};

int validate_digester_new(uint32_t piece_size, validate_digester **out)
{
    if (!validate_piece_size_ok(piece_size) || out == NULL)
        return VALIDATE_EINVAL;
    int err = validate_init();
    if (err != VALIDATE_OK)
        return err;
    validate_digester *dg = calloc(1, sizeof *dg);
    if (dg == NULL)
        return VALIDATE_ENOMEM;
    dg->piece_size = piece_size;
    validate_blake2b_init(&dg->piece);
    validate_blake2b_init(&dg->whole);
    validate_sha256_init(&dg->sha);
    *out = dg;
    return VALIDATE_OK;
}

static int store_piece_hash(validate_digester *dg)
{
    if (dg->pieces == VALIDATE_MAX_PIECES)
        return VALIDATE_ETOO_MANY_PIECES;
    if (dg->pieces == dg->capacity) {
        uint64_t cap = dg->capacity ? dg->capacity * 2 : 64;
        if (cap > VALIDATE_MAX_PIECES)
            cap = VALIDATE_MAX_PIECES;
        uint8_t *grown = realloc(dg->hashes, (size_t)cap * VALIDATE_HASH_BYTES);
        if (grown == NULL)
            return VALIDATE_ENOMEM;
        dg->hashes = grown;
        dg->capacity = cap;
    }
    validate_blake2b_final(&dg->piece, dg->hashes + dg->pieces * VALIDATE_HASH_BYTES);
    dg->pieces++;
    dg->piece_fill = 0;
    validate_blake2b_init(&dg->piece);
    return VALIDATE_OK;
}

/* True when len more bytes keep the content within VALIDATE_MAX_PIECES. */
static int digester_fits(const validate_digester *dg, size_t len)
{
    uint64_t limit = (uint64_t)VALIDATE_MAX_PIECES * dg->piece_size;
    return len <= limit - dg->total;
}

/* The BLAKE2b half of an update: the whole-file hash and the piece hashes. */
static int digester_blake2b(validate_digester *dg, const uint8_t *p, size_t len)
{
    validate_blake2b_update(&dg->whole, p, len);
    dg->total += len;
    while (len > 0) {
        /* A full piece is closed only when more bytes arrive or at finish,
         * so that an exact multiple of the piece size has no empty piece. */
        if (dg->piece_fill == dg->piece_size) {
            int err = store_piece_hash(dg);
            if (err != VALIDATE_OK)
                return err;
        }
        size_t take = dg->piece_size - dg->piece_fill;
        if (take > len)
            take = len;
        validate_blake2b_update(&dg->piece, p, take);
        dg->piece_fill += (uint32_t)take;
        p += take;
        len -= take;
    }
    return VALIDATE_OK;
}

int validate_digester_update(validate_digester *dg, const void *data, size_t len)
{
    if (!digester_fits(dg, len))
        return VALIDATE_ETOO_MANY_PIECES;
    validate_sha256_update(&dg->sha, data, len);
    return digester_blake2b(dg, data, len);
}

int validate_digester_finish(validate_digester *dg, validate_digest *out)
{
    if (dg->piece_fill > 0) {
        int err = store_piece_hash(dg);
        if (err != VALIDATE_OK)
            return err;
    }
    memset(out, 0, sizeof *out);
    out->file_size = dg->total;
    out->piece_size = dg->piece_size;
    out->piece_count = dg->pieces;
    out->piece_hashes = dg->hashes;
    validate_blake2b_final(&dg->whole, out->blake2b);
    validate_sha256_final(&dg->sha, out->sha256);
    dg->hashes = NULL;
    dg->pieces = dg->capacity = 0;
    return VALIDATE_OK;
}

void validate_digester_free(validate_digester *dg)
{
    if (dg == NULL)
        return;
    free(dg->hashes);
    sodium_memzero(dg, sizeof *dg);
    free(dg);
}

/*
 * Digesting a file. SHA-256 costs about as much per byte as the two BLAKE2b
 * passes together, so a helper thread runs SHA-256 over one chunk while the
 * calling thread reads the next and runs BLAKE2b; two chunk buffers
 * alternate. The handoff is two semaphores: `work` gives the helper a chunk
 * (len 0 tells it to stop), `done` gives the chunk back. Only the helper
 * touches the SHA-256 state between the two. Without a helper thread (if one
 * cannot be started) everything runs on the calling thread.
 */
#define CHUNK (1024u * 1024u)

struct sha_helper {
    pthread_t thread;
    sem_t work, done;
    validate_sha256_state *state;
    const uint8_t *data;
    size_t len;
};

static void sem_wait_always(sem_t *s)
{
    while (sem_wait(s) != 0 && errno == EINTR)
        ;
}

static void *sha_helper_main(void *arg)
{
    struct sha_helper *h = arg;
    for (;;) {
        sem_wait_always(&h->work);
        if (h->len == 0)
            return NULL;
        validate_sha256_update(h->state, h->data, h->len);
        sem_post(&h->done);
    }
}

static int sha_helper_start(struct sha_helper *h, validate_sha256_state *state)
{
    h->state = state;
    if (sem_init(&h->work, 0, 0) != 0)
        return -1;
    if (sem_init(&h->done, 0, 0) != 0) {
        sem_destroy(&h->work);
        return -1;
    }
    if (pthread_create(&h->thread, NULL, sha_helper_main, h) != 0) {
        sem_destroy(&h->done);
        sem_destroy(&h->work);
        return -1;
    }
    return 0;
}

static void sha_helper_stop(struct sha_helper *h)
{
    h->len = 0;
    sem_post(&h->work);
    pthread_join(h->thread, NULL);
    sem_destroy(&h->done);
    sem_destroy(&h->work);
}

int validate_digest_fd(int fd, uint32_t piece_size, validate_digest *out, validate_error *why)
{
    validate_digester *dg = NULL;
    uint8_t *bufs = NULL;
    struct sha_helper helper;
    int threaded = 0, pending = 0;
    int err = validate_digester_new(piece_size, &dg);
    if (err != VALIDATE_OK)
        return validate_error_set(why, err, "%s", validate_strerror(err));
    bufs = malloc(2 * (size_t)CHUNK);
    if (bufs == NULL) {
        err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
        goto done;
    }
    threaded = sha_helper_start(&helper, &dg->sha) == 0;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

    uint64_t offset = 0;
    for (unsigned k = 0;; k ^= 1) {
        uint8_t *chunk = bufs + k * (size_t)CHUNK;
        ssize_t n = validate_pread_full(fd, chunk, CHUNK, offset);
        if (n < 0) {
            err = validate_error_set(why, VALIDATE_EIO, "read at offset %llu: %s",
                                     (unsigned long long)offset, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        if (!digester_fits(dg, (size_t)n)) {
            err = validate_error_set(why, VALIDATE_ETOO_MANY_PIECES,
                                     "file needs more than %u pieces of %u bytes; use a larger "
                                     "piece size",
                                     VALIDATE_MAX_PIECES, piece_size);
            break;
        }
        if (threaded) {
            if (pending)
                sem_wait_always(&helper.done);
            helper.data = chunk;
            helper.len = (size_t)n;
            sem_post(&helper.work);
            pending = 1;
        } else {
            validate_sha256_update(&dg->sha, chunk, (size_t)n);
        }
        err = digester_blake2b(dg, chunk, (size_t)n);
        if (err != VALIDATE_OK) {
            err = validate_error_set(why, err, "%s", validate_strerror(err));
            break;
        }
        offset += (uint64_t)n;
    }
    if (pending)
        sem_wait_always(&helper.done);
    if (threaded)
        sha_helper_stop(&helper);
    if (err == VALIDATE_OK) {
        err = validate_digester_finish(dg, out);
        if (err != VALIDATE_OK)
            err = validate_error_set(why, err, "%s", validate_strerror(err));
    }
done:
    free(bufs);
    validate_digester_free(dg);
    return err;
}
