/*
 * Fuzz target: the store read back from SQLite (store_open, store_load,
 * store_load_notifications in agent/daemon/store.c). The input is SQL, run
 * statement by statement (a failing one is skipped) on a fresh database of
 * the current schema, behind the store's back, as a damaged disk, an older
 * or newer dopad or a careless admin could leave it: hostile values in any
 * column, rows that contradict each other, tables dropped and made again
 * without their constraints, another schema version. Then the store opens
 * and loads it.
 *
 * Opening may refuse the database; loading may refuse it or drop jobs as
 * damaged. What loads must hold the invariants the engine relies on, and
 * must be what the store itself writes: stored into a fresh database and
 * loaded again, nothing is damaged and a second round stores the same rows.
 * Nothing may leak on any path (ASan's leak check).
 *
 * Only statements that change rows, tables and user_version may run: the
 * authorizer refuses ATTACH, VACUUM INTO and other ways to touch files
 * outside the database, and nondeterministic functions; a progress handler
 * bounds each input's work.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__asan_default_options(void);

/* Each input opens SQLite connections whose page caches come and go; with
 * ASan's default quarantine (256 MiB) each allocation touches fresh pages
 * and the kernel's page faults take most of the time. */
const char *__asan_default_options(void)
{
    return "quarantine_size_mb=16";
}

/* SQLite's VM steps per input, and the longest string or blob it may
 * make: enough for thousands of rows and for values far beyond every
 * limit of the store. */
#define FUZZ_STEPS_MAX  4000000
#define FUZZ_LENGTH_MAX (4 << 20)

static char dir[256];
static char db_path[300], copy_path[300];
static uint8_t *pristine; /* a fresh database file of the current schema */
static size_t pristine_len;
static long steps;

static void remove_db(const char *path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    char p[320];
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

static void cleanup(void)
{
    remove_db(db_path);
    remove_db(copy_path);
    rmdir(dir);
    free(pristine);
}

/* Writes the pristine database to path, replacing what was there. */
static void fresh_db(const char *path)
{
    remove_db(path);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(pristine, 1, pristine_len, f) != pristine_len || fclose(f) != 0)
        abort();
}

static void setup(void)
{
    /* tmpfs when there is one: the store asks for fsyncs. */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/dopa-fuzz-store.%ld", base ? base : "/tmp", (long)getpid());
    if (mkdir(dir, 0700) != 0)
        abort();
    snprintf(db_path, sizeof db_path, "%s/dopa.db", dir);
    snprintf(copy_path, sizeof copy_path, "%s/copy.db", dir);
    atexit(cleanup);

    store *s;
    validate_error why = {0};
    if (store_open(db_path, &s, &why) != DOPA_OK) {
        fprintf(stderr, "fuzz_store: %s\n", why.text);
        abort();
    }
    store_close(s); /* the last connection folds the WAL into the file */
    FILE *f = fopen(db_path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0 ||
        (pristine = malloc((size_t)st.st_size)) == NULL ||
        fread(pristine, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        abort();
    pristine_len = (size_t)st.st_size;
    fclose(f);
}

/* ------------------------------------------------------------------ */
/* The damage: the input's SQL on a raw connection                    */

static int authorize(void *ctx, int action, const char *a, const char *b, const char *db,
                     const char *trigger)
{
    (void)ctx, (void)db, (void)trigger;
    switch (action) {
    case SQLITE_INSERT:
    case SQLITE_UPDATE:
    case SQLITE_DELETE:
    case SQLITE_READ:
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
    case SQLITE_CREATE_TABLE:
    case SQLITE_DROP_TABLE:
    case SQLITE_CREATE_INDEX:
    case SQLITE_DROP_INDEX:
    case SQLITE_REINDEX: /* (asked when an index is made) */
    case SQLITE_ALTER_TABLE:
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        return a != NULL && sqlite3_stricmp(a, "user_version") == 0 ? SQLITE_OK : SQLITE_DENY;
    case SQLITE_FUNCTION: {
        /* Runs must replay: nothing random or read from the clock. */
        static const char *const denied[] = {"random",   "randomblob", "date",
                                             "time",     "datetime",   "julianday",
                                             "strftime", "unixepoch",  "load_extension"};
        for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++)
            if (b != NULL && sqlite3_stricmp(b, denied[i]) == 0)
                return SQLITE_DENY;
        return SQLITE_OK;
    }
    default:
        return SQLITE_DENY;
    }
}

static int progress(void *ctx)
{
    (void)ctx;
    return ++steps > FUZZ_STEPS_MAX / 1000;
}

static void damage(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        abort();
    sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
    sqlite3_limit(db, SQLITE_LIMIT_LENGTH, FUZZ_LENGTH_MAX);
    sqlite3_set_authorizer(db, authorize, NULL);
    sqlite3_progress_handler(db, 1000, progress, NULL);
    steps = 0;
    const char *tail = sql;
    while (*tail != '\0' && steps <= FUZZ_STEPS_MAX / 1000) {
        sqlite3_stmt *st = NULL;
        const char *next = NULL;
        if (sqlite3_prepare_v2(db, tail, -1, &st, &next) != SQLITE_OK) {
            /* Skip to the next statement after a syntax error. */
            const char *semi = strchr(tail, ';');
            if (semi == NULL)
                break;
            tail = semi + 1;
            continue;
        }
        while (st != NULL && sqlite3_step(st) == SQLITE_ROW)
            ;
        sqlite3_finalize(st);
        if (next == NULL || next == tail)
            break;
        tail = next;
    }
    /* What a transaction left open wrote counts too: a database is
     * whatever was committed, however it came about. */
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (sqlite3_close(db) != SQLITE_OK)
        abort();
}

/* ------------------------------------------------------------------ */
/* What a loaded job must hold                                        */

/* Pieces read back from the store are durable, the others missing. */
static int map_consistent(const piece_map *m)
{
    uint64_t durable = 0, bytes = 0;
    for (uint64_t i = 0; i < m->count; i++) {
        int state = pieces_state(m, i);
        if (state != PIECE_DURABLE && state != PIECE_MISSING)
            return 0;
        if (state == PIECE_DURABLE) {
            durable++;
            bytes += pieces_length(m, i);
        }
    }
    return durable == m->n[PIECE_DURABLE] && bytes == m->bytes[PIECE_DURABLE] &&
           m->n[PIECE_MISSING] + durable == m->count;
}

static void check_file(const agent_job *j, const agent_file *f, uint32_t index)
{
    char expect[DOPA_PATH_MAX + 64];
    validate_error why = {0};
    if (f->job != j || f->index != index || f->url == NULL || f->path == NULL ||
        f->tmp_path == NULL || strlen(f->url) > DOPA_URL_MAX || f->path[0] != '/' ||
        strlen(f->path) > DOPA_PATH_MAX)
        abort();
    /* The temporary file is the one Cancel may remove: only the name
     * add-file gave it beside the destination. */
    if (fileops_temp_name(f->path, &j->id, f->index, expect, sizeof expect) != 0 ||
        strcmp(expect, f->tmp_path) != 0)
        abort();
    if (f->validation < DOPA_VALIDATION_NONE || f->validation > DOPA_VALIDATION_INVALID ||
        (f->origin_only & ~1) != 0 || (f->transferred & ~1) != 0 || (f->completed & ~1) != 0)
        abort();
    if (f->n_ranges > DOPA_MAX_RANGES ||
        (f->n_ranges > 0 && agent_ranges_check(f->ranges, f->n_ranges, &why) != 0))
        abort();
    if (f->manifest_bytes != NULL && (f->manifest == NULL || f->n_ranges > 0))
        abort();
    if (f->size == DOPA_SIZE_UNKNOWN) {
        if (f->pieces.n[PIECE_DURABLE] != 0 || f->transferred || f->completed)
            abort();
        return;
    }
    if (!validate_piece_size_ok(f->pieces.piece_size) ||
        f->pieces.count != validate_piece_count(f->size, f->pieces.piece_size) ||
        f->pieces.count > VALIDATE_MAX_PIECES || f->pieces.state == NULL ||
        !map_consistent(&f->pieces) || f->pieces.n[PIECE_DURABLE] > f->pieces.count ||
        f->pieces.bytes[PIECE_DURABLE] > f->size ||
        (f->manifest != NULL &&
         (f->manifest->file_size != f->size || f->manifest->piece_size != f->pieces.piece_size)))
        abort();
    if ((f->transferred || f->completed) && f->pieces.n[PIECE_DURABLE] != f->pieces.count)
        abort();
}

static void check_job(const agent_job *j)
{
    if (j->type != DOPA_JOB_DOWNLOAD || j->state < DOPA_STATE_QUEUED ||
        j->state > DOPA_STATE_CANCELLED || j->priority < DOPA_PRIORITY_FOREGROUND ||
        j->priority > DOPA_PRIORITY_LOW || j->proxy_usage < DOPA_PROXY_SYSTEM ||
        j->proxy_usage > DOPA_PROXY_OVERRIDE || j->error.context < DOPA_CONTEXT_NONE ||
        j->error.context > DOPA_CONTEXT_VALIDATION || (j->has_error & ~1) != 0 ||
        (j->notify_flags & ~DOPA_NOTIFY_ALL) != 0 || j->n_files > DOPA_MAX_FILES ||
        j->error.file < -1 || j->error.file >= (int)j->n_files ||
        (j->validation_default_valid & ~1) != 0 || j->created < 0 || j->modified < 0)
        abort();
    if (strlen(j->name) > DOPA_NAME_MAX || strlen(j->description) > DOPA_DESCRIPTION_MAX ||
        strlen(j->error.message) > DOPA_MESSAGE_MAX || strlen(j->proxy) > DOPA_PROXY_MAX ||
        strlen(j->bypass) > DOPA_PROXY_MAX)
        abort();
    if ((j->notify_cmd == NULL) != (j->notify_cmd_len == 0) ||
        (j->notify_cmd != NULL && agent_notify_cmd_count(j->notify_cmd, j->notify_cmd_len) == 0))
        abort();
    for (size_t i = 0; i < j->n_files; i++)
        check_file(j, j->files[i], (uint32_t)i);
}

static void check_notification(void *ctx, uint64_t id, const dopa_id *job, int kind, int32_t file)
{
    (void)ctx, (void)job;
    if (id == 0 || id > INT64_MAX || kind < PROTO_EVENT_JOB_TRANSFERRED ||
        kind > PROTO_EVENT_FILE_TRANSFERRED || file < -1 || file >= DOPA_MAX_FILES)
        abort();
}

/* ------------------------------------------------------------------ */
/* Round trip: what loads is what the store writes                    */

static void free_jobs(agent_job **jobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        agent_job_free(jobs[i]);
    free(jobs);
}

/* Stores jobs as the engine would: each job with its files, ranges and
 * done pieces (the pieces stored before are cleared), in one transaction. */
static void store_all(store *s, agent_job **jobs, size_t n)
{
    if (store_begin(s) != DOPA_OK)
        abort();
    for (size_t i = 0; i < n; i++) {
        const agent_job *j = jobs[i];
        if (store_put_job(s, j) != DOPA_OK)
            abort();
        for (size_t k = 0; k < j->n_files; k++) {
            const agent_file *f = j->files[k];
            if (store_put_file(s, f) != DOPA_OK || store_clear_pieces(s, f) != DOPA_OK)
                abort();
            for (uint64_t p = 0; p < f->pieces.count; p++)
                if (pieces_state(&f->pieces, p) == PIECE_DURABLE &&
                    store_add_pieces(s, f, &p, 1) != DOPA_OK)
                    abort();
        }
    }
    if (store_commit(s) != DOPA_OK)
        abort();
}

/* Every row of the store's tables (in key order, each value with its
 * type and length) in one buffer of *len bytes. */
static uint8_t *dump(sqlite3 *db, size_t *len)
{
    static const char *const queries[] = {
        "SELECT * FROM jobs ORDER BY id",
        "SELECT * FROM files ORDER BY job, idx",
        "SELECT * FROM ranges ORDER BY job, file, idx",
        "SELECT * FROM pieces ORDER BY job, file, piece",
    };
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (size_t q = 0; q < sizeof queries / sizeof queries[0]; q++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, queries[q], -1, &st, NULL) != SQLITE_OK)
            abort();
        while (sqlite3_step(st) == SQLITE_ROW) {
            for (int c = 0; c < sqlite3_column_count(st); c++) {
                int type = sqlite3_column_type(st, c);
                sqlite3_int64 v = sqlite3_column_int64(st, c);
                const void *bytes = type == SQLITE_TEXT   ? (const void *)sqlite3_column_text(st, c)
                                    : type == SQLITE_BLOB ? sqlite3_column_blob(st, c)
                                                          : &v;
                size_t b = type == SQLITE_TEXT || type == SQLITE_BLOB
                               ? (size_t)sqlite3_column_bytes(st, c)
                               : sizeof v;
                if (n + 1 + sizeof b + b > cap) {
                    cap = 2 * (n + 1 + sizeof b + b);
                    if ((buf = realloc(buf, cap)) == NULL)
                        abort();
                }
                buf[n++] = (uint8_t)type;
                memcpy(buf + n, &b, sizeof b);
                n += sizeof b;
                if (b > 0)
                    memcpy(buf + n, bytes, b);
                n += b;
            }
        }
        sqlite3_finalize(st);
    }
    *len = n;
    return buf;
}

/* Jobs that loaded, stored into a fresh database, load again without
 * damage; storing what loaded the second time changes no row. */
static void round_trip(agent_job **jobs, size_t n)
{
    store *s;
    sqlite3 *db;
    agent_job **again;
    size_t n_again, damaged, len_a, len_b;
    validate_error why = {0};
    fresh_db(copy_path);
    if (store_open(copy_path, &s, &why) != DOPA_OK)
        abort();
    store_all(s, jobs, n);
    if (store_load(s, &again, &n_again, &damaged, &why) != DOPA_OK || damaged != 0 ||
        n_again != n || sqlite3_open_v2(copy_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        abort();
    uint8_t *a = dump(db, &len_a);
    store_all(s, again, n_again);
    uint8_t *b = dump(db, &len_b);
    if (len_a != len_b || (len_a > 0 && memcmp(a, b, len_a) != 0))
        abort();
    free(a);
    free(b);
    sqlite3_close(db);
    free_jobs(again, n_again);
    store_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (pristine == NULL)
        setup();
    char *sql = malloc(size + 1);
    if (sql == NULL)
        return 0;
    memcpy(sql, data, size);
    sql[size] = '\0';
    fresh_db(db_path);
    damage(db_path, sql);
    free(sql);

    store *s;
    validate_error why = {0};
    if (store_open(db_path, &s, &why) != DOPA_OK)
        return 0; /* refused: a newer schema, a foreign table */
    agent_job **jobs = NULL;
    size_t n = 0, damaged = 0;
    if (store_load(s, &jobs, &n, &damaged, &why) == DOPA_OK) {
        for (size_t i = 0; i < n; i++)
            check_job(jobs[i]);
        if (n > 0)
            round_trip(jobs, n);
        free_jobs(jobs, n);
    }
    store_load_notifications(s, check_notification, NULL, &why);
    store_close(s);
    return 0;
}
