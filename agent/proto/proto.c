/*
 * The control protocol codec (layout in proto.h). Fields are described by
 * tables: the tag, the kind of value, where it lives in the C struct and its
 * limit; one generic loop encodes and one decodes, and the per-op tables say
 * which fields a message must and may carry.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

enum kind {
    K_U64,    /* 8 bytes */
    K_ID,     /* 16 bytes */
    K_STR,    /* UTF-8, no control characters, at most `max` bytes */
    K_TEXT,   /* as K_STR, newlines and tabs allowed */
    K_SHA256, /* 32 bytes */
    K_RANGE,  /* 16 bytes, repeated */
    K_BLOB,   /* bytes, at most `max` */
    K_JOB,    /* a nested job record, repeated */
    K_FILE,   /* a nested file record, repeated */
    K_ARG,    /* a string argument, repeated */
    K_CLIENT, /* 16 bytes */
    K_EVENT,  /* a nested event record, repeated */
};

struct field {
    uint16_t tag;
    uint8_t kind;
    size_t offset; /* of the value in the struct */
    size_t max;    /* strings: bytes; blobs: bytes */
    size_t flag;   /* offset of an int "has" flag, or NO_FLAG */
};

#define NO_FLAG  ((size_t)-1)
#define BIT(tag) (1ull << (tag))

/* ------------------------------------------------------------------ */
/* Requests                                                           */

enum {
    T_ID = 1,
    T_NAME,
    T_DESCRIPTION,
    T_URL,
    T_PATH,
    T_PROXY,
    T_BYPASS,
    T_RANGE,
    T_SHA256,
    T_MANIFEST,
    T_TYPE,
    T_PRIORITY,
    T_SECONDS,
    T_PROXY_USAGE,
    T_ALL_USERS,
    T_SEEN,
    T_TIMEOUT,
    T_START,
    T_CURSOR,
    T_FLAGS,
    T_ARG,
    T_CLIENT,
    T_EVENT,
    T_OK,
    T_VALID,
};

#define RQ(field) offsetof(proto_request, field)
static const struct field request_fields[] = {
    {T_ID, K_ID, RQ(id), 0, NO_FLAG},
    {T_NAME, K_STR, RQ(name), DOPA_NAME_MAX, NO_FLAG},
    {T_DESCRIPTION, K_TEXT, RQ(description), DOPA_DESCRIPTION_MAX, NO_FLAG},
    {T_URL, K_STR, RQ(url), DOPA_URL_MAX, NO_FLAG},
    {T_PATH, K_STR, RQ(path), DOPA_PATH_MAX, NO_FLAG},
    {T_PROXY, K_STR, RQ(proxy), DOPA_PROXY_MAX, NO_FLAG},
    {T_BYPASS, K_STR, RQ(bypass), DOPA_PROXY_MAX, NO_FLAG},
    {T_RANGE, K_RANGE, RQ(ranges), DOPA_MAX_RANGES, NO_FLAG},
    {T_SHA256, K_SHA256, RQ(sha256), 0, RQ(has_sha256)},
    {T_MANIFEST, K_BLOB, RQ(manifest), 4u * 1024u * 1024u + 4096u, NO_FLAG},
    {T_TYPE, K_U64, RQ(type), 0, NO_FLAG},
    {T_PRIORITY, K_U64, RQ(priority), 0, NO_FLAG},
    {T_SECONDS, K_U64, RQ(seconds), 0, NO_FLAG},
    {T_PROXY_USAGE, K_U64, RQ(proxy_usage), 0, NO_FLAG},
    {T_ALL_USERS, K_U64, RQ(all_users), 0, NO_FLAG},
    {T_SEEN, K_U64, RQ(seen), 0, NO_FLAG},
    {T_TIMEOUT, K_U64, RQ(timeout_ms), 0, NO_FLAG},
    {T_START, K_U64, RQ(start), 0, NO_FLAG},
    {T_CURSOR, K_ID, RQ(cursor), 0, RQ(has_cursor)},
    {T_FLAGS, K_U64, RQ(flags), 0, NO_FLAG},
    {T_ARG, K_ARG, RQ(args), PROTO_ARG_MAX, NO_FLAG},
    {T_CLIENT, K_CLIENT, RQ(client), 0, NO_FLAG},
    {T_EVENT, K_U64, RQ(event), 0, NO_FLAG},
    {T_OK, K_U64, RQ(ok), 0, NO_FLAG},
    {T_VALID, K_U64, RQ(valid), 0, NO_FLAG},
};

/* What an op requires and allows in a message (allowed includes required). */
struct op_rule {
    uint64_t required, allowed;
};

/* What each request op requires and allows. */
static const struct op_rule request_ops[PROTO_OP_END] = {
    [PROTO_WHOAMI] = {0, 0},
    [PROTO_CREATE] = {BIT(T_NAME) | BIT(T_TYPE), BIT(T_NAME) | BIT(T_TYPE)},
    [PROTO_GET] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_LIST] = {BIT(T_ALL_USERS), BIT(T_ALL_USERS) | BIT(T_CURSOR)},
    [PROTO_ADD_FILE] = {BIT(T_ID) | BIT(T_URL) | BIT(T_PATH), BIT(T_ID) | BIT(T_URL) | BIT(T_PATH) |
                                                                  BIT(T_RANGE) | BIT(T_SHA256) |
                                                                  BIT(T_MANIFEST)},
    [PROTO_LIST_FILES] = {BIT(T_ID) | BIT(T_START), BIT(T_ID) | BIT(T_START)},
    [PROTO_RESUME] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_SUSPEND] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_CANCEL] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_COMPLETE] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_TAKE_OWNERSHIP] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_SET_PRIORITY] = {BIT(T_ID) | BIT(T_PRIORITY), BIT(T_ID) | BIT(T_PRIORITY)},
    [PROTO_SET_NAME] = {BIT(T_ID) | BIT(T_NAME), BIT(T_ID) | BIT(T_NAME)},
    [PROTO_SET_DESCRIPTION] = {BIT(T_ID) | BIT(T_DESCRIPTION), BIT(T_ID) | BIT(T_DESCRIPTION)},
    [PROTO_SET_RETRY_DELAY] = {BIT(T_ID) | BIT(T_SECONDS), BIT(T_ID) | BIT(T_SECONDS)},
    [PROTO_SET_NO_PROGRESS] = {BIT(T_ID) | BIT(T_SECONDS), BIT(T_ID) | BIT(T_SECONDS)},
    [PROTO_SET_PROXY] = {BIT(T_ID) | BIT(T_PROXY_USAGE),
                         BIT(T_ID) | BIT(T_PROXY_USAGE) | BIT(T_PROXY) | BIT(T_BYPASS)},
    [PROTO_GET_PROXY] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_WAIT] = {BIT(T_ID) | BIT(T_SEEN) | BIT(T_TIMEOUT),
                    BIT(T_ID) | BIT(T_SEEN) | BIT(T_TIMEOUT)},
    [PROTO_SET_NOTIFY_FLAGS] = {BIT(T_ID) | BIT(T_FLAGS), BIT(T_ID) | BIT(T_FLAGS)},
    [PROTO_SET_NOTIFY_CMDLINE] = {BIT(T_ID), BIT(T_ID) | BIT(T_ARG)},
    [PROTO_GET_NOTIFY] = {BIT(T_ID), BIT(T_ID)},
    [PROTO_REGISTER] = {BIT(T_ID) | BIT(T_CLIENT), BIT(T_ID) | BIT(T_CLIENT)},
    [PROTO_UNREGISTER] = {BIT(T_ID) | BIT(T_CLIENT), BIT(T_ID) | BIT(T_CLIENT)},
    [PROTO_EVENTS] = {BIT(T_CLIENT) | BIT(T_TIMEOUT), BIT(T_CLIENT) | BIT(T_TIMEOUT)},
    [PROTO_EVENT_DONE] = {BIT(T_CLIENT) | BIT(T_EVENT) | BIT(T_OK),
                          BIT(T_CLIENT) | BIT(T_EVENT) | BIT(T_OK)},
    [PROTO_SET_VALIDATION] = {BIT(T_ID) | BIT(T_START) | BIT(T_VALID),
                              BIT(T_ID) | BIT(T_START) | BIT(T_VALID)},
    [PROTO_SET_VALIDATION_POLICY] = {BIT(T_ID) | BIT(T_SECONDS) | BIT(T_VALID),
                                     BIT(T_ID) | BIT(T_SECONDS) | BIT(T_VALID)},
    [PROTO_STATS] = {0, 0},
};

/* ------------------------------------------------------------------ */
/* Replies and records                                                */

enum {
    R_STATUS = 1,
    R_MESSAGE,
    R_ID,
    R_JOB,
    R_FILE,
    R_MORE,
    R_UID,
    R_VERSION,
    R_PARTIAL,
    R_PROXY_USAGE,
    R_PROXY,
    R_BYPASS,
    R_EVENT,
    R_FLAGS,
    R_ARG,
    R_S_JOBS,
    R_S_FROM_ORIGIN,
    R_S_FROM_PEERS,
    R_S_FROM_CACHE,
    R_S_UPLOADED,
    R_S_PEERS,
    R_S_BANNED,
    R_S_BANS,
    R_S_BAD_PIECES,
    R_S_TIMEOUTS,
    R_S_REFUSED,
    R_S_CACHE_ENTRIES,
    R_S_CACHE_BYTES,
    R_S_CACHE_LIMIT,
    R_S_PEER_URL,
    R_S_ORIGIN_FAILURES,
    R_S_ORIGIN_PEAK,
    R_S_CONTROL_SENT,
    R_S_CONTROL_RECEIVED,
    R_NEWER, /* tags from here on are a newer dopad's: a client skips them */
};
#define STATS_FIELDS                                                                               \
    (BIT(R_S_JOBS) | BIT(R_S_FROM_ORIGIN) | BIT(R_S_FROM_PEERS) | BIT(R_S_FROM_CACHE) |            \
     BIT(R_S_UPLOADED) | BIT(R_S_PEERS) | BIT(R_S_BANNED) | BIT(R_S_BANS) | BIT(R_S_BAD_PIECES) |  \
     BIT(R_S_TIMEOUTS) | BIT(R_S_REFUSED) | BIT(R_S_CACHE_ENTRIES) | BIT(R_S_CACHE_BYTES) |        \
     BIT(R_S_CACHE_LIMIT) | BIT(R_S_PEER_URL) | BIT(R_S_ORIGIN_FAILURES) | BIT(R_S_ORIGIN_PEAK) |  \
     BIT(R_S_CONTROL_SENT) | BIT(R_S_CONTROL_RECEIVED))

#define RP(field) offsetof(proto_reply, field)
static const struct field reply_fields[] = {
    {R_STATUS, K_U64, RP(status), 0, NO_FLAG},
    {R_MESSAGE, K_TEXT, RP(message), DOPA_MESSAGE_MAX, NO_FLAG},
    {R_ID, K_ID, RP(id), 0, RP(has_id)},
    {R_JOB, K_JOB, 0, 0, NO_FLAG},
    {R_FILE, K_FILE, 0, 0, NO_FLAG},
    {R_MORE, K_U64, RP(more), 0, NO_FLAG},
    {R_UID, K_U64, RP(uid), 0, NO_FLAG},
    {R_VERSION, K_STR, RP(version), 63, NO_FLAG},
    {R_PARTIAL, K_U64, RP(partial), 0, NO_FLAG},
    {R_PROXY_USAGE, K_U64, RP(proxy_usage), 0, NO_FLAG},
    {R_PROXY, K_STR, RP(proxy), DOPA_PROXY_MAX, NO_FLAG},
    {R_BYPASS, K_STR, RP(bypass), DOPA_PROXY_MAX, NO_FLAG},
    {R_EVENT, K_EVENT, 0, 0, NO_FLAG},
    {R_FLAGS, K_U64, RP(flags), 0, NO_FLAG},
    {R_ARG, K_ARG, RP(args), PROTO_ARG_MAX, NO_FLAG},
    {R_S_JOBS, K_U64, RP(stats.jobs), 0, NO_FLAG},
    {R_S_FROM_ORIGIN, K_U64, RP(stats.from_origin), 0, NO_FLAG},
    {R_S_FROM_PEERS, K_U64, RP(stats.from_peers), 0, NO_FLAG},
    {R_S_FROM_CACHE, K_U64, RP(stats.from_cache), 0, NO_FLAG},
    {R_S_UPLOADED, K_U64, RP(stats.uploaded), 0, NO_FLAG},
    {R_S_PEERS, K_U64, RP(stats.peers), 0, NO_FLAG},
    {R_S_BANNED, K_U64, RP(stats.banned), 0, NO_FLAG},
    {R_S_BANS, K_U64, RP(stats.bans), 0, NO_FLAG},
    {R_S_BAD_PIECES, K_U64, RP(stats.bad_pieces), 0, NO_FLAG},
    {R_S_TIMEOUTS, K_U64, RP(stats.timeouts), 0, NO_FLAG},
    {R_S_REFUSED, K_U64, RP(stats.refused), 0, NO_FLAG},
    {R_S_CACHE_ENTRIES, K_U64, RP(stats.cache_entries), 0, NO_FLAG},
    {R_S_CACHE_BYTES, K_U64, RP(stats.cache_bytes), 0, NO_FLAG},
    {R_S_CACHE_LIMIT, K_U64, RP(stats.cache_limit), 0, NO_FLAG},
    {R_S_PEER_URL, K_STR, RP(stats.peer_url), 127, NO_FLAG},
    {R_S_ORIGIN_FAILURES, K_U64, RP(stats.origin_failures), 0, NO_FLAG},
    {R_S_ORIGIN_PEAK, K_U64, RP(stats.origin_peak), 0, NO_FLAG},
    {R_S_CONTROL_SENT, K_U64, RP(stats.control_sent), 0, NO_FLAG},
    {R_S_CONTROL_RECEIVED, K_U64, RP(stats.control_received), 0, NO_FLAG},
};

static const struct op_rule reply_ops[PROTO_OP_END] = {
    [PROTO_WHOAMI] = {BIT(R_UID) | BIT(R_VERSION), BIT(R_UID) | BIT(R_VERSION)},
    [PROTO_CREATE] = {BIT(R_ID), BIT(R_ID)},
    [PROTO_GET] = {BIT(R_JOB), BIT(R_JOB)},
    [PROTO_LIST] = {BIT(R_MORE), BIT(R_JOB) | BIT(R_MORE)},
    [PROTO_LIST_FILES] = {BIT(R_MORE), BIT(R_FILE) | BIT(R_MORE)},
    [PROTO_COMPLETE] = {BIT(R_PARTIAL), BIT(R_PARTIAL)},
    [PROTO_GET_PROXY] = {BIT(R_PROXY_USAGE), BIT(R_PROXY_USAGE) | BIT(R_PROXY) | BIT(R_BYPASS)},
    [PROTO_WAIT] = {BIT(R_JOB), BIT(R_JOB)},
    [PROTO_GET_NOTIFY] = {BIT(R_FLAGS), BIT(R_FLAGS) | BIT(R_ARG)},
    [PROTO_EVENTS] = {0, BIT(R_EVENT)},
    [PROTO_STATS] = {STATS_FIELDS, STATS_FIELDS},
};

enum {
    J_ID = 1,
    J_OWNER,
    J_TYPE,
    J_STATE,
    J_PRIORITY,
    J_NAME,
    J_DESCRIPTION,
    J_BYTES_TOTAL,
    J_BYTES_DONE,
    J_FILES_TOTAL,
    J_FILES_DONE,
    J_FROM_ORIGIN,
    J_FROM_PEERS,
    J_FROM_CACHE,
    J_CREATED,
    J_MODIFIED,
    J_COMPLETED,
    J_ERROR_COUNT,
    J_HAS_ERROR,
    J_ERR_CONTEXT,
    J_ERR_CODE,
    J_ERR_FILE,
    J_ERR_HTTP,
    J_ERR_MESSAGE,
    J_RETRY_DELAY,
    J_NO_PROGRESS,
    J_PROXY_USAGE,
    J_VERSION,
    J_NOTIFY_FLAGS,
    J_VALIDATION_TIMEOUT,
    J_VALIDATION_DEFAULT,
    J_UPLOADED,
    J_END
};

/* Integer fields of records are held in a staging array of u64 and then
 * converted, so that one loop serves every width. */
static const struct field job_fields[] = {
    {J_ID, K_ID, offsetof(dopa_job_info, id), 0, NO_FLAG},
    {J_NAME, K_STR, offsetof(dopa_job_info, display_name), DOPA_NAME_MAX, NO_FLAG},
    {J_DESCRIPTION, K_TEXT, offsetof(dopa_job_info, description), DOPA_DESCRIPTION_MAX, NO_FLAG},
    {J_ERR_MESSAGE, K_TEXT, offsetof(dopa_job_info, error.message), DOPA_MESSAGE_MAX, NO_FLAG},
};
#define JOB_REQUIRED                                                                               \
    (BIT(J_ID) | BIT(J_OWNER) | BIT(J_TYPE) | BIT(J_STATE) | BIT(J_PRIORITY) | BIT(J_NAME) |       \
     BIT(J_DESCRIPTION) | BIT(J_BYTES_TOTAL) | BIT(J_BYTES_DONE) | BIT(J_FILES_TOTAL) |            \
     BIT(J_FILES_DONE) | BIT(J_FROM_ORIGIN) | BIT(J_FROM_PEERS) | BIT(J_FROM_CACHE) |              \
     BIT(J_CREATED) | BIT(J_MODIFIED) | BIT(J_COMPLETED) | BIT(J_ERROR_COUNT) | BIT(J_HAS_ERROR) | \
     BIT(J_ERR_CONTEXT) | BIT(J_ERR_CODE) | BIT(J_ERR_FILE) | BIT(J_ERR_HTTP) |                    \
     BIT(J_ERR_MESSAGE) | BIT(J_RETRY_DELAY) | BIT(J_NO_PROGRESS) | BIT(J_PROXY_USAGE) |           \
     BIT(J_VERSION) | BIT(J_NOTIFY_FLAGS) | BIT(J_VALIDATION_TIMEOUT) |                            \
     BIT(J_VALIDATION_DEFAULT) | BIT(J_UPLOADED))

enum {
    F_URL = 1,
    F_LOCAL,
    F_TEMP,
    F_BYTES_TOTAL,
    F_BYTES_DONE,
    F_RANGES,
    F_TRANSFERRED,
    F_HAS_MANIFEST,
    F_HAS_SHA256,
    F_FROM_ORIGIN,
    F_FROM_PEERS,
    F_FROM_CACHE,
    F_VALIDATION,
    F_END
};

enum { E_ID = 1, E_JOB, E_KIND, E_FILE, E_END };

#define EVENT_REQUIRED (BIT(E_ID) | BIT(E_JOB) | BIT(E_KIND) | BIT(E_FILE))

static const struct field event_fields[] = {
    {E_JOB, K_ID, offsetof(proto_event, job), 0, NO_FLAG},
};

static const struct field file_fields[] = {
    {F_URL, K_STR, offsetof(dopa_file_info, remote_url), DOPA_URL_MAX, NO_FLAG},
    {F_LOCAL, K_STR, offsetof(dopa_file_info, local_name), DOPA_PATH_MAX, NO_FLAG},
    {F_TEMP, K_STR, offsetof(dopa_file_info, temporary_name), DOPA_PATH_MAX, NO_FLAG},
};
#define FILE_REQUIRED                                                                              \
    (BIT(F_URL) | BIT(F_LOCAL) | BIT(F_TEMP) | BIT(F_BYTES_TOTAL) | BIT(F_BYTES_DONE) |            \
     BIT(F_RANGES) | BIT(F_TRANSFERRED) | BIT(F_HAS_MANIFEST) | BIT(F_HAS_SHA256) |                \
     BIT(F_FROM_ORIGIN) | BIT(F_FROM_PEERS) | BIT(F_FROM_CACHE) | BIT(F_VALIDATION))

/* ------------------------------------------------------------------ */
/* Buffers and primitive writes                                       */

void proto_buf_init(proto_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void proto_buf_free(proto_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static void put(proto_buf *b, const void *data, size_t len)
{
    if (b->failed)
        return;
    if (len > b->max - b->len) {
        b->failed = DOPA_ELIMIT;
        return;
    }
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        uint8_t *grown = realloc(b->data, cap);
        if (grown == NULL) {
            b->failed = DOPA_ENOMEM;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_field(proto_buf *b, uint16_t tag, const void *value, size_t len)
{
    uint8_t head[6];
    put_le(head, tag, 2);
    put_le(head + 2, len, 4);
    put(b, head, sizeof head);
    put(b, value, len);
}

static void put_u64(proto_buf *b, uint16_t tag, uint64_t v)
{
    uint8_t x[8];
    put_le(x, v, 8);
    put_field(b, tag, x, 8);
}

static void put_str(proto_buf *b, uint16_t tag, const char *s)
{
    put_field(b, tag, s, strlen(s));
}

static void put_header(proto_buf *b, int kind, int op)
{
    uint8_t h[PROTO_HEADER_BYTES] = {'D', 'P', DOPA_PROTOCOL_VERSION, (uint8_t)kind};
    put_le(h + 4, (uint64_t)op, 2);
    put(b, h, sizeof h);
}

/* Writes the fields of `table` that `mask` selects from obj. */
static void put_fields(proto_buf *b, const struct field *table, size_t n, uint64_t mask,
                       const void *obj)
{
    const char *base = obj;
    for (size_t i = 0; i < n; i++) {
        const struct field *f = &table[i];
        if (!(mask & BIT(f->tag)))
            continue;
        if (f->flag != NO_FLAG && !*(const int *)(base + f->flag))
            continue;
        switch (f->kind) {
        case K_U64:
            put_u64(b, f->tag, *(const uint64_t *)(base + f->offset));
            break;
        case K_ID:
            put_field(b, f->tag, base + f->offset, 16);
            break;
        case K_STR:
        case K_TEXT:
            put_str(b, f->tag, base + f->offset);
            break;
        case K_SHA256:
            put_field(b, f->tag, base + f->offset, 32);
            break;
        case K_CLIENT:
            put_field(b, f->tag, base + f->offset, 16);
            break;
        default:
            break; /* ranges, blobs and records are written by their owners */
        }
    }
}

/* ------------------------------------------------------------------ */
/* Strict reading                                                     */

/* Valid UTF-8 without control characters (text may hold \n and \t). */
static int good_string(const uint8_t *s, size_t len, int text)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if ((c < 0x20 && !(text && (c == '\n' || c == '\t'))) || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if ((c & 0xe0) == 0xc0)
            n = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0)
            n = 3, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0)
            n = 4, cp = c & 0x07;
        else
            return 0;
        if (len - i < n)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* No overlong forms, surrogates or code points past U+10FFFF, and
         * no C1 controls. */
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || (cp >= 0x80 && cp <= 0x9f))
            return 0;
        i += n;
    }
    return 1;
}

/* One field from p[*at]: its tag, value and length. */
static int next_field(const uint8_t *p, size_t len, size_t *at, uint16_t *tag,
                      const uint8_t **value, size_t *vlen, validate_error *why)
{
    if (len - *at < 6)
        return validate_error_set(why, DOPA_EPROTO, "field header truncated at byte %zu", *at);
    *tag = (uint16_t)get_le(p + *at, 2);
    uint64_t n = get_le(p + *at + 2, 4);
    if (n > len - *at - 6)
        return validate_error_set(why, DOPA_EPROTO, "field %u claims %llu bytes, %zu remain", *tag,
                                  (unsigned long long)n, len - *at - 6);
    *value = p + *at + 6;
    *vlen = (size_t)n;
    *at += 6 + (size_t)n;
    return 0;
}

/* Decodes a scalar field into obj per its descriptor. */
static int take_scalar(const struct field *f, const uint8_t *v, size_t n, void *obj,
                       validate_error *why)
{
    char *base = obj;
    switch (f->kind) {
    case K_U64:
        if (n != 8)
            return validate_error_set(why, DOPA_EPROTO, "field %u: integer of %zu bytes", f->tag,
                                      n);
        *(uint64_t *)(base + f->offset) = get_le(v, 8);
        break;
    case K_ID:
        if (n != 16)
            return validate_error_set(why, DOPA_EPROTO, "field %u: id of %zu bytes", f->tag, n);
        memcpy(base + f->offset, v, 16);
        break;
    case K_SHA256:
        if (n != 32)
            return validate_error_set(why, DOPA_EPROTO, "field %u: hash of %zu bytes", f->tag, n);
        memcpy(base + f->offset, v, 32);
        break;
    case K_CLIENT:
        if (n != 16)
            return validate_error_set(why, DOPA_EPROTO, "field %u: client id of %zu bytes", f->tag,
                                      n);
        memcpy(base + f->offset, v, 16);
        break;
    case K_STR:
    case K_TEXT:
        if (n > f->max)
            return validate_error_set(why, DOPA_EPROTO, "field %u: %zu bytes, the limit is %zu",
                                      f->tag, n, f->max);
        if (!good_string(v, n, f->kind == K_TEXT))
            return validate_error_set(why, DOPA_EPROTO, "field %u: not clean UTF-8 text", f->tag);
        memcpy(base + f->offset, v, n);
        base[f->offset + n] = '\0';
        break;
    default:
        return validate_error_set(why, DOPA_EPROTO, "field %u: not a scalar", f->tag);
    }
    if (f->flag != NO_FLAG)
        *(int *)(base + f->flag) = 1;
    return 0;
}

/* One more of a repeated string argument (T_ARG, R_ARG) into args[*n]. */
static int take_arg(char (*args)[PROTO_ARG_MAX + 1], size_t *n, uint16_t tag, const uint8_t *v,
                    size_t len, validate_error *why)
{
    if (*n == PROTO_MAX_ARGS)
        return validate_error_set(why, DOPA_EPROTO, "more than %d arguments", PROTO_MAX_ARGS);
    struct field one = {tag, K_STR, 0, PROTO_ARG_MAX, NO_FLAG};
    int err = take_scalar(&one, v, len, args[*n], why);
    if (err == 0)
        (*n)++;
    return err;
}

static const struct field *lookup(const struct field *table, size_t n, uint16_t tag)
{
    for (size_t i = 0; i < n; i++)
        if (table[i].tag == tag)
            return &table[i];
    return NULL;
}

/* Checks the header and returns the op and where the fields start. */
static int read_header(const uint8_t *p, size_t len, int kind, int *op, validate_error *why)
{
    if (len < PROTO_HEADER_BYTES)
        return validate_error_set(why, DOPA_EPROTO, "message of %zu bytes, shorter than a header",
                                  len);
    if (p[0] != 'D' || p[1] != 'P')
        return validate_error_set(why, DOPA_EPROTO, "not a dopa control message");
    if (p[2] != DOPA_PROTOCOL_VERSION)
        return validate_error_set(why, DOPA_EVERSION, "protocol version %u; this side speaks %u",
                                  p[2], DOPA_PROTOCOL_VERSION);
    if (p[3] != kind)
        return validate_error_set(why, DOPA_EPROTO, "message kind %u, expected %d", p[3], kind);
    *op = (int)get_le(p + 4, 2);
    if (*op <= 0 || *op >= PROTO_OP_END)
        return validate_error_set(why, DOPA_EPROTO, "unknown op %d", *op);
    if (get_le(p + 6, 2) != 0)
        return validate_error_set(why, DOPA_EPROTO, "reserved header bits set");
    return 0;
}

int proto_peek_op(const uint8_t *data, size_t len)
{
    int op = -1;
    if (read_header(data, len, 1, &op, NULL) != 0)
        return -1;
    return op;
}

/* Decodes a record's fields: scalars per `table`, integers into u64[]. */
static int decode_record(const uint8_t *p, size_t len, const struct field *table, size_t n,
                         uint64_t required, int end_tag, void *obj, uint64_t *ints,
                         validate_error *why)
{
    uint64_t seen = 0;
    size_t at = 0;
    while (at < len) {
        uint16_t tag;
        const uint8_t *v;
        size_t vlen;
        int err = next_field(p, len, &at, &tag, &v, &vlen, why);
        if (err != 0)
            return err;
        if (tag == 0 || tag >= end_tag)
            return validate_error_set(why, DOPA_EPROTO, "unknown record field %u", tag);
        if (seen & BIT(tag))
            return validate_error_set(why, DOPA_EPROTO, "record field %u twice", tag);
        seen |= BIT(tag);
        const struct field *f = lookup(table, n, tag);
        if (f != NULL) {
            err = take_scalar(f, v, vlen, obj, why);
        } else {
            if (vlen != 8)
                return validate_error_set(why, DOPA_EPROTO, "record field %u: integer of %zu bytes",
                                          tag, vlen);
            ints[tag] = get_le(v, 8);
        }
        if (err != 0)
            return err;
    }
    if ((seen & required) != required)
        return validate_error_set(why, DOPA_EPROTO, "record lacks fields (mask %llx)",
                                  (unsigned long long)(required & ~seen));
    return 0;
}

static int int_fits(uint64_t v, uint64_t max)
{
    return v <= max;
}

static int decode_job(const uint8_t *p, size_t len, void *out, validate_error *why)
{
    dopa_job_info *j = out;
    uint64_t v[J_END] = {0};
    memset(j, 0, sizeof *j);
    int err = decode_record(p, len, job_fields, sizeof job_fields / sizeof job_fields[0],
                            JOB_REQUIRED, J_END, j, v, why);
    if (err != 0)
        return err;
    if (!int_fits(v[J_OWNER], UINT32_MAX) || !int_fits(v[J_STATE], DOPA_STATE_CANCELLED) ||
        !int_fits(v[J_PRIORITY], DOPA_PRIORITY_LOW) || !int_fits(v[J_TYPE], 0) ||
        !int_fits(v[J_FILES_TOTAL], UINT32_MAX) || !int_fits(v[J_FILES_DONE], UINT32_MAX) ||
        !int_fits(v[J_ERROR_COUNT], UINT32_MAX) || !int_fits(v[J_HAS_ERROR], 1) ||
        !int_fits(v[J_ERR_CONTEXT], DOPA_CONTEXT_VALIDATION) ||
        !int_fits(v[J_RETRY_DELAY], UINT32_MAX) || !int_fits(v[J_NO_PROGRESS], UINT32_MAX) ||
        !int_fits(v[J_PROXY_USAGE], DOPA_PROXY_OVERRIDE) || !int_fits(v[J_CREATED], INT64_MAX) ||
        !int_fits(v[J_MODIFIED], INT64_MAX) || !int_fits(v[J_COMPLETED], INT64_MAX) ||
        !int_fits(v[J_ERR_HTTP], 999) || !int_fits(v[J_NOTIFY_FLAGS], 0x1f) ||
        !int_fits(v[J_VALIDATION_TIMEOUT], UINT32_MAX) || !int_fits(v[J_VALIDATION_DEFAULT], 1))
        return validate_error_set(why, DOPA_EPROTO, "job record value out of range");
    j->owner = (uint32_t)v[J_OWNER];
    j->type = (int)v[J_TYPE];
    j->state = (int)v[J_STATE];
    j->priority = (int)v[J_PRIORITY];
    j->bytes_total = v[J_BYTES_TOTAL];
    j->bytes_transferred = v[J_BYTES_DONE];
    j->files_total = (uint32_t)v[J_FILES_TOTAL];
    j->files_transferred = (uint32_t)v[J_FILES_DONE];
    j->bytes_from_origin = v[J_FROM_ORIGIN];
    j->bytes_from_peers = v[J_FROM_PEERS];
    j->bytes_from_cache = v[J_FROM_CACHE];
    j->bytes_uploaded = v[J_UPLOADED];
    j->created = (int64_t)v[J_CREATED];
    j->modified = (int64_t)v[J_MODIFIED];
    j->transfer_completed = (int64_t)v[J_COMPLETED];
    j->error_count = (uint32_t)v[J_ERROR_COUNT];
    j->has_error = (int)v[J_HAS_ERROR];
    j->error.context = (int)v[J_ERR_CONTEXT];
    j->error.code = (int)(int64_t)v[J_ERR_CODE];
    j->error.file = (int)(int64_t)v[J_ERR_FILE];
    j->error.http_status = (long)v[J_ERR_HTTP];
    j->minimum_retry_delay = (uint32_t)v[J_RETRY_DELAY];
    j->no_progress_timeout = (uint32_t)v[J_NO_PROGRESS];
    j->proxy_usage = (int)v[J_PROXY_USAGE];
    j->version = v[J_VERSION];
    j->notify_flags = (uint32_t)v[J_NOTIFY_FLAGS];
    j->validation_timeout = (uint32_t)v[J_VALIDATION_TIMEOUT];
    j->validation_default_valid = (int)v[J_VALIDATION_DEFAULT];
    return 0;
}

static int decode_file(const uint8_t *p, size_t len, void *out, validate_error *why)
{
    dopa_file_info *f = out;
    uint64_t v[F_END] = {0};
    memset(f, 0, sizeof *f);
    int err = decode_record(p, len, file_fields, sizeof file_fields / sizeof file_fields[0],
                            FILE_REQUIRED, F_END, f, v, why);
    if (err != 0)
        return err;
    if (!int_fits(v[F_RANGES], DOPA_MAX_RANGES) || !int_fits(v[F_TRANSFERRED], 1) ||
        !int_fits(v[F_HAS_MANIFEST], 1) || !int_fits(v[F_HAS_SHA256], 1) ||
        !int_fits(v[F_VALIDATION], DOPA_VALIDATION_INVALID))
        return validate_error_set(why, DOPA_EPROTO, "file record value out of range");
    f->bytes_total = v[F_BYTES_TOTAL];
    f->bytes_transferred = v[F_BYTES_DONE];
    f->ranges = (uint32_t)v[F_RANGES];
    f->transferred = (int)v[F_TRANSFERRED];
    f->has_manifest = (int)v[F_HAS_MANIFEST];
    f->has_sha256 = (int)v[F_HAS_SHA256];
    f->bytes_from_origin = v[F_FROM_ORIGIN];
    f->bytes_from_peers = v[F_FROM_PEERS];
    f->bytes_from_cache = v[F_FROM_CACHE];
    f->validation = (int)v[F_VALIDATION];
    return 0;
}

/* ------------------------------------------------------------------ */
/* Requests                                                           */

int proto_encode_request(const proto_request *r, proto_buf *out)
{
    if (r->op <= 0 || r->op >= PROTO_OP_END)
        return DOPA_EINVAL;
    uint64_t allowed = request_ops[r->op].allowed;
    put_header(out, 1, r->op);
    put_fields(out, request_fields, sizeof request_fields / sizeof request_fields[0], allowed, r);
    if (allowed & BIT(T_RANGE)) {
        for (size_t i = 0; i < r->n_ranges; i++) {
            uint8_t x[16];
            put_le(x, r->ranges[i].offset, 8);
            put_le(x + 8, r->ranges[i].length, 8);
            put_field(out, T_RANGE, x, 16);
        }
    }
    if ((allowed & BIT(T_MANIFEST)) && r->manifest != NULL)
        put_field(out, T_MANIFEST, r->manifest, r->manifest_len);
    if (allowed & BIT(T_ARG))
        for (size_t i = 0; i < r->n_args && i < PROTO_MAX_ARGS; i++)
            put_str(out, T_ARG, r->args[i]);
    return out->failed;
}

/* The two kinds of message, as read_message sees them. */
struct message_kind {
    int kind;                   /* the header's kind byte */
    size_t max;                 /* bytes */
    const char *name, *context; /* "request", "op" */
    const struct op_rule *ops;
    uint64_t always;     /* fields every op allows */
    uint64_t repeatable; /* fields that may come more than once */
    uint16_t newer;      /* fields from this tag on are skipped (0: none are) */
    /* Stores one field; seen holds the fields before it. */
    int (*take)(void *out, uint16_t tag, const uint8_t *v, size_t n, uint64_t seen,
                validate_error *why);
};

/* Reads a message's header and hands each of its fields to k->take, once
 * it is known to be allowed for the op and not repeated where it may not
 * be. *op and *seen say what was read. */
static int read_message(const uint8_t *data, size_t len, const struct message_kind *k, void *out,
                        int *op, uint64_t *seen, validate_error *why)
{
    *seen = 0;
    if (len > k->max)
        return validate_error_set(why, DOPA_EPROTO, "%s of %zu bytes, the limit is %zu", k->name,
                                  len, k->max);
    int err = read_header(data, len, k->kind, op, why);
    if (err != 0)
        return err;
    uint64_t allowed = k->ops[*op].allowed | k->always;
    size_t at = PROTO_HEADER_BYTES;
    while (at < len) {
        uint16_t tag;
        const uint8_t *v;
        size_t n;
        err = next_field(data, len, &at, &tag, &v, &n, why);
        if (err != 0)
            return err;
        if (k->newer != 0 && tag >= k->newer)
            continue;
        if (tag >= 64 || !(allowed & BIT(tag)))
            return validate_error_set(why, DOPA_EPROTO, "field %u not allowed in %s %d", tag,
                                      k->context, *op);
        if ((*seen & BIT(tag)) && !(k->repeatable & BIT(tag)))
            return validate_error_set(why, DOPA_EPROTO, "field %u twice", tag);
        err = k->take(out, tag, v, n, *seen, why);
        if (err != 0)
            return err;
        *seen |= BIT(tag);
    }
    return 0;
}

static int take_request_field(void *obj, uint16_t tag, const uint8_t *v, size_t n, uint64_t seen,
                              validate_error *why)
{
    (void)seen;
    proto_request *out = obj;
    if (tag == T_RANGE) {
        if (n != 16)
            return validate_error_set(why, DOPA_EPROTO, "range of %zu bytes", n);
        if (out->n_ranges == DOPA_MAX_RANGES)
            return validate_error_set(why, DOPA_EPROTO, "more than %d ranges", DOPA_MAX_RANGES);
        out->ranges[out->n_ranges].offset = get_le(v, 8);
        out->ranges[out->n_ranges].length = get_le(v + 8, 8);
        out->n_ranges++;
        return 0;
    }
    if (tag == T_ARG)
        return take_arg(out->args, &out->n_args, tag, v, n, why);
    const struct field *f =
        lookup(request_fields, sizeof request_fields / sizeof request_fields[0], tag);
    if (tag == T_MANIFEST) {
        if (n == 0 || n > f->max)
            return validate_error_set(why, DOPA_EPROTO, "manifest of %zu bytes", n);
        out->manifest = v;
        out->manifest_len = n;
        return 0;
    }
    return take_scalar(f, v, n, out, why);
}

static const struct message_kind request_kind = {
    .kind = 1,
    .max = PROTO_MAX_REQUEST,
    .name = "request",
    .context = "op",
    .ops = request_ops,
    .repeatable = BIT(T_RANGE) | BIT(T_ARG),
    .take = take_request_field,
};

int proto_decode_request(const uint8_t *data, size_t len, proto_request *out, validate_error *why)
{
    int op = 0;
    uint64_t seen;
    memset(out, 0, sizeof *out);
    int err = read_message(data, len, &request_kind, out, &op, &seen, why);
    if (err != 0)
        return err;
    out->op = op;
    uint64_t required = request_ops[op].required;
    if ((seen & required) != required)
        return validate_error_set(why, DOPA_EPROTO, "op %d lacks required fields (mask %llx)", op,
                                  (unsigned long long)(required & ~seen));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Replies                                                            */

/* Puts a nested record, made in rec, as field `tag` of b (or marks b
 * failed as rec is), and frees rec. */
static void end_record(proto_buf *b, uint16_t tag, proto_buf *rec)
{
    if (rec->failed)
        b->failed = rec->failed;
    else
        put_field(b, tag, rec->data, rec->len);
    proto_buf_free(rec);
}

static void put_job(proto_buf *b, const dopa_job_info *j)
{
    proto_buf rec;
    proto_buf_init(&rec, 64 * 1024);
    put_fields(&rec, job_fields, sizeof job_fields / sizeof job_fields[0], ~0ull, j);
    const struct {
        int tag;
        uint64_t v;
    } ints[] = {
        {J_OWNER, j->owner},
        {J_TYPE, (uint64_t)j->type},
        {J_STATE, (uint64_t)j->state},
        {J_PRIORITY, (uint64_t)j->priority},
        {J_BYTES_TOTAL, j->bytes_total},
        {J_BYTES_DONE, j->bytes_transferred},
        {J_FILES_TOTAL, j->files_total},
        {J_FILES_DONE, j->files_transferred},
        {J_FROM_ORIGIN, j->bytes_from_origin},
        {J_FROM_PEERS, j->bytes_from_peers},
        {J_FROM_CACHE, j->bytes_from_cache},
        {J_UPLOADED, j->bytes_uploaded},
        {J_CREATED, (uint64_t)j->created},
        {J_MODIFIED, (uint64_t)j->modified},
        {J_COMPLETED, (uint64_t)j->transfer_completed},
        {J_ERROR_COUNT, j->error_count},
        {J_HAS_ERROR, (uint64_t)(j->has_error != 0)},
        {J_ERR_CONTEXT, (uint64_t)j->error.context},
        {J_ERR_CODE, (uint64_t)(int64_t)j->error.code},
        {J_ERR_FILE, (uint64_t)(int64_t)j->error.file},
        {J_ERR_HTTP, (uint64_t)j->error.http_status},
        {J_RETRY_DELAY, j->minimum_retry_delay},
        {J_NO_PROGRESS, j->no_progress_timeout},
        {J_PROXY_USAGE, (uint64_t)j->proxy_usage},
        {J_VERSION, j->version},
        {J_NOTIFY_FLAGS, j->notify_flags},
        {J_VALIDATION_TIMEOUT, j->validation_timeout},
        {J_VALIDATION_DEFAULT, (uint64_t)(j->validation_default_valid != 0)},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        put_u64(&rec, (uint16_t)ints[i].tag, ints[i].v);
    end_record(b, R_JOB, &rec);
}

static void put_file(proto_buf *b, const dopa_file_info *f)
{
    proto_buf rec;
    proto_buf_init(&rec, 64 * 1024);
    put_fields(&rec, file_fields, sizeof file_fields / sizeof file_fields[0], ~0ull, f);
    put_u64(&rec, F_BYTES_TOTAL, f->bytes_total);
    put_u64(&rec, F_BYTES_DONE, f->bytes_transferred);
    put_u64(&rec, F_RANGES, f->ranges);
    put_u64(&rec, F_TRANSFERRED, (uint64_t)(f->transferred != 0));
    put_u64(&rec, F_HAS_MANIFEST, (uint64_t)(f->has_manifest != 0));
    put_u64(&rec, F_HAS_SHA256, (uint64_t)(f->has_sha256 != 0));
    put_u64(&rec, F_FROM_ORIGIN, f->bytes_from_origin);
    put_u64(&rec, F_FROM_PEERS, f->bytes_from_peers);
    put_u64(&rec, F_FROM_CACHE, f->bytes_from_cache);
    put_u64(&rec, F_VALIDATION, (uint64_t)f->validation);
    end_record(b, R_FILE, &rec);
}

static void put_event(proto_buf *b, const proto_event *e)
{
    proto_buf rec;
    proto_buf_init(&rec, 1024);
    put_fields(&rec, event_fields, sizeof event_fields / sizeof event_fields[0], ~0ull, e);
    put_u64(&rec, E_ID, e->id);
    put_u64(&rec, E_KIND, e->kind);
    put_u64(&rec, E_FILE, (uint64_t)e->file);
    end_record(b, R_EVENT, &rec);
}

static int decode_event(const uint8_t *p, size_t len, proto_event *e, validate_error *why)
{
    uint64_t v[E_END] = {0};
    memset(e, 0, sizeof *e);
    int err = decode_record(p, len, event_fields, sizeof event_fields / sizeof event_fields[0],
                            EVENT_REQUIRED, E_END, e, v, why);
    if (err != 0)
        return err;
    int64_t file = (int64_t)v[E_FILE];
    if (v[E_ID] == 0 || v[E_KIND] < PROTO_EVENT_JOB_TRANSFERRED ||
        v[E_KIND] > PROTO_EVENT_FILE_TRANSFERRED || file < -1 || file >= DOPA_MAX_FILES)
        return validate_error_set(why, DOPA_EPROTO, "event record value out of range");
    e->id = v[E_ID];
    e->kind = v[E_KIND];
    e->file = file;
    return 0;
}

int proto_encode_reply(const proto_reply *r, proto_buf *out)
{
    if (r->op <= 0 || r->op >= PROTO_OP_END)
        return DOPA_EINVAL;
    put_header(out, 2, r->op);
    put_u64(out, R_STATUS, r->status);
    if (r->status != DOPA_OK) {
        put_str(out, R_MESSAGE, r->message);
        return out->failed;
    }
    uint64_t allowed = reply_ops[r->op].allowed;
    put_fields(out, reply_fields, sizeof reply_fields / sizeof reply_fields[0],
               allowed & ~BIT(R_STATUS) & ~BIT(R_MESSAGE), r);
    if (allowed & BIT(R_JOB))
        for (size_t i = 0; i < r->n_jobs; i++)
            put_job(out, &r->jobs[i]);
    if (allowed & BIT(R_FILE))
        for (size_t i = 0; i < r->n_files; i++)
            put_file(out, &r->files[i]);
    if (allowed & BIT(R_EVENT))
        for (size_t i = 0; i < r->n_events && i < PROTO_EVENT_PAGE; i++)
            put_event(out, &r->events[i]);
    if (allowed & BIT(R_ARG))
        for (size_t i = 0; i < r->n_args && i < PROTO_MAX_ARGS; i++)
            put_str(out, R_ARG, r->args[i]);
    return out->failed;
}

/* Appends one record slot to a growing array. */
static void *grow(void *array, size_t n, size_t size)
{
    if ((n & (n - 1)) == 0) { /* at powers of two */
        size_t cap = n ? 2 * n : 1;
        return realloc(array, cap * size);
    }
    return array;
}

/* Decodes one more element of a list a reply carries (at most max of
 * them) onto the end of *array, which grows as needed. */
static int take_element(void **array, size_t *n, size_t size, size_t max, const char *what,
                        int (*decode)(const uint8_t *, size_t, void *, validate_error *),
                        const uint8_t *v, size_t len, validate_error *why)
{
    if (*n == max)
        return validate_error_set(why, DOPA_EPROTO, "more than %zu %s in a reply", max, what);
    void *grown = grow(*array, *n, size);
    if (grown == NULL)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    *array = grown;
    int err = decode(v, len, (uint8_t *)grown + *n * size, why);
    if (err == 0)
        (*n)++;
    return err;
}

static int take_reply_field(void *obj, uint16_t tag, const uint8_t *v, size_t n, uint64_t seen,
                            validate_error *why)
{
    proto_reply *out = obj;
    if (tag == R_STATUS && seen != 0)
        return validate_error_set(why, DOPA_EPROTO, "status is not the first field");
    if (tag == R_JOB) {
        void *jobs = out->jobs;
        int err = take_element(&jobs, &out->n_jobs, sizeof *out->jobs, PROTO_LIST_PAGE, "jobs",
                               decode_job, v, n, why);
        out->jobs = jobs;
        return err;
    }
    if (tag == R_FILE) {
        void *files = out->files;
        int err = take_element(&files, &out->n_files, sizeof *out->files, PROTO_FILE_PAGE, "files",
                               decode_file, v, n, why);
        out->files = files;
        return err;
    }
    if (tag == R_EVENT) {
        if (out->n_events == PROTO_EVENT_PAGE)
            return validate_error_set(why, DOPA_EPROTO, "more than %d events in a reply",
                                      PROTO_EVENT_PAGE);
        int err = decode_event(v, n, &out->events[out->n_events], why);
        if (err == 0)
            out->n_events++;
        return err;
    }
    if (tag == R_ARG)
        return take_arg(out->args, &out->n_args, tag, v, n, why);
    return take_scalar(lookup(reply_fields, sizeof reply_fields / sizeof reply_fields[0], tag), v,
                       n, out, why);
}

static const struct message_kind reply_kind = {
    .kind = 2,
    .max = PROTO_MAX_REPLY,
    .name = "reply",
    .context = "a reply to op",
    .ops = reply_ops,
    .always = BIT(R_STATUS) | BIT(R_MESSAGE),
    .repeatable = BIT(R_JOB) | BIT(R_FILE) | BIT(R_EVENT) | BIT(R_ARG),
    .newer = R_NEWER, /* a newer dopad may say more than this client knows */
    .take = take_reply_field,
};

int proto_decode_reply(const uint8_t *data, size_t len, proto_reply *out, validate_error *why)
{
    int op = 0;
    uint64_t seen;
    memset(out, 0, sizeof *out);
    int err = read_message(data, len, &reply_kind, out, &op, &seen, why);
    if (err != 0)
        goto fail;
    out->op = op;
    err = DOPA_EPROTO;
    if (!(seen & BIT(R_STATUS))) {
        validate_error_set(why, err, "reply without a status");
        goto fail;
    }
    if (out->status >= DOPA_ERR_END) {
        validate_error_set(why, err, "unknown status %llu", (unsigned long long)out->status);
        goto fail;
    }
    if (out->status != DOPA_OK) {
        if (seen & ~(BIT(R_STATUS) | BIT(R_MESSAGE))) {
            validate_error_set(why, err, "an error reply with result fields");
            goto fail;
        }
        return 0;
    }
    uint64_t required = reply_ops[op].required;
    if ((seen & required) != required) {
        validate_error_set(why, err, "reply to op %d lacks fields (mask %llx)", op,
                           (unsigned long long)(required & ~seen));
        goto fail;
    }
    if ((op == PROTO_GET || op == PROTO_WAIT) && out->n_jobs != 1) {
        validate_error_set(why, err, "%zu jobs in a reply that carries one", out->n_jobs);
        goto fail;
    }
    return 0;
fail:
    proto_reply_clear(out);
    return err;
}

void proto_reply_clear(proto_reply *r)
{
    free(r->jobs);
    free(r->files);
    r->jobs = NULL;
    r->files = NULL;
    r->n_jobs = r->n_files = 0;
}
