/*
 * The origin fetcher against a real nginx on loopback (plain, HTTPS with
 * HTTP/2, a client-certificate area, a forward proxy) and against the
 * misbehaving fault server.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "../check.h"
#include "../support/faultsrv.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "origin.h"

#define MAX_FETCHES 128

struct fetch {
    uint64_t id;
    uint64_t offset, len; /* as asked; len may be ORIGIN_TO_END */
    unsigned char *buf;
    size_t cap;
    uint64_t got;
    int done, failed, disorder;
    origin_error err;
};

struct collector {
    struct fetch fetches[MAX_FETCHES];
    int n;
    int info_calls;
    origin_file_info info;
    int abort_after; /* on_data returns -1 once this many calls were made */
    int data_calls;
    int cancel_on_first_data;
    enum { ACT_NONE, ACT_CANCEL, ACT_CLOSE, ACT_POLL } info_action, done_action, data_action;
    int nested_poll; /* what origin_poll returned from inside a callback */
    origin_file *file;
    unsigned max_active;
    origin *o;
};

static struct fetch *find(struct collector *c, uint64_t id)
{
    for (int i = 0; i < c->n; i++)
        if (c->fetches[i].id == id)
            return &c->fetches[i];
    return NULL;
}

/* Does what a test asked a callback to do to the origin. */
static void act(struct collector *c, origin_file *f, int what)
{
    if (what == ACT_CANCEL)
        for (int i = 0; i < c->n; i++)
            origin_cancel(f, c->fetches[i].id);
    else if (what == ACT_CLOSE)
        origin_file_close(f);
    else if (what == ACT_POLL)
        c->nested_poll = origin_poll(c->o, 0);
}

static void on_info(void *ctx, origin_file *f, const origin_file_info *info)
{
    struct collector *c = ctx;
    c->info_calls++;
    c->info = *info;
    act(c, f, c->info_action);
}

static int on_data(void *ctx, origin_file *f, uint64_t id, uint64_t offset, const void *data,
                   size_t len)
{
    struct collector *c = ctx;
    struct fetch *x = find(c, id);
    c->data_calls++;
    if (c->o != NULL && origin_active(c->o) > c->max_active)
        c->max_active = origin_active(c->o);
    if (x == NULL)
        return -1;
    if (c->cancel_on_first_data) {
        origin_cancel(f, id);
        return 0;
    }
    if (c->data_action != ACT_NONE) {
        act(c, f, c->data_action);
        return 0;
    }
    if (offset != x->offset + x->got)
        x->disorder = 1;
    if (x->got + len > x->cap) {
        size_t cap = x->cap ? x->cap : 65536;
        while (cap < x->got + len)
            cap *= 2;
        x->buf = realloc(x->buf, cap);
        x->cap = cap;
    }
    memcpy(x->buf + x->got, data, len);
    x->got += len;
    if (c->abort_after > 0 && c->data_calls >= c->abort_after)
        return -1;
    return 0;
}

static void on_done(void *ctx, origin_file *f, uint64_t id, const origin_error *err)
{
    struct collector *c = ctx;
    struct fetch *x = find(c, id);
    if (x == NULL)
        return;
    x->done = 1;
    if (err != NULL) {
        x->failed = 1;
        x->err = *err;
    }
    act(c, f, c->done_action);
}

static origin_sink sink_for(struct collector *c)
{
    return (origin_sink){.on_info = on_info, .on_data = on_data, .on_done = on_done, .ctx = c};
}

static struct fetch *fetch(struct collector *c, origin_file *f, uint64_t offset, uint64_t len)
{
    CHECK(c->n < MAX_FETCHES);
    struct fetch *x = &c->fetches[c->n++];
    memset(x, 0, sizeof *x);
    x->offset = offset;
    x->len = len;
    CHECK_INT(origin_fetch(f, offset, len, &x->id), ORIGIN_OK);
    CHECK(x->id != 0);
    return x;
}

static struct fetch *probe(struct collector *c, origin_file *f)
{
    struct fetch *x = &c->fetches[c->n++];
    memset(x, 0, sizeof *x);
    CHECK_INT(origin_probe(f, &x->id), ORIGIN_OK);
    return x;
}

/* Polls until every fetch is done; fails the case after `limit` seconds. */
static void run(origin *o, struct collector *c, double limit)
{
    double end = check_now() + limit;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < c->n; i++)
            pending += !c->fetches[i].done;
        if (pending == 0)
            return;
        CHECK(check_now() < end);
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    }
}

static void free_collector(struct collector *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->fetches[i].buf);
    memset(c, 0, sizeof *c);
}

/* The fetch got exactly the pattern bytes it asked for, in order. */
static void check_bytes(const struct fetch *x, unsigned seed, uint64_t expect_len)
{
    CHECK(x->done);
    if (x->failed)
        fprintf(stderr, "  fetch failed: %s (%s)\n", origin_strerror(x->err.code), x->err.message);
    CHECK(!x->failed);
    CHECK(!x->disorder);
    CHECK_INT(x->got, expect_len);
    for (uint64_t i = 0; i < x->got; i++)
        if (x->buf[i] != test_pattern_byte(seed, (size_t)(x->offset + i))) {
            fprintf(stderr, "  byte %llu differs\n", (unsigned long long)(x->offset + i));
            CHECK(0);
        }
}

static void check_failed_with(const struct fetch *x, int code)
{
    CHECK(x->done);
    CHECK(x->failed);
    if (x->err.code != code)
        fprintf(stderr, "  got %s: %s\n", origin_strerror(x->err.code), x->err.message);
    CHECK_INT(x->err.code, code);
    CHECK_INT(x->err.is_transient, origin_err_is_transient(code));
}

/* ------------------------------------------------------------------ */
/* Fixture: one nginx and one fault server for the whole program.     */

static test_nginx web;
static test_faultsrv *faults;
static const char *fixture_dir; /* the scratch directory */

#define SEED_A 1u
#define SIZE_A (3 * 1024 * 1024 + 12345)

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", web.port, path);
}

static void fault_url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", test_faultsrv_port(faults), path);
}

static origin *new_origin(void)
{
    origin *o = NULL;
    CHECK_INT(origin_new(NULL, &o), ORIGIN_OK);
    return o;
}

static origin_file *open_url(origin *o, const char *u, struct collector *c)
{
    origin_file_options opts = {.url = u, .known_size = -1};
    origin_sink s = sink_for(c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    c->file = f;
    c->o = o;
    return f;
}

/* ------------------------------------------------------------------ */

static void test_probe_learns_size_and_validators(void)
{
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *p = probe(&c, f);
    run(o, &c, 10);
    CHECK(!p->failed);
    CHECK_INT(p->got, 0); /* a probe delivers no content */
    CHECK(c.info_calls >= 1);
    CHECK_INT(c.info.size, SIZE_A);
    CHECK(c.info.etag[0] == '"');
    CHECK_HAS(c.info.last_modified, "GMT");
    CHECK_INT(c.info.accepts_ranges, 1);
    CHECK_INT(c.info.http_version, 11);
    CHECK_INT(origin_file_get_info(f)->size, SIZE_A);
    origin_free(o);
    free_collector(&c);
}

static void test_ranges_at_odd_offsets_match_the_file(void)
{
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    const uint64_t cases[][2] = {
        {0, 1}, {1, 3}, {65535, 70000}, {1048575, 2}, {SIZE_A - 1, 1}, {12345, 1000000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fetch(&c, f, cases[i][0], cases[i][1]);
    run(o, &c, 20);
    for (int i = 0; i < c.n; i++)
        check_bytes(&c.fetches[i], SEED_A, c.fetches[i].len);
    origin_free(o);
    free_collector(&c);
}

static void test_many_concurrent_ranges_share_four_connections(void)
{
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    origin *o = new_origin();
    origin_file_options opts = {.url = u, .known_size = -1, .connections = 4};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    c.o = o;
    const uint64_t piece = 49999; /* odd size: ranges straddle everything */
    for (uint64_t off = 0; off < SIZE_A; off += piece)
        fetch(&c, f, off, off + piece <= SIZE_A ? piece : SIZE_A - off);
    CHECK(c.n > 60);
    run(o, &c, 30);
    uint64_t total = 0;
    for (int i = 0; i < c.n; i++) {
        check_bytes(&c.fetches[i], SEED_A, c.fetches[i].len);
        total += c.fetches[i].got;
    }
    CHECK_INT(total, SIZE_A);
    CHECK(c.max_active <= 4);
    CHECK(c.max_active >= 2);
    CHECK_INT(origin_active(o), 0);
    origin_free(o);
    free_collector(&c);
}

static void test_fetch_to_end_without_known_size(void)
{
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 1000, ORIGIN_TO_END);
    run(o, &c, 20);
    check_bytes(x, SEED_A, SIZE_A - 1000);
    CHECK_INT(c.info.size, SIZE_A);
    origin_free(o);
    free_collector(&c);
}

static void test_resume_checks_known_validators(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    probe(&c, f);
    run(o, &c, 10);
    origin_file_info known = c.info;
    origin_free(o);
    free_collector(&c);

    /* A later run that knows the validators: the same file passes... */
    o = new_origin();
    origin_file_options opts = {.url = u,
                                .known_size = known.size,
                                .known_etag = known.etag,
                                .known_last_modified = known.last_modified};
    origin_sink s = sink_for(&c);
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    struct fetch *x = fetch(&c, f, 2000000, 5000);
    run(o, &c, 10);
    check_bytes(x, SEED_A, 5000);
    CHECK_STR(c.info.etag, known.etag); /* what was known still holds */
    CHECK_INT(c.info.size, known.size);
    origin_free(o);
    free_collector(&c);

    /* ...and a stale ETag means the content changed since. */
    o = new_origin();
    opts.known_etag = "\"5f000000-1\"";
    opts.known_last_modified = NULL;
    s = sink_for(&c);
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    x = fetch(&c, f, 2000000, 5000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ECHANGED);
    CHECK_INT(x->got, 0);
    /* So does a different size. */
    opts.known_etag = NULL;
    opts.known_size = known.size + 1;
    origin_file *g = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &g), ORIGIN_OK);
    x = fetch(&c, g, 0, 10);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ECHANGED);
    CHECK_INT(x->got, 0);
    origin_free(o);
    free_collector(&c);
}

static void test_file_replaced_mid_download_is_detected(void)
{
    char u[256];
    CHECK(test_nginx_put(&web, "slow/r.bin", 1024 * 1024, 5) == 0);
    CHECK(test_nginx_set_mtime(&web, "slow/r.bin", 1700000000) == 0);
    url(u, sizeof u, "/slow/r.bin");
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *first = fetch(&c, f, 0, 300000);
    run(o, &c, 20);
    check_bytes(first, 5, 300000);
    /* The publisher replaces the file; the download goes on. */
    CHECK(test_nginx_put(&web, "slow/r.bin", 1024 * 1024, 6) == 0);
    CHECK(test_nginx_set_mtime(&web, "slow/r.bin", 1700000100) == 0);
    struct fetch *second = fetch(&c, f, 300000, 300000);
    run(o, &c, 20);
    check_failed_with(second, ORIGIN_ECHANGED);
    CHECK_INT(second->got, 0); /* not one byte of the new version */
    CHECK_HAS(second->err.message, "ETag is now");
    origin_free(o);
    free_collector(&c);
}

static void test_http_errors_are_classified(void)
{
    static const struct {
        const char *path;
        int fault;
        int code;
        long status;
        long retry_after;
    } cases[] = {
        {"/missing.bin", 0, ORIGIN_ENOT_FOUND, 404, 0}, {"/gone", 0, ORIGIN_ENOT_FOUND, 410, 0},
        {"/forbidden", 0, ORIGIN_EFORBIDDEN, 403, 0},   {"/teapot", 0, ORIGIN_EHTTP, 418, 0},
        {"/broken", 0, ORIGIN_ESERVER, 500, 0},         {"/busy", 0, ORIGIN_ETHROTTLED, 503, 5},
        {"/429", 1, ORIGIN_ETHROTTLED, 429, 3},         {"/503", 1, ORIGIN_ETHROTTLED, 503, 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct collector c = {0};
        char u[256];
        if (cases[i].fault)
            fault_url(u, sizeof u, cases[i].path);
        else
            url(u, sizeof u, cases[i].path);
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        struct fetch *x = fetch(&c, f, 0, 100);
        run(o, &c, 10);
        check_failed_with(x, cases[i].code);
        CHECK_INT(x->err.http_status, cases[i].status);
        CHECK_INT(x->err.retry_after, cases[i].retry_after);
        CHECK_HAS(x->err.message, cases[i].path);
        CHECK_INT(x->got, 0);
        origin_free(o);
        free_collector(&c);
    }
}

static void test_range_beyond_the_end_is_permanent(void)
{
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *past = fetch(&c, f, SIZE_A, 10);
    struct fetch *across = fetch(&c, f, SIZE_A - 10, 20);
    run(o, &c, 10);
    check_failed_with(past, ORIGIN_ERANGE);
    CHECK_INT(past->err.http_status, 416);
    check_failed_with(across, ORIGIN_ERANGE);
    CHECK_INT(across->got, 10); /* what exists is delivered, nothing more */
    origin_free(o);
    free_collector(&c);
}

static void test_slow_server_completes(void)
{
    CHECK(test_nginx_put(&web, "slow/s.bin", 600 * 1024, 9) == 0);
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/slow/s.bin");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    double t0 = check_now();
    struct fetch *x = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 20);
    check_bytes(x, 9, 600 * 1024);
    CHECK(check_now() - t0 > 1.0); /* nginx really was slow: limit_rate 256k */
    origin_free(o);
    free_collector(&c);
}

static void test_stalled_transfer_fails_as_transient(void)
{
    CHECK(test_nginx_put(&web, "crawl/c.bin", 200 * 1024, 3) == 0);
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/crawl/c.bin");
    origin_config cfg = origin_config_default();
    cfg.low_speed_limit = 20000;
    cfg.low_speed_time = 2;
    origin *o = NULL;
    CHECK_INT(origin_new(&cfg, &o), ORIGIN_OK);
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 15);
    check_failed_with(x, ORIGIN_ETIMEOUT);
    /* What did arrive is the right bytes. */
    for (uint64_t i = 0; i < x->got; i++)
        CHECK(x->buf[i] == test_pattern_byte(3, (size_t)i));
    origin_free(o);
    free_collector(&c);
}

static void test_redirects_only_to_http(void)
{
    struct {
        const char *path;
        int code;
    } cases[] = {
        {"/to-file", ORIGIN_EPROTOCOL},
        {"/loop", ORIGIN_EREDIRECT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct collector c = {0};
        char u[256];
        url(u, sizeof u, cases[i].path);
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        struct fetch *x = fetch(&c, f, 0, 100);
        run(o, &c, 10);
        check_failed_with(x, cases[i].code);
        CHECK_INT(x->got, 0);
        origin_free(o);
        free_collector(&c);
    }
    struct collector c = {0};
    char u[256];
    url(u, sizeof u, "/moved");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 777, 4096);
    run(o, &c, 10);
    check_bytes(x, SEED_A, 4096);
    origin_free(o);
    free_collector(&c);
}

static void test_file_urls(void)
{
    char path[1024], u[1100];
    snprintf(path, sizeof path, "%s/data/a.bin", web.root);
    snprintf(u, sizeof u, "file://%s", path);
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *p = probe(&c, f);
    struct fetch *x = fetch(&c, f, 99999, 123457);
    struct fetch *tail = fetch(&c, f, SIZE_A - 5, ORIGIN_TO_END);
    run(o, &c, 10);
    CHECK(!p->failed);
    CHECK_INT(c.info.size, SIZE_A);
    check_bytes(x, SEED_A, 123457);
    check_bytes(tail, SEED_A, 5);
    struct fetch *past = fetch(&c, f, SIZE_A - 5, 10);
    run(o, &c, 10);
    check_failed_with(past, ORIGIN_ERANGE);
    CHECK_INT(past->got, 5);
    origin_free(o);
    free_collector(&c);

    snprintf(u, sizeof u, "file://%s/nothing-here", web.root);
    o = new_origin();
    f = open_url(o, u, &c);
    x = fetch(&c, f, 0, 10);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ENOT_FOUND);
    origin_free(o);
    free_collector(&c);
}

static void test_connection_closed_mid_body_is_transient(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/close-mid");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 1000, 200000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ERECV);
    CHECK_INT(x->got, 100000);
    for (uint64_t i = 0; i < x->got; i++)
        CHECK(x->buf[i] == test_pattern_byte(FAULT_SEED, (size_t)(1000 + i)));
    origin_free(o);
    free_collector(&c);
}

static void test_more_than_asked_is_cut_at_the_range_end(void)
{
    const char *paths[] = {"/endless", "/bigger"};
    for (size_t i = 0; i < 2; i++) {
        struct collector c = {0};
        char u[256];
        fault_url(u, sizeof u, paths[i]);
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        struct fetch *x = fetch(&c, f, 4321, 100000);
        run(o, &c, 10);
        check_bytes(x, FAULT_SEED, 100000);
        origin_free(o);
        free_collector(&c);
    }
    /* An endless 200 for a range at 0: exactly the bytes asked for. */
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/endless200");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 3000);
    run(o, &c, 10);
    check_bytes(x, FAULT_SEED, 3000);
    origin_free(o);
    free_collector(&c);
}

static void test_wrong_content_range_is_refused(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/wrong-start");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 5000, 1000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EBAD_RESPONSE);
    CHECK_HAS(x->err.message, "Content-Range bytes 5001-5999");
    CHECK_INT(x->got, 0);
    origin_free(o);
    free_collector(&c);
}

static void test_server_ignoring_ranges(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/ignore-range");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *mid = fetch(&c, f, 5000, 1000);
    run(o, &c, 10);
    check_failed_with(mid, ORIGIN_ENORANGES);
    CHECK_INT(mid->got, 0); /* never spliced at the wrong offset */
    CHECK_INT(c.info.accepts_ranges, 0);
    /* From byte 0 the whole-file body is exactly the bytes wanted. */
    struct fetch *head = fetch(&c, f, 0, 7000);
    struct fetch *all = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 10);
    check_bytes(head, FAULT_SEED, 7000);
    check_bytes(all, FAULT_SEED, FAULT_SIZE);
    origin_free(o);
    free_collector(&c);
}

static void test_short_responses_are_continued(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/short");
    int before = test_faultsrv_hits(faults, "/short");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 10, 300000);
    run(o, &c, 10);
    check_bytes(x, FAULT_SEED, 300000);
    CHECK_INT(test_faultsrv_hits(faults, "/short") - before, 5); /* 4 x 64 KiB + the rest */
    origin_free(o);
    free_collector(&c);
}

static void test_chunked_bodies(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/chunked");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 333, 54321);
    run(o, &c, 10);
    check_bytes(x, FAULT_SEED, 54321);
    origin_free(o);
    free_collector(&c);
}

static void test_changing_validators_are_detected(void)
{
    const char *paths[] = {"/changing-etag", "/changing-size", "/drop-etag"};
    for (size_t i = 0; i < 3; i++) {
        struct collector c = {0};
        char u[256];
        fault_url(u, sizeof u, paths[i]);
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        struct fetch *a = fetch(&c, f, 0, 1000);
        run(o, &c, 10);
        check_bytes(a, FAULT_SEED, 1000);
        struct fetch *b = fetch(&c, f, 1000, 1000);
        run(o, &c, 10);
        check_failed_with(b, ORIGIN_ECHANGED);
        CHECK_INT(b->got, 0);
        origin_free(o);
        free_collector(&c);
    }
}

static void test_https_http2_and_certificates(void)
{
    char u[256], ca[700];
    snprintf(u, sizeof u, "https://127.0.0.1:%d/data/a.bin", web.tls_port);
    snprintf(ca, sizeof ca, "%s/ca.pem", web.certs);
    struct collector c = {0};
    origin *o = new_origin();
    origin_file_options opts = {.url = u, .known_size = -1, .ca_file = ca, .connections = 3};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    struct fetch *a = fetch(&c, f, 0, 500000);
    struct fetch *b = fetch(&c, f, 500000, 500000);
    struct fetch *d = fetch(&c, f, 1000000, ORIGIN_TO_END);
    run(o, &c, 20);
    check_bytes(a, SEED_A, 500000);
    check_bytes(b, SEED_A, 500000);
    check_bytes(d, SEED_A, SIZE_A - 1000000);
    CHECK_INT(c.info.http_version, 20);
    origin_free(o);
    free_collector(&c);

    /* Without the test CA the system store does not trust the server. */
    o = new_origin();
    f = open_url(o, u, &c);
    a = fetch(&c, f, 0, 100);
    run(o, &c, 10);
    check_failed_with(a, ORIGIN_ETLS);
    origin_free(o);
    free_collector(&c);
}

static void test_client_certificate(void)
{
    char u[256], ca[700], cert[700], key[700];
    snprintf(u, sizeof u, "https://127.0.0.1:%d/private/p.bin", web.tls_port);
    snprintf(ca, sizeof ca, "%s/ca.pem", web.certs);
    snprintf(cert, sizeof cert, "%s/client.pem", web.certs);
    snprintf(key, sizeof key, "%s/client.key", web.certs);
    struct collector c = {0};
    origin *o = new_origin();
    origin_file_options opts = {.url = u, .known_size = -1, .ca_file = ca};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    struct fetch *x = fetch(&c, f, 0, 1000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EFORBIDDEN);
    opts.client_cert = cert;
    opts.client_key = key;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    x = fetch(&c, f, 0, 1000);
    run(o, &c, 10);
    check_bytes(x, 11, 1000);
    origin_free(o);
    free_collector(&c);
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

static void test_proxy_modes(void)
{
    char u[256], proxy[64], log[700];
    url(u, sizeof u, "/data/a.bin");
    snprintf(proxy, sizeof proxy, "http://127.0.0.1:%d", web.extra_port);
    snprintf(log, sizeof log, "%s/proxy.log", web.dir);
    struct {
        enum origin_proxy_mode mode;
        const char *bypass;
        const char *env;
        int via_proxy;
    } cases[] = {
        {ORIGIN_PROXY_EXPLICIT, NULL, NULL, 1},
        {ORIGIN_PROXY_EXPLICIT, "127.0.0.1", NULL, 0},
        {ORIGIN_PROXY_NONE, NULL, "http://127.0.0.1:1", 0}, /* env proxy is dead */
        {ORIGIN_PROXY_SYSTEM, NULL, proxy, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].env != NULL)
            setenv("http_proxy", cases[i].env, 1);
        unsetenv("no_proxy");
        unsetenv("NO_PROXY");
        int before = count_lines(log);
        struct collector c = {0};
        origin *o = new_origin();
        origin_file_options opts = {.url = u,
                                    .known_size = -1,
                                    .proxy_mode = cases[i].mode,
                                    .proxy = proxy,
                                    .proxy_bypass = cases[i].bypass};
        origin_sink s = sink_for(&c);
        origin_file *f = NULL;
        CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
        struct fetch *x = fetch(&c, f, 10, 1000);
        run(o, &c, 10);
        unsetenv("http_proxy");
        check_bytes(x, SEED_A, 1000);
        /* nginx writes its log line when the request ends: wait for it (or,
         * when none is due, long enough that one would have come). */
        double until = check_now() + (cases[i].via_proxy ? 5 : 0.3);
        while (count_lines(log) - before < cases[i].via_proxy && check_now() < until) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (!cases[i].via_proxy)
            while (check_now() < until) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        CHECK_INT(count_lines(log) - before, cases[i].via_proxy);
        origin_free(o);
        free_collector(&c);
    }
}

static void test_custom_headers_are_sent(void)
{
    char u[256];
    url(u, sizeof u, "/token/t.bin");
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 100);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EFORBIDDEN);
    const char *headers[] = {"X-Dopa-Token: secret", "X-Other: 1"};
    origin_file_options opts = {.url = u, .known_size = -1, .headers = headers, .n_headers = 2};
    origin_sink s = sink_for(&c);
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    x = fetch(&c, f, 0, 100);
    run(o, &c, 10);
    check_bytes(x, 12, 100);
    origin_free(o);
    free_collector(&c);
}

static void test_rate_limits_per_transfer_and_overall(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    /* Per transfer: 1 MiB at 512 KiB/s takes about two seconds. */
    struct collector c = {0};
    origin *o = new_origin();
    origin_file_options opts = {.url = u, .known_size = -1, .max_rate = 512 * 1024};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    double t0 = check_now();
    struct fetch *x = fetch(&c, f, 0, 1024 * 1024);
    run(o, &c, 20);
    double took = check_now() - t0;
    check_bytes(x, SEED_A, 1024 * 1024);
    fprintf(stderr, "  per transfer took %.2f s\n", took);
    CHECK(took > 1.4);
    CHECK(took < 6);
    origin_free(o);
    free_collector(&c);

    /* Overall: two files at once share 512 KiB/s. */
    origin_config cfg = origin_config_default();
    cfg.max_rate = 512 * 1024;
    CHECK_INT(origin_new(&cfg, &o), ORIGIN_OK);
    origin_file *g = NULL;
    opts.max_rate = 0;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    CHECK_INT(origin_file_open(o, &opts, &s, &g), ORIGIN_OK);
    c.o = o;
    t0 = check_now();
    struct fetch *a = fetch(&c, f, 0, 512 * 1024);
    struct fetch *b = fetch(&c, g, 512 * 1024, 512 * 1024);
    run(o, &c, 20);
    took = check_now() - t0;
    check_bytes(a, SEED_A, 512 * 1024);
    check_bytes(b, SEED_A, 512 * 1024);
    fprintf(stderr, "  overall took %.2f s\n", took);
    CHECK(took > 1.4);
    CHECK(took < 6);
    origin_free(o);
    free_collector(&c);
}

/* The overall limit changes: lifted, a crawling transfer under way
 * finishes at once; set on a loop that had none, transfers slow down. */
static void test_the_overall_rate_limit_changes_under_way(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    struct collector c = {0};
    origin_config cfg = origin_config_default();
    cfg.max_rate = 64 * 1024; /* 1 MiB would take 16 s */
    origin *o = NULL;
    CHECK_INT(origin_new(&cfg, &o), ORIGIN_OK);
    origin_file *f = open_url(o, u, &c);
    c.o = o;
    double t0 = check_now();
    struct fetch *x = fetch(&c, f, 0, 1024 * 1024);
    while (x->got < 32 * 1024 && check_now() < t0 + 10)
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK(x->got >= 32 * 1024);
    CHECK(x->got < 256 * 1024);
    origin_set_max_rate(o, 0);
    run(o, &c, 10);
    double took = check_now() - t0;
    check_bytes(x, SEED_A, 1024 * 1024);
    fprintf(stderr, "  lifted after %.2f s in all\n", took);
    CHECK(took < 8);

    /* Set on a loop that had none: 512 KiB at 128 KiB/s, about 4 s. */
    origin_set_max_rate(o, 128 * 1024);
    t0 = check_now();
    x = fetch(&c, f, 0, 512 * 1024);
    run(o, &c, 20);
    took = check_now() - t0;
    check_bytes(x, SEED_A, 512 * 1024);
    fprintf(stderr, "  set took %.2f s\n", took);
    CHECK(took > 3.0);
    origin_free(o);
    free_collector(&c);
}

static void test_cancel_stops_every_callback(void)
{
    CHECK(test_nginx_put(&web, "slow/k.bin", 600 * 1024, 4) == 0);
    char u[256];
    url(u, sizeof u, "/slow/k.bin");
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, ORIGIN_TO_END);
    struct fetch *queued = fetch(&c, f, 0, 1000); /* waits behind x: one connection */
    double end = check_now() + 10;
    while (x->got == 0 && check_now() < end)
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK(x->got > 0);
    origin_cancel(f, x->id);
    origin_cancel(f, queued->id);
    origin_cancel(f, 999999); /* unknown: ignored */
    int calls = c.data_calls;
    for (int i = 0; i < 10; i++)
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK_INT(c.data_calls, calls);
    CHECK(!x->done && !queued->done);
    CHECK_INT(origin_active(o), 0);
    /* The file goes on working. */
    x->done = queued->done = 1;
    struct fetch *y = fetch(&c, f, 100, 100);
    run(o, &c, 10);
    check_bytes(y, 4, 100);

    /* Cancelling from inside on_data, and closing the file with requests
     * running, are both safe. */
    c.cancel_on_first_data = 1;
    calls = c.data_calls;
    y = fetch(&c, f, 0, 300000);
    for (int i = 0; i < 100 && c.data_calls == calls; i++)
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK_INT(c.data_calls, calls + 1); /* the one call that cancelled */
    for (int i = 0; i < 5; i++)
        CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK_INT(c.data_calls, calls + 1);
    CHECK(!y->done);
    y->done = 1;
    c.cancel_on_first_data = 0;
    fetch(&c, f, 0, ORIGIN_TO_END);
    CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    origin_file_close(f);
    CHECK_INT(origin_poll(o, 50), ORIGIN_OK);
    CHECK_INT(origin_active(o), 0);
    origin_free(o);
    free_collector(&c);
}

static void test_sink_can_abort(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    struct collector c = {.abort_after = 1};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 2000000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EABORTED);
    origin_free(o);
    free_collector(&c);
}

static void test_empty_file(void)
{
    CHECK(test_nginx_put(&web, "data/empty", 0, 1) == 0);
    char u[256];
    url(u, sizeof u, "/data/empty");
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *p = probe(&c, f);
    run(o, &c, 10);
    CHECK(!p->failed);
    CHECK_INT(c.info.size, 0);
    struct fetch *x = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 10);
    if (x->failed)
        fprintf(stderr, "  %s\n", x->err.message);
    CHECK(!x->failed);
    CHECK_INT(x->got, 0);
    origin_free(o);
    free_collector(&c);
}

static void test_bad_arguments_are_refused(void)
{
    struct collector c = {0};
    origin *o = new_origin();
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    origin_file_options opts = {.url = "ftp://127.0.0.1/x", .known_size = -1};
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_EPROTOCOL);
    opts.url = "http://127.0.0.1:1/x";
    const char *evil[] = {"X-A: 1\r\nX-B: 2"};
    opts.headers = evil;
    opts.n_headers = 1;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_EINVAL);
    const char *no_colon[] = {"NoColon"};
    opts.headers = no_colon;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_EINVAL);
    opts.headers = NULL;
    opts.n_headers = 0;
    opts.proxy_mode = ORIGIN_PROXY_EXPLICIT;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_EINVAL);
    opts.proxy_mode = ORIGIN_PROXY_SYSTEM;
    origin_sink no_data = {.on_done = on_done};
    CHECK_INT(origin_file_open(o, &opts, &no_data, &f), ORIGIN_EINVAL);
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    uint64_t id;
    CHECK_INT(origin_fetch(f, 0, 0, &id), ORIGIN_EINVAL);
    CHECK_INT(origin_fetch(f, UINT64_MAX - 5, 10, &id), ORIGIN_EINVAL);
    origin_free(o);
    CHECK_STR(origin_strerror(ORIGIN_ERR_END), "unknown error");
    for (int e = ORIGIN_ENOMEM; e < ORIGIN_ERR_END; e++)
        CHECK(strcmp(origin_strerror(e), "unknown error") != 0);
}

static void test_connection_refused_is_transient(void)
{
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/x", test_free_port());
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 10);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ECONNECT);
    origin_free(o);
    free_collector(&c);
}

static void test_messages_hide_credentials_and_query(void)
{
    char u[256];
    snprintf(u, sizeof u, "http://user:hunter2@127.0.0.1:%d/missing?sig=topsecret", web.port);
    struct collector c = {0};
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 10);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ENOT_FOUND);
    CHECK_HAS(x->err.message, "/missing");
    CHECK(strstr(x->err.message, "hunter2") == NULL);
    CHECK(strstr(x->err.message, "topsecret") == NULL);
    origin_free(o);
    free_collector(&c);
}

static void test_refusal_while_throttled_stops_the_data(void)
{
    /* A refusal of data that was held back by the rate limit must end the
     * request: nothing more, and nothing at a shifted offset. */
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    struct collector c = {.abort_after = 2};
    origin *o = new_origin();
    origin_file_options opts = {.url = u, .known_size = -1, .max_rate = 100000};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    c.o = o;
    struct fetch *x = fetch(&c, f, 0, 500000);
    run(o, &c, 20);
    check_failed_with(x, ORIGIN_EABORTED);
    CHECK_INT(c.data_calls, 2);
    CHECK(!x->disorder);
    origin_free(o);
    free_collector(&c);
}

static void test_responses_longer_than_their_range_are_refused(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/cl-mismatch");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 10, 1000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EBAD_RESPONSE);
    CHECK_HAS(x->err.message, "Content-Length");
    CHECK_INT(x->got, 0);
    origin_free(o);
    free_collector(&c);

    fault_url(u, sizeof u, "/overlong");
    o = new_origin();
    f = open_url(o, u, &c);
    x = fetch(&c, f, 10, 1000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_EBAD_RESPONSE);
    CHECK_HAS(x->err.message, "more than its Content-Range");
    CHECK_INT(x->got, 100); /* what the range covered, never past it */
    for (uint64_t i = 0; i < x->got; i++)
        CHECK(x->buf[i] == test_pattern_byte(FAULT_SEED, (size_t)(10 + i)));
    origin_free(o);
    free_collector(&c);
}

static void test_if_range_is_sent_with_the_right_validator(void)
{
    const struct {
        const char *path;
        const char *want;
    } cases[] = {
        {"/good", "\"v1\""},
        {"/lm-only", "Tue, 14 Nov 2023 22:13:20 GMT"},
        {"/weak-etag", "Tue, 14 Nov 2023 22:13:20 GMT"}, /* a weak ETag may not be used */
    };
    for (size_t i = 0; i < 3; i++) {
        struct collector c = {0};
        char u[256], seen[128];
        fault_url(u, sizeof u, cases[i].path);
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        struct fetch *a = fetch(&c, f, 0, 100);
        run(o, &c, 10);
        check_bytes(a, FAULT_SEED, 100);
        test_faultsrv_if_range(faults, cases[i].path, seen, sizeof seen);
        CHECK_STR(seen, ""); /* nothing known yet */
        struct fetch *b = fetch(&c, f, 100, 100);
        run(o, &c, 10);
        check_bytes(b, FAULT_SEED, 100);
        test_faultsrv_if_range(faults, cases[i].path, seen, sizeof seen);
        CHECK_STR(seen, cases[i].want);
        origin_free(o);
        free_collector(&c);
    }
}

static void test_validator_change_between_short_responses(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/short-changing");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 200000);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ECHANGED);
    CHECK_INT(x->got, 65536); /* only the first version's bytes */
    origin_free(o);
    free_collector(&c);
}

static void test_retry_after_as_a_date(void)
{
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/503-date");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, 10);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ETHROTTLED);
    CHECK(x->err.retry_after >= 25 && x->err.retry_after <= 31);
    origin_free(o);
    free_collector(&c);
}

static void test_files_that_end_where_the_server_says(void)
{
    /* A chunked 200 without a length, read to its end, is the whole file. */
    struct collector c = {0};
    char u[256];
    fault_url(u, sizeof u, "/chunked200");
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 10);
    check_bytes(x, FAULT_SEED, FAULT_SIZE);
    CHECK_INT(origin_file_get_info(f)->size, FAULT_SIZE);
    origin_free(o);
    free_collector(&c);

    /* An empty file behind a server that answers 416 "bytes * /0". */
    fault_url(u, sizeof u, "/empty416");
    o = new_origin();
    f = open_url(o, u, &c);
    x = fetch(&c, f, 0, ORIGIN_TO_END);
    run(o, &c, 10);
    CHECK(x->done && !x->failed);
    CHECK_INT(x->got, 0);
    CHECK_INT(origin_file_get_info(f)->size, 0);
    origin_free(o);
    free_collector(&c);

    /* 206 "a-b/ *" to the end: the size comes from the 416 after it. */
    fault_url(u, sizeof u, "/star");
    o = new_origin();
    f = open_url(o, u, &c);
    x = fetch(&c, f, 1000, ORIGIN_TO_END);
    run(o, &c, 10);
    check_bytes(x, FAULT_SEED, FAULT_SIZE - 1000);
    origin_free(o);
    free_collector(&c);
}

static void test_redirect_to_another_host_drops_custom_headers(void)
{
    const char *headers[] = {"X-Dopa-Token: secret"};
    const struct {
        const char *path;
        int ok;
    } cases[] = {{"/hop-same", 1}, {"/hop-other", 0}};
    for (size_t i = 0; i < 2; i++) {
        char u[256];
        url(u, sizeof u, cases[i].path);
        struct collector c = {0};
        origin *o = new_origin();
        origin_file_options opts = {.url = u, .known_size = -1, .headers = headers, .n_headers = 1};
        origin_sink s = sink_for(&c);
        origin_file *f = NULL;
        CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
        struct fetch *x = fetch(&c, f, 0, 100);
        run(o, &c, 10);
        if (cases[i].ok)
            check_bytes(x, 12, 100);
        else
            check_failed_with(x, ORIGIN_EFORBIDDEN); /* the token did not follow */
        origin_free(o);
        free_collector(&c);
    }
}

static void test_callbacks_may_cancel_close_but_not_poll(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    int actions[][2] = {{ACT_CANCEL, ACT_NONE}, {ACT_CLOSE, ACT_NONE}, {ACT_NONE, ACT_CLOSE}};
    for (size_t i = 0; i < 3; i++) {
        struct collector c = {0};
        c.info_action = actions[i][0];
        c.done_action = actions[i][1];
        origin *o = new_origin();
        origin_file *f = open_url(o, u, &c);
        fetch(&c, f, 0, 1000);
        fetch(&c, f, 1000, 1000);
        for (int k = 0; k < 40; k++)
            CHECK_INT(origin_poll(o, 25), ORIGIN_OK);
        CHECK_INT(origin_active(o), 0);
        CHECK(c.info_calls >= 1);
        origin_free(o);
        free_collector(&c);
    }
    /* origin_poll from inside a callback is refused, not run. */
    struct collector c = {0};
    c.data_action = ACT_POLL;
    c.nested_poll = 12345;
    origin *o = new_origin();
    origin_file *f = open_url(o, u, &c);
    fetch(&c, f, 0, 1000);
    run(o, &c, 10);
    CHECK_INT(c.nested_poll, ORIGIN_EINVAL);
    origin_free(o);
    free_collector(&c);
}

static void test_file_urls_chunked_throttled_and_changed(void)
{
    char path[1024], u[1100];
    snprintf(path, sizeof path, "%s/data/big.bin", web.root);
    CHECK(test_nginx_put(&web, "data/big.bin", 20 * 1024 * 1024 + 5, 21) == 0);
    snprintf(u, sizeof u, "file://%s", path);
    struct collector c = {0};
    origin_config cfg = origin_config_default();
    cfg.max_rate = 1000 * 1024 * 1024; /* a limit that file:// cannot pause for */
    origin *o = NULL;
    CHECK_INT(origin_new(&cfg, &o), ORIGIN_OK);
    origin_file *f = open_url(o, u, &c);
    struct fetch *x = fetch(&c, f, 3, ORIGIN_TO_END);
    run(o, &c, 20);
    check_bytes(x, 21, 20 * 1024 * 1024 + 2);
    /* The file is rewritten: its modification time gives it away. */
    CHECK(test_nginx_put(&web, "data/big.bin", 20 * 1024 * 1024 + 5, 22) == 0);
    CHECK(test_nginx_set_mtime(&web, "data/big.bin", 1600000000) == 0);
    x = fetch(&c, f, 0, 100);
    run(o, &c, 10);
    check_failed_with(x, ORIGIN_ECHANGED);
    CHECK_INT(x->got, 0);
    origin_free(o);
    free_collector(&c);
}

static void test_overall_connection_limit(void)
{
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    struct collector c = {0};
    origin_config cfg = origin_config_default();
    cfg.max_connections = 2;
    origin *o = NULL;
    CHECK_INT(origin_new(&cfg, &o), ORIGIN_OK);
    origin_file_options opts = {.url = u, .known_size = -1, .connections = 8};
    origin_sink s = sink_for(&c);
    origin_file *f = NULL, *g = NULL;
    CHECK_INT(origin_file_open(o, &opts, &s, &f), ORIGIN_OK);
    CHECK_INT(origin_file_open(o, &opts, &s, &g), ORIGIN_OK);
    c.o = o;
    for (int i = 0; i < 8; i++) {
        fetch(&c, f, (uint64_t)i * 100000, 100000);
        fetch(&c, g, (uint64_t)i * 100000, 100000);
    }
    run(o, &c, 20);
    for (int i = 0; i < c.n; i++)
        check_bytes(&c.fetches[i], SEED_A, 100000);
    CHECK(c.max_active <= 2);
    origin_free(o);
    free_collector(&c);
}

static origin *wake_target;

static void *wake_later(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    origin_wakeup(wake_target);
    return NULL;
}

static void test_wakeup_ends_a_poll_early(void)
{
    origin *o = new_origin();
    pthread_t th;
    wake_target = o;
    CHECK(pthread_create(&th, NULL, wake_later, NULL) == 0);
    double t0 = check_now();
    CHECK_INT(origin_poll(o, 5000), ORIGIN_OK);
    double took = check_now() - t0;
    pthread_join(th, NULL);
    CHECK(took < 2.0);
    origin_free(o);
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_nginx_stop(&web);
    test_faultsrv_stop(faults);
}

static int setup(void)
{
    if ((fixture_dir = test_scratch_dir("origin")) == NULL)
        return -1;
    atexit(teardown);
    char http[1024];
    snprintf(http, sizeof http,
             "server { listen 127.0.0.1:{PORT2}; access_log %s/proxy.log;"
             "  location / { proxy_pass http://$http_host$request_uri; } }",
             fixture_dir);
    test_nginx_config cfg = {
        .http = http,
        .tls = 1,
        .tls_client_ca = 1,
        .server = "location /slow/ { limit_rate 256k; }"
                  "location /crawl/ { limit_rate 2k; }"
                  "location = /gone { return 410; }"
                  "location = /forbidden { return 403; }"
                  "location = /teapot { return 418; }"
                  "location = /broken { return 500; }"
                  "location = /busy { add_header Retry-After 5 always; return 503; }"
                  "location = /to-file { return 302 file:///etc/passwd; }"
                  "location = /loop { return 302 /loop; }"
                  "location = /moved { return 301 /data/a.bin; }"
                  "location = /hop-same { return 302 /token/t.bin; }"
                  "location = /hop-other { return 302 http://localhost:$server_port/token/t.bin; }"
                  "location /token/ { if ($http_x_dopa_token != \"secret\") { return 403; } }"
                  "location /private/ { if ($ssl_client_verify != SUCCESS) { return 403; } }",
    };
    if (test_nginx_start(&web, fixture_dir, &cfg) != 0)
        return -1;
    char dir[1024];
    const char *subdirs[] = {"data", "slow", "crawl", "token", "private"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        snprintf(dir, sizeof dir, "%s/%s", web.root, subdirs[i]);
        mkdir(dir, 0755);
    }
    if (test_nginx_put(&web, "data/a.bin", SIZE_A, SEED_A) != 0 ||
        test_nginx_put(&web, "token/t.bin", 1000, 12) != 0 ||
        test_nginx_put(&web, "private/p.bin", 1000, 11) != 0)
        return -1;
    faults = test_faultsrv_start();
    return faults != NULL ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_probe_learns_size_and_validators),
                         CASE(test_ranges_at_odd_offsets_match_the_file),
                         CASE(test_many_concurrent_ranges_share_four_connections),
                         CASE(test_fetch_to_end_without_known_size),
                         CASE(test_resume_checks_known_validators),
                         CASE(test_file_replaced_mid_download_is_detected),
                         CASE(test_http_errors_are_classified),
                         CASE(test_range_beyond_the_end_is_permanent),
                         CASE(test_slow_server_completes),
                         CASE(test_stalled_transfer_fails_as_transient),
                         CASE(test_redirects_only_to_http),
                         CASE(test_file_urls),
                         CASE(test_connection_closed_mid_body_is_transient),
                         CASE(test_more_than_asked_is_cut_at_the_range_end),
                         CASE(test_wrong_content_range_is_refused),
                         CASE(test_server_ignoring_ranges),
                         CASE(test_short_responses_are_continued),
                         CASE(test_chunked_bodies),
                         CASE(test_changing_validators_are_detected),
                         CASE(test_https_http2_and_certificates),
                         CASE(test_client_certificate),
                         CASE(test_proxy_modes),
                         CASE(test_custom_headers_are_sent),
                         CASE(test_rate_limits_per_transfer_and_overall),
                         CASE(test_the_overall_rate_limit_changes_under_way),
                         CASE(test_cancel_stops_every_callback),
                         CASE(test_sink_can_abort),
                         CASE(test_empty_file),
                         CASE(test_bad_arguments_are_refused),
                         CASE(test_connection_refused_is_transient),
                         CASE(test_messages_hide_credentials_and_query),
                         CASE(test_refusal_while_throttled_stops_the_data),
                         CASE(test_responses_longer_than_their_range_are_refused),
                         CASE(test_if_range_is_sent_with_the_right_validator),
                         CASE(test_validator_change_between_short_responses),
                         CASE(test_retry_after_as_a_date),
                         CASE(test_files_that_end_where_the_server_says),
                         CASE(test_redirect_to_another_host_drops_custom_headers),
                         CASE(test_callbacks_may_cancel_close_but_not_poll),
                         CASE(test_file_urls_chunked_throttled_and_changed),
                         CASE(test_overall_connection_limit),
                         CASE(test_wakeup_ends_a_poll_early),
                         {0},
                     });
}
