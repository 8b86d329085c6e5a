/*
 * Notifications and validation end to end: the real dopad, callbacks
 * registered through libdopa (run on its thread), the notify command line
 * set through the dopa command line, validator plugins run by
 * dopa-validate, and nginx as the origin. DOPAD, DOPA_CLI, PLUGIN_DIR and
 * MINISIGN_PLUGIN name what the build made.
 */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "dopa.h"

static test_nginx web;
static const char *fixture; /* the scratch directory */
static test_dopad daemon_;
static dopa_manager *mgr;

#define SIZE_A (1024 * 1024 + 77)

static void start(const char *settings)
{
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, check_tmpdir(), settings), 0);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);
}

static void stop(int sig)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    test_dopad_stop(&daemon_, sig);
}

/* What dopad said, when a case fails in a way only it can explain. */
static void show_log(void)
{
    FILE *f = fopen(daemon_.log, "r");
    char line[1024];
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        fprintf(stderr, "  | %s", line);
    if (f != NULL)
        fclose(f);
}

static void after_case(void)
{
    if (mgr != NULL || daemon_.pid > 0)
        stop(SIGTERM);
}

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", web.port, path);
}

/* A job of one file from the origin, not resumed yet. */
static dopa_id job_for(const char *name, const char *path)
{
    char u[256];
    url(u, sizeof u, path);
    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, name, DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, u, check_path(name), NULL), DOPA_OK);
    return id;
}

/* Waits until the job is in `state`; fails after `limit` seconds. Returns
 * its information then, for dopa_free(). */
static dopa_job_info *wait_state(const dopa_id *id, int state, double limit)
{
    dopa_job_info *j;
    double end = check_now() + limit;
    for (;;) {
        CHECK_INT(dopa_job_get(mgr, id, &j), DOPA_OK);
        if (dopa_job_info_state(j) == state)
            return j;
        if (check_now() > end) {
            fprintf(stderr, "  job is %s, waited for %s (%s)\n",
                    dopa_state_name(dopa_job_info_state(j)), dopa_state_name(state),
                    dopa_job_info_has_error(j) ? dopa_job_info_error_message(j) : "no error");
            CHECK(0);
        }
        dopa_free(j);
        check_sleep_ms(20);
    }
}

/* ------------------------------------------------------------------ */
/* What the callbacks saw                                             */

#define MAX_SEEN 64

static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int kind[MAX_SEEN];
    dopa_id job[MAX_SEEN];
    double at[MAX_SEEN];
    size_t n;
    int fail_transferred; /* JobTransferred fails this many more times */
    int hold;             /* JobTransferred waits while this is set */
    int reject;           /* file_transferred judges the file invalid */
    int disconnect;       /* JobTransferred disconnects its manager first */
    char temp[DOPA_PATH_MAX + 1];
} seen = {.lock = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER};

static void reset_seen(void)
{
    pthread_mutex_lock(&seen.lock);
    seen.n = 0;
    seen.fail_transferred = seen.hold = seen.reject = seen.disconnect = 0;
    seen.temp[0] = '\0';
    pthread_mutex_unlock(&seen.lock);
}

static void record(int kind, const dopa_id *job)
{
    pthread_mutex_lock(&seen.lock);
    if (seen.n < MAX_SEEN) {
        seen.kind[seen.n] = kind;
        seen.job[seen.n] = *job;
        seen.at[seen.n] = check_now();
        seen.n++;
    }
    pthread_cond_broadcast(&seen.changed);
    pthread_mutex_unlock(&seen.lock);
}

static int count(int kind, const dopa_id *job)
{
    int n = 0;
    pthread_mutex_lock(&seen.lock);
    for (size_t i = 0; i < seen.n; i++)
        n += seen.kind[i] == kind && memcmp(seen.job[i].bytes, job->bytes, 16) == 0;
    pthread_mutex_unlock(&seen.lock);
    return n;
}

/* Waits until the callbacks saw `n` events of a kind for the job. */
static int await_count(int kind, const dopa_id *job, int n, double limit)
{
    double end = check_now() + limit;
    while (count(kind, job) < n && check_now() < end)
        check_sleep_ms(20);
    return count(kind, job);
}

enum { TRANSFERRED = 1, ERROR = 2, MODIFICATION = 3, FILE_TRANSFERRED = 4 };

static int on_transferred(void *ctx, dopa_manager *m, const dopa_id *job)
{
    (void)ctx;
    pthread_mutex_lock(&seen.lock);
    while (seen.hold)
        pthread_cond_wait(&seen.changed, &seen.lock);
    int fail = seen.fail_transferred > 0;
    if (fail)
        seen.fail_transferred--;
    int disconnect = seen.disconnect;
    pthread_mutex_unlock(&seen.lock);
    if (disconnect)
        dopa_disconnect(m);
    record(TRANSFERRED, job);
    return fail ? -1 : 0;
}

static int on_error(void *ctx, dopa_manager *m, const dopa_id *job)
{
    (void)ctx;
    (void)m;
    record(ERROR, job);
    return 0;
}

static int on_modification(void *ctx, dopa_manager *m, const dopa_id *job)
{
    (void)ctx;
    (void)m;
    record(MODIFICATION, job);
    return 0;
}

/* Judges the file from its temporary name, as a vendor's hook would. */
static int on_file(void *ctx, dopa_manager *m, const dopa_id *job, uint32_t index,
                   const dopa_file_info *info)
{
    (void)ctx;
    pthread_mutex_lock(&seen.lock);
    snprintf(seen.temp, sizeof seen.temp, "%s", dopa_file_info_temporary_name(info));
    int reject = seen.reject;
    pthread_mutex_unlock(&seen.lock);
    struct stat st;
    int whole = stat(dopa_file_info_temporary_name(info), &st) == 0 &&
                (uint64_t)st.st_size == dopa_file_info_bytes_total(info);
    record(FILE_TRANSFERRED, job);
    return dopa_file_set_validation_state(m, job, index, whole && !reject) == DOPA_OK ? 0 : -1;
}

static const dopa_callbacks callbacks = {
    .size = sizeof callbacks,
    .job_transferred = on_transferred,
    .job_error = on_error,
    .job_modification = on_modification,
    .file_transferred = on_file,
};

/* ------------------------------------------------------------------ */

static void test_each_event_reaches_the_callback_once(void)
{
    reset_seen();
    start(NULL);
    dopa_id id = job_for("once", "/data/a.bin");
    CHECK_INT(
        dopa_job_set_notify_flags(mgr, &id, DOPA_NOTIFY_DEFAULT | DOPA_NOTIFY_JOB_MODIFICATION),
        DOPA_OK);
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    CHECK_INT(await_count(TRANSFERRED, &id, 1, 20), 1);
    CHECK(await_count(MODIFICATION, &id, 1, 5) >= 1); /* coalesced: may come a little later */
    char u[256];
    url(u, sizeof u, "/data/missing.bin");
    dopa_id bad;
    CHECK_INT(dopa_job_create(mgr, "broken", DOPA_JOB_DOWNLOAD, &bad), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &bad, u, check_path("broken"), NULL), DOPA_OK);
    CHECK_INT(dopa_job_set_callbacks(mgr, &bad, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &bad), DOPA_OK);
    CHECK_INT(await_count(ERROR, &bad, 1, 20), 1);
    /* Once each: nothing more comes. */
    check_sleep_ms(2500);
    CHECK_INT(count(TRANSFERRED, &id), 1);
    CHECK_INT(count(ERROR, &bad), 1);
    CHECK_INT(count(TRANSFERRED, &bad), 0);
    CHECK_INT(count(ERROR, &id), 0);
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
    stop(SIGTERM);
}

static void test_a_callback_failing_three_times_sees_transferred_four_times(void)
{
    reset_seen();
    seen.fail_transferred = 3;
    start("notify-retry = 0.25");
    dopa_id id = job_for("stubborn", "/data/a.bin");
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    CHECK_INT(await_count(TRANSFERRED, &id, 4, 30), 4);
    check_sleep_ms(2500);
    CHECK_INT(count(TRANSFERRED, &id), 4);
    /* The interval grew: about 0.25, 0.5 and 1 s between the calls. */
    double gaps[3];
    for (int i = 0; i < 3; i++)
        gaps[i] = seen.at[i + 1] - seen.at[i];
    printf("  JobTransferred again after %.2f, %.2f and %.2f s\n", gaps[0], gaps[1], gaps[2]);
    CHECK(gaps[0] >= 0.2 && gaps[1] >= 0.45 && gaps[2] >= 0.95);
    CHECK(gaps[1] > gaps[0] && gaps[2] > gaps[1]);
    stop(SIGTERM);
}

static void test_unanswered_events_come_again_after_a_kill(void)
{
    reset_seen();
    start(NULL);
    dopa_id told = job_for("told", "/data/a.bin");
    CHECK_INT(dopa_job_set_callbacks(mgr, &told, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &told), DOPA_OK);
    CHECK_INT(await_count(TRANSFERRED, &told, 1, 20), 1);
    /* The second job's callback is in progress when dopad is killed. */
    pthread_mutex_lock(&seen.lock);
    seen.hold = 1;
    pthread_mutex_unlock(&seen.lock);
    dopa_id held = job_for("held", "/data/a.bin");
    CHECK_INT(dopa_job_set_callbacks(mgr, &held, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &held), DOPA_OK);
    dopa_free(wait_state(&held, DOPA_STATE_TRANSFERRED, 20));
    check_sleep_ms(500); /* handed to the callback, which waits */
    test_dopad_stop(&daemon_, SIGKILL);
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, check_tmpdir(), NULL), 0);
    /* The callback ends; its answer finds a dopad that never heard of this
     * client. The manager registers again and hears what was unanswered. */
    pthread_mutex_lock(&seen.lock);
    seen.hold = 0;
    pthread_cond_broadcast(&seen.changed);
    pthread_mutex_unlock(&seen.lock);
    CHECK_INT(await_count(TRANSFERRED, &held, 2, 20), 2);
    check_sleep_ms(2000);
    CHECK_INT(count(TRANSFERRED, &held), 2);
    CHECK_INT(count(TRANSFERRED, &told), 1); /* answered before the kill: not again */
    stop(SIGTERM);
}

/* CPU seconds a process used so far. */
static double cpu_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    unsigned long long user = 0, sys = 0;
    char *p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &user, &sys) != 2)
        return -1;
    return (double)(user + sys) / (double)sysconf(_SC_CLK_TCK);
}

static void test_a_client_whose_jobs_are_gone_rests(void)
{
    reset_seen();
    start(NULL);
    dopa_id id = job_for("gone", "/data/a.bin");
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &callbacks), DOPA_OK);
    dopa_manager *other = NULL;
    CHECK_INT(dopa_connect(daemon_.sock, &other), DOPA_OK);
    CHECK_INT(dopa_job_cancel(other, &id), DOPA_OK);
    dopa_disconnect(other);
    /* dopad restarts: the client registers again, finds nothing, and
     * then neither it nor dopad spins. */
    test_dopad_stop(&daemon_, SIGTERM);
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, check_tmpdir(), NULL), 0);
    check_sleep_ms(1500);
    double before = cpu_of(daemon_.pid);
    check_sleep_ms(3000);
    double used = cpu_of(daemon_.pid) - before;
    printf("  dopad used %.2f s of CPU in 3 s\n", used);
    CHECK(before >= 0 && used < 0.3);
    stop(SIGTERM);
}

static void test_a_callback_may_disconnect_its_manager(void)
{
    reset_seen();
    start(NULL);
    dopa_id id = job_for("farewell", "/data/a.bin");
    dopa_manager *own = NULL;
    CHECK_INT(dopa_connect(daemon_.sock, &own), DOPA_OK);
    pthread_mutex_lock(&seen.lock);
    seen.disconnect = 1;
    pthread_mutex_unlock(&seen.lock);
    CHECK_INT(dopa_job_set_callbacks(own, &id, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    /* dopa_disconnect returns in the callback; the manager's thread then
     * ends and frees it (the sanitizer builds see a leak otherwise). */
    CHECK_INT(await_count(TRANSFERRED, &id, 1, 20), 1);
    dopa_free(wait_state(&id, DOPA_STATE_TRANSFERRED, 5));
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
    stop(SIGTERM);
}

static void test_a_client_judges_each_file(void)
{
    reset_seen();
    start(NULL);
    dopa_id good = job_for("good", "/data/a.bin");
    CHECK_INT(
        dopa_job_set_notify_flags(mgr, &good, DOPA_NOTIFY_DEFAULT | DOPA_NOTIFY_FILE_TRANSFERRED),
        DOPA_OK);
    CHECK_INT(dopa_job_set_callbacks(mgr, &good, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &good), DOPA_OK);
    dopa_free(wait_state(&good, DOPA_STATE_TRANSFERRED, 20));
    CHECK_INT(count(FILE_TRANSFERRED, &good), 1);
    CHECK_HAS(seen.temp, ".part");
    CHECK_INT(await_count(TRANSFERRED, &good, 1, 10), 1);

    /* Rejected: content from the origin alone, so the job fails. */
    pthread_mutex_lock(&seen.lock);
    seen.reject = 1;
    pthread_mutex_unlock(&seen.lock);
    dopa_id bad = job_for("bad", "/data/a.bin");
    CHECK_INT(dopa_job_set_notify_flags(mgr, &bad,
                                        DOPA_NOTIFY_ALL & ~DOPA_NOTIFY_DISABLE &
                                            ~DOPA_NOTIFY_JOB_MODIFICATION),
              DOPA_OK);
    CHECK_INT(dopa_job_set_callbacks(mgr, &bad, &callbacks), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &bad), DOPA_OK);
    dopa_job_info *j = wait_state(&bad, DOPA_STATE_ERROR, 20);
    CHECK_INT(dopa_job_info_error_context(j), DOPA_CONTEXT_VALIDATION);
    CHECK_INT(dopa_job_info_error_code(j), DOPA_EVALIDATION);
    CHECK_INT(dopa_job_info_bytes_transferred(j), 0);
    dopa_free(j);
    CHECK_INT(await_count(ERROR, &bad, 1, 10), 1);
    CHECK_INT(count(TRANSFERRED, &bad), 0);
    dopa_file_info **files;
    size_t n;
    CHECK_INT(dopa_job_list_files(mgr, &bad, &files, &n), DOPA_OK);
    CHECK_INT(n, 1);
    CHECK_INT(dopa_file_info_validation(files[0]), DOPA_VALIDATION_INVALID);
    dopa_free(files);
    stop(SIGTERM);
}

/* ------------------------------------------------------------------ */
/* The command line                                                   */

static int cli_as(uid_t uid, gid_t gid, char *out, size_t len, ...)
{
    const char *argv[32] = {DOPA_CLI, "--socket", daemon_.sock};
    int n = 3;
    va_list ap;
    va_start(ap, len);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return test_run(argv, out, len, 60, uid, gid);
}

static void test_the_command_line_runs_as_the_owner_when_no_client_listens(void)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    int created = 0;
    if (geteuid() == 0)
        CHECK_INT(test_user(&uid, &gid, &created), 0);
    else
        printf("  (not root: the job's owner is this user)\n");
    CHECK(chmod(check_tmpdir(), 0755) == 0);
    char dir[1024], dest[1100], said[1100], script[1400], out[4096], id[64];
    snprintf(dir, sizeof dir, "%.900s/theirs", check_tmpdir());
    CHECK(mkdir(dir, 0755) == 0);
    CHECK(chown(dir, uid, gid) == 0);
    snprintf(dest, sizeof dest, "%s/file", dir);
    snprintf(said, sizeof said, "%s/said", dir);
    snprintf(script, sizeof script, "echo \"$(id -u) $DOPA_EVENT $DOPA_JOB_ID\" >> %s", said);
    start(NULL);
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "create", "commanded", (char *)NULL), 0);
    CHECK(sscanf(out, "%63s", id) == 1);
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "add-file", id, u, dest, (char *)NULL), 0);
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "set-notify-cmdline", id, "/bin/sh", "-c", script,
                     (char *)NULL),
              0);
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "resume", id, (char *)NULL), 0);
    char want[256];
    snprintf(want, sizeof want, "%u JobTransferred %s\n", (unsigned)uid, id);
    double end = check_now() + 20;
    char got[1024] = "";
    while (check_now() < end && strstr(got, want) == NULL) {
        FILE *f = fopen(said, "r");
        if (f != NULL) {
            got[fread(got, 1, sizeof got - 1, f)] = '\0';
            fclose(f);
        }
        check_sleep_ms(50);
    }
    if (strcmp(got, want) != 0)
        show_log();
    CHECK_STR(got, want); /* once, as the owner, with the job's id */
    stop(SIGTERM);
    if (created)
        test_user_remove();
}

/* ------------------------------------------------------------------ */
/* Validator plugins                                                  */

/* A plugin directory holding just `names` (links to the built plugins),
 * and a minisign.conf when `conf` is given. */
static const char *plugin_dir(const char *tag, const char *const *paths, const char *conf)
{
    static char dir[1024];
    snprintf(dir, sizeof dir, "%.900s/plugins-%s", check_tmpdir(), tag);
    CHECK(mkdir(dir, 0755) == 0);
    for (size_t i = 0; paths[i] != NULL; i++) {
        char dst[1200];
        snprintf(dst, sizeof dst, "%s/%s", dir, strrchr(paths[i], '/') + 1);
        CHECK(symlink(paths[i], dst) == 0);
    }
    if (conf != NULL) {
        char path[1200];
        snprintf(path, sizeof path, "%s/minisign.conf", dir);
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        fputs(conf, f);
        fclose(f);
    }
    return dir;
}

/* No dopa-validate (or anything else) left running under dopad. */
static int children_of(pid_t pid)
{
    DIR *d = opendir("/proc");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *close_paren = strrchr(buf, ')');
        int ppid = 0;
        if (close_paren != NULL && sscanf(close_paren + 2, "%*c %d", &ppid) == 1 && ppid == pid)
            n++;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static void test_a_crashing_or_hanging_plugin_leaves_dopad_running(void)
{
    const struct {
        const char *plugin, *settings, *said, *or_said;
    } cases[] = {
        /* (Under AddressSanitizer the helper reports the SIGSEGV and exits
         * instead of dying of it.) */
        {PLUGIN_DIR "/crashes.so", "", "crashed (signal 11)", "failed (no verdict)"},
        {PLUGIN_DIR "/hangs.so", "plugin-timeout = 1\n", "no verdict in 1 s", NULL},
    };
    for (size_t i = 0; i < 2; i++) {
        const char *paths[] = {cases[i].plugin, NULL};
        char settings[2048];
        snprintf(settings, sizeof settings, "plugin-dir = %s\n%s",
                 plugin_dir(i == 0 ? "crash" : "hang", paths, NULL), cases[i].settings);
        start(settings);
        dopa_id id = job_for(i == 0 ? "crash" : "hang", "/data/a.bin");
        CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
        dopa_job_info *j = wait_state(&id, DOPA_STATE_ERROR, 30);
        const char *said = dopa_job_info_error_message(j);
        CHECK_INT(dopa_job_info_error_context(j), DOPA_CONTEXT_VALIDATION);
        if (cases[i].or_said == NULL || strstr(said, cases[i].or_said) == NULL)
            CHECK_HAS(said, cases[i].said);
        /* dopad goes on, with nothing left running, and the job keeps
         * its bytes for another try. */
        uint32_t uid;
        CHECK_INT(dopa_whoami(mgr, &uid, NULL, 0), DOPA_OK);
        /* The killed helper is reaped on a later turn, within a second or
         * two even on a loaded machine. */
        double end = check_now() + 5;
        while (children_of(daemon_.pid) != 0 && check_now() < end)
            check_sleep_ms(50);
        CHECK_INT(children_of(daemon_.pid), 0);
        CHECK_INT(dopa_job_info_bytes_transferred(j), SIZE_A);
        dopa_free(j);
        stop(SIGTERM);
    }
}

static void test_minisign_signatures_decide_end_to_end(void)
{
    char out[4096], pub[1100], sec[1100], data[1100];
    snprintf(pub, sizeof pub, "%.900s/key.pub", check_tmpdir());
    snprintf(sec, sizeof sec, "%.900s/key.sec", check_tmpdir());
    const char *gen[] = {"/usr/bin/minisign", "-G", "-W", "-p", pub, "-s", sec, NULL};
    if (access(gen[0], X_OK) != 0) {
        fprintf(stderr, "  minisign is not installed: run tools/install-deps test\n");
        CHECK(0);
    }
    CHECK_INT(test_run(gen, out, sizeof out, 30, TEST_AS_ME, 0), 0);
    /* signed.bin is signed; forged.bin carries signed.bin's signature. */
    CHECK(test_nginx_put(&web, "data/signed.bin", 300000, 41) == 0);
    CHECK(test_nginx_put(&web, "data/forged.bin", 300000, 42) == 0);
    snprintf(data, sizeof data, "%s/data/signed.bin", web.root);
    const char *sign[] = {"/usr/bin/minisign", "-S", "-s", sec, "-m", data, NULL};
    CHECK_INT(test_run(sign, out, sizeof out, 30, TEST_AS_ME, 0), 0);
    char from[1200], to[1200];
    snprintf(from, sizeof from, "%s.minisig", data);
    snprintf(to, sizeof to, "%s/data/forged.bin.minisig", web.root);
    CHECK(link(from, to) == 0);
    chmod(from, 0644);
    chmod(to, 0644);
    /* The key: the second line of the .pub file. */
    FILE *f = fopen(pub, "r");
    char line[256] = "", key[256] = "";
    CHECK(f != NULL && fgets(line, sizeof line, f) && fgets(key, sizeof key, f));
    fclose(f);
    char conf[512];
    snprintf(conf, sizeof conf, "public-key = %s", key);
    const char *paths[] = {MINISIGN_PLUGIN, NULL};
    char settings[2048];
    snprintf(settings, sizeof settings, "plugin-dir = %s\n", plugin_dir("minisign", paths, conf));
    start(settings);
    dopa_id good = job_for("signed", "/data/signed.bin");
    dopa_id bad = job_for("forged", "/data/forged.bin");
    CHECK_INT(dopa_job_resume(mgr, &good), DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &bad), DOPA_OK);
    dopa_free(wait_state(&good, DOPA_STATE_TRANSFERRED, 30));
    dopa_job_info *j = wait_state(&bad, DOPA_STATE_ERROR, 30);
    CHECK_INT(dopa_job_info_error_context(j), DOPA_CONTEXT_VALIDATION);
    CHECK_HAS(dopa_job_info_error_message(j), "minisign");
    CHECK_INT(dopa_job_info_bytes_transferred(j), 0); /* nothing of it is kept */
    dopa_free(j);
    CHECK_INT(dopa_job_complete(mgr, &good, NULL), DOPA_OK);
    struct stat st;
    CHECK(stat(check_path("signed"), &st) == 0 && st.st_size == 300000);
    stop(SIGTERM);
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_nginx_stop(&web);
}

static int setup(void)
{
    if ((fixture = test_scratch_dir("notify")) == NULL)
        return -1;
    atexit(teardown);
    if (test_nginx_start(&web, fixture, NULL) != 0)
        return -1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/data", web.root);
    mkdir(dir, 0755);
    return test_nginx_put(&web, "data/a.bin", SIZE_A, 1);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_each_event_reaches_the_callback_once),
                         CASE(test_a_callback_failing_three_times_sees_transferred_four_times),
                         CASE(test_unanswered_events_come_again_after_a_kill),
                         CASE(test_a_client_judges_each_file),
                         CASE(test_a_callback_may_disconnect_its_manager),
                         CASE(test_a_client_whose_jobs_are_gone_rests),
                         CASE(test_the_command_line_runs_as_the_owner_when_no_client_listens),
                         CASE(test_a_crashing_or_hanging_plugin_leaves_dopad_running),
                         CASE(test_minisign_signatures_decide_end_to_end),
                         {0},
                     });
}
