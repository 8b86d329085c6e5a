/*
 * dopad's configuration read again on SIGHUP, and its messages to systemd.
 * The real dopad with a configuration file: the file changes, SIGHUP
 * comes, and `dopa --json stats` and the log show the new values of what
 * can change at run time and the old ones of what needs a restart; a bad
 * file changes nothing and is named with its line; dopad goes on serving
 * jobs throughout. Its sd_notify messages (READY=1, RELOADING=1, STOPPING=1,
 * STATUS=) go to a datagram socket this test holds as NOTIFY_SOCKET, as
 * systemd's would. Also: "#" comments after a value, and the warning that
 * names the [peers] keys a missing group key makes useless. DOPAD and
 * DOPA_CLI name the binaries.
 */
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "peer.h"

static test_dopad dopad = {.pid = -1};
static test_nginx web = {.pid = -1};
static int notify_fd = -1;

/* What dopad has logged so far. */
static const char *log_text(void)
{
    static char text[65536];
    text[0] = '\0';
    FILE *f = fopen(dopad.log, "r");
    if (f != NULL) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    return text;
}

/* The socket dopad's sd_notify messages come to: a path, or with
 * `abstract` a name in the abstract namespace ("@..." in NOTIFY_SOCKET). */
static void hold_notify_socket(int abstract)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char name[200];
    if (abstract)
        snprintf(name, sizeof name, "@dopa-test-reload-%d", (int)getpid());
    else
        snprintf(name, sizeof name, "%.150s/notify.sock", check_tmpdir());
    CHECK(strlen(name) < sizeof sa.sun_path);
    memcpy(sa.sun_path, name, strlen(name));
    if (abstract)
        sa.sun_path[0] = '\0';
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(notify_fd >= 0);
    CHECK(bind(notify_fd, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name))) == 0);
    CHECK(setenv("NOTIFY_SOCKET", name, 1) == 0);
}

/* Waits up to 10 s for a message with a line that starts with `want`; the
 * messages on the way are appended to seen (when not NULL). */
static int wait_notify(const char *want, char *seen, size_t seen_len)
{
    for (int waited = 0; waited < 10000; waited += 100) {
        struct pollfd p = {.fd = notify_fd, .events = POLLIN};
        if (poll(&p, 1, 100) != 1)
            continue;
        char msg[1024];
        ssize_t n = recv(notify_fd, msg, sizeof msg - 1, 0);
        if (n <= 0)
            continue;
        msg[n] = '\0';
        if (seen != NULL) {
            size_t k = strlen(seen);
            snprintf(seen + k, seen_len - k, "%s\n", msg);
        }
        for (char *line = strtok(msg, "\n"); line != NULL; line = strtok(NULL, "\n"))
            if (strncmp(line, want, strlen(want)) == 0)
                return 1;
    }
    return 0;
}

/* Starts dopad with `settings` (after "[dopad]") in dir/dopad.conf. */
static void start(const char *settings)
{
    int rc = test_dopad_start(&dopad, DOPAD, check_tmpdir(), settings);
    unsetenv("NOTIFY_SOCKET");
    if (rc != 0)
        fprintf(stderr, "  dopad said:\n%s", log_text());
    CHECK_INT(rc, 0);
}

static void rewrite(const char *settings)
{
    char text[4096];
    snprintf(text, sizeof text, "[dopad]\n%s\n", settings);
    check_write_text(check_path("dopad.conf"), text);
}

/* SIGHUP, then wait for dopad to say it is done: READY=1 after RELOADING=1. */
static void reload(void)
{
    CHECK(kill(dopad.pid, SIGHUP) == 0);
    CHECK(wait_notify("RELOADING=1", NULL, 0));
    CHECK(wait_notify("READY=1", NULL, 0));
}

/* The text after "name": in `dopa --json stats` (the rest of the document
 * follows it). */
static const char *stat_field(const char *name)
{
    static char out[4096];
    char key[64];
    const char *argv[] = {DOPA_CLI, "--socket", dopad.sock, "--json", "stats", NULL};
    CHECK_INT(test_run(argv, out, sizeof out, 30, TEST_AS_ME, 0), 0);
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *at = strstr(out, key);
    CHECK(at != NULL);
    return at + strlen(key);
}

static unsigned long long stat_value(const char *name)
{
    return strtoull(stat_field(name), NULL, 10);
}

static void stat_text(const char *name, char *value, size_t len)
{
    const char *at = stat_field(name);
    CHECK(*at == '"');
    size_t n = strcspn(++at, "\"");
    CHECK(n < len);
    memcpy(value, at, n);
    value[n] = '\0';
}

/* dopad still does its work: a one-shot download of a local file. */
static void check_serves_a_job(const char *name)
{
    char src[4200], url[4300], out[4096];
    const char *text = "the bytes of a job that runs across a reload\n";
    snprintf(src, sizeof src, "%s/%s.src", check_tmpdir(), name);
    check_write_text(src, text);
    snprintf(url, sizeof url, "file://%s", src);
    const char *dest = check_path(name);
    const char *argv[] = {DOPA_CLI, "--socket", dopad.sock, "get", url, "-o", dest, NULL};
    int rc = test_run(argv, out, sizeof out, 60, TEST_AS_ME, 0);
    if (rc != 0)
        fprintf(stderr, "  dopa get: %s  dopad said:\n%s", out, log_text());
    CHECK_INT(rc, 0);
    struct stat st;
    CHECK(stat(dest, &st) == 0);
    CHECK_INT(st.st_size, strlen(text));
}

static void after_case(void)
{
    if (dopad.pid > 0)
        test_dopad_stop(&dopad, SIGKILL);
    if (web.pid > 0)
        test_nginx_stop(&web);
    if (notify_fd >= 0)
        close(notify_fd);
    notify_fd = -1;
    unsetenv("NOTIFY_SOCKET");
}

/* ------------------------------------------------------------------ */

static void test_sighup_applies_what_can_change_and_keeps_the_rest(void)
{
    validate_error why = {0};
    char settings[2048], url[200], status[4096] = "";
    uint8_t key[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(key);
    const char *key_path = check_path("group.key");
    CHECK_INT(peer_group_key_save(key, key_path, 0, &why), PEER_OK);

    hold_notify_socket(0);
    snprintf(settings, sizeof settings,
             "max-running = 3\n[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:0\n"
             "beacons = no\ncache-size = 5M\n",
             key_path);
    start(settings);
    CHECK(wait_notify("READY=1", status, sizeof status));
    CHECK(wait_notify("STATUS=0 jobs; 0 peers (0 banned); serving on tcp://127.0.0.1:", NULL, 0));
    CHECK_INT(stat_value("cache_limit"), 5000000);
    CHECK_INT(stat_value("peers"), 0);
    stat_text("peer_url", url, sizeof url);

    /* What can change does; listen cannot, and says so. */
    snprintf(settings, sizeof settings,
             "max-running = 2           # fewer at once\n[peers]\ngroup-key = %s\n"
             "listen = tcp://127.0.0.1:1\nbeacons = no\ncache-size = 7M\n"
             "upload-rate = 1M ; a semicolon comment, as before\npeer = tcp://127.0.0.1:9\n",
             key_path);
    rewrite(settings);
    reload();
    CHECK_INT(stat_value("cache_limit"), 7000000);
    CHECK_INT(stat_value("peers"), 1);
    char now_url[200];
    stat_text("peer_url", now_url, sizeof now_url);
    CHECK_STR(now_url, url);
    CHECK_HAS(log_text(), "reload: max-running: 2 (was 3)");
    CHECK_HAS(log_text(), "reload: upload-rate: 1000000 (was 0)");
    CHECK_HAS(log_text(), "reload: cache-size: 7000000 (was 5000000)");
    CHECK_HAS(log_text(), "reload: peer: 1 given (was 0)");
    CHECK_HAS(log_text(), "reload: listen: tcp://127.0.0.1:1 needs a restart of dopad; "
                          "tcp://127.0.0.1:0 stays in force");
    CHECK_HAS(log_text(), "reload: 4 settings changed, 1 wait for a restart");
    check_serves_a_job("after-reload");

    /* A bad file: named with its line, and nothing changes. */
    snprintf(settings, sizeof settings,
             "[peers]\ngroup-key = %s\ncache-size = 1M\n[dopad]\nmax-running = 99\n", key_path);
    rewrite(settings);
    reload();
    CHECK_HAS(log_text(), "dopad.conf:6: max-running 99: need 1 to 64; nothing changed");
    CHECK(strstr(log_text(), "cache-size: 1000000") == NULL);
    CHECK_INT(stat_value("cache_limit"), 7000000);
    CHECK_INT(stat_value("peers"), 1);
    /* So does one that names a group key that is not there. */
    rewrite("[peers]\ngroup-key = /nonexistent/group.key\ncache-size = 1M\n");
    reload();
    CHECK_HAS(log_text(), "reload: group-key /nonexistent/group.key: ");
    CHECK_INT(stat_value("cache_limit"), 7000000);
    check_serves_a_job("after-bad-reload");

    /* A peer taken out is dropped; the cache can go down to nothing. */
    snprintf(settings, sizeof settings,
             "[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:0\nbeacons = no\n"
             "cache-size = 0\n",
             key_path);
    rewrite(settings);
    reload();
    CHECK_INT(stat_value("cache_limit"), 0);
    int peers = 1;
    for (int i = 0; i < 50 && (peers = (int)stat_value("peers")) != 0; i++)
        check_sleep_ms(100);
    CHECK_INT(peers, 0);
    CHECK_HAS(log_text(), "reload: max-running: the default (was 2)");

    /* SIGTERM: STOPPING=1, and exit status 0. */
    CHECK(kill(dopad.pid, SIGTERM) == 0);
    CHECK(wait_notify("STOPPING=1", NULL, 0));
    CHECK_INT(test_wait(dopad.pid, 10), 0);
    dopad.pid = -1;
}

static void test_comments_and_keys_that_do_nothing_are_told(void)
{
    hold_notify_socket(1); /* the abstract namespace, as systemd may use */
    start("max-running = 2   # a comment, not part of the value\n"
          "plugin-timeout = 30\t# after a tab too\n"
          "[peers]\ncache-size = 5M\nupload-rate = 1M\n");
    CHECK(wait_notify("READY=1", NULL, 0));
    CHECK_HAS(log_text(), "dopad.conf: [peers] cache-size, upload-rate: no effect without "
                          "group-key (peers are off)");
    char status[4096] = "";
    CHECK(kill(dopad.pid, SIGHUP) == 0);
    CHECK(wait_notify("READY=1", status, sizeof status));
    CHECK_HAS(status, "RELOADING=1\nMONOTONIC_USEC=");
    CHECK_HAS(status, "STATUS=0 jobs; origin only (no group key)");
    CHECK_HAS(log_text(), "reload: 0 settings changed, 0 wait for a restart");
    check_serves_a_job("job");
    test_dopad_stop(&dopad, SIGTERM);

    /* A "#" inside a value is part of it; an empty value is an error. */
    const struct {
        const char *text;
        const char *said;
    } bad[] = {
        {"[dopad]\nmax-running = 2#3\n", "bad.conf:2: max-running 2#3: need 1 to 64"},
        {"[dopad]\n\nmax-running = # nothing\n", "bad.conf:3: max-running: no value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char out[4096];
        check_write_text(check_path("bad.conf"), bad[i].text);
        const char *argv[] = {DOPAD,       "--config", check_path("bad.conf"),
                              "--socket",  dopad.sock, "--state-dir",
                              dopad.state, NULL};
        CHECK_INT(test_run(argv, out, sizeof out, 10, TEST_AS_ME, 0), 2);
        CHECK_HAS(out, bad[i].said);
    }
}

/* dopa get of `name` from the test's nginx; returns the seconds it took. */
static double timed_get(const char *name)
{
    char url[300], out[4096];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%s", web.port, name);
    const char *argv[] = {DOPA_CLI, "--socket", dopad.sock,       "get",
                          url,      "-o",       check_path(name), NULL};
    double t0 = check_now();
    int rc = test_run(argv, out, sizeof out, 60, TEST_AS_ME, 0);
    double took = check_now() - t0;
    if (rc != 0)
        fprintf(stderr, "  dopa get: %s  dopad said:\n%s", out, log_text());
    CHECK_INT(rc, 0);
    CHECK_INT(test_pattern_differs(check_path(name), (unsigned)name[0], 0, 1000000, NULL), 0);
    fprintf(stderr, "  %s: %.2f s\n", name, took);
    return took;
}

/* origin-rate holds every job's downloads from origins to its rate, from
 * the start and after a reload, and a reload lifts it. */
static void test_origin_rate_limits_downloads_and_changes_on_reload(void)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/web", check_tmpdir());
    CHECK_INT(test_nginx_start(&web, dir, NULL), 0);
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        CHECK_INT(test_nginx_put(&web, names[i], 1000000, (unsigned)names[i][0]), 0);

    hold_notify_socket(0);
    start("origin-rate = 250K\n");
    CHECK(wait_notify("READY=1", NULL, 0));
    CHECK(timed_get("a") > 3.0); /* 1 MB at 250 kB/s: 4 s */

    rewrite("origin-rate = 0\n");
    reload();
    CHECK_HAS(log_text(), "reload: origin-rate: 0 (was 250000)");
    CHECK(timed_get("b") < 3.0);

    rewrite("origin-rate = 250000\n");
    reload();
    CHECK_HAS(log_text(), "reload: origin-rate: 250000 (was 0)");
    CHECK(timed_get("c") > 3.0);
}

int main(int argc, char **argv)
{
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_sighup_applies_what_can_change_and_keeps_the_rest),
                         CASE(test_comments_and_keys_that_do_nothing_are_told),
                         CASE(test_origin_rate_limits_downloads_and_changes_on_reload),
                         {0},
                     });
}
