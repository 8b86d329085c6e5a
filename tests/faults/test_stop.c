/*
 * Stopping always works. dopad with its control socket and a peer listener
 * is sent SIGTERM in the middle of a download while nng_close never returns
 * (the wedge interposer stands in for a wedged libnng): dopad must be gone
 * within 5 s, say why, and have lost nothing it had made durable; started
 * again, it finishes the job from where it was, the store intact.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../check.h"
#include "../support/db.h"
#include "fixture.h"
#include "peer.h"

#define MIB (1024ull * 1024)

static test_nginx web;
static test_dopad daemon_ = {.pid = -1};
static dopa_manager *mgr;

static void after_case(void)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    if (daemon_.pid > 0)
        test_dopad_stop(&daemon_, SIGKILL);
}

/* dopad for dir with a peer listener, wedged (nng_close never returns once
 * the file `wedge` exists) or not. */
static int start(const char *dir, const char *key, const char *wedge)
{
    char settings[1200];
    snprintf(settings, sizeof settings,
             "[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:%d\nbeacons = no\n", key,
             test_free_port());
    if (wedge != NULL) {
        setenv("LD_PRELOAD", WEDGE, 1);
        setenv("DOPA_WEDGE_FILE", wedge, 1);
        setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
    }
    int err = test_dopad_start(&daemon_, DOPAD, dir, settings);
    unsetenv("LD_PRELOAD");
    unsetenv("DOPA_WEDGE_FILE");
    unsetenv("ASAN_OPTIONS");
    return err;
}

static int log_has(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    char line[4500];
    int found = 0;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, text) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

static void test_sigterm_stops_dopad_within_5_s_when_nng_close_never_returns(void)
{
    const uint64_t size = 32 * MIB;
    char key[4300], wedge[4300], dest[4300], db[4400], u[512];
    validate_error why = {0};
    snprintf(key, sizeof key, "%s/group.key", check_tmpdir());
    snprintf(wedge, sizeof wedge, "%s/wedge", check_tmpdir());
    snprintf(dest, sizeof dest, "%s/out.bin", check_tmpdir());
    uint8_t k[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(k);
    CHECK_INT(peer_group_key_save(k, key, 0, &why), PEER_OK);
    CHECK_INT(test_nginx_put(&web, "r8/stop.bin", (size_t)size, 43), 0);
    faults_url(&web, "/r8/stop.bin", u, sizeof u);

    CHECK_INT(start(check_tmpdir(), key, wedge), 0);
    snprintf(db, sizeof db, "%s/dopa.db", daemon_.state);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);
    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, "stop", DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, u, dest, NULL), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    for (double t0 = faults_now();;) { /* a quarter of it, at 8 MB/s */
        dopa_job_info *info;
        CHECK_INT(dopa_job_get(mgr, &id, &info), DOPA_OK);
        uint64_t got = dopa_job_info_bytes_transferred(info);
        dopa_free(info);
        if (got >= size / 4)
            break;
        CHECK(faults_now() - t0 < 30);
        faults_sleep_ms(20);
    }
    dopa_disconnect(mgr);
    mgr = NULL;

    /* From now on nng_close never returns in dopad. */
    FILE *f = fopen(wedge, "w");
    CHECK(f != NULL && fclose(f) == 0);
    double t0 = faults_now();
    CHECK(kill(daemon_.pid, SIGTERM) == 0);
    int status = 0;
    pid_t done = 0;
    while ((done = waitpid(daemon_.pid, &status, WNOHANG)) == 0 && faults_now() - t0 < 10)
        faults_sleep_ms(10);
    double took = faults_now() - t0;
    if (done == daemon_.pid)
        daemon_.pid = -1;
    printf("  SIGTERM with nng_close wedged: dopad gone after %.2f s, exit status %d\n", took,
           done > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    CHECK(done == daemon_.pid || daemon_.pid == -1);
    CHECK(took < 5.0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* It was wedged (else this test proves nothing), and said so. */
    CHECK(log_has(daemon_.log, "stopping took over"));
    CHECK(unlink(wedge) == 0);

    /* Nothing durable lost: the store is whole, what it counts is right,
     * and the job goes on from there. */
    CHECK(test_db_integrity_ok(db));
    faults_stored stored;
    CHECK_INT(faults_store_read(db, &id, &stored), 0);
    CHECK(stored.found);
    CHECK_INT(faults_check_committed(db, &id, 43, 0, NULL), 0);
    printf("  stored after the stop: %llu of %llu MiB committed, all of them right\n",
           (unsigned long long)(stored.bytes / MIB), (unsigned long long)(size / MIB));
    CHECK(stored.bytes > 0);
    CHECK_INT(start(check_tmpdir(), key, NULL), 0);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);
    CHECK_INT(faults_wait_state(mgr, &id, DOPA_STATE_TRANSFERRED, 60, NULL), 0);
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
    CHECK_INT(faults_file_is(dest, 43, size), 0);
    dopa_disconnect(mgr);
    mgr = NULL;
    CHECK_INT(faults_dopad_stop(&daemon_), 0);
    CHECK(test_db_integrity_ok(db));
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (faults_setup(&web, "faults-stop") != 0)
        return 1;
    atexit(after_case); /* dopad goes before nginx */
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_sigterm_stops_dopad_within_5_s_when_nng_close_never_returns),
                         {0},
                     });
}
