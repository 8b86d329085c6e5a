/*
 * The store: every job, file, range and done piece in SQLite (WAL,
 * synchronous=FULL), with a versioned schema. The engine writes through it
 * inside transactions; store_load reads everything back at start and checks
 * each row as strictly as a message from outside, since a damaged database
 * must not crash dopad or let it write where it should not.
 */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

struct store {
    sqlite3 *db;
    sqlite3_stmt *put_job, *delete_job, *put_file, *delete_ranges, *put_range, *add_piece,
        *clear_pieces, *add_note, *delete_note, *begin, *commit, *rollback;
};

/* Schema migrations: entry i brings a database from version i to i + 1. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE jobs ("
    "  id BLOB PRIMARY KEY CHECK (length(id) = 16),"
    "  seq INTEGER NOT NULL, owner INTEGER NOT NULL, type INTEGER NOT NULL,"
    "  state INTEGER NOT NULL, priority INTEGER NOT NULL,"
    "  name TEXT NOT NULL, description TEXT NOT NULL,"
    "  created INTEGER NOT NULL, modified INTEGER NOT NULL, completed INTEGER NOT NULL,"
    "  error_count INTEGER NOT NULL, has_error INTEGER NOT NULL, err_context INTEGER NOT NULL,"
    "  err_code INTEGER NOT NULL, err_file INTEGER NOT NULL, err_http INTEGER NOT NULL,"
    "  err_message TEXT NOT NULL, retry_delay INTEGER NOT NULL,"
    "  no_progress_timeout INTEGER NOT NULL, proxy_usage INTEGER NOT NULL,"
    "  proxy TEXT NOT NULL, bypass TEXT NOT NULL, from_origin INTEGER NOT NULL,"
    "  from_peers INTEGER NOT NULL, from_cache INTEGER NOT NULL,"
    "  file_user INTEGER NOT NULL, no_progress_since INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE files ("
    "  job BLOB NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,"
    "  url TEXT NOT NULL, path TEXT NOT NULL, tmp_path TEXT NOT NULL,"
    "  remote_size INTEGER NOT NULL, etag TEXT NOT NULL, last_modified TEXT NOT NULL,"
    "  sha256 BLOB, manifest BLOB, size INTEGER NOT NULL, piece_size INTEGER NOT NULL,"
    "  transferred INTEGER NOT NULL, completed INTEGER NOT NULL, bad_pieces INTEGER NOT NULL,"
    "  dir_dev INTEGER NOT NULL, dir_ino INTEGER NOT NULL, file_dev INTEGER NOT NULL,"
    "  file_ino INTEGER NOT NULL, from_origin INTEGER NOT NULL, from_peers INTEGER NOT NULL,"
    "  from_cache INTEGER NOT NULL,"
    "  PRIMARY KEY (job, idx)"
    ") WITHOUT ROWID;"
    "CREATE TABLE ranges ("
    "  job BLOB NOT NULL, file INTEGER NOT NULL, idx INTEGER NOT NULL,"
    "  offset INTEGER NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (job, file, idx),"
    "  FOREIGN KEY (job, file) REFERENCES files(job, idx) ON DELETE CASCADE"
    ") WITHOUT ROWID;"
    "CREATE TABLE pieces ("
    "  job BLOB NOT NULL, file INTEGER NOT NULL, piece INTEGER NOT NULL,"
    "  PRIMARY KEY (job, file, piece),"
    "  FOREIGN KEY (job, file) REFERENCES files(job, idx) ON DELETE CASCADE"
    ") WITHOUT ROWID;"
    "CREATE TABLE notifications ("
    "  id INTEGER PRIMARY KEY, job BLOB NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  event INTEGER NOT NULL, created INTEGER NOT NULL, attempts INTEGER NOT NULL"
    ");",
    /* 1 -> 2: notifications and validation. (The columns are appended
     * in the order the statements above bind them.) */
    "ALTER TABLE jobs ADD COLUMN notify_flags INTEGER NOT NULL DEFAULT 3;"
    "ALTER TABLE jobs ADD COLUMN notify_cmd BLOB;"
    "ALTER TABLE jobs ADD COLUMN validation_timeout INTEGER NOT NULL DEFAULT 600;"
    "ALTER TABLE jobs ADD COLUMN validation_default INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE files ADD COLUMN validation INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE files ADD COLUMN origin_only INTEGER NOT NULL DEFAULT 0;"
    "DROP TABLE notifications;" /* never written by version 1 */
    "CREATE TABLE notifications ("
    "  id INTEGER PRIMARY KEY, job BLOB NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  kind INTEGER NOT NULL, file INTEGER NOT NULL"
    ");"
    "CREATE INDEX notifications_job ON notifications(job);",
    /* 2 -> 3: bytes sent to peers. */
    "ALTER TABLE jobs ADD COLUMN uploaded INTEGER NOT NULL DEFAULT 0;",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "one migration per schema version");

const char *store_error(const store *s)
{
    return sqlite3_errmsg(s->db);
}

static int exec(store *s, const char *sql, validate_error *why)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        validate_error_set(why, DOPA_EINTERNAL, "%s", msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return DOPA_EINTERNAL;
    }
    return DOPA_OK;
}

static int schema_version(store *s, int *version)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return DOPA_EINTERNAL;
    int rc = sqlite3_step(st);
    *version = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? DOPA_OK : DOPA_EINTERNAL;
}

static int migrate(store *s, validate_error *why)
{
    int version;
    if (schema_version(s, &version) != DOPA_OK) {
        validate_error_set(why, DOPA_EINTERNAL, "cannot read the schema version: %s",
                           sqlite3_errmsg(s->db));
        return DOPA_EINTERNAL;
    }
    if (version > STORE_SCHEMA_VERSION) {
        return validate_error_set(why, DOPA_EINTERNAL,
                                  "the database has schema version %d, newer than this dopad "
                                  "knows (%d)",
                                  version, STORE_SCHEMA_VERSION);
    }
    if (version < 0) {
        /* Not ours (user_version is any 32-bit number), and it would
         * index the migrations from before their start. */
        validate_error_set(why, DOPA_EINTERNAL,
                           "the database has schema version %d, which no dopad writes", version);
        return DOPA_EINTERNAL;
    }
    while (version < STORE_SCHEMA_VERSION) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", version + 1);
        int err = exec(s, "BEGIN IMMEDIATE", why);
        if (err == DOPA_OK)
            err = exec(s, migrations[version], why);
        if (err == DOPA_OK)
            err = exec(s, sql, why);
        if (err == DOPA_OK)
            err = exec(s, "COMMIT", why);
        if (err != DOPA_OK) {
            exec(s, "ROLLBACK", NULL);
            return err;
        }
        version++;
    }
    return DOPA_OK;
}

static int prepare(store *s, sqlite3_stmt **st, const char *sql)
{
    return sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) == SQLITE_OK
               ? DOPA_OK
               : DOPA_EINTERNAL;
}

int store_open(const char *path, store **out, validate_error *why)
{
    store *s = calloc(1, sizeof *s);
    if (s == NULL)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        validate_error_set(why, DOPA_EINTERNAL, "%s: %s", path,
                           s->db ? sqlite3_errmsg(s->db) : "cannot open");
        store_close(s);
        return DOPA_EINTERNAL;
    }
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL with synchronous=FULL: a commit is on disk when it returns, so
     * a piece row is never ahead of its data after a crash or power loss. */
    int err =
        exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", why);
    if (err == DOPA_OK)
        err = migrate(s, why);
    if (err == DOPA_OK &&
        (prepare(s, &s->put_job,
                 /* An upsert: REPLACE would delete the row first, and the
                  * deletion would cascade into the job's files and pieces. */
                 "INSERT INTO jobs VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,"
                 "?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26,?27,?28,?29,?30,?31,?32,?33) "
                 "ON CONFLICT (id) DO UPDATE "
                 "SET seq=?2, owner=?3, type=?4, state=?5, priority=?6, name=?7, description=?8, "
                 "created=?9, modified=?10, completed=?11, error_count=?12, has_error=?13, "
                 "err_context=?14, err_code=?15, err_file=?16, err_http=?17, err_message=?18, "
                 "retry_delay=?19, no_progress_timeout=?20, proxy_usage=?21, proxy=?22, "
                 "bypass=?23, from_origin=?24, from_peers=?25, from_cache=?26, file_user=?27, "
                 "no_progress_since=?28, notify_flags=?29, notify_cmd=?30, validation_timeout=?31, "
                 "validation_default=?32, uploaded=?33") ||
         prepare(s, &s->delete_job, "DELETE FROM jobs WHERE id = ?1") ||
         /* An upsert, not INSERT OR REPLACE: replacing the row would cascade
          * into its pieces and ranges. */
         prepare(s, &s->put_file,
                 "INSERT INTO files VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,"
                 "?16,?17,?18,?19,?20,?21,?22,?23,?24) "
                 "ON CONFLICT (job, idx) DO UPDATE SET url=?3, path=?4, tmp_path=?5, "
                 "remote_size=?6, etag=?7, last_modified=?8, sha256=?9, manifest=?10, size=?11, "
                 "piece_size=?12, transferred=?13, completed=?14, bad_pieces=?15, dir_dev=?16, "
                 "dir_ino=?17, file_dev=?18, file_ino=?19, from_origin=?20, from_peers=?21, "
                 "from_cache=?22, validation=?23, origin_only=?24") ||
         prepare(s, &s->delete_ranges, "DELETE FROM ranges WHERE job = ?1 AND file = ?2") ||
         prepare(s, &s->put_range, "INSERT INTO ranges VALUES (?1,?2,?3,?4,?5)") ||
         prepare(s, &s->add_piece, "INSERT OR IGNORE INTO pieces VALUES (?1,?2,?3)") ||
         prepare(s, &s->clear_pieces, "DELETE FROM pieces WHERE job = ?1 AND file = ?2") ||
         prepare(s, &s->add_note, "INSERT INTO notifications VALUES (?1,?2,?3,?4)") ||
         prepare(s, &s->delete_note, "DELETE FROM notifications WHERE id = ?1") ||
         prepare(s, &s->begin, "BEGIN IMMEDIATE") || prepare(s, &s->commit, "COMMIT") ||
         prepare(s, &s->rollback, "ROLLBACK"))) {
        validate_error_set(why, DOPA_EINTERNAL, "%s: %s", path, sqlite3_errmsg(s->db));
        err = DOPA_EINTERNAL;
    }
    if (err != DOPA_OK) {
        store_close(s);
        return err;
    }
    *out = s;
    return DOPA_OK;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    sqlite3_stmt *all[] = {s->put_job,     s->delete_job, s->put_file,     s->delete_ranges,
                           s->put_range,   s->add_piece,  s->clear_pieces, s->add_note,
                           s->delete_note, s->begin,      s->commit,       s->rollback};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(s->db);
    free(s);
}

static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? DOPA_OK : DOPA_EINTERNAL;
}

int store_begin(store *s)
{
    return run(s->begin);
}

int store_commit(store *s)
{
    return run(s->commit);
}

void store_rollback(store *s)
{
    (void)run(s->rollback);
}

int store_put_job(store *s, const agent_job *j)
{
    sqlite3_stmt *st = s->put_job;
    sqlite3_bind_blob(st, 1, j->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)j->seq);
    sqlite3_bind_int64(st, 3, j->owner);
    sqlite3_bind_int(st, 4, j->type);
    sqlite3_bind_int(st, 5, j->state);
    sqlite3_bind_int(st, 6, j->priority);
    sqlite3_bind_text(st, 7, j->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, j->description, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, j->created);
    sqlite3_bind_int64(st, 10, j->modified);
    sqlite3_bind_int64(st, 11, j->completed);
    sqlite3_bind_int64(st, 12, j->error_count);
    sqlite3_bind_int(st, 13, j->has_error);
    sqlite3_bind_int(st, 14, j->error.context);
    sqlite3_bind_int(st, 15, j->error.code);
    sqlite3_bind_int(st, 16, j->error.file);
    sqlite3_bind_int64(st, 17, j->error.http_status);
    sqlite3_bind_text(st, 18, j->error.message, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 19, j->retry_delay);
    sqlite3_bind_int64(st, 20, j->no_progress_timeout);
    sqlite3_bind_int(st, 21, j->proxy_usage);
    sqlite3_bind_text(st, 22, j->proxy, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 23, j->bypass, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 24, (sqlite3_int64)j->from_origin);
    sqlite3_bind_int64(st, 25, (sqlite3_int64)j->from_peers);
    sqlite3_bind_int64(st, 26, (sqlite3_int64)j->from_cache);
    sqlite3_bind_int64(st, 27, j->file_user);
    sqlite3_bind_int64(st, 28, j->no_progress_wall);
    sqlite3_bind_int64(st, 29, j->notify_flags);
    if (j->notify_cmd_len > 0)
        sqlite3_bind_blob(st, 30, j->notify_cmd, (int)j->notify_cmd_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 30);
    sqlite3_bind_int64(st, 31, j->validation_timeout);
    sqlite3_bind_int(st, 32, j->validation_default_valid);
    sqlite3_bind_int64(st, 33, (sqlite3_int64)j->uploaded);
    return run(st);
}

int store_delete_job(store *s, const dopa_id *id)
{
    sqlite3_bind_blob(s->delete_job, 1, id->bytes, 16, SQLITE_STATIC);
    return run(s->delete_job);
}

int store_put_file(store *s, const agent_file *f)
{
    sqlite3_stmt *st = s->put_file;
    const agent_job *j = f->job;
    sqlite3_bind_blob(st, 1, j->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, f->index);
    sqlite3_bind_text(st, 3, f->url, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, f->path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, f->tmp_path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, f->remote_size);
    sqlite3_bind_text(st, 7, f->etag, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, f->last_modified, -1, SQLITE_STATIC);
    if (f->has_sha256)
        sqlite3_bind_blob(st, 9, f->sha256, 32, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 9);
    if (f->manifest_bytes != NULL)
        sqlite3_bind_blob(st, 10, f->manifest_bytes, (int)f->manifest_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 10);
    sqlite3_bind_int64(st, 11, f->size == DOPA_SIZE_UNKNOWN ? -1 : (sqlite3_int64)f->size);
    sqlite3_bind_int64(st, 12, f->pieces.piece_size);
    sqlite3_bind_int(st, 13, f->transferred);
    sqlite3_bind_int(st, 14, f->completed);
    sqlite3_bind_int64(st, 15, f->bad_pieces);
    sqlite3_bind_int64(st, 16, (sqlite3_int64)f->ident.dir_dev);
    sqlite3_bind_int64(st, 17, (sqlite3_int64)f->ident.dir_ino);
    sqlite3_bind_int64(st, 18, (sqlite3_int64)f->ident.file_dev);
    sqlite3_bind_int64(st, 19, (sqlite3_int64)f->ident.file_ino);
    sqlite3_bind_int64(st, 20, (sqlite3_int64)f->from_origin);
    sqlite3_bind_int64(st, 21, (sqlite3_int64)f->from_peers);
    sqlite3_bind_int64(st, 22, (sqlite3_int64)f->from_cache);
    sqlite3_bind_int(st, 23, f->validation);
    sqlite3_bind_int(st, 24, f->origin_only);
    int err = run(st);
    if (err != DOPA_OK)
        return err;
    sqlite3_bind_blob(s->delete_ranges, 1, j->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(s->delete_ranges, 2, f->index);
    err = run(s->delete_ranges);
    for (size_t i = 0; err == DOPA_OK && i < f->n_ranges; i++) {
        sqlite3_bind_blob(s->put_range, 1, j->id.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_int64(s->put_range, 2, f->index);
        sqlite3_bind_int64(s->put_range, 3, (sqlite3_int64)i);
        sqlite3_bind_int64(s->put_range, 4, (sqlite3_int64)f->ranges[i].offset);
        sqlite3_bind_int64(s->put_range, 5, (sqlite3_int64)f->ranges[i].length);
        err = run(s->put_range);
    }
    return err;
}

int store_add_pieces(store *s, const agent_file *f, const uint64_t *pieces, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_blob(s->add_piece, 1, f->job->id.bytes, 16, SQLITE_STATIC);
        sqlite3_bind_int64(s->add_piece, 2, f->index);
        sqlite3_bind_int64(s->add_piece, 3, (sqlite3_int64)pieces[i]);
        if (run(s->add_piece) != DOPA_OK)
            return DOPA_EINTERNAL;
    }
    return DOPA_OK;
}

int store_clear_pieces(store *s, const agent_file *f)
{
    sqlite3_bind_blob(s->clear_pieces, 1, f->job->id.bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int64(s->clear_pieces, 2, f->index);
    return run(s->clear_pieces);
}

int store_add_notification(store *s, uint64_t id, const dopa_id *job, int kind, int32_t file)
{
    sqlite3_bind_int64(s->add_note, 1, (sqlite3_int64)id);
    sqlite3_bind_blob(s->add_note, 2, job->bytes, 16, SQLITE_STATIC);
    sqlite3_bind_int(s->add_note, 3, kind);
    sqlite3_bind_int(s->add_note, 4, file);
    return run(s->add_note);
}

int store_delete_notification(store *s, uint64_t id)
{
    sqlite3_bind_int64(s->delete_note, 1, (sqlite3_int64)id);
    return run(s->delete_note);
}

/* ------------------------------------------------------------------ */
/* Loading, with every row checked                                    */

/* A text column of at most max bytes, without NUL, copied into out. */
static int column_text(sqlite3_stmt *st, int col, char *out, size_t max)
{
    if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        return -1;
    const unsigned char *t = sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (t == NULL || n < 0 || (size_t)n > max || memchr(t, '\0', (size_t)n) != NULL)
        return -1;
    memcpy(out, t, (size_t)n);
    out[n] = '\0';
    return 0;
}

/* column_text into a new buffer: 0, -1 for a bad column, DOPA_ENOMEM. */
static int column_strdup(sqlite3_stmt *st, int col, size_t max, char **out)
{
    char *buf = malloc(max + 1);
    if (buf == NULL)
        return DOPA_ENOMEM;
    if (column_text(st, col, buf, max) != 0) {
        free(buf);
        return -1;
    }
    *out = buf;
    return 0;
}

static int column_int(sqlite3_stmt *st, int col, int64_t lo, int64_t hi, int64_t *out)
{
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
        return -1;
    int64_t v = sqlite3_column_int64(st, col);
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int column_id(sqlite3_stmt *st, int col, dopa_id *id)
{
    if (sqlite3_column_type(st, col) != SQLITE_BLOB || sqlite3_column_bytes(st, col) != 16)
        return -1;
    memcpy(id->bytes, sqlite3_column_blob(st, col), 16);
    return 0;
}

/* The loaders of one row: 0, -1 when the row fails its checks, or
 * DOPA_ENOMEM, which must fail the load rather than count as damage. */
static int load_job_row(sqlite3_stmt *st, agent_job *j)
{
    /* Integer columns: index, smallest and largest value. */
    static const struct {
        int col;
        int64_t lo, hi;
    } ints[] = {
        {1, 0, INT64_MAX},
        {2, 0, UINT32_MAX},
        {3, 0, DOPA_JOB_DOWNLOAD},
        {4, 0, DOPA_STATE_CANCELLED},
        {5, 0, DOPA_PRIORITY_LOW},
        {8, 0, INT64_MAX},
        {9, 0, INT64_MAX},
        {10, 0, INT64_MAX},
        {11, 0, UINT32_MAX},
        {12, 0, 1},
        {13, 0, DOPA_CONTEXT_VALIDATION},
        {14, INT32_MIN, INT32_MAX},
        {15, -1, DOPA_MAX_FILES - 1},
        {16, 0, 999},
        {18, 0, UINT32_MAX},
        {19, 0, UINT32_MAX},
        {20, 0, DOPA_PROXY_OVERRIDE},
        {23, 0, INT64_MAX},
        {24, 0, INT64_MAX},
        {25, 0, INT64_MAX},
        {26, 0, UINT32_MAX},
        {27, 0, INT64_MAX},
        {28, 0, DOPA_NOTIFY_ALL},
        {30, 0, UINT32_MAX},
        {31, 0, 1},
        {32, 0, INT64_MAX},
    };
    int64_t v[33] = {0};
    if (column_id(st, 0, &j->id) != 0)
        return -1;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (column_int(st, ints[i].col, ints[i].lo, ints[i].hi, &v[ints[i].col]) != 0)
            return -1;
    if (column_text(st, 6, j->name, DOPA_NAME_MAX) != 0 ||
        column_text(st, 7, j->description, DOPA_DESCRIPTION_MAX) != 0 ||
        column_text(st, 17, j->error.message, DOPA_MESSAGE_MAX) != 0 ||
        column_text(st, 21, j->proxy, DOPA_PROXY_MAX) != 0 ||
        column_text(st, 22, j->bypass, DOPA_PROXY_MAX) != 0)
        return -1;
    j->seq = (uint64_t)v[1];
    j->owner = (uint32_t)v[2];
    j->type = (int)v[3];
    j->state = (int)v[4];
    j->priority = (int)v[5];
    j->created = v[8];
    j->modified = v[9];
    j->completed = v[10];
    j->error_count = (uint32_t)v[11];
    j->has_error = (int)v[12];
    j->error.context = (int)v[13];
    j->error.code = (int)v[14];
    j->error.file = (int)v[15];
    j->error.http_status = (long)v[16];
    j->retry_delay = (uint32_t)v[18];
    j->no_progress_timeout = (uint32_t)v[19];
    j->proxy_usage = (int)v[20];
    j->from_origin = (uint64_t)v[23];
    j->from_peers = (uint64_t)v[24];
    j->from_cache = (uint64_t)v[25];
    j->file_user = (uint32_t)v[26];
    j->no_progress_wall = v[27];
    j->notify_flags = (uint32_t)v[28];
    j->validation_timeout = (uint32_t)v[30];
    j->validation_default_valid = (int)v[31];
    j->uploaded = (uint64_t)v[32];
    int t = sqlite3_column_type(st, 29);
    if (t == SQLITE_BLOB) {
        size_t n = (size_t)sqlite3_column_bytes(st, 29);
        if (n == 0)
            return -1;
        if ((j->notify_cmd = malloc(n)) == NULL)
            return DOPA_ENOMEM;
        memcpy(j->notify_cmd, sqlite3_column_blob(st, 29), n);
        j->notify_cmd_len = n;
        if (agent_notify_cmd_count(j->notify_cmd, n) == 0)
            return -1;
    } else if (t != SQLITE_NULL) {
        return -1;
    }
    return 0;
}

static int load_file_row(sqlite3_stmt *st, agent_file *f)
{
    int64_t remote_size, size, piece_size, transferred, completed, bad, ident[4], validation,
        origin_only;
    for (int i = 0; i < 4; i++)
        if (column_int(st, 15 + i, INT64_MIN, INT64_MAX, &ident[i]) != 0)
            return -1;
    f->ident.dir_dev = (uint64_t)ident[0];
    f->ident.dir_ino = (uint64_t)ident[1];
    f->ident.file_dev = (uint64_t)ident[2];
    f->ident.file_ino = (uint64_t)ident[3];
    int64_t from[3];
    for (int i = 0; i < 3; i++)
        if (column_int(st, 19 + i, 0, INT64_MAX, &from[i]) != 0)
            return -1;
    f->from_origin = (uint64_t)from[0];
    f->from_peers = (uint64_t)from[1];
    f->from_cache = (uint64_t)from[2];
    if (column_int(st, 5, -1, INT64_MAX, &remote_size) != 0 ||
        column_int(st, 10, -1, INT64_MAX, &size) != 0 ||
        column_int(st, 11, 0, VALIDATE_PIECE_SIZE_MAX, &piece_size) != 0 ||
        column_int(st, 12, 0, 1, &transferred) != 0 || column_int(st, 13, 0, 1, &completed) != 0 ||
        column_int(st, 14, 0, UINT32_MAX, &bad) != 0 ||
        column_int(st, 22, 0, DOPA_VALIDATION_INVALID, &validation) != 0 ||
        column_int(st, 23, 0, 1, &origin_only) != 0)
        return -1;
    f->validation = (int)validation;
    f->origin_only = (int)origin_only;
    int err = column_strdup(st, 2, DOPA_URL_MAX, &f->url);
    if (err == 0)
        err = column_strdup(st, 3, DOPA_PATH_MAX, &f->path);
    if (err == 0)
        err = column_strdup(st, 4, DOPA_PATH_MAX, &f->tmp_path);
    if (err != 0)
        return err;
    if (f->path[0] != '/' || f->tmp_path[0] != '/' ||
        column_text(st, 6, f->etag, sizeof f->etag - 1) != 0 ||
        column_text(st, 7, f->last_modified, sizeof f->last_modified - 1) != 0)
        return -1;
    f->remote_size = remote_size;
    int t8 = sqlite3_column_type(st, 8), t9 = sqlite3_column_type(st, 9);
    if (t8 == SQLITE_BLOB && sqlite3_column_bytes(st, 8) == 32) {
        memcpy(f->sha256, sqlite3_column_blob(st, 8), 32);
        f->has_sha256 = 1;
    } else if (t8 != SQLITE_NULL) {
        return -1;
    }
    if (t9 == SQLITE_BLOB) {
        size_t n = (size_t)sqlite3_column_bytes(st, 9);
        if (n == 0)
            return -1; /* (SQLite gives no pointer for an empty blob) */
        f->manifest_bytes = malloc(n);
        if (f->manifest_bytes == NULL)
            return DOPA_ENOMEM;
        memcpy(f->manifest_bytes, sqlite3_column_blob(st, 9), n);
        f->manifest_len = n;
        err = validate_manifest_parse(f->manifest_bytes, n, &f->manifest, NULL);
        if (err != VALIDATE_OK)
            return err == VALIDATE_ENOMEM ? DOPA_ENOMEM : -1;
    } else if (t9 != SQLITE_NULL) {
        return -1;
    }
    if (size >= 0) {
        err = agent_file_set_size(f, (uint64_t)size);
        if (err == DOPA_ENOMEM)
            return err;
        if (err != DOPA_OK || f->pieces.piece_size != piece_size)
            return -1;
        if (f->manifest != NULL && f->manifest->file_size != (uint64_t)size)
            return -1;
    }
    f->transferred = (int)transferred;
    f->completed = (int)completed;
    f->bad_pieces = (uint32_t)bad;
    return 0;
}

/* What must hold between the columns of a file and its ranges and
 * pieces, as add-file and the engine would have left them. */
static int file_consistent(const agent_job *j, const agent_file *f)
{
    char expect[DOPA_PATH_MAX + 64];
    if (fileops_temp_name(f->path, &j->id, f->index, expect, sizeof expect) != 0 ||
        strcmp(expect, f->tmp_path) != 0)
        return 0; /* Cancel removes tmp_path: it must be the name we gave */
    if (agent_ranges_check(f->ranges, f->n_ranges, NULL) != 0 ||
        (f->manifest != NULL && f->n_ranges > 0))
        return 0;
    if ((f->transferred || f->completed) &&
        (f->size == DOPA_SIZE_UNKNOWN || f->pieces.n[PIECE_DURABLE] != f->pieces.count))
        return 0; /* Complete would move an unchecked file into place */
    uint64_t size;
    if (f->size != DOPA_SIZE_UNKNOWN && f->n_ranges > 0 &&
        (agent_file_local_size(f, f->remote_size, &size) != DOPA_OK || size != f->size))
        return 0;
    return 1;
}

/* Finds a loaded job by id (jobs sorted by id in `index`). */
static agent_job *find_job(agent_job **index, size_t n, const dopa_id *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = memcmp(index[mid]->id.bytes, id->bytes, 16);
        if (c == 0)
            return index[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int compare_ids(const void *a, const void *b)
{
    return memcmp((*(agent_job *const *)a)->id.bytes, (*(agent_job *const *)b)->id.bytes, 16);
}

int store_load(store *s, agent_job ***jobs_out, size_t *n_out, size_t *damaged, validate_error *why)
{
    sqlite3_stmt *st = NULL;
    agent_job **jobs = NULL, **index = NULL;
    size_t n = 0, cap = 0;
    int err = DOPA_EINTERNAL;
    *damaged = 0;

    if (sqlite3_prepare_v2(s->db, "SELECT * FROM jobs ORDER BY seq", -1, &st, NULL) != SQLITE_OK)
        goto sql_fail;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        agent_job *j = agent_job_new();
        if (j == NULL) {
            err = DOPA_ENOMEM;
            goto fail;
        }
        int bad = load_job_row(st, j);
        if (bad == DOPA_ENOMEM) {
            agent_job_free(j);
            err = bad;
            goto fail;
        }
        if (bad != 0) {
            (*damaged)++;
            agent_job_free(j);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            agent_job **grown = realloc(jobs, cap * sizeof *jobs);
            if (grown == NULL) {
                agent_job_free(j);
                err = DOPA_ENOMEM;
                goto fail;
            }
            jobs = grown;
        }
        jobs[n++] = j;
    }
    if (rc != SQLITE_DONE)
        goto sql_fail;
    sqlite3_finalize(st);
    st = NULL;

    index = malloc((n ? n : 1) * sizeof *index);
    if (index == NULL) {
        err = DOPA_ENOMEM;
        goto fail;
    }
    if (n > 0)
        memcpy(index, jobs, n * sizeof *index);
    qsort(index, n, sizeof *index, compare_ids);
    /* A job whose files do not check out is marked by setting its
     * has_error to -1 and dropped below. */
    if (sqlite3_prepare_v2(s->db, "SELECT * FROM files ORDER BY job, idx", -1, &st, NULL) !=
        SQLITE_OK)
        goto sql_fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        dopa_id id;
        int64_t idx;
        agent_job *j;
        if (column_id(st, 0, &id) != 0 || (j = find_job(index, n, &id)) == NULL || j->has_error < 0)
            continue;
        if (column_int(st, 1, 0, DOPA_MAX_FILES - 1, &idx) != 0 || (size_t)idx != j->n_files) {
            j->has_error = -1;
            continue;
        }
        agent_file *f = agent_file_new();
        agent_file **grown = f ? realloc(j->files, (j->n_files + 1) * sizeof *grown) : NULL;
        if (grown == NULL) {
            agent_file_free(f);
            err = DOPA_ENOMEM;
            goto fail;
        }
        j->files = grown;
        f->job = j;
        f->index = (uint32_t)idx;
        j->files[j->n_files++] = f;
        int bad = load_file_row(st, f);
        if (bad == DOPA_ENOMEM) {
            err = bad;
            goto fail;
        }
        if (bad != 0)
            j->has_error = -1;
    }
    if (rc != SQLITE_DONE)
        goto sql_fail;
    sqlite3_finalize(st);

    if (sqlite3_prepare_v2(s->db, "SELECT * FROM ranges ORDER BY job, file, idx", -1, &st, NULL) !=
        SQLITE_OK)
        goto sql_fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        dopa_id id;
        int64_t file, idx, offset, length;
        agent_job *j;
        if (column_id(st, 0, &id) != 0 || (j = find_job(index, n, &id)) == NULL || j->has_error < 0)
            continue;
        agent_file *f;
        if (column_int(st, 1, 0, (int64_t)j->n_files - 1, &file) != 0 ||
            column_int(st, 2, 0, DOPA_MAX_RANGES - 1, &idx) != 0 ||
            column_int(st, 3, INT64_MIN, INT64_MAX, &offset) != 0 ||
            column_int(st, 4, INT64_MIN, INT64_MAX, &length) != 0 ||
            (size_t)idx != (f = j->files[file])->n_ranges || length == 0) {
            j->has_error = -1;
            continue;
        }
        dopa_range *grown = realloc(f->ranges, (f->n_ranges + 1) * sizeof *grown);
        if (grown == NULL) {
            err = DOPA_ENOMEM;
            goto fail;
        }
        f->ranges = grown;
        f->ranges[f->n_ranges].offset = (uint64_t)offset;
        f->ranges[f->n_ranges].length = (uint64_t)length;
        f->n_ranges++;
    }
    if (rc != SQLITE_DONE)
        goto sql_fail;
    sqlite3_finalize(st);

    if (sqlite3_prepare_v2(s->db, "SELECT * FROM pieces", -1, &st, NULL) != SQLITE_OK)
        goto sql_fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        dopa_id id;
        int64_t file, piece;
        agent_job *j;
        if (column_id(st, 0, &id) != 0 || (j = find_job(index, n, &id)) == NULL || j->has_error < 0)
            continue;
        if (column_int(st, 1, 0, (int64_t)j->n_files - 1, &file) != 0 ||
            column_int(st, 2, 0, INT64_MAX, &piece) != 0 ||
            (uint64_t)piece >= j->files[file]->pieces.count) {
            j->has_error = -1;
            continue;
        }
        pieces_set_durable(&j->files[file]->pieces, (uint64_t)piece); /* (a second row: once) */
    }
    if (rc != SQLITE_DONE)
        goto sql_fail;
    sqlite3_finalize(st);
    st = NULL;

    /* Drop the damaged jobs, keep the order of the rest. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        agent_job *j = jobs[i];
        int ok = j->has_error >= 0 && j->error.file < (int)j->n_files;
        for (size_t k = 0; ok && k < j->n_files; k++)
            ok = file_consistent(j, j->files[k]);
        if (ok) {
            jobs[kept++] = j;
        } else {
            (*damaged)++;
            agent_job_free(j);
        }
    }
    free(index);
    *jobs_out = jobs;
    *n_out = kept;
    return DOPA_OK;

sql_fail:
    validate_error_set(why, DOPA_EINTERNAL, "loading jobs: %s", sqlite3_errmsg(s->db));
    err = DOPA_EINTERNAL;
fail:
    if (err == DOPA_ENOMEM)
        validate_error_set(why, err, "loading jobs: out of memory");
    sqlite3_finalize(st);
    for (size_t i = 0; i < n; i++)
        agent_job_free(jobs[i]);
    free(jobs);
    free(index);
    return err;
}

int store_load_notifications(store *s, store_notification_fn fn, void *ctx, validate_error *why)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT id, job, kind, file FROM notifications ORDER BY id", -1,
                           &st, NULL) != SQLITE_OK) {
        validate_error_set(why, DOPA_EINTERNAL, "loading notifications: %s", sqlite3_errmsg(s->db));
        return DOPA_EINTERNAL;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id, kind, file;
        dopa_id job;
        /* A row that does not check out is left for the job's deletion. */
        if (column_int(st, 0, 1, INT64_MAX, &id) != 0 || column_id(st, 1, &job) != 0 ||
            column_int(st, 2, PROTO_EVENT_JOB_TRANSFERRED, PROTO_EVENT_FILE_TRANSFERRED, &kind) !=
                0 ||
            column_int(st, 3, -1, DOPA_MAX_FILES - 1, &file) != 0)
            continue;
        fn(ctx, (uint64_t)id, &job, (int)kind, (int32_t)file);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        validate_error_set(why, DOPA_EINTERNAL, "loading notifications: %s", sqlite3_errmsg(s->db));
        return DOPA_EINTERNAL;
    }
    return DOPA_OK;
}
