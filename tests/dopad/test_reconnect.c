/*
 * A long-lived libdopa manager outlives a storm of dopad restarts. dopad is
 * killed (-9) and started again many times, 50-300 ms apart, often before
 * it answers; and between some of the restarts the control socket is held
 * by a listener that accepts each connection and closes it at once, which
 * is what a client meets when dopad is killed between accept() and nng's
 * handshake (nng 1.5's dialer gave up for good on such a connection). After
 * the last start the manager, which registered callbacks for a job before
 * the storm, must answer calls and hear the job's JobTransferred within
 * seconds. DOPAD names the daemon the build made; DOPA_RECONNECT_SEED
 * replays a run.
 *
 * Then the manager ends: dopa_disconnect returns within seconds. The second
 * case makes that moment as hard as it gets, many times over: a manager
 * disconnects right after its JobTransferred, while its events thread
 * still answers the event (nng 1.5.2 hung in nng_close when a reply
 * arrived as it closed the connection). A client stuck there has its
 * stacks printed before it is killed.
 *
 * The manager lives in a child process: a manager without a connection
 * blocks in its calls, and only a process can be ended at a bound without
 * its help.
 */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "dopa.h"

#define RESTARTS         30
#define ROUNDS           60   /* of the second case: managers that disconnect after an event */
#define ROUNDS_PER_DOPAD 15   /* dopad keeps 16 clients of a user for a minute */
#define CLOSING_EVERY    5    /* every 5th restart, and before the last, the closing listener */
#define ANSWER_LIMIT_S   10.0 /* after the last start: the manager answers ... */
#define EVENT_LIMIT_S    20.0 /* ... and hears its job's JobTransferred */
#define CLOSE_LIMIT_S    10.0 /* dopa_disconnect: an unregistration and the calls under way */
#define FILE_SIZE        (256 * 1024 + 13)
#define FILE_SEED        7u
#define CHILD_LIMIT_S    30 /* the client's first steps, before the storm */
/* A dialer that still works tries again well within a second, failed
 * handshakes included; one quiet for longer has stopped dialling. */
#define LISTENER_QUIET  1000 /* ms */
#define LISTENER_CLOSES 20   /* connections closed at accept, at most, each time */

static test_nginx web;
static const char *fixture; /* the scratch directory */
static test_dopad daemon_ = {.pid = -1};
static pid_t client_pid = -1;
static int to_client = -1, from_client = -1;

static double uniform(void)
{
    return (double)rand() / ((double)RAND_MAX + 1.0);
}

/* ------------------------------------------------------------------ */
/* The client (in the child process)                                  */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int transferred;
} heard = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

/* With a non-NULL ctx, the callback also cancels its registration, so that
 * dopa_disconnect has none to send and closes at once, while the events
 * thread still answers the event. */
static int on_transferred(void *ctx, dopa_manager *m, const dopa_id *job)
{
    if (ctx != NULL)
        dopa_job_set_callbacks(m, job, NULL);
    pthread_mutex_lock(&heard.lock);
    heard.transferred++;
    pthread_cond_broadcast(&heard.changed);
    pthread_mutex_unlock(&heard.lock);
    return 0;
}

/* Waits up to `limit` seconds for a JobTransferred; 1 when one came. */
static int wait_transferred(double limit)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)limit;
    pthread_mutex_lock(&heard.lock);
    while (heard.transferred == 0 &&
           pthread_cond_timedwait(&heard.changed, &heard.lock, &until) == 0)
        ;
    int got = heard.transferred > 0;
    pthread_mutex_unlock(&heard.lock);
    return got;
}

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (write(fd, line, (size_t)n) != n)
        _exit(3);
}

/* Waits for the parent's go-ahead (one byte); exits when it is gone. */
static void hear_parent(int in)
{
    char c;
    if (read(in, &c, 1) != 1)
        _exit(2);
}

/* The child: a manager registered for a job's callbacks before the storm,
 * asked after it. Says "ready", then "answered <s> <err>", "event <s>"
 * (seconds from the go-ahead) and "disconnected <s>" (seconds dopa_disconnect
 * took), or "failed <why>". Never returns. */
static void client_main(int in, int out, const char *sock, const char *url, const char *dest)
{
    dopa_manager *m = NULL;
    dopa_id job;
    dopa_callbacks cb = {.size = sizeof cb, .job_transferred = on_transferred};
    int err;
    hear_parent(in); /* dopad is up */
    if ((err = dopa_connect(sock, &m)) != DOPA_OK ||
        (err = dopa_job_create(m, "storm", DOPA_JOB_DOWNLOAD, &job)) != DOPA_OK ||
        (err = dopa_job_add_file(m, &job, url, dest, NULL)) != DOPA_OK ||
        (err = dopa_job_set_callbacks(m, &job, &cb)) != DOPA_OK) {
        say(out, "failed before the storm: %s", dopa_strerror(err));
        _exit(1);
    }
    say(out, "ready");

    hear_parent(in); /* the storm is over: dopad answers again */
    double t0 = check_now();
    dopa_job_info *info;
    while ((err = dopa_job_get(m, &job, &info)) != DOPA_OK && check_now() - t0 < ANSWER_LIMIT_S)
        check_sleep_ms(50);
    dopa_free(info);
    say(out, "answered %.3f %d", check_now() - t0, err);
    while ((err = dopa_job_resume(m, &job)) != DOPA_OK && check_now() - t0 < EVENT_LIMIT_S)
        check_sleep_ms(50);
    if (err != DOPA_OK) {
        say(out, "failed to resume: %s", dopa_strerror(err));
        _exit(1);
    }
    double left = EVENT_LIMIT_S - (check_now() - t0);
    if (!wait_transferred(left > 1 ? left : 1)) {
        say(out, "failed: no JobTransferred %.1f s after the last start", check_now() - t0);
        _exit(1);
    }
    say(out, "event %.3f", check_now() - t0);
    double t1 = check_now();
    dopa_disconnect(m);
    say(out, "disconnected %.3f", check_now() - t1);
    _exit(0); /* not exit(): the parent's atexit handlers are the parent's */
}

/* The child of the second case: ROUNDS times a new manager hears a job's
 * JobTransferred and disconnects at once, while its events thread answers
 * the event. Says "disconnecting <round>" and "disconnected <s>" each
 * round, "done" at the end, or "failed <why>"; after every
 * ROUNDS_PER_DOPAD rounds it waits for the go-ahead of a new dopad. Never
 * returns. */
static void rounds_main(int in, int out, const char *sock, const char *url, const char *dir)
{
    dopa_id last;
    int has_last = 0, err = DOPA_OK, round;
    for (round = 0; round < ROUNDS; round++) {
        dopa_manager *m = NULL;
        dopa_id job;
        char name[32], dest[4200];
        snprintf(name, sizeof name, "round-%d.bin", round);
        snprintf(dest, sizeof dest, "%.4000s/%s", dir, name);
        dopa_callbacks cb = {.size = sizeof cb,
                             .job_transferred = on_transferred,
                             .ctx = round % 2 ? (void *)name : NULL};
        heard.transferred = 0;
        if ((err = dopa_connect(sock, &m)) != DOPA_OK ||
            (has_last && (err = dopa_job_cancel(m, &last)) != DOPA_OK) ||
            (err = dopa_job_create(m, name, DOPA_JOB_DOWNLOAD, &job)) != DOPA_OK ||
            (err = dopa_job_add_file(m, &job, url, dest, NULL)) != DOPA_OK ||
            (err = dopa_job_set_callbacks(m, &job, &cb)) != DOPA_OK ||
            (err = dopa_job_resume(m, &job)) != DOPA_OK)
            break;
        if (!wait_transferred(EVENT_LIMIT_S)) {
            say(out, "failed: no JobTransferred in round %d", round);
            _exit(1);
        }
        say(out, "disconnecting %d", round);
        double t = check_now();
        dopa_disconnect(m);
        say(out, "disconnected %.3f", check_now() - t);
        last = job;
        has_last = 1;
        if (round % ROUNDS_PER_DOPAD == ROUNDS_PER_DOPAD - 1)
            hear_parent(in);
    }
    if (err != DOPA_OK) {
        say(out, "failed in round %d: %s (%s)", round, dopa_strerror(err), dopa_last_message());
        _exit(1);
    }
    say(out, "done");
    _exit(0);
}

/* ------------------------------------------------------------------ */
/* The parent                                                         */

/* A line from the client, waiting at most limit_s; "" on a timeout or
 * when it ended. */
static void hear_client(char *line, size_t len, double limit_s)
{
    size_t n = 0;
    double end = check_now() + limit_s;
    line[0] = '\0';
    while (n + 1 < len) {
        struct pollfd p = {.fd = from_client, .events = POLLIN};
        int ms = (int)((end - check_now()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) != 1)
            break;
        char c;
        if (read(from_client, &c, 1) != 1)
            break;
        if (c == '\n') {
            line[n] = '\0';
            return;
        }
        line[n++] = c;
    }
    line[0] = '\0';
}

static void tell_client(void)
{
    CHECK(write(to_client, "g", 1) == 1);
}

/* Holds the control socket as a dopad killed between accept() and nng's
 * handshake leaves it to a client: each connection is accepted and closed
 * before a byte is read or written. Runs until LISTENER_CLOSES came, or
 * none came for LISTENER_QUIET ms (the client no longer dials); returns
 * how many it closed. */
static int close_at_accept(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    CHECK(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    unlink(path); /* the socket of the dopad just killed */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0) {
        close(fd);
        CHECK(0);
    }
    int closed = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (closed < LISTENER_CLOSES && poll(&p, 1, LISTENER_QUIET) == 1) {
        int c = accept(fd, NULL, NULL);
        if (c >= 0) {
            close(c);
            closed++;
        }
    }
    close(fd);
    unlink(path); /* dopad would take a live socket for another dopad */
    return closed;
}

/* Forks the client, with a pipe each way: 0 in the child, with the ends it
 * reads and writes in *in and *out; 1 in the parent (to_client,
 * from_client and client_pid set). nng's threads do not cross a fork: a
 * child forked after the parent used libdopa must exec before it does. */
static int fork_client(int *in, int *out)
{
    int down[2], up[2];
    CHECK(pipe(down) == 0);
    if (pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        CHECK(0);
    }
    client_pid = fork();
    if (client_pid == 0) {
        close(down[1]);
        close(up[0]);
        *in = down[0];
        *out = up[1];
        return 0;
    }
    close(down[0]);
    close(up[1]);
    to_client = down[1];
    from_client = up[0];
    CHECK(client_pid > 0);
    return 1;
}

/* Hears "disconnected <s>" from the client within CLOSE_LIMIT_S; when
 * it does not come, the client's stacks are shown (it is still there). The
 * seconds dopa_disconnect took, or -1. */
static double hear_disconnected(void)
{
    char line[512];
    double s = -1;
    hear_client(line, sizeof line, CLOSE_LIMIT_S);
    if (sscanf(line, "disconnected %lf", &s) != 1) {
        fprintf(stderr, "  dopa_disconnect did not return within %.0f s (the client said \"%s\")\n",
                CLOSE_LIMIT_S, line);
        test_print_stacks(client_pid);
        return -1;
    }
    return s;
}

static void after_case(void)
{
    if (client_pid > 0)
        test_stop(client_pid, SIGKILL);
    client_pid = -1;
    if (to_client >= 0)
        close(to_client);
    if (from_client >= 0)
        close(from_client);
    to_client = from_client = -1;
    if (daemon_.pid > 0)
        test_dopad_stop(&daemon_, SIGKILL);
}

static void test_a_manager_answers_and_hears_events_after_a_storm_of_restarts(void)
{
    const char *env = getenv("DOPA_RECONNECT_SEED");
    unsigned seed = env ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL);
    srand(seed);
    printf("  DOPA_RECONNECT_SEED=%u\n", seed);
    fflush(stdout);

    const char *dir = check_tmpdir();
    char sock[4200], url[256], line[512];
    const char *dest = check_path("storm.bin");
    snprintf(sock, sizeof sock, "%.4000s/run/control.sock", dir); /* where daemon.c puts it */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/storm.bin", web.port);

    int in, out;
    if (fork_client(&in, &out) == 0)
        client_main(in, out, sock, url, dest);
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, dir, NULL), 0);
    tell_client();
    hear_client(line, sizeof line, CHILD_LIMIT_S);
    if (strcmp(line, "ready") != 0)
        fprintf(stderr, "  the client said \"%s\"\n", line);
    CHECK_STR(line, "ready");

    /* The storm. */
    int closing = 0, closed = 0;
    double storm = check_now();
    for (int i = 0; i < RESTARTS; i++) {
        test_dopad_stop(&daemon_, SIGKILL);
        if (i % CLOSING_EVERY == CLOSING_EVERY - 1 || i == RESTARTS - 1) {
            closed += close_at_accept(sock);
            closing++;
        }
        CHECK_INT(test_dopad_spawn(&daemon_, DOPAD, dir, NULL), 0);
        if (i == RESTARTS - 1)
            break;
        check_sleep_ms(50 + (int)(uniform() * 250));
    }
    CHECK_INT(test_dopad_ready(&daemon_), 0);
    double storm_s = check_now() - storm;

    /* After the last start: the manager answers, and hears its job end. */
    tell_client();
    double answered = -1, event = -1;
    int err = -1;
    hear_client(line, sizeof line, ANSWER_LIMIT_S + 5);
    int has_answered = sscanf(line, "answered %lf %d", &answered, &err) == 2;
    if (has_answered) {
        hear_client(line, sizeof line, EVENT_LIMIT_S + 5);
        if (sscanf(line, "event %lf", &event) != 1)
            fprintf(stderr, "  the client said \"%s\"\n", line);
    } else {
        fprintf(stderr, "  the client said \"%s\" (nothing: it is stuck in a call)\n", line);
    }
    char figures[128] = "no answer, no JobTransferred";
    if (has_answered && event >= 0)
        snprintf(figures, sizeof figures, "an answer %.2f s and JobTransferred %.2f s", answered,
                 event);
    else if (has_answered)
        snprintf(figures, sizeof figures, "an answer %.2f s (%s), no JobTransferred", answered,
                 dopa_strerror(err));
    printf("  %d restarts in %.1f s, %d times a listener closing %d connections at accept: "
           "%s after the last start\n",
           RESTARTS, storm_s, closing, closed, figures);
    CHECK(has_answered);
    CHECK_INT(err, DOPA_OK);
    CHECK(answered < ANSWER_LIMIT_S);
    CHECK(event >= 0 && event < EVENT_LIMIT_S);

    /* dopa_disconnect returns, and the client ends. */
    double disconnected = hear_disconnected();
    CHECK(disconnected >= 0);
    printf("  dopa_disconnect took %.3f s\n", disconnected);
    CHECK_INT(test_wait(client_pid, 10), 0);
    client_pid = -1;
}

static void test_dopa_disconnect_returns_at_once_after_a_job_transferred(void)
{
    const char *dir = check_tmpdir();
    char sock[4200], url[256], line[512];
    snprintf(sock, sizeof sock, "%.4000s/run/control.sock", dir);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/storm.bin", web.port);
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, dir, NULL), 0);
    /* The first case used libdopa here, and nng refuses to run in a child
     * forked after that: the child starts this program afresh. */
    int in, out;
    if (fork_client(&in, &out) == 0) {
        dup2(in, STDIN_FILENO);
        dup2(out, STDOUT_FILENO);
        execl("/proc/self/exe", "test_dopad_reconnect", "--rounds", sock, url, dir, (char *)NULL);
        _exit(127);
    }

    double slowest = 0;
    for (int round = 0; round < ROUNDS; round++) {
        char expected[32];
        snprintf(expected, sizeof expected, "disconnecting %d", round);
        hear_client(line, sizeof line, EVENT_LIMIT_S + 5);
        if (strcmp(line, expected) != 0)
            fprintf(stderr, "  the client said \"%s\"\n", line);
        CHECK_STR(line, expected);
        double s = hear_disconnected();
        CHECK(s >= 0);
        slowest = s > slowest ? s : slowest;
        if (round % ROUNDS_PER_DOPAD == ROUNDS_PER_DOPAD - 1) {
            test_dopad_stop(&daemon_, SIGKILL);
            CHECK_INT(test_dopad_start(&daemon_, DOPAD, dir, NULL), 0);
            tell_client();
        }
    }
    hear_client(line, sizeof line, 5);
    CHECK_STR(line, "done");
    printf("  %d managers disconnected right after a JobTransferred, the slowest in %.3f s\n",
           ROUNDS, slowest);
    CHECK_INT(test_wait(client_pid, 10), 0);
    client_pid = -1;
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_nginx_stop(&web);
}

static int setup(void)
{
    if ((fixture = test_scratch_dir("reconnect")) == NULL)
        return -1;
    atexit(teardown);
    if (test_nginx_start(&web, fixture, NULL) != 0)
        return -1;
    return test_nginx_put(&web, "storm.bin", FILE_SIZE, FILE_SEED);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 5 && strcmp(argv[1], "--rounds") == 0)
        rounds_main(STDIN_FILENO, STDOUT_FILENO, argv[2], argv[3], argv[4]);
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_a_manager_answers_and_hears_events_after_a_storm_of_restarts),
                         CASE(test_dopa_disconnect_returns_at_once_after_a_job_transferred),
                         {0},
                     });
}
