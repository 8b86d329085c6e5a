/* The notification center with a fake owner: delivery, redelivery with a
 * growing interval, command lines, coalescing, the per-user limit. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "../check.h"
#include "callback.h"

/* The fake owner: a clock the test moves, clients per job, commands. */
static int64_t clock_ms;
static int has_client[8];     /* by job number (job[0]) */
static const char *cmd[8][4]; /* argv by job number */
static uint64_t offered[64];  /* event ids in the order offered */
static int n_offered;
static uint64_t finished[64];
static int n_finished;

static int64_t now(void *ctx)
{
    (void)ctx;
    return clock_ms;
}

static int offer(void *ctx, const cb_event *ev)
{
    (void)ctx;
    if (!has_client[ev->job[0]])
        return 0;
    offered[n_offered++] = ev->id;
    return 1;
}

static size_t command(void *ctx, const cb_event *ev, const char **argv, size_t max)
{
    (void)ctx;
    size_t n = 0;
    while (cmd[ev->job[0]][n] != NULL && n + 1 < max) {
        argv[n] = cmd[ev->job[0]][n];
        n++;
    }
    argv[n] = NULL;
    return n;
}

static void on_finished(void *ctx, const cb_event *ev)
{
    (void)ctx;
    finished[n_finished++] = ev->id;
}

static cb_center *center(void)
{
    clock_ms = 1000000;
    memset(has_client, 0, sizeof has_client);
    memset(cmd, 0, sizeof cmd);
    n_offered = n_finished = 0;
    cb_owner o = {.now_ms = now, .offer = offer, .command = command, .finished = on_finished};
    cb_config cfg = {.retry_first_ms = 1000, .retry_max_ms = 8000, .command_timeout_ms = 2000};
    cb_center *c = NULL;
    CHECK_INT(cb_center_new(&cfg, &o, &c), 0);
    return c;
}

static cb_event event(uint64_t id, int job, uint32_t user, int kind)
{
    cb_event ev = {.id = id, .user = user, .kind = kind, .file = -1};
    ev.job[0] = (uint8_t)job;
    return ev;
}

static void test_an_event_is_delivered_once(void)
{
    cb_center *c = center();
    has_client[1] = 1;
    cb_event ev = event(7, 1, 1000, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &ev), 0);
    CHECK(cb_has(c, ev.job, CB_JOB_ERROR, -1));
    CHECK_INT(cb_post(c, &ev), 1); /* the same news twice is one event */
    cb_step(c);
    CHECK_INT(n_offered, 1);
    CHECK_INT(offered[0], 7);
    cb_step(c);
    CHECK_INT(n_offered, 1); /* outstanding: not offered twice */
    cb_done(c, 7, 0);        /* even a failed JobError is not repeated */
    CHECK_INT(n_finished, 1);
    clock_ms += 100000;
    cb_step(c);
    CHECK_INT(n_offered, 1);
    CHECK_INT(cb_pending(c), 0);
    cb_center_free(c);
}

static void test_transferred_is_repeated_with_a_growing_interval(void)
{
    cb_center *c = center();
    has_client[1] = 1;
    cb_event ev = event(9, 1, 1000, CB_JOB_TRANSFERRED);
    CHECK_INT(cb_post(c, &ev), 0);
    int64_t start = clock_ms, offered_at[8];
    for (int i = 0; i < 4; i++) {
        /* Step the clock in 100 ms until it is offered again. */
        int before = n_offered;
        while (n_offered == before) {
            cb_step(c);
            if (n_offered == before)
                clock_ms += 100;
            CHECK(clock_ms - start < 60000);
        }
        offered_at[i] = clock_ms;
        cb_done(c, 9, i == 3); /* fails three times, then succeeds */
    }
    CHECK_INT(n_offered, 4);
    CHECK_INT(n_finished, 1);
    CHECK_INT(offered_at[1] - offered_at[0], 1000);
    CHECK_INT(offered_at[2] - offered_at[1], 2000);
    CHECK_INT(offered_at[3] - offered_at[2], 4000);
    cb_center_free(c);
}

static void test_a_failed_transferred_goes_to_the_command(void)
{
    cb_center *c = center();
    has_client[2] = 1;
    const char *marker = check_path("ran");
    char script[512];
    snprintf(script, sizeof script, "echo \"$DOPA_EVENT $DOPA_JOB_ID\" > %s", marker);
    cmd[2][0] = "/bin/sh";
    cmd[2][1] = "-c";
    cmd[2][2] = script;
    cb_event ev = event(11, 2, 0, CB_JOB_TRANSFERRED);
    ev.job[15] = 0xab;
    CHECK_INT(cb_post(c, &ev), 0);
    cb_step(c);
    CHECK_INT(n_offered, 1);
    cb_done(c, 11, 0);
    for (int i = 0; i < 200 && n_finished == 0; i++) {
        cb_step(c);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_INT(n_finished, 1);
    CHECK_INT(n_offered, 1); /* the callback is not called again */
    char got[128] = "";
    FILE *f = fopen(marker, "r");
    CHECK(f != NULL && fgets(got, sizeof got, f) != NULL);
    fclose(f);
    CHECK_STR(got, "JobTransferred 02000000-0000-0000-0000-0000000000ab\n");
    cb_center_free(c);
}

static void test_without_a_client_the_command_runs(void)
{
    cb_center *c = center();
    const char *marker = check_path("touched");
    cmd[3][0] = "/usr/bin/touch";
    cmd[3][1] = marker;
    cb_event ev = event(12, 3, 0, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &ev), 0);
    for (int i = 0; i < 200 && n_finished == 0; i++) {
        cb_step(c);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_INT(n_finished, 1);
    struct stat st;
    CHECK(stat(marker, &st) == 0);
    /* No client and no command: parked, costing nothing, until the job
     * gets a client. */
    cb_event later = event(13, 4, 0, CB_JOB_TRANSFERRED);
    CHECK_INT(cb_post(c, &later), 0);
    CHECK_INT(cb_step(c), -1);
    clock_ms += 5000;
    CHECK_INT(cb_step(c), -1);
    CHECK_INT(cb_pending(c), 1);
    has_client[4] = 1;
    cb_step(c);
    CHECK_INT(n_offered, 0); /* not before it is kicked */
    cb_kick(c, later.job);
    cb_step(c);
    CHECK_INT(n_offered, 1);
    cb_center_free(c);
}

static void test_a_hanging_command_is_killed(void)
{
    cb_center *c = center();
    cmd[5][0] = "/bin/sleep";
    cmd[5][1] = "100";
    cb_event ev = event(14, 5, 0, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &ev), 0);
    cb_step(c);
    CHECK_INT(n_finished, 0);
    clock_ms += 2500; /* past command_timeout_ms */
    for (int i = 0; i < 500 && n_finished == 0; i++) {
        cb_step(c); /* killed, then reaped */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_INT(n_finished, 1);
    CHECK_INT(cb_pending(c), 0);
    cb_center_free(c);
}

/* Runs a job's command to its end (or its timeout) on the real clock. */
static void run_to_end(cb_center *c, int job, double limit)
{
    cb_event ev = event(40 + (uint64_t)job, job, 0, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &ev), 0);
    int before = n_finished;
    for (int i = 0; i < limit * 100 && n_finished == before; i++) {
        cb_step(c);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_INT(n_finished, before + 1);
}

static void test_commands_start_clean_and_die_whole(void)
{
    cb_center *c = center();
    /* No signal blocked or ignored, whatever the owner had. */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    signal(SIGPIPE, SIG_IGN);
    char script[1200];
    snprintf(script, sizeof script, "grep -E '^Sig(Blk|Ign)' /proc/self/status > %s",
             check_path("signals"));
    cmd[6][0] = "/bin/sh";
    cmd[6][1] = "-c";
    cmd[6][2] = script;
    run_to_end(c, 6, 5);
    pthread_sigmask(SIG_UNBLOCK, &block, NULL);
    signal(SIGPIPE, SIG_DFL);
    FILE *f = fopen(check_path("signals"), "r");
    CHECK(f != NULL);
    char text[256] = "";
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
    unsigned long long blocked = 1, ignored = 1;
    CHECK(sscanf(text, "SigBlk:\t%llx\nSigIgn:\t%llx", &blocked, &ignored) == 2);
    CHECK_INT(blocked, 0);
    /* glibc's posix_spawn leaves its own two signals (32 and 33, for
     * threads) ignored, and a program's libc sets them up again. */
    CHECK_INT(ignored & ~0x180000000ull, 0);

    /* Killed for its time with what it started in the background. */
    snprintf(script, sizeof script, "sleep 100 & echo $! > %s; wait", check_path("child"));
    cmd[7][0] = "/bin/sh";
    cmd[7][1] = "-c";
    cmd[7][2] = script;
    cb_event ev = event(50, 7, 0, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &ev), 0);
    long child = 0;
    for (int i = 0; i < 500 && child == 0; i++) {
        cb_step(c);
        f = fopen(check_path("child"), "r");
        if (f != NULL) {
            if (fscanf(f, "%ld", &child) != 1)
                child = 0;
            fclose(f);
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(child > 0);
    int before = n_finished;
    clock_ms += 2500;
    for (int i = 0; i < 500 && n_finished == before; i++) {
        cb_step(c);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_INT(n_finished, before + 1);
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) {
        gone = kill((pid_t)child, 0) != 0 && errno == ESRCH;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(gone); /* (reaped by init once killed) */
    cb_center_free(c);
}

static void test_restored_events_wait_for_clients_and_are_not_merged(void)
{
    cb_center *c = center();
    has_client[1] = 1;
    cb_event a = event(60, 1, 0, CB_JOB_ERROR), b = event(61, 1, 0, CB_JOB_ERROR);
    CHECK_INT(cb_restore(c, &a, 10000), 0);
    CHECK_INT(cb_restore(c, &b, 10000), 0);
    cb_step(c);
    CHECK_INT(n_offered, 0);
    clock_ms += 10000;
    cb_step(c);
    CHECK_INT(n_offered, 2);
    /* A client that registers ends the wait at once. */
    cb_event d = event(63, 2, 0, CB_JOB_ERROR);
    CHECK_INT(cb_restore(c, &d, 10000), 0);
    has_client[2] = 1;
    cb_step(c);
    CHECK_INT(n_offered, 2);
    cb_kick(c, d.job);
    cb_step(c);
    CHECK_INT(n_offered, 3);
    /* An event handed out does not swallow a new one of the same kind. */
    cb_event again = event(62, 1, 0, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &again), 0);
    CHECK_INT(cb_post(c, &again), 1); /* but one still waiting does */
    cb_center_free(c);
}

static void test_modifications_are_coalesced(void)
{
    cb_center *c = center();
    has_client[1] = 1;
    for (uint64_t i = 0; i < 10; i++) {
        cb_event ev = event(100 + i, 1, 1000, CB_JOB_MODIFICATION);
        CHECK_INT(cb_post(c, &ev), i == 0 ? 0 : 1);
    }
    CHECK_INT(cb_pending(c), 1);
    cb_step(c);
    CHECK_INT(n_offered, 1);
    cb_done(c, 100, 1);
    /* The next one waits for the interval. */
    cb_event ev = event(200, 1, 1000, CB_JOB_MODIFICATION);
    CHECK_INT(cb_post(c, &ev), 0);
    cb_step(c);
    CHECK_INT(n_offered, 1);
    clock_ms += 1000;
    cb_step(c);
    CHECK_INT(n_offered, 2);
    /* Without a client, a modification is dropped, not kept. */
    cb_done(c, 200, 1);
    has_client[1] = 0;
    ev = event(300, 1, 1000, CB_JOB_MODIFICATION);
    CHECK_INT(cb_post(c, &ev), 0);
    clock_ms += 1000;
    cb_step(c);
    CHECK_INT(cb_pending(c), 0);
    cb_center_free(c);
}

static void test_a_stuck_user_does_not_hold_up_another(void)
{
    cb_center *c = center();
    has_client[1] = has_client[2] = has_client[3] = has_client[4] = has_client[5] = 1;
    has_client[6] = 1;
    /* Five events of user 1000, whose client never answers... */
    for (int j = 1; j <= 5; j++) {
        cb_event ev = event((uint64_t)j, j, 1000, CB_JOB_ERROR);
        CHECK_INT(cb_post(c, &ev), 0);
    }
    /* ...and one of user 2000. */
    cb_event other = event(6, 6, 2000, CB_JOB_ERROR);
    CHECK_INT(cb_post(c, &other), 0);
    cb_step(c);
    CHECK_INT(n_offered, 5); /* four of 1000, and 2000's */
    int fifth = 0, others = 0;
    for (int i = 0; i < n_offered; i++) {
        fifth += offered[i] == 5;
        others += offered[i] == 6;
    }
    CHECK_INT(fifth, 0);
    CHECK_INT(others, 1);
    cb_done(c, 1, 1); /* one of 1000's returns: the fifth goes */
    cb_step(c);
    CHECK_INT(n_offered, 6);
    CHECK_INT(offered[5], 5);
    cb_center_free(c);
}

static void test_forgetting_a_job_drops_its_events(void)
{
    cb_center *c = center();
    cb_event a = event(1, 1, 0, CB_JOB_TRANSFERRED), b = event(2, 2, 0, CB_JOB_TRANSFERRED);
    CHECK_INT(cb_post(c, &a), 0);
    CHECK_INT(cb_post(c, &b), 0);
    cb_forget_job(c, a.job);
    CHECK_INT(cb_pending(c), 1);
    CHECK_INT(n_finished, 1);
    CHECK_INT(finished[0], 1);
    cb_center_free(c);
}

static void test_flags_select_events(void)
{
    CHECK(cb_wanted(CB_NOTIFY_DEFAULT, CB_JOB_TRANSFERRED));
    CHECK(cb_wanted(CB_NOTIFY_DEFAULT, CB_JOB_ERROR));
    CHECK(!cb_wanted(CB_NOTIFY_DEFAULT, CB_JOB_MODIFICATION));
    CHECK(!cb_wanted(CB_NOTIFY_DEFAULT, CB_FILE_TRANSFERRED));
    CHECK(!cb_wanted(CB_NOTIFY_ALL, 99));
    CHECK(!cb_wanted(CB_NOTIFY_ALL | CB_NOTIFY_DISABLE, CB_JOB_TRANSFERRED));
    CHECK_STR(cb_kind_name(CB_FILE_TRANSFERRED), "FileTransferred");
}

static void test_commands_run_as_the_user(void)
{
    if (geteuid() != 0) {
        printf("  skipped: needs root to run a command as another user\n");
        return;
    }
    CHECK(chmod(check_tmpdir(), 0777) == 0);
    const char *marker = check_path("whoami");
    char script[600];
    snprintf(script, sizeof script, "id -u > %s", marker);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    pid_t pid = cb_spawn_as(65534, argv, NULL, -1);
    CHECK(pid > 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char got[32] = "";
    FILE *f = fopen(marker, "r");
    CHECK(f != NULL && fgets(got, sizeof got, f) != NULL);
    fclose(f);
    CHECK_STR(got, "65534\n");
    const char *relative[] = {"sh", "-c", "true", NULL};
    CHECK(cb_spawn_as(0, relative, NULL, -1) < 0); /* no PATH search */
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_an_event_is_delivered_once),
                         CASE(test_transferred_is_repeated_with_a_growing_interval),
                         CASE(test_a_failed_transferred_goes_to_the_command),
                         CASE(test_without_a_client_the_command_runs),
                         CASE(test_a_hanging_command_is_killed),
                         CASE(test_commands_start_clean_and_die_whole),
                         CASE(test_restored_events_wait_for_clients_and_are_not_merged),
                         CASE(test_modifications_are_coalesced),
                         CASE(test_a_stuck_user_does_not_hold_up_another),
                         CASE(test_forgetting_a_job_drops_its_events),
                         CASE(test_flags_select_events),
                         CASE(test_commands_run_as_the_user),
                         {0},
                     });
}
