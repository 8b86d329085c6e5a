/*
 * Signed manifests: building, strict parsing of untrusted bytes, signature
 * and expiry checks, and checking content against the piece hashes. The
 * byte layout is specified in MANIFEST.md; the offsets below follow it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "validate.h"

static const uint8_t magic[8] = {'D', 'O', 'P', 'A', 'M', 'F', 'S', 'T'};

enum {
    OFF_MAGIC = 0,
    OFF_FORMAT = 8,
    OFF_RESERVED = 10,
    OFF_PIECE_SIZE = 12,
    OFF_VERSION = 16,
    OFF_EXPIRES = 24,
    OFF_FILE_SIZE = 32,
    OFF_PIECE_COUNT = 40,
    OFF_KEY_ID = 48,
    OFF_SHA256 = 64,
    OFF_BLAKE2B = 96,
    OFF_PIECES = VALIDATE_MANIFEST_HEADER_BYTES,
};

_Static_assert(OFF_BLAKE2B + VALIDATE_HASH_BYTES == VALIDATE_MANIFEST_HEADER_BYTES,
               "header layout");

static void content_id(const uint8_t *body, size_t len, uint8_t out[VALIDATE_CONTENT_ID_BYTES])
{
    static const uint8_t personal[crypto_generichash_blake2b_PERSONALBYTES] = "dopa-content-id";
    crypto_generichash_blake2b_salt_personal(out, VALIDATE_CONTENT_ID_BYTES, body, len, NULL, 0,
                                             NULL, personal);
}

void validate_content_id_from_sha256(const uint8_t sha256[VALIDATE_HASH_BYTES], uint64_t file_size,
                                     uint8_t out[VALIDATE_CONTENT_ID_BYTES])
{
    static const uint8_t personal[crypto_generichash_blake2b_PERSONALBYTES] = "dopa-cid-sha256";
    uint8_t in[VALIDATE_HASH_BYTES + 8];
    memcpy(in, sha256, VALIDATE_HASH_BYTES);
    put_le64(in + VALIDATE_HASH_BYTES, file_size);
    (void)validate_init();
    crypto_generichash_blake2b_salt_personal(out, VALIDATE_CONTENT_ID_BYTES, in, sizeof in, NULL, 0,
                                             NULL, personal);
}

/* Decodes bytes whose structure is known to be valid; takes `buf`. */
static validate_manifest *decode(uint8_t *buf, size_t len)
{
    validate_manifest *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->content_version = get_le64(buf + OFF_VERSION);
    m->expires_at = get_le64(buf + OFF_EXPIRES);
    m->file_size = get_le64(buf + OFF_FILE_SIZE);
    m->piece_size = get_le32(buf + OFF_PIECE_SIZE);
    m->piece_count = get_le64(buf + OFF_PIECE_COUNT);
    memcpy(m->key_id, buf + OFF_KEY_ID, sizeof m->key_id);
    memcpy(m->sha256, buf + OFF_SHA256, sizeof m->sha256);
    memcpy(m->blake2b, buf + OFF_BLAKE2B, sizeof m->blake2b);
    m->piece_hashes = buf + OFF_PIECES;
    m->signature = buf + len - VALIDATE_MANIFEST_SIGNATURE_BYTES;
    content_id(buf, len - VALIDATE_MANIFEST_SIGNATURE_BYTES, m->content_id);
    m->encoded = buf;
    m->encoded_len = len;
    return m;
}

/* The structural checks shared by parse and sign: piece size, count, limits. */
static int check_shape(uint64_t file_size, uint64_t piece_size, uint64_t piece_count,
                       validate_error *why)
{
    if (!validate_piece_size_ok(piece_size))
        return validate_error_set(
            why, VALIDATE_EPIECE_SIZE, "piece size %llu is not a power of two between %u and %u",
            (unsigned long long)piece_size, VALIDATE_PIECE_SIZE_MIN, VALIDATE_PIECE_SIZE_MAX);
    if (piece_count > VALIDATE_MAX_PIECES)
        return validate_error_set(why, VALIDATE_ETOO_MANY_PIECES,
                                  "%llu pieces, more than the limit of %u",
                                  (unsigned long long)piece_count, VALIDATE_MAX_PIECES);
    uint64_t expected = validate_piece_count(file_size, (uint32_t)piece_size);
    if (piece_count != expected)
        return validate_error_set(why, VALIDATE_EPIECE_COUNT,
                                  "%llu pieces, but %llu bytes in pieces of %llu need %llu",
                                  (unsigned long long)piece_count, (unsigned long long)file_size,
                                  (unsigned long long)piece_size, (unsigned long long)expected);
    return VALIDATE_OK;
}

int validate_manifest_parse(const void *data, size_t len, validate_manifest **out,
                            validate_error *why)
{
    const uint8_t *buf = data;
    if (data == NULL || out == NULL)
        return validate_error_set(why, VALIDATE_EINVAL, "no manifest given");
    int err = validate_init();
    if (err != VALIDATE_OK)
        return validate_error_set(why, err, "%s", validate_strerror(err));
    if (len > VALIDATE_MANIFEST_MAX_BYTES)
        return validate_error_set(why, VALIDATE_ETOOBIG, "%zu bytes, more than the limit of %zu",
                                  len, (size_t)VALIDATE_MANIFEST_MAX_BYTES);
    if (len >= sizeof magic && memcmp(buf + OFF_MAGIC, magic, sizeof magic) != 0)
        return validate_error_set(why, VALIDATE_EMAGIC, "does not start with \"DOPAMFST\"");
    if (len < VALIDATE_MANIFEST_HEADER_BYTES + VALIDATE_MANIFEST_SIGNATURE_BYTES)
        return validate_error_set(
            why, VALIDATE_ETRUNCATED, "%zu bytes, shorter than the smallest manifest (%u)", len,
            VALIDATE_MANIFEST_HEADER_BYTES + VALIDATE_MANIFEST_SIGNATURE_BYTES);
    uint16_t format = get_le16(buf + OFF_FORMAT);
    if (format != VALIDATE_MANIFEST_FORMAT)
        return validate_error_set(why, VALIDATE_EVERSION,
                                  "format version %u; this dopa reads version %u", format,
                                  VALIDATE_MANIFEST_FORMAT);
    uint16_t reserved = get_le16(buf + OFF_RESERVED);
    if (reserved != 0)
        return validate_error_set(why, VALIDATE_ERESERVED, "reserved field is 0x%04x", reserved);
    uint64_t piece_count = get_le64(buf + OFF_PIECE_COUNT);
    err = check_shape(get_le64(buf + OFF_FILE_SIZE), get_le32(buf + OFF_PIECE_SIZE), piece_count,
                      why);
    if (err != VALIDATE_OK)
        return err;
    /* piece_count <= VALIDATE_MAX_PIECES, so this cannot overflow. */
    size_t expected = VALIDATE_MANIFEST_HEADER_BYTES + (size_t)piece_count * VALIDATE_HASH_BYTES +
                      VALIDATE_MANIFEST_SIGNATURE_BYTES;
    if (len < expected)
        return validate_error_set(why, VALIDATE_ETRUNCATED, "%zu bytes, but %llu pieces need %zu",
                                  len, (unsigned long long)piece_count, expected);
    if (len > expected)
        return validate_error_set(why, VALIDATE_ETRAILING, "%zu bytes after the signature",
                                  len - expected);

    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
    memcpy(copy, buf, len);
    *out = decode(copy, len);
    if (*out == NULL) {
        free(copy);
        return validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
    }
    return VALIDATE_OK;
}

int validate_manifest_verify(const validate_manifest *m, const validate_public_key *trusted,
                             size_t n_trusted, uint64_t now, validate_error *why)
{
    char id[2 * VALIDATE_KEY_ID_BYTES + 1];
    const validate_public_key *key = NULL;
    for (size_t i = 0; i < n_trusted && key == NULL; i++)
        if (sodium_memcmp(trusted[i].id, m->key_id, VALIDATE_KEY_ID_BYTES) == 0)
            key = &trusted[i];
    validate_hex(m->key_id, sizeof m->key_id, id);
    if (key == NULL)
        return validate_error_set(why, VALIDATE_EUNTRUSTED_KEY,
                                  "signed by key id %s, which is not among the %zu trusted keys",
                                  id, n_trusted);
    if (crypto_sign_verify_detached(m->signature, m->encoded,
                                    m->encoded_len - VALIDATE_MANIFEST_SIGNATURE_BYTES,
                                    key->key) != 0)
        return validate_error_set(why, VALIDATE_ESIGNATURE,
                                  "signature does not verify with key id %s", id);
    if (m->expires_at != VALIDATE_NEVER_EXPIRES && now >= m->expires_at)
        return validate_error_set(why, VALIDATE_EEXPIRED,
                                  "expired at %llu, now is %llu (unix time)",
                                  (unsigned long long)m->expires_at, (unsigned long long)now);
    return VALIDATE_OK;
}

int validate_manifest_open(const void *buf, size_t len, const validate_public_key *trusted,
                           size_t n_trusted, uint64_t now, validate_manifest **out,
                           validate_error *why)
{
    validate_manifest *m = NULL;
    int err = validate_manifest_parse(buf, len, &m, why);
    if (err != VALIDATE_OK)
        return err;
    err = validate_manifest_verify(m, trusted, n_trusted, now, why);
    if (err != VALIDATE_OK) {
        validate_manifest_free(m);
        return err;
    }
    *out = m;
    return VALIDATE_OK;
}

int validate_manifest_sign(const validate_digest *d, uint64_t content_version, uint64_t expires_at,
                           const validate_secret_key *sk, validate_manifest **out)
{
    if (d == NULL || sk == NULL || out == NULL || (d->piece_count > 0 && d->piece_hashes == NULL))
        return VALIDATE_EINVAL;
    int err = check_shape(d->file_size, d->piece_size, d->piece_count, NULL);
    if (err != VALIDATE_OK)
        return err;
    size_t body = VALIDATE_MANIFEST_HEADER_BYTES + (size_t)d->piece_count * VALIDATE_HASH_BYTES;
    size_t len = body + VALIDATE_MANIFEST_SIGNATURE_BYTES;
    uint8_t *buf = calloc(1, len);
    if (buf == NULL)
        return VALIDATE_ENOMEM;
    memcpy(buf + OFF_MAGIC, magic, sizeof magic);
    put_le16(buf + OFF_FORMAT, VALIDATE_MANIFEST_FORMAT);
    put_le16(buf + OFF_RESERVED, 0);
    put_le32(buf + OFF_PIECE_SIZE, d->piece_size);
    put_le64(buf + OFF_VERSION, content_version);
    put_le64(buf + OFF_EXPIRES, expires_at);
    put_le64(buf + OFF_FILE_SIZE, d->file_size);
    put_le64(buf + OFF_PIECE_COUNT, d->piece_count);
    memcpy(buf + OFF_KEY_ID, validate_secret_key_public(sk)->id, VALIDATE_KEY_ID_BYTES);
    memcpy(buf + OFF_SHA256, d->sha256, VALIDATE_HASH_BYTES);
    memcpy(buf + OFF_BLAKE2B, d->blake2b, VALIDATE_HASH_BYTES);
    if (d->piece_count > 0)
        memcpy(buf + OFF_PIECES, d->piece_hashes, (size_t)d->piece_count * VALIDATE_HASH_BYTES);
    err = validate_secret_key_sign(sk, buf, body, buf + body);
    if (err != VALIDATE_OK) {
        free(buf);
        return err;
    }
    *out = decode(buf, len);
    if (*out == NULL) {
        free(buf);
        return VALIDATE_ENOMEM;
    }
    return VALIDATE_OK;
}

void validate_manifest_free(validate_manifest *m)
{
    if (m == NULL)
        return;
    free(m->encoded);
    free(m);
}

int validate_manifest_load(const char *path, validate_manifest **out, validate_error *why)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int err = validate_read_file(path, VALIDATE_MANIFEST_MAX_BYTES, &buf, &len, NULL, NULL, why);
    if (err != VALIDATE_OK)
        return err;
    validate_error detail = {0};
    err = validate_manifest_parse(buf, len, out, &detail);
    if (err != VALIDATE_OK)
        validate_error_set(why, err, "%s: %s: %s", path, validate_strerror(err), detail.text);
    free(buf);
    return err;
}

int validate_manifest_save(const validate_manifest *m, const char *path, validate_error *why)
{
    return validate_write_file(path, m->encoded, m->encoded_len, 0644, 1, why);
}

const uint8_t *validate_manifest_piece_hash(const validate_manifest *m, uint64_t index)
{
    if (index >= m->piece_count)
        return NULL;
    return m->piece_hashes + index * VALIDATE_HASH_BYTES;
}

int validate_manifest_check_piece(const validate_manifest *m, uint64_t index, const void *data,
                                  size_t len)
{
    if (index >= m->piece_count)
        return VALIDATE_EPIECE_INDEX;
    if (len != validate_piece_length(m->file_size, m->piece_size, index))
        return VALIDATE_EPIECE_LENGTH;
    uint8_t got[VALIDATE_HASH_BYTES];
    validate_blake2b(data, len, got);
    if (sodium_memcmp(got, validate_manifest_piece_hash(m, index), VALIDATE_HASH_BYTES) != 0)
        return VALIDATE_EPIECE_HASH;
    return VALIDATE_OK;
}

int validate_manifest_check_fd(const validate_manifest *m, int fd, validate_file_report *report,
                               validate_error *why)
{
    validate_file_report r = {0};
    validate_digest d = {0};
    int err;
    struct stat st;

    if (fstat(fd, &st) != 0) {
        err = validate_error_set(why, VALIDATE_EIO, "%s", strerror(errno));
        goto done;
    }
    r.size = (uint64_t)st.st_size;
    if (r.size != m->file_size) {
        err = validate_error_set(why, VALIDATE_EFILE_SIZE,
                                 "file has %llu bytes, the manifest says %llu",
                                 (unsigned long long)r.size, (unsigned long long)m->file_size);
        goto done;
    }
    err = validate_digest_fd(fd, m->piece_size, &d, why);
    if (err == VALIDATE_ETOO_MANY_PIECES) /* it grew while we read it */
        err = validate_error_set(why, VALIDATE_EFILE_SIZE,
                                 "file grew beyond the manifest's %llu bytes while being read",
                                 (unsigned long long)m->file_size);
    if (err != VALIDATE_OK)
        goto done;
    r.size = d.file_size;
    if (d.file_size != m->file_size) { /* changed while we read it */
        err = validate_error_set(why, VALIDATE_EFILE_SIZE,
                                 "file has %llu bytes, the manifest says %llu",
                                 (unsigned long long)d.file_size, (unsigned long long)m->file_size);
        goto done;
    }
    for (uint64_t i = 0; i < m->piece_count; i++) {
        if (sodium_memcmp(d.piece_hashes + i * VALIDATE_HASH_BYTES,
                          validate_manifest_piece_hash(m, i), VALIDATE_HASH_BYTES) != 0) {
            if (r.bad_pieces++ == 0)
                r.first_bad_piece = i;
        }
    }
    if (r.bad_pieces > 0) {
        err = validate_error_set(
            why, VALIDATE_EPIECE_HASH, "%llu of %llu pieces do not match, the first is piece %llu",
            (unsigned long long)r.bad_pieces, (unsigned long long)m->piece_count,
            (unsigned long long)r.first_bad_piece);
        goto done;
    }
    if (sodium_memcmp(d.sha256, m->sha256, VALIDATE_HASH_BYTES) != 0 ||
        sodium_memcmp(d.blake2b, m->blake2b, VALIDATE_HASH_BYTES) != 0) {
        err = validate_error_set(why, VALIDATE_EFILE_HASH,
                                 "every piece matches but the whole-file hashes do not");
        goto done;
    }
    err = VALIDATE_OK;
done:
    validate_digest_clear(&d);
    if (report != NULL)
        *report = r;
    return err;
}
