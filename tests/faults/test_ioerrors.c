/*
 * Storage faults injected into a running dopad: faultfs (preloaded into
 * dopad only) makes the writes, fdatasyncs, fsyncs and renames of files in
 * the job's download directory fail while a job transfers or completes.
 *
 * A failed fdatasync is made to behave as on Linux: the writes since the
 * file's last good sync are lost (overwritten) and the error is reported
 * once. A piece whose bytes went that way must never count as done: the
 * job's reported bytes drop back to what is committed, and the final file
 * is compared byte for byte, so a piece counted on a later sync would show.
 * Each case prints how long the job took to recover once the fault cleared.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../check.h"
#include "../support/proc.h"
#include "fixture.h"

#define MIB (1024ull * 1024)

static test_nginx web;
static test_dopad daemon_ = {.pid = -1};
static dopa_manager *mgr;
static char ctl[4300], flog[4300], db[4300], dl[4300];

static void start(void)
{
    snprintf(ctl, sizeof ctl, "%s/faultfs.rules", check_tmpdir());
    snprintf(flog, sizeof flog, "%s/faultfs.log", check_tmpdir());
    snprintf(dl, sizeof dl, "%s/dl", check_tmpdir());
    CHECK(mkdir(dl, 0755) == 0);
    char rules[4400];
    snprintf(rules, sizeof rules, "track %s/\n", dl);
    CHECK_INT(faults_rules(ctl, rules), 0);
    CHECK_INT(faults_dopad_start(&daemon_, check_tmpdir(), ctl, flog, 1), 0);
    snprintf(db, sizeof db, "%s/dopa.db", daemon_.state);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);
}

static void after_case(void)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    if (daemon_.pid > 0)
        test_dopad_stop(&daemon_, SIGTERM);
}

/* The rules: writes in dl are always tracked, plus one fault: "HEAD
 * <dl>SUFFIX OPTIONS" (HEAD NULL: none). */
static void set_fault(const char *head, const char *suffix, const char *options)
{
    char rules[9000], line[4400] = "";
    if (head != NULL)
        snprintf(line, sizeof line, "%s %s%s %s", head, dl, suffix, options);
    snprintf(rules, sizeof rules, "track %s/\n%s\n", dl, line);
    CHECK_INT(faults_rules(ctl, rules), 0);
}

/* A job for /<folder>/<name> (size bytes of pattern `seed`) into dl/<name>,
 * retried a second after a transient error. */
static dopa_id job_for(const char *name, uint64_t size, unsigned seed, const char *folder)
{
    char path[256], u[512], dest[4400];
    snprintf(path, sizeof path, "%s/%s", folder, name);
    CHECK_INT(test_nginx_put(&web, path, (size_t)size, seed), 0);
    snprintf(path, sizeof path, "/%s/%s", folder, name);
    faults_url(&web, path, u, sizeof u);
    snprintf(dest, sizeof dest, "%s/%s", dl, name);
    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, name, DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, u, dest, NULL), DOPA_OK);
    CHECK_INT(dopa_job_set_minimum_retry_delay(mgr, &id, 1), DOPA_OK);
    return id;
}

static faults_stored stored(const dopa_id *id)
{
    faults_stored s;
    CHECK_INT(faults_store_read(db, id, &s), 0);
    CHECK(s.found);
    return s;
}

/* Waits until the store has at least `bytes` of the job committed. */
static faults_stored wait_committed(const dopa_id *id, uint64_t bytes, double limit)
{
    double end = faults_now() + limit;
    for (;;) {
        faults_stored s = stored(id);
        if (s.bytes >= bytes)
            return s;
        if (faults_now() > end) {
            fprintf(stderr, "  %llu bytes committed, waited for %llu\n",
                    (unsigned long long)s.bytes, (unsigned long long)bytes);
            CHECK(0);
        }
        faults_sleep_ms(10);
    }
}

/* Waits for the job to be TRANSFERRED, checks every committed piece,
 * completes it and compares what landed with the pattern. */
static void finish_and_compare(const dopa_id *id, const char *name, unsigned seed, uint64_t size)
{
    char dest[4400];
    snprintf(dest, sizeof dest, "%s/%s", dl, name);
    CHECK_INT(faults_wait_state(mgr, id, DOPA_STATE_TRANSFERRED, 60, NULL), 0);
    CHECK_INT(faults_check_committed(db, id, seed, 0, NULL), 0);
    CHECK_INT(dopa_job_complete(mgr, id, NULL), DOPA_OK);
    CHECK_INT(faults_file_is(dest, seed, size), 0);
}

/* Waits for the fault to put the job in TRANSIENT_ERROR, in `context`,
 * with both texts in its message. Returns its information then, for
 * dopa_free(). */
static dopa_job_info *wait_transient(const dopa_id *id, int context, const char *text,
                                     const char *text2)
{
    dopa_job_info *info;
    CHECK_INT(faults_wait_state(mgr, id, DOPA_STATE_TRANSIENT_ERROR, 10, &info), 0);
    CHECK_INT(dopa_job_info_error_context(info), context);
    CHECK_HAS(dopa_job_info_error_message(info), text);
    CHECK_HAS(dopa_job_info_error_message(info), text2);
    return info;
}

/* Stops dopad; it must have said nothing a sanitizer says. */
static void stop(void)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    CHECK_INT(faults_dopad_stop(&daemon_), 0);
}

/* Seconds from now until the store holds more than `bytes` of the job. */
static double time_to_progress(const dopa_id *id, uint64_t bytes, double limit)
{
    double t0 = faults_now();
    wait_committed(id, bytes + 1, limit);
    return faults_now() - t0;
}

#define SIZE (48 * MIB) /* of the jobs the faults strike mid-transfer */

/* dopad (with faultfs) and a job of SIZE bytes from /r16/<name>, with a
 * few MiB committed already. */
static dopa_id transferring_job(const char *name, unsigned seed)
{
    start();
    dopa_id id = job_for(name, SIZE, seed, "r16");
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    wait_committed(&id, 8 * MIB, 30);
    return id;
}

/* ------------------------------------------------------------------ */

static void test_a_failed_fdatasync_never_counts_its_pieces(void)
{
    dopa_id id = transferring_job("once.bin", 31);
    /* One failed writeback, reported once, as Linux does; the bytes it
     * held are gone. It starts late (as behind another file's sync), so
     * pieces written meanwhile, after the commit took its pieces, are lost
     * too. The fault is lifted as soon as it has struck, so the very next
     * sync succeeds: only dopad's own bookkeeping can keep the lost pieces
     * from being counted then. */
    set_fault("fail fdatasync EIO", "/", "lose wait=300");
    double end = faults_now() + 20;
    while (faults_log_count(flog, "fdatasync EIO", NULL) == 0 && faults_now() < end)
        faults_sleep_ms(1);
    set_fault(NULL, NULL, NULL);
    long long lost = 0;
    CHECK_INT(faults_log_count(flog, "fdatasync EIO", NULL), 1);
    CHECK_INT(faults_log_count(flog, "lost", &lost), 1);
    CHECK(lost > 0);
    dopa_job_info *info =
        wait_transient(&id, DOPA_CONTEXT_LOCAL_FILE, "syncing", "Input/output error");
    uint64_t reported = dopa_job_info_bytes_transferred(info);
    dopa_free(info);
    /* What it reports is what is committed: nothing of the lost writes. */
    faults_stored at_error = stored(&id);
    printf("  fdatasync failed once, %.1f MiB of writes lost; reported %.1f MiB, committed "
           "%.1f MiB\n",
           (double)lost / MIB, (double)reported / MIB, (double)at_error.bytes / MIB);
    CHECK_INT(reported, at_error.bytes);
    CHECK_INT(faults_check_committed(db, &id, 31, 0, NULL), 0);
    double recovered = time_to_progress(&id, at_error.bytes, 20);
    finish_and_compare(&id, "once.bin", 31, SIZE);
    printf("  recovered %.2f s after the failure (retry delay 1 s); output identical\n", recovered);
    stop();
}

static void test_a_failing_disk_commits_nothing_until_it_recovers(void)
{
    dopa_id id = transferring_job("stuck.bin", 32);
    set_fault("fail fdatasync EIO", "/", "lose");
    dopa_free(wait_transient(&id, DOPA_CONTEXT_LOCAL_FILE, "syncing", "Input/output error"));
    faults_stored first = stored(&id);
    /* It keeps failing for a while: retries (a second apart) fetch again
     * and fail again at their first commit, committing nothing. */
    faults_sleep_ms(3500);
    faults_stored later = stored(&id);
    long long failures = faults_log_count(flog, "fdatasync EIO", NULL);
    CHECK_INT(later.bytes, first.bytes);
    CHECK(failures >= 2);
    CHECK_INT(faults_check_committed(db, &id, 32, 0, NULL), 0);
    dopa_job_info *info;
    CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
    CHECK(dopa_job_info_state(info) != DOPA_STATE_ERROR &&
          dopa_job_info_state(info) != DOPA_STATE_TRANSFERRED);
    CHECK(dopa_job_info_error_count(info) >= 2);
    uint32_t errors = dopa_job_info_error_count(info);
    dopa_free(info);
    set_fault(NULL, NULL, NULL);
    double t0 = faults_now();
    double progress = time_to_progress(&id, later.bytes, 20);
    finish_and_compare(&id, "stuck.bin", 32, SIZE);
    printf("  fdatasync failed %lld times in 3.5 s (%u transient errors), committed stayed at "
           "%.1f MiB; committing again %.2f s after the fault cleared, done %.2f s after; "
           "output identical\n",
           failures, errors, (double)first.bytes / MIB, progress, faults_now() - t0);
    stop();
}

static void test_a_failed_write_is_retried_once_the_fault_clears(void)
{
    dopa_id id = transferring_job("write.bin", 33);
    set_fault("fail write EIO", "/", "");
    dopa_free(wait_transient(&id, DOPA_CONTEXT_LOCAL_FILE, "writing", "Input/output error"));
    faults_sleep_ms(2500);
    CHECK(faults_log_count(flog, "write EIO", NULL) >= 2); /* it tried again, and failed */
    faults_stored before = stored(&id);
    CHECK_INT(faults_check_committed(db, &id, 33, 0, NULL), 0);
    set_fault(NULL, NULL, NULL);
    double progress = time_to_progress(&id, before.bytes, 20);
    finish_and_compare(&id, "write.bin", 33, SIZE);
    printf("  writes failed %lld times; committing again %.2f s after the fault cleared; "
           "output identical\n",
           faults_log_count(flog, "write EIO", NULL), progress);
    stop();
}

static void test_a_store_that_cannot_write_stops_the_job_until_it_can(void)
{
    dopa_id id = transferring_job("store.bin", 35);
    /* dopad's own database cannot grow (its disk is full): the pieces'
     * bytes are safe, their record is not. */
    char rules[9000];
    snprintf(rules, sizeof rules, "track %s/\nfail write ENOSPC %s/\n", dl, daemon_.state);
    CHECK_INT(faults_rules(ctl, rules), 0);
    dopa_job_info *info =
        wait_transient(&id, DOPA_CONTEXT_GENERAL, "cannot record progress", "disk is full");
    char said[DOPA_MESSAGE_MAX + 1];
    snprintf(said, sizeof said, "%s", dopa_job_info_error_message(info));
    faults_stored first = stored(&id);
    uint64_t reported = dopa_job_info_bytes_transferred(info);
    dopa_free(info);
    /* It stays stopped but for its retries (a second apart), which stop
     * again at their first commit: it does not fetch the rest of the file
     * with nothing recorded. */
    faults_sleep_ms(3000);
    faults_stored later = stored(&id);
    CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
    CHECK_INT(later.bytes, first.bytes);
    CHECK(dopa_job_info_state(info) != DOPA_STATE_ERROR);
    uint64_t grew = dopa_job_info_bytes_transferred(info) - reported;
    dopa_free(info);
    CHECK(grew < 24 * MIB); /* all the rest would be 38 */
    long long failures = faults_log_count(flog, "write ENOSPC", NULL);
    CHECK(failures >= 2);
    set_fault(NULL, NULL, NULL);
    double progress = time_to_progress(&id, later.bytes, 20);
    finish_and_compare(&id, "store.bin", 35, SIZE);
    printf("  the store could not write for 3 s (%lld failed writes): TRANSIENT_ERROR \"%s\"; "
           "%.1f MiB fetched by its retries meanwhile, none committed; committing again %.2f s "
           "after it could; output identical\n",
           failures, said, (double)grew / MIB, progress);
    stop();
}

static void test_complete_survives_a_failed_fsync_or_rename(void)
{
    const uint64_t size = 4 * MIB + 5;
    start();
    dopa_id id = job_for("done.bin", size, 34, "r32");
    char dest[4400];
    snprintf(dest, sizeof dest, "%s/done.bin", dl);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    CHECK_INT(faults_wait_state(mgr, &id, DOPA_STATE_TRANSFERRED, 30, NULL), 0);
    /* The file's fsync, the rename, the directory's fsync after the rename:
     * each failure refuses the Complete and leaves the job TRANSFERRED, to
     * be completed again. */
    static const struct {
        const char *head, *suffix, *options, *injected;
        int moved; /* the file is in place already when it fails */
    } steps[] = {
        {"fail fsync EIO", "/", "", "fsync EIO", 0},
        {"fail rename EIO", "/", "", "rename EIO", 0},
        {"fail fsync EIO", "", "exact", "fsync EIO", 1},
    };
    long long fsyncs = 0;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        set_fault(steps[i].head, steps[i].suffix, steps[i].options);
        long long before = faults_log_count(flog, steps[i].injected, NULL);
        CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_EIO);
        CHECK_HAS(dopa_last_message(), "Input/output error");
        CHECK_INT(faults_log_count(flog, steps[i].injected, NULL), before + 1);
        dopa_job_info *info;
        CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
        CHECK_INT(dopa_job_info_state(info), DOPA_STATE_TRANSFERRED);
        dopa_free(info);
        CHECK_INT(access(dest, F_OK) == 0, steps[i].moved);
        fsyncs += steps[i].injected[0] == 'f';
    }
    set_fault(NULL, NULL, NULL);
    double t0 = faults_now();
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
    double took = faults_now() - t0;
    dopa_job_info *info;
    CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
    CHECK_INT(dopa_job_info_state(info), DOPA_STATE_ACKNOWLEDGED);
    dopa_free(info);
    CHECK_INT(faults_file_is(dest, 34, size), 0);
    faults_stored s;
    CHECK_INT(faults_store_read(db, &id, &s), 0);
    CHECK(!s.found); /* gone from the store once acknowledged */
    printf("  Complete refused after %lld failed fsyncs and 1 failed rename, then done in "
           "%.3f s; output identical\n",
           fsyncs, took);
    stop();
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (faults_setup(&web, "faults-io") != 0)
        return 1;
    atexit(after_case); /* dopad goes before nginx */
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_a_failed_fdatasync_never_counts_its_pieces),
                         CASE(test_a_failing_disk_commits_nothing_until_it_recovers),
                         CASE(test_a_failed_write_is_retried_once_the_fault_clears),
                         CASE(test_complete_survives_a_failed_fsync_or_rename),
                         CASE(test_a_store_that_cannot_write_stops_the_job_until_it_can),
                         {0},
                     });
}
