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

#define RESTARTS       30
#define CLOSING_EVERY  5    /* every 5th restart, and before the last, the closing listener */
#define ANSWER_LIMIT_S 10.0 /* after the last start: the manager answers ... */
#define EVENT_LIMIT_S  20.0 /* ... and hears its job's JobTransferred */
#define FILE_SIZE      (256 * 1024 + 13)
#define FILE_SEED      7u
#define CHILD_LIMIT_S  30 /* the client's first steps, before the storm */
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

static int on_transferred(void *ctx, dopa_manager *m, const dopa_id *job)
{
    (void)ctx;
    (void)m;
    (void)job;
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
 * asked after it. Says "ready", then "answered <s> <err>" and "event <s>"
 * (seconds from the go-ahead), or "failed <why>". Never returns. */
static void client_main(int in, int out, const char *sock, const char *url, const char *dest)
{
    dopa_manager *m = NULL;
    dopa_id job;
    dopa_callbacks cb = {.job_transferred = on_transferred};
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
    dopa_job_info info;
    while ((err = dopa_job_get(m, &job, &info)) != DOPA_OK && check_now() - t0 < ANSWER_LIMIT_S)
        check_sleep_ms(50);
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
    dopa_disconnect(m);
    _exit(0); /* not exit(): the parent's atexit handlers are the parent's */
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

    /* The child before any libdopa call here: nng's threads do not cross
     * a fork. */
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
        client_main(down[0], up[1], sock, url, dest);
    }
    close(down[0]);
    close(up[1]);
    to_client = down[1];
    from_client = up[0];
    CHECK(client_pid > 0);

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
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_a_manager_answers_and_hears_events_after_a_storm_of_restarts),
                         {0},
                     });
}
