/*
 * The SQLite store on its own: every stored field of jobs, files, ranges and
 * pieces survives a close and store_load, in creation order; updating a job
 * or a file never cascades into what hangs off it; deletes, piece clears and
 * rollbacks leave exactly what they should; rows damaged behind the store's
 * back (written here with the sqlite3 API) are counted and drop their job
 * only; the schema is versioned and a foreign file is refused.
 */
#include <sqlite3.h>
#include <stdarg.h>

#include "../check.h"
#include "agent.h"

/* The damage table below spells the limits out in SQL. */
_Static_assert(DOPA_NAME_MAX == 256, "the damage table assumes DOPA_NAME_MAX");
_Static_assert(DOPA_DESCRIPTION_MAX == 1024, "the damage table assumes DOPA_DESCRIPTION_MAX");
_Static_assert(DOPA_MESSAGE_MAX == 511, "the damage table assumes DOPA_MESSAGE_MAX");
_Static_assert(DOPA_PROXY_MAX == 1024, "the damage table assumes DOPA_PROXY_MAX");

static validate_secret_key *publisher;

/* Everything a case holds is released by after_case, passed or failed. */
static store *S;
static sqlite3 *R; /* a raw connection beside (or instead of) the store */
static agent_job **loaded;
static size_t n_loaded;
static agent_job *made[96];
static size_t n_made;

static void free_loaded(void)
{
    for (size_t i = 0; i < n_loaded; i++)
        agent_job_free(loaded[i]);
    free(loaded);
    loaded = NULL;
    n_loaded = 0;
}

static void after_case(void)
{
    store_close(S);
    S = NULL;
    sqlite3_close(R);
    R = NULL;
    free_loaded();
    while (n_made > 0)
        agent_job_free(made[--n_made]);
}

/* ------------------------------------------------------------------ */
/* The store                                                          */

static void open_store(const char *path)
{
    validate_error why = {0};
    store_close(S);
    S = NULL;
    int err = store_open(path, &S, &why);
    if (err != DOPA_OK)
        fprintf(stderr, "  store_open: %s\n", why.text);
    CHECK_INT(err, DOPA_OK);
    CHECK(S != NULL);
}

static void close_store(void)
{
    store_close(S);
    S = NULL;
}

/* Loads into `loaded`; returns the number of jobs and sets *damaged. */
static size_t load(size_t *damaged)
{
    validate_error why = {0};
    size_t dmg = 12345;
    free_loaded();
    int err = store_load(S, &loaded, &n_loaded, &dmg, &why);
    if (err != DOPA_OK)
        fprintf(stderr, "  store_load: %s\n", why.text);
    CHECK_INT(err, DOPA_OK);
    *damaged = dmg;
    return n_loaded;
}

/* Loads and insists that nothing was damaged. */
static size_t load_clean(void)
{
    size_t damaged;
    size_t n = load(&damaged);
    CHECK_INT(damaged, 0);
    return n;
}

/* ------------------------------------------------------------------ */
/* A raw connection                                                   */

static void raw_open(const char *path)
{
    sqlite3_close(R);
    R = NULL;
    int rc = sqlite3_open_v2(path, &R, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  sqlite3_open_v2: %s\n", R ? sqlite3_errmsg(R) : "no memory");
    CHECK_INT(rc, SQLITE_OK);
    sqlite3_busy_timeout(R, 5000);
}

static void raw_close(void)
{
    CHECK_INT(sqlite3_close(R), SQLITE_OK);
    R = NULL;
}

static int raw_try(const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(R, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  %.300s: %s\n", sql, msg ? msg : sqlite3_errmsg(R));
    sqlite3_free(msg);
    return rc;
}

static void raw_exec(const char *sql)
{
    CHECK_INT(raw_try(sql), SQLITE_OK);
}

static void raw_execf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void raw_execf(const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    raw_exec(sql);
}

/* The first column of the one row a query gives. */
static long long raw_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long raw_int(const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(R, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  %s: %s\n", sql, sqlite3_errmsg(R));
    CHECK_INT(rc, SQLITE_OK);
    rc = sqlite3_step(st);
    long long v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    CHECK_INT(rc, SQLITE_ROW);
    return v;
}

static void raw_text(const char *sql, char *out, size_t len)
{
    sqlite3_stmt *st = NULL;
    CHECK_INT(sqlite3_prepare_v2(R, sql, -1, &st, NULL), SQLITE_OK);
    int rc = sqlite3_step(st);
    const unsigned char *t = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    snprintf(out, len, "%s", t ? (const char *)t : "");
    sqlite3_finalize(st);
    CHECK_INT(rc, SQLITE_ROW);
}

/* X'tttt...' for a job whose id is 16 bytes of `tag` (four at a time). */
static const char *id_sql(uint8_t tag)
{
    static char bufs[4][40];
    static unsigned next;
    char *buf = bufs[next++ % 4];
    snprintf(buf, sizeof bufs[0], "X'");
    for (int i = 0; i < 16; i++)
        snprintf(buf + 2 + 2 * i, 3, "%02X", tag);
    snprintf(buf + 34, sizeof bufs[0] - 34, "'");
    return buf;
}

/* Rows of `table` that belong to the job tagged `tag`. */
static long long rows_of(const char *table, uint8_t tag)
{
    return raw_int("SELECT count(*) FROM %s WHERE %s = %s", table,
                   strcmp(table, "jobs") == 0 ? "id" : "job", id_sql(tag));
}

/* ------------------------------------------------------------------ */
/* Jobs and files to store                                            */

static agent_job *new_job(uint8_t tag, uint64_t seq)
{
    CHECK(n_made < sizeof made / sizeof made[0]);
    agent_job *j = agent_job_new();
    CHECK(j != NULL);
    made[n_made++] = j;
    memset(j->id.bytes, tag, sizeof j->id.bytes);
    j->seq = seq;
    j->owner = 1000;
    snprintf(j->name, sizeof j->name, "job %02x", tag);
    j->created = j->modified = 1700000000000 + (int64_t)seq;
    return j;
}

static agent_file *new_file(agent_job *j, const char *url)
{
    agent_file *f = agent_file_new();
    CHECK(f != NULL);
    agent_file **grown = realloc(j->files, (j->n_files + 1) * sizeof *grown);
    if (grown == NULL)
        agent_file_free(f);
    CHECK(grown != NULL);
    j->files = grown;
    f->job = j;
    f->index = (uint32_t)j->n_files;
    j->files[j->n_files++] = f;
    char path[256], tmp[512];
    snprintf(path, sizeof path, "/srv/dopa/%02x/file %u", j->id.bytes[0], f->index);
    CHECK_INT(fileops_temp_name(path, &j->id, f->index, tmp, sizeof tmp), 0);
    f->url = strdup(url);
    f->path = strdup(path);
    f->tmp_path = strdup(tmp);
    CHECK(f->url != NULL && f->path != NULL && f->tmp_path != NULL);
    return f;
}

static void set_ranges(agent_file *f, const dopa_range *ranges, size_t n)
{
    free(f->ranges);
    f->ranges = malloc(n * sizeof *ranges);
    CHECK(f->ranges != NULL);
    memcpy(f->ranges, ranges, n * sizeof *ranges);
    f->n_ranges = n;
}

/* A real manifest, signed by `publisher`, for `len` bytes in 64 KiB pieces;
 * the file takes its size from it, as add_file does. */
static void attach_manifest(agent_file *f, size_t len)
{
    uint8_t *content = malloc(len);
    CHECK(content != NULL);
    for (size_t i = 0; i < len; i++)
        content[i] = (uint8_t)(i * 31 + len);
    validate_digester *dg = NULL;
    validate_digest d = {0};
    int err = validate_digester_new(VALIDATE_PIECE_SIZE_MIN, &dg);
    if (err == VALIDATE_OK)
        err = validate_digester_update(dg, content, len);
    if (err == VALIDATE_OK)
        err = validate_digester_finish(dg, &d);
    validate_digester_free(dg);
    free(content);
    validate_manifest *m = NULL;
    if (err == VALIDATE_OK)
        err = validate_manifest_sign(&d, 7, VALIDATE_NEVER_EXPIRES, publisher, &m);
    validate_digest_clear(&d);
    CHECK_INT(err, VALIDATE_OK);
    f->manifest = m;
    f->manifest_bytes = malloc(m->encoded_len);
    CHECK(f->manifest_bytes != NULL);
    memcpy(f->manifest_bytes, m->encoded, m->encoded_len);
    f->manifest_len = m->encoded_len;
    memcpy(f->sha256, m->sha256, sizeof f->sha256);
    f->has_sha256 = 1;
    CHECK_INT(agent_file_set_size(f, m->file_size), DOPA_OK);
}

static void mark(agent_file *f, const uint64_t *pieces, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pieces_set_durable(&f->pieces, pieces[i]);
}

/* The done pieces of a file, as the engine hands them to the store. */
static size_t done_pieces(const agent_file *f, uint64_t *out, size_t cap)
{
    size_t n = 0;
    for (uint64_t p = 0; p < f->pieces.count; p++)
        if ((pieces_state(&f->pieces, p) == PIECE_DURABLE)) {
            CHECK(n < cap);
            out[n++] = p;
        }
    return n;
}

/* Stores a job with its files, ranges and done pieces, in one transaction. */
static void put_all(const agent_job *j)
{
    int err = store_begin(S);
    if (err == DOPA_OK)
        err = store_put_job(S, j);
    for (size_t i = 0; err == DOPA_OK && i < j->n_files; i++) {
        const agent_file *f = j->files[i];
        uint64_t pieces[64];
        size_t n = done_pieces(f, pieces, 64);
        err = store_put_file(S, f);
        if (err == DOPA_OK)
            err = store_add_pieces(S, f, pieces, n);
    }
    if (err == DOPA_OK)
        err = store_commit(S);
    if (err != DOPA_OK)
        fprintf(stderr, "  storing job %02x: %s\n", j->id.bytes[0], store_error(S));
    CHECK_INT(err, DOPA_OK);
}

/* Three files that between them use every column: one with a manifest and
 * some pieces, one with two finite ranges and a piece, one of unknown size. */
static agent_job *standard_job(uint8_t tag, uint64_t seq)
{
    agent_job *j = new_job(tag, seq);
    agent_file *f0 = new_file(j, "https://example.test/signed.bin");
    attach_manifest(f0, 200000); /* 4 pieces of 64 KiB */
    snprintf(f0->etag, sizeof f0->etag, "\"etag-%02x\"", tag);
    mark(f0, (const uint64_t[]){0, 1}, 2);

    agent_file *f1 = new_file(j, "http://example.test/ranged.bin");
    set_ranges(f1, (const dopa_range[]){{0, 100000}, {200000, 100000}}, 2);
    CHECK_INT(agent_file_set_size(f1, 200000), DOPA_OK); /* one piece of 1 MiB */
    f1->remote_size = 300000;
    mark(f1, (const uint64_t[]){0}, 1);

    new_file(j, "file:///srv/origin/unknown.bin");
    return j;
}

/* ------------------------------------------------------------------ */
/* Comparing what was stored with what came back                      */

static void check_same_file(const agent_file *want, const agent_file *got, const agent_job *parent)
{
    CHECK(got->job == parent);
    CHECK_INT(got->index, want->index);
    CHECK_STR(got->url, want->url);
    CHECK_STR(got->path, want->path);
    CHECK_STR(got->tmp_path, want->tmp_path);
    CHECK_INT(got->remote_size, want->remote_size);
    CHECK_STR(got->etag, want->etag);
    CHECK_STR(got->last_modified, want->last_modified);
    CHECK_INT(got->has_sha256, want->has_sha256);
    if (want->has_sha256)
        CHECK(memcmp(got->sha256, want->sha256, sizeof got->sha256) == 0);
    CHECK_INT(got->manifest_len, want->manifest_len);
    if (want->manifest_bytes != NULL) {
        CHECK(got->manifest_bytes != NULL);
        CHECK(memcmp(got->manifest_bytes, want->manifest_bytes, want->manifest_len) == 0);
        CHECK(got->manifest != NULL);
        CHECK_INT(got->manifest->file_size, want->manifest->file_size);
        CHECK_INT(got->manifest->piece_size, want->manifest->piece_size);
        CHECK_INT(got->manifest->content_version, want->manifest->content_version);
        CHECK(memcmp(got->manifest->content_id, want->manifest->content_id,
                     sizeof got->manifest->content_id) == 0);
        CHECK(memcmp(got->manifest->key_id, validate_secret_key_public(publisher)->id,
                     VALIDATE_KEY_ID_BYTES) == 0);
    } else {
        CHECK(got->manifest_bytes == NULL);
        CHECK(got->manifest == NULL);
    }
    CHECK_INT(got->size, want->size);
    CHECK_INT(got->pieces.piece_size, want->pieces.piece_size);
    CHECK_INT(got->pieces.count, want->pieces.count);
    CHECK_INT(got->pieces.n[PIECE_DURABLE], want->pieces.n[PIECE_DURABLE]);
    CHECK_INT(got->pieces.bytes[PIECE_DURABLE], want->pieces.bytes[PIECE_DURABLE]);
    for (uint64_t p = 0; p < want->pieces.count; p++)
        CHECK_INT((pieces_state(&got->pieces, p) == PIECE_DURABLE),
                  (pieces_state(&want->pieces, p) == PIECE_DURABLE));
    CHECK_INT(got->transferred, want->transferred);
    CHECK_INT(got->completed, want->completed);
    CHECK_INT(got->bad_pieces, want->bad_pieces);
    CHECK_INT(got->ident.dir_dev, want->ident.dir_dev);
    CHECK_INT(got->ident.dir_ino, want->ident.dir_ino);
    CHECK_INT(got->ident.file_dev, want->ident.file_dev);
    CHECK_INT(got->ident.file_ino, want->ident.file_ino);
    CHECK_INT(got->from_origin, want->from_origin);
    CHECK_INT(got->from_peers, want->from_peers);
    CHECK_INT(got->from_cache, want->from_cache);
    CHECK_INT(got->validation, want->validation);
    CHECK_INT(got->origin_only, want->origin_only);
    CHECK_INT(got->n_ranges, want->n_ranges);
    for (size_t i = 0; i < want->n_ranges; i++) {
        CHECK_INT(got->ranges[i].offset, want->ranges[i].offset);
        CHECK_INT(got->ranges[i].length, want->ranges[i].length);
    }
    /* Transfer state starts afresh. */
    CHECK_INT(got->fd, -1);
    CHECK_INT(got->pieces.n_written, 0);
}

static void check_same_job(const agent_job *want, const agent_job *got)
{
    CHECK(memcmp(got->id.bytes, want->id.bytes, sizeof got->id.bytes) == 0);
    CHECK_INT(got->seq, want->seq);
    CHECK_INT(got->owner, want->owner);
    CHECK_INT(got->type, want->type);
    CHECK_INT(got->state, want->state);
    CHECK_INT(got->priority, want->priority);
    CHECK_STR(got->name, want->name);
    CHECK_STR(got->description, want->description);
    CHECK_INT(got->created, want->created);
    CHECK_INT(got->modified, want->modified);
    CHECK_INT(got->completed, want->completed);
    CHECK_INT(got->error_count, want->error_count);
    CHECK_INT(got->has_error, want->has_error);
    CHECK_INT(got->error.context, want->error.context);
    CHECK_INT(got->error.code, want->error.code);
    CHECK_INT(got->error.file, want->error.file);
    CHECK_INT(got->error.http_status, want->error.http_status);
    CHECK_STR(got->error.message, want->error.message);
    CHECK_INT(got->retry_delay, want->retry_delay);
    CHECK_INT(got->no_progress_timeout, want->no_progress_timeout);
    CHECK_INT(got->proxy_usage, want->proxy_usage);
    CHECK_STR(got->proxy, want->proxy);
    CHECK_STR(got->bypass, want->bypass);
    CHECK_INT(got->from_origin, want->from_origin);
    CHECK_INT(got->from_peers, want->from_peers);
    CHECK_INT(got->from_cache, want->from_cache);
    CHECK_INT(got->uploaded, want->uploaded);
    CHECK_INT(got->file_user, want->file_user);
    CHECK_INT(got->no_progress_wall, want->no_progress_wall);
    CHECK_INT(got->notify_flags, want->notify_flags);
    CHECK_INT(got->notify_cmd_len, want->notify_cmd_len);
    if (want->notify_cmd_len > 0)
        CHECK(got->notify_cmd != NULL &&
              memcmp(got->notify_cmd, want->notify_cmd, want->notify_cmd_len) == 0);
    CHECK_INT(got->validation_timeout, want->validation_timeout);
    CHECK_INT(got->validation_default_valid, want->validation_default_valid);
    CHECK_INT(got->n_files, want->n_files);
    for (size_t i = 0; i < want->n_files; i++)
        check_same_file(want->files[i], got->files[i], got);
}

static const agent_job *loaded_job(uint8_t tag)
{
    for (size_t i = 0; i < n_loaded; i++)
        if (loaded[i]->id.bytes[0] == tag)
            return loaded[i];
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Round trips and updates                                            */

static void fill(char *out, size_t n, char c)
{
    memset(out, c, n);
    out[n] = '\0';
}

static void test_every_field_survives_a_reopen_in_creation_order(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);

    /* Job A: every field set, strings at their longest. */
    agent_job *a = new_job(0x01, 30);
    a->owner = UINT32_MAX - 1;
    a->type = DOPA_JOB_DOWNLOAD;
    a->state = DOPA_STATE_TRANSIENT_ERROR;
    a->priority = DOPA_PRIORITY_FOREGROUND;
    fill(a->name, DOPA_NAME_MAX - 2, 'n');
    memcpy(a->name + DOPA_NAME_MAX - 2, "\xc3\xa9", 3); /* ends in a two-byte é */
    fill(a->description, DOPA_DESCRIPTION_MAX, 'd');
    memcpy(a->description, "line one\nline\ttwo", 17);
    a->created = 1700000000123;
    a->modified = 1700000999456;
    a->completed = 1700001000789;
    a->error_count = 42;
    a->has_error = 1;
    a->error.context = DOPA_CONTEXT_VALIDATION;
    a->error.code = -123456;
    a->error.file = 2;
    a->error.http_status = 404;
    fill(a->error.message, DOPA_MESSAGE_MAX, 'm');
    a->retry_delay = 61;
    a->no_progress_timeout = UINT32_MAX;
    a->proxy_usage = DOPA_PROXY_OVERRIDE;
    fill(a->proxy, DOPA_PROXY_MAX, 'p');
    memcpy(a->proxy, "http://proxy.test:3128", 22);
    snprintf(a->bypass, sizeof a->bypass, "localhost;*.internal;10.0.0.0/8");
    a->from_origin = 5000000000123ull;
    a->from_peers = 77;
    a->from_cache = (uint64_t)INT64_MAX;
    a->uploaded = 31337;
    a->file_user = 4242; /* its creator, after root took the job over */
    a->no_progress_wall = 1700000999000;
    a->notify_flags = DOPA_NOTIFY_ALL;
    static const char cmd[] = "/usr/bin/printf\0%s\\n\0\0with space";
    a->notify_cmd = malloc(sizeof cmd);
    memcpy(a->notify_cmd, cmd, sizeof cmd);
    a->notify_cmd_len = sizeof cmd; /* four arguments, one empty */
    CHECK_INT(agent_notify_cmd_count(a->notify_cmd, a->notify_cmd_len), 4);
    a->validation_timeout = UINT32_MAX;
    a->validation_default_valid = 1;

    /* File 0: a signed manifest, SHA-256, validators, two of four pieces. */
    agent_file *f = new_file(a, "https://example.test/a/signed.bin?x=1&y=%20");
    f->ident = (fileops_ident){
        .dir_dev = 2049, .dir_ino = 1234567, .file_dev = 2049, .file_ino = (uint64_t)INT64_MAX};
    f->from_origin = 123456789;
    f->from_peers = 987654321;
    f->from_cache = 5;
    attach_manifest(f, 4 * 65536 - 17);
    f->remote_size = 4 * 65536 - 17;
    snprintf(f->etag, sizeof f->etag, "W/\"abc\\\"def\"");
    fill(f->last_modified, sizeof f->last_modified - 1, 'l');
    memcpy(f->last_modified, "Wed, 21 Oct 2015 07:28:00 GMT", 29);
    f->bad_pieces = 3;
    f->validation = DOPA_VALIDATION_PENDING;
    f->origin_only = 1;
    mark(f, (const uint64_t[]){0, 3}, 2);

    /* File 1: ranges, the last to the end of the file: size unknown. */
    f = new_file(a, "http://example.test/a/ranged.bin");
    set_ranges(f, (const dopa_range[]){{0, 1000}, {4096, DOPA_LENGTH_TO_EOF}}, 2);
    CHECK_INT(f->size, DOPA_SIZE_UNKNOWN);

    /* File 2: 3 MiB + 5 bytes, every piece done, transferred and completed. */
    f = new_file(a, "file:///srv/origin/whole.bin");
    f->remote_size = 3 * 1048576 + 5;
    CHECK_INT(agent_file_set_size(f, (uint64_t)f->remote_size), DOPA_OK);
    CHECK_INT(f->pieces.count, 4);
    mark(f, (const uint64_t[]){0, 1, 2, 3}, 4);
    memset(f->sha256, 0xab, sizeof f->sha256);
    f->has_sha256 = 1;
    f->transferred = 1;
    f->completed = 1;
    f->bad_pieces = UINT32_MAX;

    /* File 3: empty, which is transferred with no pieces at all. */
    f = new_file(a, "https://example.test/a/empty");
    f->remote_size = 0;
    CHECK_INT(agent_file_set_size(f, 0), DOPA_OK);
    f->transferred = 1;

    /* Job B: defaults and no files. Job C: finite ranges with a known size. */
    agent_job *b = new_job(0x02, 10);
    agent_job *c = new_job(0x03, 20);
    c->state = DOPA_STATE_QUEUED;
    c->priority = DOPA_PRIORITY_LOW;
    c->proxy_usage = DOPA_PROXY_NONE;
    f = new_file(c, "https://example.test/c");
    set_ranges(f, (const dopa_range[]){{10, 20}, {100, 2 * 1048576}}, 2);
    CHECK_INT(agent_file_set_size(f, 20 + 2 * 1048576), DOPA_OK);
    mark(f, (const uint64_t[]){2}, 1);

    /* Stored in an order that is neither their seq order nor their id order. */
    put_all(a);
    put_all(c);
    put_all(b);
    close_store();

    open_store(db);
    CHECK_INT(load_clean(), 3);
    check_same_job(b, loaded[0]);
    check_same_job(c, loaded[1]);
    check_same_job(a, loaded[2]);
    CHECK_INT(loaded[2]->files[1]->ranges[1].length, DOPA_LENGTH_TO_EOF);
    CHECK_INT(loaded[2]->files[0]->pieces.bytes[PIECE_DURABLE], 65536 + (65536 - 17));

    /* Loading twice gives the same again. */
    CHECK_INT(load_clean(), 3);
    check_same_job(a, loaded[2]);
}

static void test_an_empty_store_loads_no_jobs(void)
{
    open_store(check_path("dopa.db"));
    CHECK_INT(load_clean(), 0);
}

static void test_updating_a_job_keeps_its_files_ranges_and_pieces(void)
{
    /* An earlier store wrote jobs with INSERT OR REPLACE, whose delete
     * cascaded into the job's files, ranges and pieces. */
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x10, 1);
    put_all(j);

    j->state = DOPA_STATE_ERROR;
    snprintf(j->name, sizeof j->name, "renamed");
    j->error_count = 9;
    j->from_origin = 123456;
    CHECK_INT(store_put_job(S, j), DOPA_OK); /* outside a transaction */
    CHECK_INT(store_begin(S), DOPA_OK);
    j->priority = DOPA_PRIORITY_HIGH;
    CHECK_INT(store_put_job(S, j), DOPA_OK); /* and inside one */
    CHECK_INT(store_commit(S), DOPA_OK);

    raw_open(db);
    CHECK_INT(rows_of("jobs", 0x10), 1);
    CHECK_INT(rows_of("files", 0x10), 3);
    CHECK_INT(rows_of("ranges", 0x10), 2);
    CHECK_INT(rows_of("pieces", 0x10), 3);
    raw_close();

    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
}

static void test_updating_a_file_keeps_its_pieces_and_replaces_its_ranges(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x11, 1);
    put_all(j);

    /* New validators on file 0; file 1 loses a range (its piece stays). */
    agent_file *f0 = j->files[0], *f1 = j->files[1];
    snprintf(f0->etag, sizeof f0->etag, "\"v2\"");
    snprintf(f0->last_modified, sizeof f0->last_modified, "Thu, 01 Jan 2026 00:00:00 GMT");
    f0->bad_pieces = 1;
    f0->remote_size = (int64_t)f0->size;
    CHECK_INT(store_put_file(S, f0), DOPA_OK);
    set_ranges(f1, (const dopa_range[]){{0, 200000}}, 1);
    CHECK_INT(store_put_file(S, f1), DOPA_OK);

    raw_open(db);
    CHECK_INT(rows_of("files", 0x11), 3);
    CHECK_INT(rows_of("ranges", 0x11), 1);
    CHECK_INT(rows_of("pieces", 0x11), 3);
    raw_close();

    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
    CHECK_INT(loaded[0]->files[0]->pieces.n[PIECE_DURABLE], 2);
    CHECK_INT(loaded[0]->files[1]->pieces.n[PIECE_DURABLE], 1);
    CHECK_INT(loaded[0]->files[1]->n_ranges, 1);
}

static void test_adding_a_piece_twice_is_harmless(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x12, 1);
    put_all(j);
    agent_file *f0 = j->files[0];
    CHECK_INT(store_add_pieces(S, f0, (const uint64_t[]){1, 2, 2}, 3), DOPA_OK);
    mark(f0, (const uint64_t[]){2}, 1);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
    CHECK_INT(loaded[0]->files[0]->pieces.n[PIECE_DURABLE], 3);
}

/* ------------------------------------------------------------------ */
/* Deletes, piece clears, transactions                                */

static void test_deleting_a_job_removes_its_files_ranges_and_pieces(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *gone = standard_job(0x20, 1), *kept = standard_job(0x21, 2);
    put_all(gone);
    put_all(kept);
    CHECK_INT(store_delete_job(S, &gone->id), DOPA_OK);
    /* Deleting what is not there is not an error. */
    CHECK_INT(store_delete_job(S, &gone->id), DOPA_OK);

    raw_open(db);
    CHECK_INT(rows_of("jobs", 0x20), 0);
    CHECK_INT(rows_of("files", 0x20), 0);
    CHECK_INT(rows_of("ranges", 0x20), 0);
    CHECK_INT(rows_of("pieces", 0x20), 0);
    CHECK_INT(rows_of("jobs", 0x21), 1);
    CHECK_INT(rows_of("files", 0x21), 3);
    CHECK_INT(rows_of("ranges", 0x21), 2);
    CHECK_INT(rows_of("pieces", 0x21), 3);
    raw_close();

    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(kept, loaded[0]);
}

static void test_clearing_pieces_touches_only_that_file(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x22, 1), *other = standard_job(0x23, 2);
    put_all(j);
    put_all(other);

    CHECK_INT(store_clear_pieces(S, j->files[0]), DOPA_OK);
    agent_file_clear_pieces(j->files[0]);

    raw_open(db);
    CHECK_INT(raw_int("SELECT count(*) FROM pieces WHERE job = %s AND file = 0", id_sql(0x22)), 0);
    CHECK_INT(raw_int("SELECT count(*) FROM pieces WHERE job = %s AND file = 1", id_sql(0x22)), 1);
    /* The same file index of another job keeps its pieces. */
    CHECK_INT(raw_int("SELECT count(*) FROM pieces WHERE job = %s AND file = 0", id_sql(0x23)), 2);
    CHECK_INT(rows_of("files", 0x22), 3);
    CHECK_INT(rows_of("ranges", 0x22), 2);
    raw_close();

    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 2);
    check_same_job(j, loaded_job(0x22));
    check_same_job(other, loaded_job(0x23));
    CHECK_INT(loaded_job(0x22)->files[0]->pieces.n[PIECE_DURABLE], 0);
    CHECK_INT(loaded_job(0x22)->files[1]->pieces.n[PIECE_DURABLE], 1);
}

static void test_a_rolled_back_transaction_leaves_nothing_behind(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x30, 1);
    CHECK_INT(store_begin(S), DOPA_OK);
    CHECK_INT(store_put_job(S, j), DOPA_OK);
    for (size_t i = 0; i < j->n_files; i++)
        CHECK_INT(store_put_file(S, j->files[i]), DOPA_OK);
    CHECK_INT(store_add_pieces(S, j->files[0], (const uint64_t[]){0, 1}, 2), DOPA_OK);
    store_rollback(S);

    CHECK_INT(load_clean(), 0);
    raw_open(db);
    CHECK_INT(raw_int("SELECT count(*) FROM jobs"), 0);
    CHECK_INT(raw_int("SELECT count(*) FROM files"), 0);
    CHECK_INT(raw_int("SELECT count(*) FROM ranges"), 0);
    CHECK_INT(raw_int("SELECT count(*) FROM pieces"), 0);
    raw_close();

    /* The store is usable afterwards, and a commit does stick. */
    put_all(j);
    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
}

static void test_a_rolled_back_update_or_delete_keeps_the_old_rows(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x31, 1);
    put_all(j);

    agent_job *changed = standard_job(0x31, 1);
    changed->state = DOPA_STATE_CANCELLED;
    snprintf(changed->name, sizeof changed->name, "changed");
    snprintf(changed->files[0]->etag, sizeof changed->files[0]->etag, "\"changed\"");
    CHECK_INT(store_begin(S), DOPA_OK);
    CHECK_INT(store_put_job(S, changed), DOPA_OK);
    CHECK_INT(store_put_file(S, changed->files[0]), DOPA_OK);
    CHECK_INT(store_clear_pieces(S, changed->files[1]), DOPA_OK);
    CHECK_INT(store_add_pieces(S, changed->files[0], (const uint64_t[]){3}, 1), DOPA_OK);
    store_rollback(S);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);

    CHECK_INT(store_begin(S), DOPA_OK);
    CHECK_INT(store_delete_job(S, &j->id), DOPA_OK);
    store_rollback(S);
    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
}

static void test_a_commit_is_visible_to_another_connection_at_once(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    raw_open(db);
    agent_job *j = standard_job(0x32, 1);
    CHECK_INT(store_begin(S), DOPA_OK);
    CHECK_INT(store_put_job(S, j), DOPA_OK);
    CHECK_INT(rows_of("jobs", 0x32), 0); /* not before the commit */
    CHECK_INT(store_commit(S), DOPA_OK);
    CHECK_INT(rows_of("jobs", 0x32), 1);
}

/* ------------------------------------------------------------------ */
/* Damaged rows                                                       */

/* One way to damage the victim job, whose id is written $V. Every victim
 * is a standard_job: file 0 has a manifest (4 pieces, 0 and 1 done), file 1
 * two finite ranges (1 piece, done), file 2 an unknown size. */
struct damage {
    const char *what;
    const char *sql;
};

static const struct damage damages[] = {
    /* Job rows. */
    {"a job id that is not 16 bytes",
     "PRAGMA ignore_check_constraints = ON; UPDATE jobs SET id = X'BBBB' WHERE id = $V;"
     "PRAGMA ignore_check_constraints = OFF"},
    {"a job id stored as text", "UPDATE jobs SET id = '0123456789abcdef' WHERE id = $V"},
    {"a state of 99", "UPDATE jobs SET state = 99 WHERE id = $V"},
    {"a negative state", "UPDATE jobs SET state = -1 WHERE id = $V"},
    {"a state stored as text", "UPDATE jobs SET state = 'queued' WHERE id = $V"},
    {"a state stored as a real", "UPDATE jobs SET state = 2.5 WHERE id = $V"},
    {"a priority of 7", "UPDATE jobs SET priority = 7 WHERE id = $V"},
    {"a type other than download", "UPDATE jobs SET type = 1 WHERE id = $V"},
    {"an owner beyond 32 bits", "UPDATE jobs SET owner = 4294967296 WHERE id = $V"},
    {"a negative seq", "UPDATE jobs SET seq = -1 WHERE id = $V"},
    {"a has_error of 2", "UPDATE jobs SET has_error = 2 WHERE id = $V"},
    {"an unknown error context", "UPDATE jobs SET err_context = 6 WHERE id = $V"},
    {"an error file below -1", "UPDATE jobs SET err_file = -2 WHERE id = $V"},
    {"an HTTP status of 1000", "UPDATE jobs SET err_http = 1000 WHERE id = $V"},
    {"an error code beyond 32 bits", "UPDATE jobs SET err_code = 2147483648 WHERE id = $V"},
    {"an error count beyond 32 bits", "UPDATE jobs SET error_count = 4294967296 WHERE id = $V"},
    {"a retry delay beyond 32 bits", "UPDATE jobs SET retry_delay = 4294967296 WHERE id = $V"},
    {"a proxy usage of 3", "UPDATE jobs SET proxy_usage = 3 WHERE id = $V"},
    {"a negative byte counter", "UPDATE jobs SET from_peers = -1 WHERE id = $V"},
    {"a negative upload counter", "UPDATE jobs SET uploaded = -1 WHERE id = $V"},
    {"a negative creation time", "UPDATE jobs SET created = -1 WHERE id = $V"},
    {"a name longer than DOPA_NAME_MAX",
     "UPDATE jobs SET name = replace(hex(zeroblob(257)), '00', 'n') WHERE id = $V"},
    {"a name with a NUL byte inside",
     "UPDATE jobs SET name = CAST(X'6a6f6200626164' AS TEXT) WHERE id = $V"},
    {"a name stored as a blob", "UPDATE jobs SET name = X'6a6f62' WHERE id = $V"},
    {"a description longer than DOPA_DESCRIPTION_MAX",
     "UPDATE jobs SET description = replace(hex(zeroblob(1025)), '00', 'd') WHERE id = $V"},
    {"an error message longer than DOPA_MESSAGE_MAX",
     "UPDATE jobs SET err_message = replace(hex(zeroblob(512)), '00', 'm') WHERE id = $V"},
    {"a proxy longer than DOPA_PROXY_MAX",
     "UPDATE jobs SET proxy = replace(hex(zeroblob(1025)), '00', 'p') WHERE id = $V"},
    {"a bypass list with a NUL byte inside",
     "UPDATE jobs SET bypass = CAST(X'6c6f63616c00' AS TEXT) WHERE id = $V"},
    /* File rows. */
    {"a file whose manifest blob is garbage",
     "UPDATE files SET manifest = X'00112233445566778899' WHERE job = $V AND idx = 0"},
    {"a file of unknown size whose manifest blob is garbage",
     "UPDATE files SET manifest = X'00112233445566778899' WHERE job = $V AND idx = 2"},
    {"a file whose manifest is cut short",
     "UPDATE files SET manifest = substr(manifest, 1, length(manifest) - 1) "
     "WHERE job = $V AND idx = 0"},
    {"a file whose manifest has a byte changed in its header",
     "UPDATE files SET manifest = CAST(X'00' || substr(manifest, 2) AS BLOB) "
     "WHERE job = $V AND idx = 0"},
    {"a file whose manifest is stored as text",
     "UPDATE files SET manifest = 'manifest' WHERE job = $V AND idx = 0"},
    {"a file whose size is not its manifest's",
     "UPDATE files SET size = size + 1 WHERE job = $V AND idx = 0"},
    {"a file whose sha256 is 31 bytes",
     "UPDATE files SET sha256 = zeroblob(31) WHERE job = $V AND idx = 0"},
    {"a file whose sha256 is empty", "UPDATE files SET sha256 = X'' WHERE job = $V AND idx = 0"},
    {"a file whose idx leaves a gap (0 then 2)",
     "DELETE FROM files WHERE job = $V AND idx = 1; DELETE FROM ranges WHERE job = $V AND file = 1;"
     "DELETE FROM pieces WHERE job = $V AND file = 1"},
    {"files that do not start at idx 0", "DELETE FROM files WHERE job = $V AND idx = 0"},
    {"a negative file idx", "UPDATE files SET idx = -1 WHERE job = $V AND idx = 2"},
    {"a relative destination path",
     "UPDATE files SET path = 'srv/file' WHERE job = $V AND idx = 1"},
    {"an empty temporary path", "UPDATE files SET tmp_path = '' WHERE job = $V AND idx = 1"},
    {"a url stored as a blob", "UPDATE files SET url = X'68747470' WHERE job = $V AND idx = 1"},
    {"a url longer than DOPA_URL_MAX",
     "UPDATE files SET url = 'http://' || replace(hex(zeroblob(8186)), '00', 'u') "
     "WHERE job = $V AND idx = 1"},
    {"an etag of 256 bytes",
     "UPDATE files SET etag = replace(hex(zeroblob(256)), '00', 'e') WHERE job = $V AND idx = 1"},
    {"a last-modified of 64 bytes",
     "UPDATE files SET last_modified = replace(hex(zeroblob(64)), '00', 'l') "
     "WHERE job = $V AND idx = 1"},
    {"a piece size that disagrees with the size",
     "UPDATE files SET piece_size = 65536 WHERE job = $V AND idx = 1"},
    {"a piece size above the maximum",
     "UPDATE files SET piece_size = 33554432 WHERE job = $V AND idx = 2"},
    {"a size of -2", "UPDATE files SET size = -2 WHERE job = $V AND idx = 2"},
    {"a size no piece size can cover",
     "UPDATE files SET size = 4611686018427387904 WHERE job = $V AND idx = 2"},
    {"a remote size of -2", "UPDATE files SET remote_size = -2 WHERE job = $V AND idx = 2"},
    {"a transferred flag of 2", "UPDATE files SET transferred = 2 WHERE job = $V AND idx = 1"},
    {"a negative bad-piece count", "UPDATE files SET bad_pieces = -1 WHERE job = $V AND idx = 1"},
    {"a file marked transferred but missing pieces",
     "UPDATE files SET transferred = 1 WHERE job = $V AND idx = 0"},
    {"a validation state of 4", "UPDATE files SET validation = 4 WHERE job = $V AND idx = 1"},
    {"an origin-only flag of 2", "UPDATE files SET origin_only = 2 WHERE job = $V AND idx = 1"},
    /* Notification settings. */
    {"notify flags beyond the known ones", "UPDATE jobs SET notify_flags = 32 WHERE id = $V"},
    {"a notify command that is not a full path",
     "UPDATE jobs SET notify_cmd = CAST('bin/true' || char(0) AS BLOB) WHERE id = $V"},
    {"a notify command without its final NUL",
     "UPDATE jobs SET notify_cmd = CAST('/bin/true' AS BLOB) WHERE id = $V"},
    {"a notify command stored as text",
     "UPDATE jobs SET notify_cmd = '/bin/true' || char(0) WHERE id = $V"},
    {"an empty notify command", "UPDATE jobs SET notify_cmd = X'' WHERE id = $V"},
    {"a notify command of 33 arguments",
     "UPDATE jobs SET notify_cmd = CAST('/bin/true' || char(0) || "
     "replace(hex(zeroblob(32)), '00', 'a' || char(0)) AS BLOB) WHERE id = $V"},
    {"a default verdict of 2", "UPDATE jobs SET validation_default = 2 WHERE id = $V"},
    {"a negative validation timeout", "UPDATE jobs SET validation_timeout = -1 WHERE id = $V"},
    /* Range rows. */
    {"a range of length 0", "UPDATE ranges SET length = 0 WHERE job = $V AND file = 1 AND idx = 1"},
    {"ranges whose idx leaves a gap",
     "UPDATE ranges SET idx = 2 WHERE job = $V AND file = 1 AND idx = 1"},
    {"a range offset stored as text",
     "UPDATE ranges SET offset = 'zero' WHERE job = $V AND file = 1 AND idx = 0"},
    {"a range for a file the job does not have", "INSERT INTO ranges VALUES ($V, 3, 0, 0, 10)"},
    /* Piece rows. */
    {"a piece index beyond the file's piece count", "INSERT INTO pieces VALUES ($V, 0, 4)"},
    {"a piece far beyond the file's piece count",
     "INSERT INTO pieces VALUES ($V, 0, 9223372036854775807)"},
    {"a piece for a file whose size is unknown (-1)", "INSERT INTO pieces VALUES ($V, 2, 0)"},
    {"a negative piece index", "INSERT INTO pieces VALUES ($V, 0, -1)"},
    {"a piece for a file the job does not have", "INSERT INTO pieces VALUES ($V, 3, 0)"},
    {"a piece index stored as text", "INSERT INTO pieces VALUES ($V, 0, 'one')"},
};

#define N_DAMAGES (sizeof damages / sizeof damages[0])

/* The damage's SQL with $V replaced by the victim's id. */
static void apply_damage(const struct damage *d, uint8_t victim)
{
    char sql[1024];
    size_t o = 0;
    for (const char *p = d->sql; *p != '\0' && o + 40 < sizeof sql;) {
        if (p[0] == '$' && p[1] == 'V') {
            o += (size_t)snprintf(sql + o, sizeof sql - o, "%s", id_sql(victim));
            p += 2;
        } else {
            sql[o++] = *p++;
        }
    }
    sql[o] = '\0';
    int rc = raw_try(sql);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  (the damage \"%s\" did not apply)\n", d->what);
    CHECK_INT(rc, SQLITE_OK);
}

/* For each damage, a database with a healthy job and a damaged one: the
 * damaged one is dropped and counted, the healthy one loads as it was.
 * Returns how many damages were not handled so (each printed). */
static int run_damages(const struct damage *list, size_t n, const char *prefix)
{
    int failures = 0;
    agent_job *healthy = standard_job(0xAA, 1), *victim = standard_job(0xBB, 2);
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s-%zu.db", prefix, i);
        const char *db = check_path(name);
        open_store(db);
        put_all(healthy);
        put_all(victim);
        close_store();
        raw_open(db);
        apply_damage(&list[i], 0xBB);
        raw_close();
        open_store(db);
        size_t damaged;
        size_t got = load(&damaged);
        int ok = got == 1 && damaged == 1 && loaded[0]->id.bytes[0] == 0xAA;
        if (ok)
            check_same_job(healthy, loaded[0]);
        else {
            fprintf(stderr, "  %s: %zu job(s) loaded, %zu counted damaged; expected 1 and 1\n",
                    list[i].what, got, damaged);
            failures++;
        }
        free_loaded();
        close_store();
    }
    return failures;
}

static void test_each_kind_of_damaged_row_drops_only_its_job(void)
{
    /* The undamaged pair loads whole. */
    const char *db = check_path("clean.db");
    open_store(db);
    agent_job *healthy = standard_job(0xAA, 1), *victim = standard_job(0xBB, 2);
    put_all(healthy);
    put_all(victim);
    close_store();
    open_store(db);
    CHECK_INT(load_clean(), 2);
    check_same_job(healthy, loaded[0]);
    check_same_job(victim, loaded[1]);
    close_store();

    CHECK_INT(run_damages(damages, N_DAMAGES, "damage"), 0);
}

static void test_every_damaged_job_is_counted_once(void)
{
    /* All the damages at once, one victim each, around two healthy jobs:
     * each victim counts once however many of its rows fail. */
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *first = standard_job(0xA0, 0), *last = standard_job(0xAF, 1000);
    put_all(first);
    for (size_t i = 0; i < N_DAMAGES; i++)
        put_all(standard_job((uint8_t)(0x10 + i), 10 + i));
    put_all(standard_job(0x90, 500));
    put_all(last);
    close_store();

    raw_open(db);
    for (size_t i = 0; i < N_DAMAGES; i++)
        apply_damage(&damages[i], (uint8_t)(0x10 + i));
    /* And one job damaged in a file, a range and a piece at once. */
    static const struct damage thrice[] = {
        {"garbage manifest", "UPDATE files SET manifest = X'00' WHERE job = $V AND idx = 0"},
        {"empty range", "UPDATE ranges SET length = 0 WHERE job = $V AND file = 1"},
        {"piece out of range", "INSERT INTO pieces VALUES ($V, 1, 7)"},
    };
    for (size_t i = 0; i < 3; i++)
        apply_damage(&thrice[i], 0x90);
    raw_close();

    open_store(db);
    size_t damaged;
    CHECK_INT(load(&damaged), 2);
    CHECK_INT(damaged, N_DAMAGES + 1);
    check_same_job(first, loaded[0]);
    check_same_job(last, loaded[1]);
}

static void test_orphan_rows_are_ignored(void)
{
    /* Rows that belong to no job (possible only with foreign keys off) are
     * not anybody's damage. */
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x40, 1);
    put_all(j);
    close_store();
    raw_open(db);
    raw_execf("INSERT INTO files SELECT %s, idx, url, path, tmp_path, remote_size, etag, "
              "last_modified, sha256, manifest, size, piece_size, transferred, completed, "
              "bad_pieces, dir_dev, dir_ino, file_dev, file_ino, from_origin, from_peers, "
              "from_cache, validation, origin_only "
              "FROM files WHERE job = %s",
              id_sql(0x41), id_sql(0x40));
    raw_execf("INSERT INTO ranges VALUES (%s, 0, 0, 0, 0)", id_sql(0x42));
    raw_execf("INSERT INTO pieces VALUES (%s, 0, 99)", id_sql(0x42));
    raw_exec("INSERT INTO pieces VALUES (X'00', 0, 0)");
    raw_close();
    open_store(db);
    CHECK_INT(load_clean(), 1);
    check_same_job(j, loaded[0]);
}

static void test_an_empty_manifest_blob_is_damaged(void)
{
    /* A zero-length blob reads back as a NULL pointer: must not be copied
     * from or parsed as if it were a manifest. */
    static const struct damage empty[] = {
        {"a file whose manifest is an empty blob",
         "UPDATE files SET manifest = X'' WHERE job = $V AND idx = 0"},
        {"a file without a size whose manifest is an empty blob",
         "UPDATE files SET manifest = X'', size = -1 WHERE job = $V AND idx = 2"},
    };
    CHECK_INT(run_damages(empty, sizeof empty / sizeof empty[0], "empty"), 0);
}

static void test_a_transferred_file_of_unknown_size_is_damaged(void)
{
    /* The engine marks a file transferred only once its size is known and
     * every piece is done; a row that says otherwise would let Complete
     * move an unchecked temporary file into place. */
    static const struct damage unknown[] = {
        {"a file of unknown size marked transferred",
         "UPDATE files SET transferred = 1 WHERE job = $V AND idx = 2"},
    };
    CHECK_INT(run_damages(unknown, 1, "unknown"), 0);
}

static void test_ranges_add_file_refuses_are_damaged(void)
{
    /* The store checks rows "as strictly as a message from outside": ranges
     * that add_file (check_ranges) refuses must not load either. File 1's
     * ranges are {0, 100000} and {200000, 100000}; file 0 has a manifest. */
    static const struct damage ranges[] = {
        {"a range to the end of the file that is not the last",
         "UPDATE ranges SET length = -1 WHERE job = $V AND file = 1 AND idx = 0"},
        {"overlapping ranges",
         "UPDATE ranges SET offset = 50000 WHERE job = $V AND file = 1 AND idx = 1"},
        {"ranges out of order",
         "UPDATE ranges SET offset = 300000 WHERE job = $V AND file = 1 AND idx = 0"},
        {"a range that runs past 2^64",
         "UPDATE ranges SET offset = -100 WHERE job = $V AND file = 1 AND idx = 1"},
        {"a file with both a manifest and ranges", "INSERT INTO ranges VALUES ($V, 0, 0, 0, 1000)"},
    };
    CHECK_INT(run_damages(ranges, sizeof ranges / sizeof ranges[0], "ranges"), 0);
}

/* ------------------------------------------------------------------ */
/* The schema and the file                                            */

static void test_a_fresh_database_gets_the_current_schema_in_wal_mode(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    close_store();
    raw_open(db);
    CHECK_INT(raw_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    char mode[32];
    raw_text("PRAGMA journal_mode", mode, sizeof mode);
    CHECK_STR(mode, "wal");
    CHECK_INT(raw_int("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
                      "('jobs', 'files', 'ranges', 'pieces', 'notifications')"),
              5);
}

static void test_reopening_keeps_the_version_and_the_jobs(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    agent_job *j = standard_job(0x50, 1);
    put_all(j);
    for (int i = 0; i < 3; i++) {
        close_store();
        open_store(db);
        CHECK_INT(load_clean(), 1);
        check_same_job(j, loaded[0]);
    }
    close_store();
    raw_open(db);
    CHECK_INT(raw_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
}

static void test_a_version_1_database_is_brought_up_to_date(void)
{
    /* As dopad 0.1.0 left it (tests/agent/fixtures/store-v1.sql). */
    FILE *f = fopen(STORE_V1_SQL, "r");
    CHECK(f != NULL);
    static char sql[16384];
    sql[fread(sql, 1, sizeof sql - 1, f)] = '\0';
    fclose(f);
    const char *db = check_path("old.db");
    fclose(fopen(db, "w")); /* (an empty file is an empty database) */
    raw_open(db);
    raw_exec(sql);
    raw_close();

    open_store(db);
    CHECK_INT(load_clean(), 1);
    const agent_job *j = loaded[0];
    CHECK_STR(j->name, "old job");
    CHECK_INT(j->owner, 1000);
    CHECK_INT(j->notify_flags, DOPA_NOTIFY_DEFAULT);
    CHECK_INT(j->notify_cmd_len, 0);
    CHECK_INT(j->validation_timeout, DOPA_DEFAULT_VALIDATION_TIMEOUT);
    CHECK_INT(j->validation_default_valid, 0);
    CHECK_INT(j->n_files, 1);
    CHECK_INT(j->files[0]->validation, DOPA_VALIDATION_NONE);
    CHECK_INT(j->files[0]->origin_only, 0);
    CHECK_INT(j->files[0]->pieces.n[PIECE_DURABLE], 1);
    CHECK((pieces_state(&j->files[0]->pieces, 1) == PIECE_DURABLE));
    /* And it takes what version 2 writes. */
    CHECK_INT(store_add_notification(S, 1, &j->id, 1, -1), DOPA_OK);
    free_loaded();
    close_store();
    raw_open(db);
    CHECK_INT(raw_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    CHECK_INT(raw_int("SELECT count(*) FROM notifications"), 1);
}

static void test_a_newer_schema_is_refused(void)
{
    const char *db = check_path("dopa.db");
    open_store(db);
    put_all(standard_job(0x51, 1));
    close_store();
    raw_open(db);
    raw_execf("PRAGMA user_version = %d", STORE_SCHEMA_VERSION + 1);
    raw_close();

    validate_error why = {0};
    store *s = NULL;
    CHECK(store_open(db, &s, &why) != DOPA_OK);
    CHECK(s == NULL);
    CHECK_HAS(why.text, "newer");

    /* Refused, not touched: the version and the rows are as they were. */
    raw_open(db);
    CHECK_INT(raw_int("PRAGMA user_version"), STORE_SCHEMA_VERSION + 1);
    CHECK_INT(rows_of("jobs", 0x51), 1);
}

static void test_a_file_that_is_not_a_database_is_refused_untouched(void)
{
    const char *db = check_path("dopa.db");
    char text[4096];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = "this is not a database\n"[i % 23];
    FILE *fp = fopen(db, "wb");
    CHECK(fp != NULL);
    CHECK_INT(fwrite(text, 1, sizeof text, fp), sizeof text);
    CHECK_INT(fclose(fp), 0);

    validate_error why = {0};
    store *s = NULL;
    CHECK(store_open(db, &s, &why) != DOPA_OK);
    CHECK(s == NULL);
    CHECK_HAS(why.text, "not a database");

    char back[sizeof text + 1];
    fp = fopen(db, "rb");
    CHECK(fp != NULL);
    size_t n = fread(back, 1, sizeof back, fp);
    fclose(fp);
    CHECK_INT(n, sizeof text);
    CHECK(memcmp(back, text, sizeof text) == 0);
}

static void test_a_database_that_claims_the_version_without_its_tables_is_refused(void)
{
    const char *db = check_path("dopa.db");
    CHECK_INT(sqlite3_open(db, &R), SQLITE_OK);
    raw_execf("CREATE TABLE unrelated (x); PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
    raw_close();

    validate_error why = {0};
    store *s = NULL;
    CHECK(store_open(db, &s, &why) != DOPA_OK);
    CHECK(s == NULL);
    CHECK_HAS(why.text, "no such table");
}

static void test_a_path_that_cannot_be_opened_is_refused(void)
{
    const char *db = check_path("missing/dir/dopa.db");
    validate_error why = {0};
    store *s = NULL;
    CHECK(store_open(db, &s, &why) != DOPA_OK);
    CHECK(s == NULL);
    CHECK_HAS(why.text, db);
}

struct seen_note {
    uint64_t id;
    dopa_id job;
    int kind;
    int32_t file;
};
static struct seen_note notes[8];
static size_t n_notes;

static void on_note(void *ctx, uint64_t id, const dopa_id *job, int kind, int32_t file)
{
    (void)ctx;
    if (n_notes < 8)
        notes[n_notes] = (struct seen_note){id, *job, kind, file};
    n_notes++;
}

static void test_notifications_survive_a_reopen_and_go_with_their_job(void)
{
    const char *db = check_path("dopa.db");
    validate_error why = {0};
    open_store(db);
    agent_job *a = standard_job(0xA1, 1), *b = standard_job(0xB2, 2);
    put_all(a);
    put_all(b);
    CHECK_INT(store_add_notification(S, 7, &a->id, 1, -1), DOPA_OK);
    CHECK_INT(store_add_notification(S, 9, &b->id, 4, 1), DOPA_OK);
    CHECK_INT(store_add_notification(S, 12, &a->id, 2, -1), DOPA_OK);
    CHECK_INT(store_add_notification(S, 13, &b->id, 1, -1), DOPA_OK);
    CHECK_INT(store_delete_notification(S, 12), DOPA_OK); /* delivered */
    close_store();

    /* Garbage rows are skipped, not fatal. */
    raw_open(db);
    CHECK_INT(raw_try("INSERT INTO notifications VALUES (20, X'A1', 1, -1)"), SQLITE_OK);
    CHECK_INT(
        raw_try("INSERT INTO notifications VALUES (21, (SELECT id FROM jobs LIMIT 1), 9, -1)"),
        SQLITE_OK);
    CHECK_INT(raw_try("INSERT INTO notifications VALUES (22, (SELECT id FROM jobs LIMIT 1), 1, "
                      "5000)"),
              SQLITE_OK);
    raw_close();

    open_store(db);
    n_notes = 0;
    CHECK_INT(store_load_notifications(S, on_note, NULL, &why), DOPA_OK);
    CHECK_INT(n_notes, 3);
    CHECK_INT(notes[0].id, 7);
    CHECK(memcmp(notes[0].job.bytes, a->id.bytes, 16) == 0);
    CHECK_INT(notes[0].kind, 1);
    CHECK_INT(notes[0].file, -1);
    CHECK_INT(notes[1].id, 9);
    CHECK(memcmp(notes[1].job.bytes, b->id.bytes, 16) == 0);
    CHECK_INT(notes[1].kind, 4);
    CHECK_INT(notes[1].file, 1);
    CHECK_INT(notes[2].id, 13);

    /* Deleting a job takes its notifications along. */
    CHECK_INT(store_delete_job(S, &b->id), DOPA_OK);
    n_notes = 0;
    CHECK_INT(store_load_notifications(S, on_note, NULL, &why), DOPA_OK);
    CHECK_INT(n_notes, 1);
    CHECK_INT(notes[0].id, 7);
    close_store();
}

static const struct check_case cases[] = {
    CASE(test_every_field_survives_a_reopen_in_creation_order),
    CASE(test_an_empty_store_loads_no_jobs),
    CASE(test_updating_a_job_keeps_its_files_ranges_and_pieces),
    CASE(test_updating_a_file_keeps_its_pieces_and_replaces_its_ranges),
    CASE(test_adding_a_piece_twice_is_harmless),
    CASE(test_deleting_a_job_removes_its_files_ranges_and_pieces),
    CASE(test_clearing_pieces_touches_only_that_file),
    CASE(test_a_rolled_back_transaction_leaves_nothing_behind),
    CASE(test_a_rolled_back_update_or_delete_keeps_the_old_rows),
    CASE(test_a_commit_is_visible_to_another_connection_at_once),
    CASE(test_each_kind_of_damaged_row_drops_only_its_job),
    CASE(test_every_damaged_job_is_counted_once),
    CASE(test_orphan_rows_are_ignored),
    CASE(test_a_fresh_database_gets_the_current_schema_in_wal_mode),
    CASE(test_reopening_keeps_the_version_and_the_jobs),
    CASE(test_a_version_1_database_is_brought_up_to_date),
    CASE(test_a_newer_schema_is_refused),
    CASE(test_a_file_that_is_not_a_database_is_refused_untouched),
    CASE(test_a_database_that_claims_the_version_without_its_tables_is_refused),
    CASE(test_a_path_that_cannot_be_opened_is_refused),
    CASE(test_notifications_survive_a_reopen_and_go_with_their_job),
    /* Gaps in store_load's checks. The last one reads a NULL blob pointer,
     * which UBSan stops the program on, so it goes last. */
    CASE(test_a_transferred_file_of_unknown_size_is_damaged),
    CASE(test_ranges_add_file_refuses_are_damaged),
    CASE(test_an_empty_manifest_blob_is_damaged),
    {0}};

int main(int argc, char **argv)
{
    if (validate_secret_key_generate(&publisher) != VALIDATE_OK) {
        fprintf(stderr, "cannot generate a publisher key\n");
        return 1;
    }
    check_cleanup = after_case;
    int rc = check_run(argc, argv, cases);
    validate_secret_key_free(publisher);
    return rc;
}
