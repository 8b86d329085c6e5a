/*
 * A full disk under a running job: the download directory is a small
 * tmpfs that fills up mid-transfer. The job must go to TRANSIENT_ERROR
 * with a message that says so, commit nothing it could not write, and go
 * on by itself once the tmpfs is made larger; the output must be the
 * served file, byte for byte. Prints when the disk filled and how long the
 * job took to resume once space returned.
 *
 * Needs root (it mounts the tmpfs); otherwise it says so and exits 77. The
 * mount is made in a mount namespace of this test's own, so it goes away
 * with the test whatever happens, and it is also unmounted by its path
 * when the test exits.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../check.h"
#include "../support/db.h"
#include "../support/proc.h"
#include "fixture.h"

#define MIB (1024ull * 1024)

static test_nginx web;
static test_dopad daemon_ = {.pid = -1};
static dopa_manager *mgr;
static char mounted[4300]; /* the tmpfs this test mounted, "" when none */

static void unmount(void)
{
    if (mounted[0] == '\0')
        return;
    if (umount2(mounted, MNT_DETACH) != 0)
        fprintf(stderr, "  umount %s: %s\n", mounted, strerror(errno));
    mounted[0] = '\0';
}

/* A tmpfs of `size` ("12m") at dir. */
static int mount_tmpfs(const char *dir, const char *size)
{
    char options[64];
    snprintf(options, sizeof options, "size=%s,mode=0755", size);
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0) {
        fprintf(stderr, "  mount tmpfs at %s: %s\n", dir, strerror(errno));
        return -1;
    }
    snprintf(mounted, sizeof mounted, "%s", dir);
    return 0;
}

/* mount -o remount,size=... */
static int grow_tmpfs(const char *dir, const char *size)
{
    char options[64];
    snprintf(options, sizeof options, "size=%s", size);
    if (mount(NULL, dir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, options) != 0) {
        fprintf(stderr, "  remount %s with %s: %s\n", dir, options, strerror(errno));
        return -1;
    }
    return 0;
}

static void after_case(void)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    if (daemon_.pid > 0)
        test_dopad_stop(&daemon_, SIGTERM);
    unmount();
}

/* ------------------------------------------------------------------ */

static void test_a_full_disk_is_a_transient_error_until_space_returns(void)
{
    const uint64_t size = 40 * MIB, room = 12 * MIB;
    char dl[4300], dest[4400], db[4300], u[512];
    snprintf(dl, sizeof dl, "%s/dl", check_tmpdir());
    snprintf(dest, sizeof dest, "%s/full.bin", dl);
    CHECK(mkdir(dl, 0755) == 0);
    CHECK_INT(mount_tmpfs(dl, "12m"), 0);
    CHECK_INT(test_nginx_put(&web, "r8/full.bin", (size_t)size, 41), 0);
    faults_url(&web, "/r8/full.bin", u, sizeof u);
    CHECK_INT(faults_dopad_start(&daemon_, check_tmpdir(), NULL, NULL, 1), 0);
    snprintf(db, sizeof db, "%s/dopa.db", daemon_.state);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);

    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, "full", DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, u, dest, NULL), DOPA_OK);
    CHECK_INT(dopa_job_set_minimum_retry_delay(mgr, &id, 1), DOPA_OK);
    double t0 = faults_now();
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);

    dopa_job_info *info;
    CHECK_INT(faults_wait_state(mgr, &id, DOPA_STATE_TRANSIENT_ERROR, 30, &info), 0);
    double full_after = faults_now() - t0;
    CHECK_INT(dopa_job_info_error_context(info), DOPA_CONTEXT_LOCAL_FILE);
    CHECK_INT(dopa_job_info_error_file(info), 0);
    CHECK_INT(dopa_job_info_error_code(info), ENOSPC);
    CHECK_HAS(dopa_job_info_error_message(info), "No space left on device");
    CHECK_HAS(dopa_job_info_error_message(info), dl);
    printf("  the %llu MiB tmpfs filled after %.2f s: TRANSIENT_ERROR \"%s\"\n",
           (unsigned long long)(room / MIB), full_after, dopa_job_info_error_message(info));

    /* Nothing it could not write counts, nothing it counts is wrong. */
    faults_stored at_full;
    CHECK_INT(faults_store_read(db, &id, &at_full), 0);
    CHECK(at_full.bytes > 0 && at_full.bytes <= room);
    CHECK(dopa_job_info_bytes_transferred(info) <= room);
    dopa_free(info);
    CHECK_INT(faults_check_committed(db, &id, 41, 0, NULL), 0);
    CHECK(test_db_integrity_ok(db));

    /* While the disk stays full it keeps trying (a second apart) and keeps
     * failing the same way, without giving up. */
    faults_sleep_ms(3000);
    faults_stored still;
    CHECK_INT(faults_store_read(db, &id, &still), 0);
    CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
    CHECK(dopa_job_info_state(info) != DOPA_STATE_ERROR);
    CHECK(dopa_job_info_error_count(info) >= 2);
    CHECK_INT(still.bytes, at_full.bytes);
    uint32_t tries = dopa_job_info_error_count(info);
    dopa_free(info);

    CHECK_INT(grow_tmpfs(dl, "64m"), 0);
    double t_space = faults_now(), resumed = -1;
    for (;;) {
        faults_stored s;
        CHECK_INT(faults_store_read(db, &id, &s), 0);
        if (s.bytes > still.bytes) {
            resumed = faults_now() - t_space;
            break;
        }
        CHECK(faults_now() - t_space < 20);
        faults_sleep_ms(10);
    }
    CHECK_INT(faults_wait_state(mgr, &id, DOPA_STATE_TRANSFERRED, 60, NULL), 0);
    double done = faults_now() - t_space;
    CHECK_INT(faults_check_committed(db, &id, 41, 0, NULL), 0);
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
    CHECK_INT(faults_file_is(dest, 41, size), 0);
    CHECK(test_db_integrity_ok(db));
    printf("  %u tries on the full disk; after it grew to 64 MiB: committing again in %.2f s "
           "(retry delay 1 s), done in %.2f s; output identical\n",
           tries, resumed, done);
    dopa_disconnect(mgr);
    mgr = NULL;
    CHECK_INT(faults_dopad_stop(&daemon_), 0);
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (geteuid() != 0) {
        printf("skipped: mounting the small tmpfs needs root\n");
        return 77;
    }
    /* A mount namespace of its own, made while this process has one
     * thread (unshare refuses otherwise): the tmpfs cannot outlive it. */
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        fprintf(stderr, "cannot have a mount namespace of its own: %s\n", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (faults_setup(&web, "faults-disk") != 0)
        return 1;
    atexit(after_case); /* dopad goes before nginx */
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_a_full_disk_is_a_transient_error_until_space_returns),
                         {0},
                     });
}
