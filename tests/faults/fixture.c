/* What the fault tests share; see fixture.h. */
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "proc.h"

double faults_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void faults_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int faults_nginx_start(test_nginx *web, const char *dir)
{
    static const int rates[] = {4, 8, 16, 32};
    char server[512] = "", where[700];
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++)
        snprintf(server + strlen(server), sizeof server - strlen(server),
                 "location /r%d/ { limit_rate %dm; } ", rates[i], rates[i]);
    test_nginx_config cfg = {.server = server};
    snprintf(where, sizeof where, "%s/nginx", dir);
    if (test_nginx_start(web, where, &cfg) != 0)
        return -1;
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        snprintf(where, sizeof where, "%s/r%d", web->root, rates[i]);
        if (mkdir(where, 0755) != 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

static test_nginx *the_nginx;

static void stop_nginx(void)
{
    test_nginx_stop(the_nginx);
}

int faults_setup(test_nginx *web, const char *tag)
{
    const char *dir = test_scratch_dir(tag);
    if (dir == NULL || faults_nginx_start(web, dir) != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return -1;
    }
    the_nginx = web;
    atexit(stop_nginx); /* before the scratch directory goes */
    return 0;
}

void faults_url(const test_nginx *web, const char *path, char *out, size_t len)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", web->port, path);
}

int faults_dopad_start(test_dopad *d, const char *dir, const char *ctl, const char *log, int wait)
{
    /* Only dopad gets the interposer: it is set around the spawn. */
    if (ctl != NULL) {
        setenv("LD_PRELOAD", FAULTFS, 1);
        setenv("DOPA_FAULTFS_CTL", ctl, 1);
        setenv("DOPA_FAULTFS_LOG", log, 1);
        /* A sanitizer runtime wants to come first; faultfs passes calls on
         * to it, so the order does no harm. */
        setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
    }
    int err = test_dopad_spawn(d, DOPAD, dir, NULL);
    if (ctl != NULL) {
        unsetenv("LD_PRELOAD");
        unsetenv("DOPA_FAULTFS_CTL");
        unsetenv("DOPA_FAULTFS_LOG");
        unsetenv("ASAN_OPTIONS");
    }
    if (err != 0)
        return -1;
    return wait ? test_dopad_ready(d) : 0;
}

int faults_dopad_stop(test_dopad *d)
{
    test_dopad_stop(d, SIGTERM);
    static const char *const reports[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:"};
    FILE *f = fopen(d->log, "r");
    char line[4500];
    int found = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        for (size_t i = 0; i < sizeof reports / sizeof reports[0]; i++)
            if (strstr(line, reports[i]) != NULL) {
                fprintf(stderr, "  dopad: %s", line);
                found = 1;
            }
    if (f != NULL)
        fclose(f);
    return found ? -1 : 0;
}

int faults_rules(const char *ctl, const char *rules)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.new", ctl);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fputs(rules, f) < 0) {
        if (f != NULL)
            fclose(f);
        return -1;
    }
    if (fclose(f) != 0 || rename(tmp, ctl) != 0)
        return -1;
    faults_sleep_ms(30); /* faultfs looks again every 2 ms of calls */
    return 0;
}

long long faults_log_count(const char *log, const char *prefix, long long *bytes)
{
    FILE *f = fopen(log, "r");
    char line[4500];
    long long n = 0, sum = 0;
    size_t len = strlen(prefix);
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, prefix, len) != 0)
            continue;
        n++;
        long long v = 0;
        if (sscanf(line, "%*s %lld", &v) == 1)
            sum += v;
    }
    if (f != NULL)
        fclose(f);
    if (bytes != NULL)
        *bytes = sum;
    return n;
}

int faults_log_has(const char *log, const char *text)
{
    FILE *f = fopen(log, "r");
    char line[4500];
    int n = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        n += strstr(line, text) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

static sqlite3 *open_store(const char *db_path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "  %s: %s\n", db_path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

int faults_store_read(const char *db_path, const dopa_id *id, faults_stored *out)
{
    memset(out, 0, sizeof *out);
    out->size = -1;
    sqlite3 *db = open_store(db_path);
    sqlite3_stmt *st = NULL;
    int err = -1;
    if (db == NULL)
        return -1;
    /* One read transaction: the counts belong to one state. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        goto done;
    if (sqlite3_prepare_v2(db, "SELECT state FROM jobs WHERE id = ?1", -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->found = 1;
        out->state = sqlite3_column_int(st, 0);
    } else if (rc != SQLITE_DONE) {
        goto done;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (!out->found) {
        err = 0;
        goto done;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT transferred, completed, size, piece_size, tmp_path,"
                           " (SELECT count(*) FROM pieces WHERE job = ?1 AND file = 0), path"
                           " FROM files WHERE job = ?1 AND idx = 0",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->file_transferred = sqlite3_column_int(st, 0);
        out->file_completed = sqlite3_column_int(st, 1);
        out->size = sqlite3_column_int64(st, 2);
        out->piece_size = (uint32_t)sqlite3_column_int64(st, 3);
        const unsigned char *tmp = sqlite3_column_text(st, 4);
        snprintf(out->tmp_path, sizeof out->tmp_path, "%s", tmp ? (const char *)tmp : "");
        out->pieces = (uint64_t)sqlite3_column_int64(st, 5);
        const unsigned char *path = sqlite3_column_text(st, 6);
        snprintf(out->path, sizeof out->path, "%s", path ? (const char *)path : "");
        /* The last piece may be short. */
        uint64_t full = out->pieces * out->piece_size;
        out->bytes = out->size >= 0 && full > (uint64_t)out->size ? (uint64_t)out->size : full;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* (1: JobTransferred, as the notifications table stores it.) */
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM notifications WHERE job = ?1 AND kind = 1", -1,
                           &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        out->undelivered = sqlite3_column_int(st, 0);
    err = 0;
done:
    if (err != 0)
        fprintf(stderr, "  reading %s: %s\n", db_path, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return err;
}

long long faults_check_committed(const char *db_path, const dopa_id *id, unsigned seed,
                                 unsigned samples, uint64_t *bad_piece)
{
    faults_stored s;
    if (faults_store_read(db_path, id, &s) != 0)
        return -1;
    if (!s.found || s.pieces == 0)
        return 0;
    /* A Complete that did not live to record it may have moved the file. */
    const char *file = access(s.tmp_path, F_OK) == 0 ? s.tmp_path : s.path;
    uint64_t *list = malloc(s.pieces * sizeof *list);
    sqlite3 *db = list != NULL ? open_store(db_path) : NULL;
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    if (db != NULL && sqlite3_prepare_v2(db, "SELECT piece FROM pieces WHERE job = ?1 AND file = 0",
                                         -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_blob(st, 1, id->bytes, 16, SQLITE_STATIC);
        while (n < s.pieces && sqlite3_step(st) == SQLITE_ROW)
            list[n++] = (uint64_t)sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    long long bad = 0;
    size_t checks = samples == 0 || samples > n ? n : samples;
    for (size_t k = 0; k < checks; k++) {
        uint64_t piece = samples == 0 ? list[k] : list[(size_t)rand() % n];
        uint64_t off = piece * s.piece_size, len = s.piece_size;
        if (s.size >= 0 && off + len > (uint64_t)s.size)
            len = (uint64_t)s.size - off;
        uint64_t at;
        int d = test_pattern_differs(file, seed, off, len, &at);
        if (d < 0) {
            bad = -1;
            fprintf(stderr, "  cannot read %s\n", file);
            break;
        }
        if (d > 0) {
            if (bad == 0 && bad_piece != NULL)
                *bad_piece = piece;
            if (bad == 0)
                fprintf(stderr, "  committed piece %llu differs at byte %llu\n",
                        (unsigned long long)piece, (unsigned long long)at);
            bad++;
        }
    }
    free(list);
    return n == 0 && s.pieces > 0 ? -1 : bad;
}

int faults_file_is(const char *path, unsigned seed, uint64_t len)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "  %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint64_t at = 0;
    int d = test_pattern_differs(path, seed, 0, len, &at);
    if (d > 0)
        fprintf(stderr, "  %s: byte %llu differs\n", path, (unsigned long long)at);
    if (d == 0 && (uint64_t)st.st_size != len) {
        fprintf(stderr, "  %s: %lld bytes, expected %llu\n", path, (long long)st.st_size,
                (unsigned long long)len);
        d = 1;
    }
    return d;
}

int faults_wait_state(dopa_manager *m, const dopa_id *id, int state, double limit_s,
                      dopa_job_info **info)
{
    double end = faults_now() + limit_s;
    if (info != NULL)
        *info = NULL;
    for (;;) {
        dopa_job_info *j;
        int err = dopa_job_get(m, id, &j);
        if (err == DOPA_OK && dopa_job_info_state(j) == state) {
            if (info != NULL)
                *info = j;
            else
                dopa_free(j);
            return 0;
        }
        if (faults_now() > end) {
            if (err != DOPA_OK)
                fprintf(stderr, "  waiting for %s: %s\n", dopa_state_name(state),
                        dopa_strerror(err));
            else
                fprintf(stderr, "  job is %s, waited for %s (%s)\n",
                        dopa_state_name(dopa_job_info_state(j)), dopa_state_name(state),
                        dopa_job_info_has_error(j) ? dopa_job_info_error_message(j) : "no error");
            dopa_free(j);
            return -1;
        }
        dopa_free(j);
        faults_sleep_ms(20);
    }
}
