/*
 * Helpers shared by the files of the validate module; not part of its
 * interface (that is validate.h).
 */
#ifndef DOPA_VALIDATE_INTERNAL_H
#define DOPA_VALIDATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "validate.h"

/* Reads a whole regular file of at most `max` bytes into a new buffer
 * (NUL-terminated for convenience; *len excludes the NUL). Larger files
 * fail with VALIDATE_ETOOBIG. On success *st_mode and *st_uid describe it. */
int validate_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, unsigned *st_mode,
                       unsigned *st_uid, validate_error *why);

/* Writes buf to a new temporary file beside `path` (its name in tmp, which
 * holds PATH_MAX bytes), with `mode` whatever the umask, and fsyncs it. */
int validate_temp_write(const char *path, const void *buf, size_t len, unsigned mode, char *tmp,
                        validate_error *why);

/* Gives the temporary file its final name: replacing `path` when overwrite
 * is set, else refusing an existing one (VALIDATE_EEXISTS) and removing the
 * temporary file. Never follows a symlink at `path`. */
int validate_temp_commit(const char *tmp, const char *path, int overwrite, validate_error *why);

struct validate_secret_key;

/* Signs msg with the secret key (Ed25519, detached); used by the manifest code. */
int validate_secret_key_sign(const struct validate_secret_key *sk, const uint8_t *msg, size_t len,
                             uint8_t sig[64]);

static inline void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#endif
