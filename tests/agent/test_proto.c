/* The control protocol codec: round trips for every op, and every way a
 * message can be malformed. */
#include "../check.h"
#include "proto.h"

static proto_buf encode_request(const proto_request *r)
{
    proto_buf b;
    proto_buf_init(&b, PROTO_MAX_REQUEST);
    CHECK_INT(proto_encode_request(r, &b), DOPA_OK);
    return b;
}

static proto_request *new_request(int op)
{
    proto_request *r = calloc(1, sizeof *r);
    r->op = op;
    for (int i = 0; i < 16; i++)
        r->id.bytes[i] = (uint8_t)(i * 7 + 1);
    return r;
}

static void test_every_request_op_round_trips(void)
{
    static const uint8_t manifest[] = "pretend manifest bytes";
    for (int op = 1; op < PROTO_OP_END; op++) {
        proto_request *r = new_request(op), *back = calloc(1, sizeof *back);
        snprintf(r->name, sizeof r->name, "name \xc3\xa9 %d", op);
        snprintf(r->description, sizeof r->description, "line one\nline\ttwo");
        snprintf(r->url, sizeof r->url, "https://example.test/file%d", op);
        snprintf(r->path, sizeof r->path, "/srv/file%d", op);
        snprintf(r->proxy, sizeof r->proxy, "http://proxy:3128");
        snprintf(r->bypass, sizeof r->bypass, "localhost");
        r->n_ranges = 2;
        r->ranges[0] = (dopa_range){5, 10};
        r->ranges[1] = (dopa_range){100, DOPA_LENGTH_TO_EOF};
        memset(r->sha256, 0xab, 32);
        r->has_sha256 = 1;
        r->manifest = manifest;
        r->manifest_len = sizeof manifest;
        r->type = 0;
        r->priority = 3;
        r->seconds = 77;
        r->proxy_usage = 2;
        r->all_users = 1;
        r->seen = 1234567890123ull;
        r->timeout_ms = 5000;
        r->start = 9;
        r->cursor.bytes[3] = 9;
        r->has_cursor = 1;
        r->flags = 0x19;
        r->event = 1ull << 40;
        r->ok = 1;
        r->valid = 1;
        memset(r->client, 0xc1, 16);
        r->n_args = 3;
        snprintf(r->args[0], sizeof r->args[0], "/bin/sh");
        r->args[1][0] = '\0'; /* an empty argument is one too */
        memset(r->args[2], 'a', PROTO_ARG_MAX);
        r->args[2][PROTO_ARG_MAX] = '\0';
        proto_buf b = encode_request(r);
        validate_error why = {0};
        CHECK_INT(proto_decode_request(b.data, b.len, back, &why), DOPA_OK);
        CHECK_INT(back->op, op);
        CHECK_INT(proto_peek_op(b.data, b.len), op);
        /* Each op carries exactly its own fields. */
        if (op == PROTO_ADD_FILE) {
            CHECK_STR(back->url, r->url);
            CHECK_STR(back->path, r->path);
            CHECK_INT(back->n_ranges, 2);
            CHECK_INT(back->ranges[1].length, DOPA_LENGTH_TO_EOF);
            CHECK(back->has_sha256 && back->sha256[31] == 0xab);
            CHECK_INT(back->manifest_len, sizeof manifest);
            CHECK(memcmp(back->manifest, manifest, sizeof manifest) == 0);
            CHECK(memcmp(back->id.bytes, r->id.bytes, 16) == 0);
        } else {
            CHECK_INT(back->n_ranges, 0);
            CHECK(back->manifest == NULL);
        }
        if (op == PROTO_CREATE)
            CHECK_STR(back->name, r->name);
        if (op == PROTO_SET_DESCRIPTION)
            CHECK_STR(back->description, r->description);
        if (op == PROTO_WAIT) {
            CHECK_INT(back->seen, r->seen);
            CHECK_INT(back->timeout_ms, 5000);
        }
        if (op == PROTO_LIST) {
            CHECK_INT(back->all_users, 1);
            CHECK(back->has_cursor && back->cursor.bytes[3] == 9);
        }
        if (op == PROTO_SET_PROXY) {
            CHECK_STR(back->proxy, r->proxy);
            CHECK_STR(back->bypass, r->bypass);
            CHECK_INT(back->proxy_usage, 2);
        }
        if (op == PROTO_SET_NOTIFY_CMDLINE) {
            CHECK_INT(back->n_args, 3);
            CHECK_STR(back->args[0], "/bin/sh");
            CHECK_STR(back->args[1], "");
            CHECK_INT(strlen(back->args[2]), PROTO_ARG_MAX);
        } else {
            CHECK_INT(back->n_args, 0);
        }
        if (op == PROTO_SET_NOTIFY_FLAGS)
            CHECK_INT(back->flags, 0x19);
        int has_client = op == PROTO_REGISTER || op == PROTO_UNREGISTER || op == PROTO_EVENTS ||
                         op == PROTO_EVENT_DONE;
        CHECK_INT(back->client[5], has_client ? 0xc1 : 0);
        if (op == PROTO_EVENT_DONE) {
            CHECK_INT(back->event, 1ull << 40);
            CHECK_INT(back->ok, 1);
        }
        if (op == PROTO_SET_VALIDATION) {
            CHECK_INT(back->start, 9);
            CHECK_INT(back->valid, 1);
        }
        proto_buf_free(&b);
        free(r);
        free(back);
    }
}

/* Builds a raw request: header plus the given field bytes. */
static size_t raw(uint8_t *out, int version, int kind, int op, const uint8_t *fields, size_t n)
{
    out[0] = 'D';
    out[1] = 'P';
    out[2] = (uint8_t)version;
    out[3] = (uint8_t)kind;
    out[4] = (uint8_t)op;
    out[5] = 0;
    out[6] = out[7] = 0;
    if (n > 0)
        memcpy(out + 8, fields, n);
    return 8 + n;
}

static size_t field(uint8_t *out, int tag, const void *value, size_t len)
{
    out[0] = (uint8_t)tag;
    out[1] = 0;
    for (int i = 0; i < 4; i++)
        out[2 + i] = (uint8_t)(len >> (8 * i));
    memcpy(out + 6, value, len);
    return 6 + len;
}

static int decode(const uint8_t *m, size_t len, validate_error *why)
{
    proto_request *r = calloc(1, sizeof *r);
    int err = proto_decode_request(m, len, r, why);
    free(r);
    return err;
}

static void test_malformed_requests_are_refused(void)
{
    uint8_t m[1024], f[1024];
    uint8_t id[16] = {1};
    validate_error why = {0};
    size_t n;

    n = field(f, 1, id, 16); /* T_ID */
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n), &why), DOPA_OK);

    const struct {
        size_t len;
        int version, kind, op;
        int err;
        const char *detail;
    } headers[] = {
        {4, 1, 1, PROTO_GET, DOPA_EPROTO, "shorter than a header"},
        {0, 2, 1, PROTO_GET, DOPA_EVERSION, "protocol version 2"},
        {0, 1, 2, PROTO_GET, DOPA_EPROTO, "kind 2"},
        {0, 1, 1, 0, DOPA_EPROTO, "unknown op 0"},
        {0, 1, 1, PROTO_OP_END, DOPA_EPROTO, "unknown op"},
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        size_t len = raw(m, headers[i].version, headers[i].kind, headers[i].op, f, n);
        if (headers[i].len)
            len = headers[i].len;
        why = (validate_error){0};
        CHECK_INT(decode(m, len, &why), headers[i].err);
        CHECK_HAS(why.text, headers[i].detail);
    }
    raw(m, 1, 1, PROTO_GET, f, n);
    m[7] = 1;
    CHECK_INT(decode(m, 8 + n, &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "reserved");
    m[0] = 'X';
    CHECK_INT(decode(m, 8 + n, &why), DOPA_EPROTO);

    /* Field-level faults. */
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n - 1), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "claims 16 bytes");
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, 3), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "header truncated");
    n = field(f, 1, id, 15);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "id of 15 bytes");
    n = field(f, 1, id, 16);
    n += field(f + n, 1, id, 16);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "twice");
    n = field(f, 1, id, 16);
    n += field(f + n, 2, "name", 4); /* T_NAME is not part of GET */
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "not allowed");
    n = field(f, 99, id, 16);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, n), &why), DOPA_EPROTO);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_GET, f, 0), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "lacks required");

    /* Strings: limits, UTF-8, control characters. */
    uint8_t type[8] = {0};
    const struct {
        const char *text;
        size_t len;
        int ok;
    } names[] = {
        {"plain", 5, 1},
        {"caf\xc3\xa9", 5, 1},
        {"bad\xc3", 4, 0},          /* truncated sequence */
        {"\xc0\xaf", 2, 0},         /* overlong */
        {"\xed\xa0\x80", 3, 0},     /* surrogate */
        {"\xf4\x90\x80\x80", 4, 0}, /* past U+10FFFF */
        {"tab\there", 8, 0},        /* a name has no tabs */
        {"esc\x1b[2J", 8, 0},       /* terminal escapes */
        {"nul\0inside", 10, 0},
        {"\xc2\x9b", 2, 0}, /* C1 control */
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        n = field(f, 2, names[i].text, names[i].len);
        n += field(f + n, 11, type, 8);
        CHECK_INT(decode(m, raw(m, 1, 1, PROTO_CREATE, f, n), &why),
                  names[i].ok ? DOPA_OK : DOPA_EPROTO);
    }
    static char longname[300];
    memset(longname, 'x', sizeof longname);
    n = field(f, 2, longname, DOPA_NAME_MAX);
    n += field(f + n, 11, type, 8);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_CREATE, f, n), &why), DOPA_OK);
    n = field(f, 2, longname, DOPA_NAME_MAX + 1);
    n += field(f + n, 11, type, 8);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_CREATE, f, n), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "the limit is 256");
}

static void test_oversized_and_repeated_fields(void)
{
    /* More ranges than allowed. */
    size_t cap = 8 + 6 * 1100 * 2 + 16 * 1100 + 64;
    uint8_t *m = malloc(cap), *f = malloc(cap);
    uint8_t id[16] = {1}, range[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    validate_error why = {0};
    size_t n = field(f, 1, id, 16);
    n += field(f + n, 4, "http://x/", 9);
    n += field(f + n, 5, "/x", 2);
    for (int i = 0; i < DOPA_MAX_RANGES; i++)
        n += field(f + n, 8, range, 16);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_ADD_FILE, f, n), &why), DOPA_OK);
    n += field(f + n, 8, range, 16);
    CHECK_INT(decode(m, raw(m, 1, 1, PROTO_ADD_FILE, f, n), &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "more than 1000 ranges");
    free(m);
    free(f);

    /* A message over the size limit is refused before it is read. */
    size_t big = PROTO_MAX_REQUEST + 1;
    uint8_t *huge = calloc(1, big);
    raw(huge, 1, 1, PROTO_GET, NULL, 0);
    CHECK_INT(decode(huge, big, &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "the limit is");
    free(huge);
}

static void test_replies_round_trip_and_are_checked(void)
{
    proto_reply r = {.op = PROTO_LIST, .more = 1}, back;
    dopa_job_info jobs[3];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 3; i++) {
        jobs[i].id.bytes[0] = (uint8_t)i;
        jobs[i].owner = 1000u + (uint32_t)i;
        jobs[i].state = DOPA_STATE_TRANSIENT_ERROR;
        jobs[i].priority = DOPA_PRIORITY_HIGH;
        jobs[i].bytes_total = DOPA_SIZE_UNKNOWN;
        jobs[i].bytes_transferred = 12345;
        jobs[i].has_error = 1;
        jobs[i].error.code = -7;
        jobs[i].error.file = -1;
        jobs[i].error.http_status = 503;
        snprintf(jobs[i].error.message, sizeof jobs[i].error.message, "busy\nretry");
        snprintf(jobs[i].display_name, sizeof jobs[i].display_name, "job %d", i);
        jobs[i].created = 1700000000000 + i;
        jobs[i].version = 42;
    }
    r.jobs = jobs;
    r.n_jobs = 3;
    proto_buf b;
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&r, &b), DOPA_OK);
    validate_error why = {0};
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_OK);
    CHECK_INT(back.n_jobs, 3);
    CHECK_INT(back.more, 1);
    CHECK_INT(back.jobs[2].owner, 1002);
    CHECK_INT(back.jobs[1].error.code, -7);
    CHECK_INT(back.jobs[1].error.file, -1);
    CHECK_INT(back.jobs[1].bytes_total, DOPA_SIZE_UNKNOWN);
    CHECK_STR(back.jobs[0].error.message, "busy\nretry");
    CHECK_INT(back.jobs[2].created, 1700000000002);
    proto_reply_clear(&back);

    /* A state out of range inside a record is refused. */
    jobs[1].state = 42;
    proto_buf_free(&b);
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&r, &b), DOPA_OK);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "out of range");
    CHECK(back.jobs == NULL);
    proto_buf_free(&b);

    /* An error reply carries the message and nothing else. */
    proto_reply e = {.op = PROTO_GET, .status = DOPA_ENOTFOUND};
    snprintf(e.message, sizeof e.message, "no such job");
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&e, &b), DOPA_OK);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_OK);
    CHECK_INT(back.status, DOPA_ENOTFOUND);
    CHECK_STR(back.message, "no such job");
    /* A GET reply must carry exactly one job. */
    proto_reply g = {.op = PROTO_GET, .jobs = jobs, .n_jobs = 2};
    jobs[1].state = 0;
    proto_buf_free(&b);
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&g, &b), DOPA_OK);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "2 jobs");
    proto_buf_free(&b);

    /* Events, and the bounds of their fields. */
    proto_reply ev = {.op = PROTO_EVENTS, .n_events = 2};
    ev.events[0] = (proto_event){.id = 7, .kind = PROTO_EVENT_FILE_TRANSFERRED, .file = 999};
    ev.events[0].job.bytes[15] = 0xee;
    ev.events[1] = (proto_event){.id = UINT64_MAX, .kind = PROTO_EVENT_JOB_ERROR, .file = -1};
    proto_buf_free(&b);
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&ev, &b), DOPA_OK);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_OK);
    CHECK_INT(back.n_events, 2);
    CHECK_INT(back.events[0].id, 7);
    CHECK_INT(back.events[0].kind, PROTO_EVENT_FILE_TRANSFERRED);
    CHECK_INT(back.events[0].file, 999);
    CHECK_INT(back.events[0].job.bytes[15], 0xee);
    CHECK_INT(back.events[1].file, -1);
    const struct {
        proto_event bad;
    } wrong[] = {
        {{.id = 0, .kind = 1, .file = -1}},
        {{.id = 1, .kind = 0, .file = -1}},
        {{.id = 1, .kind = 5, .file = -1}},
        {{.id = 1, .kind = 4, .file = -2}},
        {{.id = 1, .kind = 4, .file = DOPA_MAX_FILES}},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        ev.events[1] = wrong[i].bad;
        proto_buf_free(&b);
        proto_buf_init(&b, PROTO_MAX_REPLY);
        CHECK_INT(proto_encode_reply(&ev, &b), DOPA_OK);
        CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_EPROTO);
    }
    /* The notify settings. */
    proto_reply gn = {.op = PROTO_GET_NOTIFY, .flags = 0x1f, .n_args = 2};
    snprintf(gn.args[0], sizeof gn.args[0], "/usr/bin/logger");
    snprintf(gn.args[1], sizeof gn.args[1], "done");
    proto_buf_free(&b);
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&gn, &b), DOPA_OK);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_OK);
    CHECK_INT(back.flags, 0x1f);
    CHECK_INT(back.n_args, 2);
    CHECK_STR(back.args[1], "done");
    proto_buf_free(&b);

    /* A request is not a reply. */
    proto_request *q = new_request(PROTO_GET);
    b = encode_request(q);
    CHECK_INT(proto_decode_reply(b.data, b.len, &back, &why), DOPA_EPROTO);
    proto_buf_free(&b);
    free(q);
}

/* A newer dopad may answer with fields this client does not know: a reply
 * is read without them. A request stays strict: dopad refuses what it does
 * not know. */
static void test_a_newer_dopads_reply_fields_are_skipped(void)
{
    proto_reply r = {.op = PROTO_STATS}, back;
    r.stats.origin_peak = 7;
    r.stats.control_sent = 1234;
    proto_buf b;
    proto_buf_init(&b, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&r, &b), DOPA_OK);
    uint8_t *m = malloc(b.len + 64);
    CHECK(m != NULL);
    memcpy(m, b.data, b.len);
    size_t len = b.len;
    uint64_t v = 99;
    len += field(m + len, 60, &v, sizeof v); /* a field of a later version */
    validate_error why = {0};
    CHECK_INT(proto_decode_reply(m, len, &back, &why), DOPA_OK);
    CHECK_INT(back.stats.origin_peak, 7);
    CHECK_INT(back.stats.control_sent, 1234);
    proto_reply_clear(&back);
    proto_buf_free(&b);

    /* A request with a field dopad does not know is refused. */
    proto_request q = {.op = PROTO_STATS}, qback;
    proto_buf_init(&b, PROTO_MAX_REQUEST);
    CHECK_INT(proto_encode_request(&q, &b), DOPA_OK);
    memcpy(m, b.data, b.len);
    len = b.len + field(m + b.len, 60, &v, sizeof v);
    proto_buf_free(&b);
    CHECK_INT(proto_decode_request(m, len, &qback, &why), DOPA_EPROTO);
    CHECK_HAS(why.text, "field 60 not allowed");
    free(m);
}

static void test_encoder_respects_its_limit(void)
{
    proto_request *r = new_request(PROTO_ADD_FILE);
    static uint8_t manifest[8192];
    r->manifest = manifest;
    r->manifest_len = sizeof manifest;
    snprintf(r->url, sizeof r->url, "http://x/");
    snprintf(r->path, sizeof r->path, "/x");
    proto_buf b;
    proto_buf_init(&b, 1024);
    CHECK_INT(proto_encode_request(r, &b), DOPA_ELIMIT);
    proto_buf_free(&b);
    free(r);
}

static void test_ids_print_and_parse(void)
{
    dopa_id id, back;
    for (int i = 0; i < 16; i++)
        id.bytes[i] = (uint8_t)(0xf0 + i);
    char s[37];
    dopa_id_format(&id, s);
    CHECK_STR(s, "f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff");
    CHECK_INT(dopa_id_parse(s, &back), DOPA_OK);
    CHECK(memcmp(id.bytes, back.bytes, 16) == 0);
    CHECK_INT(dopa_id_parse("F0F1F2F3-F4F5-F6F7-F8F9-FAFBFCFDFEFF", &back), DOPA_OK);
    CHECK_INT(dopa_id_parse("f0f1f2f3f4f5-f6f7-f8f9-fafbfcfdfeff", &back), DOPA_EINVAL);
    CHECK_INT(dopa_id_parse("f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfef", &back), DOPA_EINVAL);
    CHECK_INT(dopa_id_parse("g0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff", &back), DOPA_EINVAL);
    CHECK_INT(dopa_id_parse(NULL, &back), DOPA_EINVAL);
    for (int e = 0; e < DOPA_ERR_END; e++)
        CHECK(strcmp(dopa_strerror(e), "unknown error") != 0);
    CHECK_STR(dopa_strerror(DOPA_ERR_END), "unknown error");
    CHECK_STR(dopa_state_name(DOPA_STATE_TRANSIENT_ERROR), "TRANSIENT_ERROR");
    CHECK_STR(dopa_state_name(99), "UNKNOWN");
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_every_request_op_round_trips),
                         CASE(test_malformed_requests_are_refused),
                         CASE(test_oversized_and_repeated_fields),
                         CASE(test_replies_round_trip_and_are_checked),
                         CASE(test_a_newer_dopads_reply_fields_are_skipped),
                         CASE(test_encoder_respects_its_limit),
                         CASE(test_ids_print_and_parse),
                         {0},
                     });
}
